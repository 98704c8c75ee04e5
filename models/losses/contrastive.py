"""Identity-aware cross-modal contrastive loss (VGSG Eq. 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, pids: torch.Tensor,
                     tau: float = 0.02, margin: float = 0.1) -> torch.Tensor:
    """Eq. 2 as implemented here: InfoNCE in both directions over cosine similarities, with

    - every same-person pair in the batch a positive (the P x K sampler puts K images of a
      person, and their captions, in one batch), the positives' probability mass summed;
    - an additive margin ``m`` subtracted from positive similarities, so that a positive must
      beat negatives by ``m``: ``s+ -> s+ - m``;
    - temperature ``tau``.

    ``L = -1/2B sum_i [log sum_{p in P(i)} softmax_j((S_ij - m [j in P(i)]) / tau)_p
                       + the same over S^T]``

    image, text: (B, D) unnormalised; pids: (B,).
    """
    image = F.normalize(image, dim=-1)
    text = F.normalize(text, dim=-1)
    positive = (pids[:, None] == pids[None, :]).float()  # (B, B)
    sim = image @ text.t() - margin * positive  # (B, B)
    loss_i2t = _multi_positive_nce(sim / tau, positive)
    loss_t2i = _multi_positive_nce(sim.t() / tau, positive.t())
    return 0.5 * (loss_i2t + loss_t2i)


def _multi_positive_nce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    log_prob = F.log_softmax(logits, dim=1)  # (B, B)
    pos_log_prob = torch.logsumexp(log_prob.masked_fill(positive == 0, float("-inf")), dim=1)
    return -pos_log_prob.mean()
