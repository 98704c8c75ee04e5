"""InfoNCE-family cross-modal losses, selectable in the place of VGSG's Eq. 2.

Neither is VGSG's Eq. 2 (that is ViTAA's alignment loss, ``models.losses.alignment``).
``infonce_loss`` is CLIP's symmetric image-text InfoNCE (Radford et al. 2021) over cosine
similarities with a temperature, the paired caption the one positive (``itc_form: infonce``).
``contrastive_loss`` is the form this project trained with first (identity-aware: every
same-person pair a positive, plus an additive margin; ``itc_form: mp-margin``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce_loss(image: torch.Tensor, text: torch.Tensor, tau: float = 0.02) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: ``L = 1/2 (L_i2t + L_t2i)``, with

    ``L_i2t = -1/B sum_i log( exp(S_ii / tau) / sum_j exp(S_ij / tau) )``, ``S_ij = cos(v_i, t_j)``

    and ``L_t2i`` the same over ``S^T``: row i's positive is its own pair (the diagonal).
    image, text: (B, D) unnormalised, row i of each from the same (image, caption) pair.
    """
    with torch.autocast(image.device.type, enabled=False):  # similarities in fp32
        return _infonce_loss(image.float(), text.float(), tau)


def _infonce_loss(image: torch.Tensor, text: torch.Tensor, tau: float) -> torch.Tensor:
    image = F.normalize(image, dim=-1)
    text = F.normalize(text, dim=-1)
    logits = image @ text.t() / tau  # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, pids: torch.Tensor,
                     tau: float = 0.02, margin: float = 0.1) -> torch.Tensor:
    """Identity-aware multi-positive InfoNCE with a margin (``itc_form: mp-margin``) in both
    directions over cosine similarities, with

    - every same-person pair in the batch a positive (the P x K sampler puts K images of a
      person, and their captions, in one batch), the positives' probability mass summed;
    - an additive margin ``m`` subtracted from positive similarities, so that a positive must
      beat negatives by ``m``: ``s+ -> s+ - m``;
    - temperature ``tau``.

    ``L = -1/2B sum_i [log sum_{p in P(i)} softmax_j((S_ij - m [j in P(i)]) / tau)_p
                       + the same over S^T]``

    image, text: (B, D) unnormalised; pids: (B,).
    """
    with torch.autocast(image.device.type, enabled=False):  # similarities in fp32
        return _contrastive_loss(image.float(), text.float(), pids, tau, margin)


def _contrastive_loss(image: torch.Tensor, text: torch.Tensor, pids: torch.Tensor, tau: float,
                      margin: float) -> torch.Tensor:
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
