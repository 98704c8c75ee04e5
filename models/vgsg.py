"""VGSG: Vision-Guided Semantic-Group Network for text-based person search (He et al., 2023).

Image (Sec. III-B): a backbone's feature map, a global feature from attention pooling, and K
horizontal stripes each pooled by its own attention pool. Text (Sec. III-C): the backbone's
global feature and K semantic-group features from SGTL. Training only (Sec. III-D): VGKT's
vision-guided text features and the knowledge-transfer losses, plus ID classifiers.

Similarity at inference: cos(global) + cos(concatenated local). Both sides export
``[l2n(global), l2n(concat local)]``, so the inner product of two exported vectors is that sum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones.image import build_image_backbone
from models.backbones.pooling import make_attention_pool, stripe_pool_from
from models.backbones.text import build_text_backbone
from models.base import DualEncoderModel, seeded_init
from models.config import VGSGConfig
from models.encoder import Part
from models.factory import register_family
from models.losses.alignment import alignment_loss
from models.losses.contrastive import contrastive_loss, infonce_loss
from models.losses.identity import IdentityClassifier
from models.losses.knowledge_transfer import class_probability_transfer, similarity_transfer
from models.losses.sdm import sdm_loss
from models.sgtl import SGTL, ConvLocal, masked_softmax_attention

TRAINING_ONLY_PREFIXES = ("id_global.", "id_local.", "vgkt.", "logit_scale")
ITC_FORMS = ("vitaa-align", "infonce", "mp-margin", "sdm")


class VisionGuidedText(nn.Module):
    """Eq. 7-8: each image pixel attends to the words of its paired caption; the attended word
    features, averaged over a stripe's pixels, are that stripe's vision-guided text feature."""

    def __init__(self, channels: int, dim: int, stripes: int) -> None:
        super().__init__()
        self.stripes = stripes
        self.pixel_proj = nn.Linear(channels, dim)

    def forward(self, fmap: torch.Tensor, words: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """fmap (B, C, h, w), words (B, L, D), mask (B, L) -> (B, K, D)."""
        b, _, h, w = fmap.shape
        pixels = self.pixel_proj(fmap.flatten(2).transpose(1, 2))  # (B, h*w, D)
        attn = masked_softmax_attention(pixels, words, mask)  # (B, h*w, L)  Eq. 7
        guided = attn @ words  # (B, h*w, D)  Eq. 8
        guided = guided.view(b, self.stripes, (h // self.stripes) * w, -1)  # (B, K, h*w/K, D)
        return guided.mean(dim=2)  # (B, K, D)


def _identity_linear(dim: int) -> nn.Linear:
    layer = nn.Linear(dim, dim)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(dim))
        layer.bias.zero_()
    return layer


@register_family("vgsg", VGSGConfig)
class VGSG(DualEncoderModel):
    @seeded_init
    def __init__(self, config: VGSGConfig) -> None:
        super().__init__()
        self.config = config
        dim, k = config.embed_dim, config.stripes
        self.visual = build_image_backbone(config.image_backbone, dim, config.image_size)
        self.textual = build_text_backbone(config.text_backbone, dim)
        self.has_local = config.text_local != "none"
        if self.has_local:
            grid = self.visual.grid
            if grid[0] % k:
                raise ValueError(f"feature-map height {grid[0]} is not divisible by {k} stripes")
            source = self.visual.global_pool or make_attention_pool(
                grid, self.visual.channels, config.image_backbone.pool_heads, dim)
            self.stripe_pools = nn.ModuleList(stripe_pool_from(source, grid, i, k)
                                              for i in range(k))
            self.text_local = (SGTL(dim, k, config.sgtl_layers, config.sgtl_heads)
                               if config.text_local == "sgtl" else ConvLocal(dim, k))
        if config.shared_layer:
            self.shared = _identity_linear(dim)
        if config.num_classes:
            smoothing = config.loss.label_smoothing
            self.id_global = IdentityClassifier(dim, config.num_classes, smoothing)
            if self.has_local:
                self.id_local = IdentityClassifier(k * dim, config.num_classes, smoothing)
        if config.vgkt and self.has_local:
            self.vgkt = VisionGuidedText(self.visual.channels, dim, k)
        if config.loss.itc_form not in ITC_FORMS:
            raise ValueError(f"loss.itc_form {config.loss.itc_form!r}; known: {ITC_FORMS}")
        if config.loss.itc_form == "sdm":  # training only: the logit scale of SDM
            self.logit_scale = nn.Parameter(torch.tensor(math.log(config.loss.sdm_scale)))

    # ---- inference path ----
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.textual.tokenize(texts)

    def tokenizer_spec(self) -> dict[str, Any]:
        return self.textual.tokenizer_spec()

    def encode_image_parts(self, images: torch.Tensor, from_trunk: bool = False
                           ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """-> global (B, D), stripes (B, K, D) or None, feature map (B, C, h, w).

        ``from_trunk``: ``images`` are ``visual.trunk`` outputs (cached-trunk training)."""
        fmap, pooled = self.visual.head(images) if from_trunk else self.visual(images)
        if not self.has_local:
            return self._shared(pooled), None, fmap
        stripes = fmap.chunk(self.config.stripes, dim=2)  # K x (B, C, h/K, w)
        pools = zip(self.stripe_pools, stripes, strict=True)
        local = torch.stack([pool(s) for pool, s in pools], dim=1)  # (B, K, D)
        return self._shared(pooled), self._shared(local), fmap

    def encode_text_parts(self, tokens: dict[str, torch.Tensor], from_trunk: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor,
                                     torch.Tensor]:
        """-> global (B, D), groups (B, K, D) or None, words (B, L, D), mask (B, L).

        ``from_trunk``: ``tokens`` are ``textual.trunk`` outputs (hidden states + mask)."""
        words, pooled, mask = self.textual.head(tokens) if from_trunk else self.textual(tokens)
        local = self.text_local(words, pooled, mask) if self.has_local else None
        return self._shared(pooled), self._shared(local), words, mask

    def _shared(self, features: torch.Tensor | None) -> torch.Tensor | None:
        """The cross-modal shared layer on (..., D) features, where configured."""
        if features is None or not self.config.shared_layer:
            return features
        return self.shared(features)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        pooled, local, _ = self.encode_image_parts(images)
        return self._export(pooled, local)

    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled, local, _, _ = self.encode_text_parts(tokens)
        return self._export(pooled, local)

    def _export(self, pooled: torch.Tensor, local: torch.Tensor | None) -> torch.Tensor:
        """[l2n(global) (B, D), l2n(concat local) (B, K*D)] -> (B, D + K*D)."""
        out = F.normalize(pooled, dim=-1)
        if local is None:
            return out
        return torch.cat([out, F.normalize(local.flatten(1), dim=-1)], dim=1)

    def parts(self) -> tuple[Part, ...]:
        d = self.config.embed_dim
        parts = [Part("global", 0, d, "global")]
        if self.has_local:
            parts += [Part(f"stripe_{i + 1}", d * (i + 1), d * (i + 2), "local")
                      for i in range(self.config.stripes)]
        return tuple(parts)

    # ---- training ----
    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Eq. 13: the weighted terms, each named; zero-weight terms are not computed.

        With ``batch["from_trunk"]`` true, images and tokens are cached trunk outputs."""
        cfg, pids = self.config.loss, batch["pids"]
        from_trunk = bool(batch.get("from_trunk"))
        img_g, img_l, fmap = self.encode_image_parts(batch["images"], from_trunk)
        txt_g, txt_l, words, mask = self.encode_text_parts(batch["tokens"], from_trunk)
        terms: dict[str, torch.Tensor] = {}
        if cfg.itc_global:
            terms["itc_global"] = cfg.itc_global * self.itc(img_g, txt_g, pids)
        if cfg.id and hasattr(self, "id_global"):
            terms["id_global"] = cfg.id * (self.id_global(img_g, pids)
                                           + self.id_global(txt_g, pids))
        if img_l is not None and txt_l is not None:
            terms.update(self._local_losses(img_l.flatten(1), txt_l.flatten(1), fmap, words,
                                            mask, pids))
        return terms

    def itc(self, image: torch.Tensor, text: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """The cross-modal term in Eq. 2's place, in the configured form (``loss.itc_form``;
        "vitaa-align" is Eq. 2 as the paper gives it)."""
        cfg = self.config.loss
        if cfg.itc_form == "vitaa-align":
            return alignment_loss(image, text, pids, cfg.align_tau_pos, cfg.align_tau_neg,
                                  cfg.align_alpha, cfg.align_beta)
        if cfg.itc_form == "infonce":
            return infonce_loss(image, text, cfg.tau)
        if cfg.itc_form == "sdm":
            scale = self.logit_scale.exp().clamp(max=cfg.sdm_scale_max)
            return sdm_loss(image, text, pids, scale)
        return contrastive_loss(image, text, pids, cfg.tau, cfg.margin)

    def _local_losses(self, img_l: torch.Tensor, txt_l: torch.Tensor, fmap: torch.Tensor,
                      words: torch.Tensor, mask: torch.Tensor,
                      pids: torch.Tensor) -> dict[str, torch.Tensor]:
        """img_l, txt_l: (B, K*D) concatenated stripes / semantic groups."""
        cfg, terms = self.config.loss, {}
        if cfg.itc_local:
            terms["itc_local"] = cfg.itc_local * self.itc(img_l, txt_l, pids)
        has_id = cfg.id and hasattr(self, "id_local")
        if has_id:
            terms["id_local"] = cfg.id * (self.id_local(img_l, pids) + self.id_local(txt_l, pids))
        if not hasattr(self, "vgkt"):
            return terms
        vg = self._shared(self.vgkt(fmap, words, mask)).flatten(1)  # (B, K*D)
        if cfg.itc_vg:
            terms["itc_vg"] = cfg.itc_vg * self.itc(img_l, vg, pids)
        if cfg.similarity_transfer:
            terms["similarity_transfer"] = cfg.similarity_transfer * similarity_transfer(
                img_l, vg, txt_l, cfg.st_tau)
        if has_id:
            terms["id_vg"] = cfg.id * self.id_local(vg, pids)
            if cfg.class_transfer:
                terms["class_transfer"] = cfg.class_transfer * class_probability_transfer(
                    self.id_local.logits(vg), self.id_local.logits(txt_l), cfg.ct_tau)
        return terms

    # ---- cached-trunk training ----
    def image_trunk(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the frozen image stages' output, input of ``visual.head``."""
        return self.visual.trunk(images)

    def text_trunk(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tokens -> the frozen text stages' output, input of ``textual.head``."""
        return self.textual.trunk(tokens)

    def trunk_spec(self) -> dict[str, Any]:
        """What the trunk outputs depend on (the cache key)."""
        data = self.config.to_dict()
        image = {k: v for k, v in data["image_backbone"].items()
                 if k not in ("pool_width", "pool_heads")}  # heads after the trunk
        text = {k: v for k, v in data["text_backbone"].items()
                if k != "drop_path"}  # frozen trunk layers never drop: the key stays as it was
        return {"image_backbone": image, "text_backbone": text,
                "image_size": data["image_size"], "mean": data["mean"], "std": data["std"],
                "tokenizer": self.tokenizer_spec()}

    # ---- checkpoints ----
    def is_optional_weight(self, key: str) -> bool:
        """Training-only heads, and frozen backbone weights that an installed package holds."""
        return key.startswith(TRAINING_ONLY_PREFIXES) or key in self._package_frozen_keys()

    def _package_frozen_keys(self) -> set[str]:
        keys: set[str] = set()
        for prefix, backbone, cfg in (("visual.", self.visual, self.config.image_backbone),
                                      ("textual.", self.textual, self.config.text_backbone)):
            if cfg.weights.startswith("package:"):
                keys.update(prefix + k for k in backbone.frozen_state_keys())
        return keys

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not self.is_optional_weight(k)}

    def checkpoint_config(self) -> dict[str, Any]:
        """The config to store: weights read from a local file are in the checkpoint itself,
        so their path is dropped; package references stay (the package rebuilds them)."""
        data = self.config.to_dict()
        for key in ("image_backbone", "text_backbone"):
            if Path(data[key]["weights"]).is_file():
                data[key]["weights"] = ""
        return data
