"""Text-Guided Masked Image Modelling reconstruction loss (VFE-TPS Eq. 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_mask_to_pixels(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, h, w) bool patch mask -> (B, 1, h*patch, w*patch) float pixel mask."""
    return mask.float().repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1)


def masked_l1_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                   patch: int) -> torch.Tensor:
    """Eq. 3: ``L_mim = 1/|M| sum_{p in M} |y_p - yhat_p|_1`` over the pixels of the masked
    patches only, averaged per pixel value (``|M|`` counts masked pixels x channels).

    prediction, target: (B, 3, H, W); mask: (B, h, w) bool, True = masked.
    """
    pixels = patch_mask_to_pixels(mask, patch).expand_as(target)  # (B, 3, H, W)
    error = F.l1_loss(prediction, target, reduction="none")  # (B, 3, H, W)
    return (error * pixels).sum() / pixels.sum().clamp(min=1)
