"""VFE-TPS: visual feature enhancement for text-based person search.

Inference (Sec. 3.1): a CLIP-style image encoder whose global feature is the class token (for
a CNN stand-in: its attention-pooled token) and a text encoder whose global feature is the
[EOS] token (MiniLM stand-in: its mean-pooled token); similarity = cosine of the two.
Training adds CMPM (Eq. 6-9) and two training-only visual enhancements: TG-MIM (Eq. 1-3, a
decoder that reconstructs masked patches from image tokens guided by the caption) and
IS-GVFC (Eq. 4-5, identity-supervised calibration of global image features). Neither is in
the exported encoder: the checkpoint drops ``tgmim.*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones.image import build_image_backbone
from models.backbones.text import build_text_backbone
from models.base import DualEncoderModel, seeded_init
from models.config import BaseModelConfig, ImageBackboneConfig, TextBackboneConfig
from models.factory import register_family
from models.family_tools import NestedConfigMixin, OptionalWeightsMixin
from models.losses.cmpm import cmpm_loss
from models.losses.gvfc import is_gvfc_loss
from models.losses.tgmim import masked_l1_loss
from models.tgmim import TextGuidedDecoder, apply_patch_mask, random_patch_mask


@dataclass
class VFETPSLossConfig:
    """Weights of the three objectives (0 switches a term off) and their settings."""

    cmpm: float = 1.0  # Eq. 6-9
    cmpm_tau: float = 0.0  # 0: the paper's projection logits x^T zbar; > 0: cosine / tau
    tgmim: float = 1.0  # Eq. 3
    mask_ratio: float = 0.5  # Eq. 1: fraction of patches masked
    gvfc: float = 1.0  # Eq. 5
    gvfc_pairs: int = 0  # C: candidates per anchor (0: every other image of the batch)
    gvfc_tau: float = 0.0  # as cmpm_tau, for image-image logits


@dataclass
class VFETPSConfig(NestedConfigMixin, BaseModelConfig):
    """VFE-TPS. ``tgmim``: build the TG-MIM decoder (dim, heads, layers as in Sec. 3.2)."""

    image_backbone: ImageBackboneConfig = field(default_factory=ImageBackboneConfig)
    text_backbone: TextBackboneConfig = field(default_factory=TextBackboneConfig)
    tgmim: bool = True
    tgmim_dim: int = 256
    tgmim_heads: int = 8
    tgmim_layers: int = 4
    loss: VFETPSLossConfig = field(default_factory=VFETPSLossConfig)
    seed: int = 0


@register_family("vfe-tps", VFETPSConfig)
class VFETPS(OptionalWeightsMixin, DualEncoderModel):
    training_only_prefixes = ("tgmim.",)

    @seeded_init
    def __init__(self, config: VFETPSConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.visual = build_image_backbone(config.image_backbone, dim, config.image_size)
        self.textual = build_text_backbone(config.text_backbone, dim)
        grid = self.visual.grid
        self.patch = config.image_size[0] // grid[0]  # pixels per feature-map cell
        if (grid[0] * self.patch, grid[1] * self.patch) != tuple(config.image_size):
            raise ValueError(f"image size {config.image_size} is not a multiple of the "
                             f"backbone's {self.patch}-pixel grid {grid}")
        if config.tgmim:
            self.tgmim = TextGuidedDecoder(self.visual.channels, dim, config.tgmim_dim,
                                           config.tgmim_heads, config.tgmim_layers, grid,
                                           self.patch)

    # ---- inference path: global features only ----
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.textual.tokenize(texts)

    def tokenizer_spec(self) -> dict[str, Any]:
        return self.textual.tokenizer_spec()

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        _, pooled = self.visual(images)  # (B, D) class token
        return F.normalize(pooled, dim=-1)

    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        _, pooled, _ = self.textual(tokens)  # (B, D) [EOS] token
        return F.normalize(pooled, dim=-1)

    # ---- training ----
    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``L = w_cmpm L_cmpm + w_mim L_mim + w_gvfc L_gvfc``, each term named."""
        cfg, pids, images = self.config.loss, batch["pids"], batch["images"]
        _, img_g = self.visual(images)  # (B, D)
        words, txt_g, mask = self.textual(batch["tokens"])  # (B, L, D), (B, D), (B, L)
        terms: dict[str, torch.Tensor] = {}
        if cfg.cmpm:
            terms["cmpm"] = cfg.cmpm * cmpm_loss(img_g, txt_g, pids, cfg.cmpm_tau)
        if cfg.gvfc:
            terms["is_gvfc"] = cfg.gvfc * is_gvfc_loss(img_g, pids, cfg.gvfc_pairs, cfg.gvfc_tau)
        if cfg.tgmim and hasattr(self, "tgmim"):
            terms["tgmim"] = cfg.tgmim * self.tgmim_loss(images, words, mask)
        return terms

    def tgmim_loss(self, images: torch.Tensor, words: torch.Tensor, mask: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Eq. 1-3: mask patches, encode the masked image, decode pixels guided by the words,
        L1 on the masked patches against the unmasked (augmented, normalised) input."""
        patches = random_patch_mask(images.shape[0], self.visual.grid,
                                    self.config.loss.mask_ratio, generator)  # (B, h, w)
        fmap, _ = self.visual(apply_patch_mask(images, patches, self.patch))  # (B, C, h, w)
        pixels = self.tgmim(fmap, words, mask)  # (B, 3, H, W)
        return masked_l1_loss(pixels, images.detach(), patches.to(images.device), self.patch)

    # ---- checkpoints ----
    def backbone_towers(self) -> list[tuple[str, nn.Module, str]]:
        return [("visual.", self.visual, "image_backbone"),
                ("textual.", self.textual, "text_backbone")]
