"""Identity-Supervised Global Visual Feature Calibration, IS-GVFC (VFE-TPS Sec. 3.2.2, Eq. 4-5).

Each image is compared with C images sampled from the batch (C = 20 in the paper); the
distribution of their similarities is pulled towards the identity-label distribution, so that
images of one person cluster in the global image space before (and while) they are matched
with text.
"""

from __future__ import annotations

import torch

from models.losses.cmpm import matching_kl, pair_logits


def sample_pairs(batch: int, pairs: int, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """(B, C) indices of the C candidates each anchor is compared with: C other images drawn
    without replacement (``pairs <= 0`` or ``>= B - 1``: all other images)."""
    others = torch.stack([torch.cat([torch.arange(i), torch.arange(i + 1, batch)])
                          for i in range(batch)])  # (B, B-1)
    if pairs <= 0 or pairs >= batch - 1:
        return others
    order = torch.rand(batch, batch - 1, generator=generator).argsort(dim=1)[:, :pairs]
    return others.gather(1, order)  # (B, C)


def is_gvfc_loss(image: torch.Tensor, pids: torch.Tensor, pairs: int = 20,
                 logits: str = "cosine", tau: float = 0.02, average: str = "batch",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 5: ``p_ij = softmax_{j in C(i)}(cos(v_i, v_j) / tau)`` over the C sampled images of
    anchor i; Eq. 4: ``L_gvfc = 1/B sum_i KL(p_i || q_i)``, ``q_ij`` the normalised
    same-identity labels among the C (Eq. 4 writes 1/C over C sampled pairs; here C images are
    sampled per anchor and the mean is over the B anchors); an anchor without a positive among
    them adds 0 (``average="anchors"``: divide by the anchors that have one instead of B).

    image: (B, D) global image features; pids: (B,).
    """
    index = sample_pairs(image.shape[0], pairs, generator).to(image.device)  # (B, C)
    full = pair_logits(image, image, logits, tau)  # (B, B)
    chosen = full.gather(1, index)  # (B, C)
    positive = pids[index] == pids[:, None]  # (B, C)
    if not positive.any():
        return image.sum() * 0.0
    return matching_kl(chosen, positive, average=average)
