"""VFE-TPS: visual feature enhancement for text-based person search.

Inference (Sec. 3.1): a CLIP-style image encoder whose global feature is the class token (for
a CNN stand-in: its attention-pooled token) and a text encoder whose global feature is the
[EOS] token (MiniLM stand-in: its mean-pooled token); similarity = cosine of the two.
Training adds CMPM (Sec. 3.3, Eq. 6-9, cosine / tau logits) and two training-only visual
enhancements: TG-MIM (Sec. 3.2.1, Eq. 1-3, a decoder that reconstructs masked patches from
f^v and the image tokens guided by the caption) and IS-GVFC (Sec. 3.2.2, Eq. 4-5,
identity-supervised calibration of global image features over C = 20 sampled pairs). Neither
is in the exported encoder: the checkpoint drops ``tgmim.*``. Checkpoint configs stored
before issue 16 are read in the form they were
trained in (``upgrade_pre16``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
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
from models.losses.cmpm import LOGIT_FORMS, cmpm_loss
from models.losses.gvfc import is_gvfc_loss
from models.losses.tgmim import masked_l1_loss
from models.tgmim import (
    MCA_QUERIES,
    TextGuidedDecoder,
    apply_patch_mask,
    frozen_batchnorm_stats,
    random_patch_mask,
)

log = logging.getLogger(__name__)

MASKED_PASS_BN = ("frozen", "update")
# the loss keys every checkpoint stored before issue 16 has, exactly
PRE16_LOSS_KEYS = {"cmpm", "cmpm_tau", "tgmim", "mask_ratio", "gvfc", "gvfc_pairs", "gvfc_tau"}


@dataclass
class VFETPSLossConfig:
    """Weights of the three objectives (0 switches a term off) and their settings; the
    defaults are the paper's. ``*_logits``: "cosine" (cos / tau, the paper) or "projection"
    (CMPM's original x^T zbar, the earlier default here)."""

    cmpm: float = 1.0  # Eq. 6-9
    cmpm_logits: str = "cosine"
    cmpm_tau: float = 0.02
    tgmim: float = 1.0  # Eq. 3
    mask_ratio: float = 0.5  # fraction of patches masked (Algorithm 1; in no equation)
    gvfc: float = 1.0  # Eq. 4-5
    gvfc_pairs: int = 20  # C: images sampled per anchor (0: every other image of the batch)
    gvfc_logits: str = "cosine"
    gvfc_tau: float = 0.02
    gvfc_average: str = "batch"  # batch: 1/B over anchors (Eq. 4) | anchors: those with a positive


@dataclass
class VFETPSConfig(NestedConfigMixin, BaseModelConfig):
    """VFE-TPS. ``tgmim``: build the TG-MIM decoder (dim, heads, layers as in Sec. 3.2.1);
    ``mca_queries``: "global+patches" (the paper: f^v and the patch tokens) or "patches";
    ``masked_pass_bn``: "frozen" (TG-MIM's masked pass leaves BatchNorm running statistics
    alone) or "update" (the earlier behaviour: masked images enter them)."""

    image_backbone: ImageBackboneConfig = field(default_factory=ImageBackboneConfig)
    text_backbone: TextBackboneConfig = field(default_factory=TextBackboneConfig)
    tgmim: bool = True
    tgmim_dim: int = 256
    tgmim_heads: int = 8
    tgmim_layers: int = 4
    mca_queries: str = "global+patches"
    masked_pass_bn: str = "frozen"
    loss: VFETPSLossConfig = field(default_factory=VFETPSLossConfig)
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VFETPSConfig:
        return super().from_dict(upgrade_pre16(data))  # type: ignore[misc]

    def validate(self) -> None:
        loss = self.loss
        choices = {"mca_queries": (self.mca_queries, MCA_QUERIES),
                   "masked_pass_bn": (self.masked_pass_bn, MASKED_PASS_BN),
                   "loss.cmpm_logits": (loss.cmpm_logits, LOGIT_FORMS),
                   "loss.gvfc_logits": (loss.gvfc_logits, LOGIT_FORMS),
                   "loss.gvfc_average": (loss.gvfc_average, ("batch", "anchors"))}
        for key, (value, known) in choices.items():
            if value not in known:
                raise ValueError(f"VFE-TPS {key} {value!r}; known: {known}")
        for logits, tau, name in ((loss.cmpm_logits, loss.cmpm_tau, "cmpm"),
                                  (loss.gvfc_logits, loss.gvfc_tau, "gvfc")):
            if logits == "cosine" and tau <= 0:
                raise ValueError(f"VFE-TPS loss.{name}_logits cosine needs {name}_tau > 0")


def upgrade_pre16(data: dict[str, Any]) -> dict[str, Any]:
    """A config stored before issue 16 (its loss has exactly the old keys) is read in the
    form it was trained in: ``tau = 0`` meant projection logits, IS-GVFC averaged over
    anchors, MCA queries were the patch tokens only, the masked pass updated BatchNorm
    statistics. A hand-written config is read as it stands (``cmpm_tau: 0`` then fails)."""
    loss = data.get("loss") or {}
    if not isinstance(loss, dict) or set(loss) != PRE16_LOSS_KEYS:
        return data
    log.warning("VFE-TPS config %r predates issue 16: read in its pre-issue-16 form",
                data.get("name"))
    loss = dict(loss)
    for name in ("cmpm", "gvfc"):
        tau = float(loss.get(f"{name}_tau", 0.0))
        loss[f"{name}_logits"] = "cosine" if tau > 0 else "projection"
        loss[f"{name}_tau"] = tau if tau > 0 else 0.02
    loss.setdefault("gvfc_pairs", 0)
    loss.setdefault("gvfc_average", "anchors")
    data = {**data, "loss": loss}
    for key, value in (("mca_queries", "patches"), ("masked_pass_bn", "update")):
        data.setdefault(key, value)
    return data


@register_family("vfe-tps", VFETPSConfig)
class VFETPS(OptionalWeightsMixin, DualEncoderModel):
    training_only_prefixes = ("tgmim.",)

    @seeded_init
    def __init__(self, config: VFETPSConfig) -> None:
        super().__init__()
        self.config = config
        config.validate()
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
                                           self.patch, config.mca_queries)

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
            terms["cmpm"] = cfg.cmpm * cmpm_loss(img_g, txt_g, pids, cfg.cmpm_logits,
                                                 cfg.cmpm_tau)
        if cfg.gvfc:
            terms["is_gvfc"] = cfg.gvfc * is_gvfc_loss(img_g, pids, cfg.gvfc_pairs,
                                                       cfg.gvfc_logits, cfg.gvfc_tau,
                                                       cfg.gvfc_average)
        if cfg.tgmim and hasattr(self, "tgmim"):
            terms["tgmim"] = cfg.tgmim * self.tgmim_loss(images, words, mask)
        return terms

    def tgmim_loss(self, images: torch.Tensor, words: torch.Tensor, mask: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Eq. 1-3 (Algorithm 1): mask patches, encode the masked image (BatchNorm statistics
        untouched with ``masked_pass_bn: frozen``), decode pixels from f^v and the patch
        tokens guided by the words, L1 on the masked patches against the unmasked (augmented,
        normalised) input."""
        patches = random_patch_mask(images.shape[0], self.visual.grid,
                                    self.config.loss.mask_ratio, generator)  # (B, h, w)
        masked = apply_patch_mask(images, patches, self.patch)  # (B, 3, H, W)
        frozen = self.config.masked_pass_bn == "frozen"
        with frozen_batchnorm_stats(self.visual) if frozen else nullcontext():
            fmap, pooled = self.visual(masked)  # (B, C, h, w), (B, D) f^v
        pixels = self.tgmim(fmap, words, mask, pooled)  # (B, 3, H, W)
        return masked_l1_loss(pixels, images.detach(), patches.to(images.device), self.patch)

    # ---- checkpoints ----
    def backbone_towers(self) -> list[tuple[str, nn.Module, str]]:
        return [("visual.", self.visual, "image_backbone"),
                ("textual.", self.textual, "text_backbone")]
