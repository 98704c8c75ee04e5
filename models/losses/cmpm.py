"""Cross-Modal Projection Matching (Zhang & Lu, ECCV 2018), as VFE-TPS uses it (Eq. 6-9).

The same "matching distribution vs. label distribution" KL is reused by IS-GVFC (Eq. 4-5) on
image-image pairs, so the shared piece is ``matching_kl``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def label_distribution(positive: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``q_ij = y_ij / sum_k y_ik`` for a (N, M) 0/1 positive mask; rows without a
    positive get all-zero rows (their loss is then pure ``sum p log p / eps``: never used)."""
    return positive / positive.sum(dim=1, keepdim=True).clamp(min=1)


def matching_kl(logits: torch.Tensor, positive: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Eq. 8: ``mean_i sum_j p_ij log(p_ij / (q_ij + eps))`` with ``p = softmax_j(logits)``.

    logits, positive: (N, M). Only rows with at least one positive count.
    """
    p = F.softmax(logits, dim=1)  # (N, M)
    q = label_distribution(positive.float())  # (N, M)
    kl = (p * (F.log_softmax(logits, dim=1) - torch.log(q + eps))).sum(dim=1)  # (N,)
    has_positive = positive.any(dim=1)
    return kl[has_positive].mean()


def cmpm_loss(image: torch.Tensor, text: torch.Tensor, pids: torch.Tensor,
              tau: float = 0.0) -> torch.Tensor:
    """Eq. 6-9: ``L_cmpm = L_i2t + L_t2i``.

    Eq. 6: ``p_ij = softmax_j(x_i^T zbar_j)``, the projection of image feature ``x_i`` (not
    normalised) on the normalised text feature ``zbar_j``; Eq. 9 sums both directions. With
    ``tau > 0`` the logits are cosines over ``tau`` instead (a variant, off in the paper).

    image, text: (B, D); pids: (B,). Every same-person pair is a positive.
    """
    positive = pids[:, None] == pids[None, :]  # (B, B)
    if tau > 0:
        image, scale = F.normalize(image, dim=-1), 1.0 / tau
    else:
        scale = 1.0
    i2t = scale * image @ F.normalize(text, dim=-1).t()  # (B, B)  x_i^T zbar_j
    t2i = scale * (F.normalize(text, dim=-1) if tau > 0 else text) @ F.normalize(
        image, dim=-1).t()  # (B, B)  z_j^T xbar_i
    return matching_kl(i2t, positive) + matching_kl(t2i, positive.t())
