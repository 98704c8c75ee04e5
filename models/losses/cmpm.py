"""Cross-Modal Projection Matching (Zhang & Lu, ECCV 2018) as VFE-TPS uses it (Sec. 3.3, Eq. 6-9).

VFE-TPS writes the matching distribution over cosine similarities with a temperature
(``p_ij = softmax_j(cos(v_i, t_j) / tau)``); the original CMPM's projection logits
``x_i^T zbar_j`` stay a named option (``logits="projection"``). The same "matching
distribution vs. label distribution" KL is reused by IS-GVFC (Eq. 4-5) on image-image pairs,
so the shared piece is ``matching_kl``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8
LOGIT_FORMS = ("cosine", "projection")


def label_distribution(positive: torch.Tensor) -> torch.Tensor:
    """``q_ij = y_ij / sum_k y_ik`` for a (N, M) 0/1 positive mask; rows without a positive
    get all-zero rows (``matching_kl`` leaves them out)."""
    return positive / positive.sum(dim=1, keepdim=True).clamp(min=1)


def matching_kl(logits: torch.Tensor, positive: torch.Tensor, eps: float = EPS,
                average: str = "batch") -> torch.Tensor:
    """``1/N sum_i sum_j p_ij log(p_ij / (q_ij + eps))`` with ``p = softmax_j(logits)``.

    logits, positive: (N, M). Rows without a positive add nothing (their q is undefined);
    ``average="batch"`` divides by all N rows (the papers' 1/B), ``"anchors"`` by the rows
    that have a positive.
    """
    p = F.softmax(logits, dim=1)  # (N, M)
    q = label_distribution(positive.float())  # (N, M)
    kl = (p * (F.log_softmax(logits, dim=1) - torch.log(q + eps))).sum(dim=1)  # (N,)
    has_positive = positive.any(dim=1)  # (N,)
    if average == "anchors":
        return kl[has_positive].mean()
    if average == "batch":
        return kl.masked_fill(~has_positive, 0.0).sum() / kl.shape[0]
    raise ValueError(f"unknown average {average!r}; known: ('batch', 'anchors')")


def pair_logits(a: torch.Tensor, b: torch.Tensor, logits: str = "cosine",
                tau: float = 0.02) -> torch.Tensor:
    """(N, D), (M, D) -> (N, M) logits: ``cos(a_i, b_j) / tau`` (``cosine``) or
    ``a_i^T bbar_j``, the projection of ``a_i`` on the unit ``b_j`` (``projection``)."""
    if logits == "cosine":
        if tau <= 0:
            raise ValueError(f"cosine logits need a temperature tau > 0, got {tau}")
        return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t() / tau
    if logits == "projection":
        return a @ F.normalize(b, dim=-1).t()
    raise ValueError(f"unknown logits {logits!r}; known: {LOGIT_FORMS}")


def cmpm_loss(image: torch.Tensor, text: torch.Tensor, pids: torch.Tensor,
              logits: str = "cosine", tau: float = 0.02) -> torch.Tensor:
    """Eq. 9: ``L_cmpm = L_i2t + L_t2i``; Eq. 8: ``L_i2t = 1/B sum_i L_i``; Eq. 7: ``L_i =
    KL(p_i || q_i)``; Eq. 6: ``p_ij = softmax_j(cos(v_i, t_j) / tau)``; ``q_ij`` the normalised
    same-person labels (every same-person pair is a positive); ``L_t2i`` the same with the
    roles swapped. Eq. 7 as printed also puts a 1/B before each row's sum (1/B^2 in all); this
    keeps the original CMPM's single 1/B, a constant factor of the loss weight.

    image, text: (B, D); pids: (B,).
    """
    positive = pids[:, None] == pids[None, :]  # (B, B)
    i2t = pair_logits(image, text, logits, tau)  # (B, B)
    t2i = pair_logits(text, image, logits, tau)  # (B, B)
    return matching_kl(i2t, positive) + matching_kl(t2i, positive.t())
