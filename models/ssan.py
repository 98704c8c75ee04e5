"""SSAN: Semantically Self-Aligned Network for text-to-image part-aware person re-id
(Ding et al., 2021).

Image: a CNN feature map (ResNet-50 in the paper; an ImageNet CNN stand-in as a config
choice). Text: a BiLSTM over word embeddings (vocabulary from the training captions), word
features the mean of both directions. Three branches, their projections shared by the two
modalities:

- global: global max pooling of the map / row-wise max pooling of the word matrix, then one
  shared 1x1 conv (on a pooled vector: a linear layer);
- local: K horizontal stripes max-pooled (image) and, for text, the Word Attention Module's
  sigmoid word-part weights followed by max pooling; then one 1x1 conv per part, shared;
- relation: the MV-NLN part-relation module over the K local features, shared.

Similarity at inference ``S_g + S_l + S_n``: both sides export
``[l2n(global), l2n(concat local), l2n(concat relation)]``; the text side never sees an image.
Training: Compound Ranking loss on each of the three similarities plus ID loss. The ID
classifiers are training-only and not exported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones.image import build_image_backbone
from models.base import DualEncoderModel, seeded_init
from models.config import BaseModelConfig, ImageBackboneConfig
from models.encoder import Part
from models.factory import register_family
from models.family_tools import NestedConfigMixin, OptionalWeightsMixin
from models.losses.compound_ranking import compound_ranking_loss
from models.losses.identity import IdentityClassifier
from models.text_lstm import BiLSTMText, WordTokenizer, build_vocabulary


@dataclass
class SSANLossConfig:
    """Compound Ranking (per branch) and ID loss weights; 0 switches a term off."""

    ranking: float = 1.0  # weight of each branch's compound ranking loss
    margin: float = 0.2  # alpha of the strong term
    beta: float = 0.5  # weight of the weak (same identity, other image) term
    adaptive_margin: bool = True
    id: float = 1.0
    label_smoothing: float = 0.0


@dataclass
class SSANConfig(NestedConfigMixin, BaseModelConfig):
    """SSAN. ``vocab``: the word list (filled from ``vocab_from`` = {dataset, root, split,
    min_count} when empty, then stored in checkpoints). ``lstm_hidden`` must equal the image
    map's channels: the 1x1 convs are shared by both modalities."""

    image_backbone: ImageBackboneConfig = field(default_factory=ImageBackboneConfig)
    num_parts: int = 6  # K
    word_dim: int = 300
    lstm_hidden: int = 512
    max_words: int = 64
    vocab: list[str] = field(default_factory=list)
    vocab_from: dict[str, Any] = field(default_factory=dict)
    relation: bool = True  # MV-NLN branch
    relation_views: int = 4
    num_classes: int = 0
    loss: SSANLossConfig = field(default_factory=SSANLossConfig)
    seed: int = 0


def vocabulary_from(source: dict[str, Any]) -> list[str]:
    """The training captions' words: ``source`` = {dataset, root, split, min_count}."""
    from models.data.datasets import read_dataset, select_split

    records = select_split(read_dataset(source.get("dataset", "cuhk-pedes"),
                                        Path(source["root"])),
                           source.get("split", "trainval-dev"))
    captions = (c for r in records for c in r.captions)
    return build_vocabulary(captions, int(source.get("min_count", 1)))


class PartwiseLinear(nn.Module):
    """K independent 1x1 convs, one per part: (B, K, C) -> (B, K, D)."""

    def __init__(self, parts: int, channels: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(parts, channels, dim) * channels ** -0.5)
        self.bias = nn.Parameter(torch.zeros(parts, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bkc,kcd->bkd", x, self.weight) + self.bias  # (B, K, D)


class WordAttention(nn.Module):
    """WAM: ``a_ik = sigmoid(w_k^T e_i + b_k)`` says how much word i describes part k; the
    text part feature is ``t_k = max_i a_ik e_i`` over real words."""

    def __init__(self, channels: int, parts: int) -> None:
        super().__init__()
        self.score = nn.Linear(channels, parts)

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """words (B, L, H), mask (B, L) -> (B, K, H)."""
        weights = torch.sigmoid(self.score(words)).transpose(1, 2)  # (B, K, L)
        weighted = weights.unsqueeze(-1) * words.unsqueeze(1)  # (B, K, L, H)
        weighted = weighted.masked_fill(~mask[:, None, :, None], float("-inf"))
        return weighted.amax(dim=2)  # (B, K, H)


class PartRelation(nn.Module):
    """MV-NLN as implemented here: a non-local block over the K part features, each part
    attending to all parts in ``views`` subspaces (attention heads), residual added:
    ``n_k = p_k + W_o concat_v sum_j softmax_j(q_kv . k_jv) v_jv``."""

    def __init__(self, dim: int, views: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, views, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, parts: torch.Tensor) -> torch.Tensor:
        """parts (B, K, D) -> relation features (B, K, D)."""
        x = self.norm(parts)
        related, _ = self.attn(x, x, x, need_weights=False)  # (B, K, D)
        return parts + related


class BranchNorm(nn.Module):
    """One modality's batch norms after the shared projections: global (B, D) and local
    (B, K, D), statistics per modality. Max-pooled maps are all-positive with a large common
    component; without centring, every feature points the same way and hardest-negative
    ranking stalls at its collapse value (seen in a first CPU run, loss fixed at 2 alpha)."""

    def __init__(self, dim: int, parts: int) -> None:
        super().__init__()
        self.global_bn = nn.BatchNorm1d(dim)
        self.local_bn = nn.BatchNorm1d(parts * dim)

    def forward(self, pooled: torch.Tensor, parts: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.global_bn(pooled), self.local_bn(parts.flatten(1)).view_as(parts)


@register_family("ssan", SSANConfig)
class SSAN(OptionalWeightsMixin, DualEncoderModel):
    training_only_prefixes = ("id_global.", "id_local.")

    @seeded_init
    def __init__(self, config: SSANConfig) -> None:
        super().__init__()
        self.config = config
        if not config.vocab:
            if not config.vocab_from:
                raise ValueError("SSAN needs a vocabulary: set `vocab` or `vocab_from`")
            config.vocab = vocabulary_from(config.vocab_from)
        dim, k = config.embed_dim, config.num_parts
        self.visual = build_image_backbone(config.image_backbone, dim, config.image_size)
        _drop_attention_pool(self.visual)
        channels = self.visual.channels
        if channels != config.lstm_hidden:
            raise ValueError(f"lstm_hidden {config.lstm_hidden} must equal the image map's "
                             f"{channels} channels (the 1x1 convs are shared)")
        self._tokenizer = WordTokenizer(config.vocab, config.max_words)
        self.textual = BiLSTMText(self._tokenizer.size, config.word_dim, config.lstm_hidden)
        self.word_attention = WordAttention(channels, k)
        self.global_proj = nn.Linear(channels, dim)  # shared 1x1 conv, global branch
        self.part_proj = PartwiseLinear(k, channels, dim)  # shared 1x1 convs, one per part
        self.image_norm, self.text_norm = BranchNorm(dim, k), BranchNorm(dim, k)
        if config.relation:
            self.relation = PartRelation(dim, config.relation_views)
        if config.num_classes:
            self.id_global = IdentityClassifier(dim, config.num_classes,
                                                config.loss.label_smoothing)
            self.id_local = IdentityClassifier(k * dim, config.num_classes,
                                               config.loss.label_smoothing)

    # ---- inference path ----
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self._tokenizer(texts)

    def tokenizer_spec(self) -> dict[str, Any]:
        return {"kind": "word-vocabulary", "normalize": "lower-alnum", "pad": 0, "unk": 1,
                "max_length": self.config.max_words, "vocab": list(self.config.vocab)}

    def encode_image_branches(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> global (B, D), local (B, K, D), relation (B, K, D) when configured."""
        fmap, _ = self.visual(images)  # (B, C, h, w)
        pooled = fmap.amax(dim=(2, 3))  # (B, C) global max pooling
        stripes = F.adaptive_max_pool2d(fmap, (self.config.num_parts, 1))  # (B, C, K, 1)
        parts = stripes.squeeze(-1).transpose(1, 2)  # (B, K, C)
        return self._branches(pooled, parts, self.image_norm)

    def encode_text_branches(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        words, mask = self.textual(tokens)  # (B, L, H), (B, L)
        pooled = words.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)  # (B, H)
        return self._branches(pooled, self.word_attention(words, mask), self.text_norm)

    def _branches(self, pooled: torch.Tensor, parts: torch.Tensor,
                  norm: BranchNorm) -> dict[str, torch.Tensor]:
        """pooled (B, C), parts (B, K, C) -> the shared projections, then the modality's norm."""
        glob, local = norm(self.global_proj(pooled), self.part_proj(parts))  # (B, D), (B, K, D)
        out = {"global": glob, "local": local}
        if self.config.relation:
            out["relation"] = self.relation(out["local"])  # (B, K, D)
        return out

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self._export(self.encode_image_branches(images))

    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._export(self.encode_text_branches(tokens))

    def _export(self, branches: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> (B, D + K*D [+ K*D]): each branch unit-norm, so <a, b> = S_g + S_l + S_n."""
        return torch.cat([F.normalize(v.flatten(1), dim=-1) for v in branches.values()], dim=1)

    def parts(self) -> tuple[Part, ...]:
        d, k = self.config.embed_dim, self.config.num_parts
        out = [Part("global", 0, d, "global")]
        out += [Part(f"part_{i + 1}", d * (1 + i), d * (2 + i), "local") for i in range(k)]
        if self.config.relation:
            out += [Part(f"relation_{i + 1}", d * (1 + k + i), d * (2 + k + i), "relation")
                    for i in range(k)]
        return tuple(out)

    # ---- training ----
    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Compound Ranking on S_g, S_l, S_n (``cr_<branch>``) plus ID loss on the global and
        concatenated local features of both modalities (classifiers shared)."""
        cfg, pids = self.config.loss, batch["pids"]
        image = self.encode_image_branches(batch["images"])
        text = self.encode_text_branches(batch["tokens"])
        terms: dict[str, torch.Tensor] = {}
        for name in image:
            sim = (F.normalize(image[name].flatten(1), dim=-1)
                   @ F.normalize(text[name].flatten(1), dim=-1).t())  # (B, B)
            if cfg.ranking:
                terms[f"cr_{name}"] = cfg.ranking * compound_ranking_loss(
                    sim, pids, cfg.margin, cfg.beta, cfg.adaptive_margin)
        if cfg.id and self.config.num_classes:
            for name, head in (("global", self.id_global), ("local", self.id_local)):
                terms[f"id_{name}"] = cfg.id * (head(image[name].flatten(1), pids)
                                                + head(text[name].flatten(1), pids))
        return terms

    # ---- checkpoints ----
    def backbone_towers(self) -> list[tuple[str, nn.Module, str]]:
        return [("visual.", self.visual, "image_backbone")]


def _drop_attention_pool(backbone: nn.Module) -> None:
    """SSAN pools the map itself: a backbone-owned attention pool would be an untrained,
    exported dead weight, so it becomes an identity where the backbone allows it."""
    if isinstance(getattr(backbone, "global_pool", None), nn.Module) and not isinstance(
            getattr(type(backbone), "global_pool", None), property):
        backbone.global_pool = nn.Identity()
