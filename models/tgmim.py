"""TG-MIM: Text-Guided Masked Image Modelling (VFE-TPS Sec. 3.2.1, Eq. 1-3). Training only.

Patches of the image are masked at random (Algorithm 1, steps 2-3; the ratio is in no
equation); the image encoder's tokens of the masked image, its global feature f^v first and
then the patch tokens, attend to the caption's word tokens through one multi-head
cross-attention layer (MCA, Eq. 1-2), four transformer encoder
layers mix them, and a Conv2d + PixelShuffle head predicts the raw (normalised) pixels from the
patch tokens; the L1 loss on the masked patches (Eq. 3) is in ``models.losses.tgmim``.

A CNN stand-in has trainable BatchNorms: the masked pass runs inside
``frozen_batchnorm_stats`` so that half-masked images never enter the running statistics
that inference uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
MCA_QUERIES = ("global+patches", "patches")


@contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Inside the block the BatchNorms of ``module`` that are training normalise with their
    running statistics and leave them untouched (gradients still reach their affine
    weights); their training mode comes back afterwards."""
    norms = [m for m in module.modules() if isinstance(m, BATCH_NORMS) and m.training]
    for norm in norms:
        norm.eval()
    try:
        yield
    finally:
        for norm in norms:
            norm.train()


def random_patch_mask(batch: int, grid: tuple[int, int], ratio: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Algorithm 1, step 3 (random masking): (B, h, w) bool, True on ``round(ratio * h * w)``
    patches chosen per image."""
    h, w = grid
    count = int(round(ratio * h * w))
    order = torch.rand(batch, h * w, generator=generator).argsort(dim=1)  # (B, h*w)
    mask = torch.zeros(batch, h * w, dtype=torch.bool)
    mask.scatter_(1, order[:, :count], True)
    return mask.view(batch, h, w)


def apply_patch_mask(images: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """Masked patches set to 0 (the dataset mean after normalisation). images (B, 3, H, W)."""
    from models.losses.tgmim import patch_mask_to_pixels

    keep = 1.0 - patch_mask_to_pixels(mask.to(images.device), patch)  # (B, 1, H, W)
    return images * keep


class TextGuidedDecoder(nn.Module):
    """MCA (Eq. 1-2) and the pixel head: [f^v;] image tokens (B, N, C) + word tokens (B, L, D) ->
    pixels. ``queries``: "global+patches" (the paper: f^v, width D, is a query too) or
    "patches" (the earlier variant here)."""

    def __init__(self, image_channels: int, text_dim: int, dim: int, heads: int, layers: int,
                 grid: tuple[int, int], patch: int, queries: str = "global+patches") -> None:
        super().__init__()
        if queries not in MCA_QUERIES:
            raise ValueError(f"unknown MCA queries {queries!r}; known: {MCA_QUERIES}")
        self.grid, self.patch = grid, patch
        self.image_proj = nn.Linear(image_channels, dim)
        if queries == "global+patches":
            self.global_proj = nn.Linear(text_dim, dim)  # f^v lives in the joint space (D)
        self.text_proj = nn.Linear(text_dim, dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, batch_first=True,
                                           norm_first=True, activation="gelu", dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Conv2d(dim, 3 * patch * patch, kernel_size=1),
                                  nn.PixelShuffle(patch))

    def forward(self, fmap: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor,
                global_feature: torch.Tensor | None = None) -> torch.Tensor:
        """fmap (B, C, h, w) and global_feature f^v (B, D) of the masked image, words (B, L, D),
        word_mask (B, L) True = real token -> predicted pixels (B, 3, h*patch, w*patch)."""
        b, _, h, w = fmap.shape
        q = self.image_proj(fmap.flatten(2).transpose(1, 2))  # (B, h*w, dim)
        if hasattr(self, "global_proj"):
            if global_feature is None:
                raise ValueError("MCA queries 'global+patches' need the global feature f^v")
            q = torch.cat([self.global_proj(global_feature)[:, None], q], dim=1)  # (B, 1+h*w, dim)
        kv = self.text_proj(words)  # (B, L, dim)
        attended, _ = self.cross_attn(q, kv, kv, key_padding_mask=~word_mask, need_weights=False)
        x = self.encoder(self.norm(q + attended))[:, -h * w:]  # (B, h*w, dim) patch tokens
        x = x.transpose(1, 2).reshape(b, -1, h, w)  # (B, dim, h, w)
        return self.head(x)  # (B, 3, h*patch, w*patch)
