"""Identity-Supervised Global Visual Feature Calibration, IS-GVFC (VFE-TPS Eq. 4-5).

Image-image pairs of the batch get a similarity distribution that is pulled towards the
identity-label distribution, so that images of one person cluster in the global image space
before (and while) they are matched with text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.losses.cmpm import matching_kl


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


def is_gvfc_loss(image: torch.Tensor, pids: torch.Tensor, pairs: int = 0, tau: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 4: ``p_ij = softmax_{j in C(i)}(v_i^T vbar_j)`` over the C sampled pairs of anchor i
    (cosine / ``tau`` when ``tau > 0``); Eq. 5: ``KL(p_i || q_i)`` with ``q_ij`` the normalised
    same-identity labels, averaged over anchors that have a positive among their pairs.

    image: (B, D) global image features; pids: (B,).
    """
    index = sample_pairs(image.shape[0], pairs, generator).to(image.device)  # (B, C)
    anchor = F.normalize(image, dim=-1) / tau if tau > 0 else image  # (B, D)
    candidates = F.normalize(image, dim=-1)[index]  # (B, C, D)
    logits = torch.einsum("bd,bcd->bc", anchor, candidates)  # (B, C)
    positive = pids[index] == pids[:, None]  # (B, C)
    if not positive.any():
        return image.sum() * 0.0
    return matching_kl(logits, positive)
