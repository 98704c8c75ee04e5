"""Compound Ranking (CR) loss of SSAN (Ding et al., 2021, Sec. IV, Eq. 18-21).

A caption describes its own image exactly (strong supervision) and another image of the same
person only roughly (weak supervision). Both kinds of positives are ranked above the hardest
negative of the batch in both retrieval directions; the weak term has a smaller, adaptive
margin and a weight ``beta`` (0.1 in the paper).
"""

from __future__ import annotations

import torch

MARGIN_FORMS = ("paper", "similarity", "fixed")


def hardest_negatives(sim: torch.Tensor, negative: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest negative similarity of each image row (B,) and of each text column (B,)."""
    masked = sim.masked_fill(~negative, float("-inf"))  # (B, B)
    return masked.max(dim=1).values, masked.max(dim=0).values


def weak_margins(sim: torch.Tensor, margin: float, form: str = "paper") -> torch.Tensor:
    """(B, B) margin ``a_ij`` of each weak pair (image i, caption j of another image of the
    same person), detached.

    ``paper`` (Eq. 20-21): ``lambda_ij = min(S(I_i, T_j) / S(I_i, T_i), 1)`` (absolute
    values, as the authors' code; the paper's text prints the hardest negative pair's
    ``S(I_n, D_n)`` as Eq. 21's denominator), ``a_ij = (lambda_ij + 1) a / 2``: a weak caption that
    matches the image almost as well as its own caption gets nearly the full margin.
    ``similarity`` (earlier variant here): ``a_ij = a (S_ij + 1) / 2``. ``fixed``: ``a``.
    """
    sim = sim.detach()
    if form == "paper":
        own = sim.diagonal().abs().clamp(min=1e-8)[:, None]  # (B, 1)  S(I_i, T_i)
        ratio = (sim.abs() / own).clamp(max=1.0)  # (B, B)  lambda_ij
        return margin * (ratio + 1) / 2
    if form == "similarity":
        return margin * (sim + 1) / 2
    if form == "fixed":
        return torch.full_like(sim, margin)
    raise ValueError(f"unknown compound-ranking margin {form!r}; known: {MARGIN_FORMS}")


def compound_ranking_loss(sim: torch.Tensor, pids: torch.Tensor, margin: float = 0.2,
                          beta: float = 0.1, margin_form: str = "paper") -> torch.Tensor:
    """SSAN Eq. 19 (Eq. 18's two strong terms plus two weak ones):

    ``L_cr = sum_i [a - S(I_i, T_i) + S(I_i, T-)]_+ + [a - S(I_i, T_i) + S(I-, T_i)]_+``
    ``     + beta sum_{(i, j) weak} [a_ij - S(I_i, T_j) + S(I_i, T-)]_+ + [... + S(I-, T_j)]_+``

    sim: (B, B) similarity of image i (rows) and text j (columns), text i paired with image i;
    pids: (B,). Weak pairs: same person, i != j; ``a_ij`` from ``weak_margins``. Negatives
    are the hardest in the batch. Strong terms are averaged over B, weak ones over the weak
    pairs.
    """
    same = pids[:, None] == pids[None, :]  # (B, B)
    eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    neg_for_image, neg_for_text = hardest_negatives(sim, ~same)  # (B,), (B,)
    pos = sim.diagonal()  # (B,)
    strong = ((margin - pos + neg_for_image).clamp(min=0)
              + (margin - pos + neg_for_text).clamp(min=0))  # (B,)
    loss = strong.mean()  # a row without negatives has -inf there: its hinge is 0
    weak = same & ~eye  # (B, B)
    if beta == 0 or not weak.any():
        return loss
    a = weak_margins(sim, margin, margin_form)  # (B, B)
    weak_terms = ((a - sim + neg_for_image[:, None]).clamp(min=0)
                  + (a - sim + neg_for_text[None, :]).clamp(min=0))  # (B, B)
    return loss + beta * weak_terms[weak].mean()
