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
- relation: MV-NLN (Sec. III-C.2, Eq. 13-16) over the K local features: part-specific
  projections, cosine affinities to the *other* parts, a residual and a part-specific output
  projection W_n^k to N dimensions (``mvnln: paper``; ``shared-mha``: the earlier shared
  multi-head attention).

Similarity at inference ``S_g + S_l + S_n``: both sides export
``[l2n(global), l2n(concat local), l2n(concat relation)]``; the text side never sees an image.
Training: ``L = sum_b w_b (L_cr^b + L_id^b)`` over the branches b = global, local, relation
with ``w = 1, 0.5, 0.5``; the Compound Ranking loss (Sec. IV, Eq. 19: beta 0.1, adaptive
margin Eq. 20-21; Eq. 18 is the plain ranking loss it extends) and ID loss
with one classifier per part (global, each local part, each relation part). The ID
classifiers are training-only and not exported. Configs stored before issue 16 (their loss
has ``adaptive_margin``) are read in the form they were trained in (``upgrade_pre16``).
"""

from __future__ import annotations

import logging
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
from models.losses.compound_ranking import MARGIN_FORMS, compound_ranking_loss
from models.losses.identity import IdentityClassifier, part_identity_loss
from models.text_lstm import BiLSTMText, WordTokenizer, build_vocabulary

log = logging.getLogger(__name__)

MVNLN_FORMS = ("paper", "shared-mha")
ID_FORMS = ("paper", "concat")
BRANCHES = ("global", "local", "relation")



def stripe_max_pool(fmap: torch.Tensor, stripes: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, K, C): max over K horizontal stripes, the bins of
    ``F.adaptive_max_pool2d(fmap, (K, 1))`` (rows floor(i*h/K) to ceil((i+1)*h/K)), written
    with slices so that ONNX export (which has no adaptive max pool) can trace it."""
    h = fmap.shape[2]
    bins = [(i * h // stripes, -(-(i + 1) * h // stripes)) for i in range(stripes)]
    return torch.stack([fmap[:, :, a:b].amax(dim=(2, 3)) for a, b in bins], dim=1)

@dataclass
class SSANLossConfig:
    """Loss weights (0 switches a term off) and settings; the defaults are the paper's.

    ``L = sum_b w_b (ranking L_cr^b + id L_id^b)``, b = global / local / relation, with
    ``w_b`` = ``global_weight`` / ``local_weight`` / ``relation_weight`` (1 / 0.5 / 0.5).
    """

    ranking: float = 1.0  # weight of each branch's compound ranking loss
    id: float = 1.0  # weight of each branch's ID loss
    global_weight: float = 1.0
    local_weight: float = 0.5
    relation_weight: float = 0.5
    margin: float = 0.2  # alpha of the strong term
    beta: float = 0.1  # weight of the weak (same identity, other image) term
    cr_margin: str = "paper"  # weak-term margin: paper (Eq. 20-21) | similarity | fixed
    id_form: str = "paper"  # paper: per part, global/local/relation | concat: global + concat local
    label_smoothing: float = 0.0


@dataclass
class SSANConfig(NestedConfigMixin, BaseModelConfig):
    """SSAN. ``vocab``: the word list (filled from ``vocab_from`` = {dataset, root, split,
    min_count} when empty, then stored in checkpoints). ``lstm_hidden`` must equal the image
    map's channels C: the 1x1 convs are shared by both modalities (C = 2048 for ResNet-50 in
    the paper). ``embed_dim`` is M (1024 in the paper), ``relation_dim`` N (512)."""

    image_backbone: ImageBackboneConfig = field(default_factory=ImageBackboneConfig)
    num_parts: int = 6  # K
    word_dim: int = 300
    lstm_hidden: int = 512
    max_words: int = 64
    vocab: list[str] = field(default_factory=list)
    vocab_from: dict[str, Any] = field(default_factory=dict)
    relation: bool = True  # MV-NLN branch
    mvnln: str = "paper"  # paper (Eq. 13-16) | shared-mha (earlier variant, width M)
    relation_dim: int = 256  # N: MV-NLN's affinity space and output width (paper form)
    relation_views: int = 4  # heads of the shared-mha variant
    branch_norm: bool = False  # per-modality BatchNorm after the shared projections
    num_classes: int = 0
    loss: SSANLossConfig = field(default_factory=SSANLossConfig)
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SSANConfig:
        return super().from_dict(upgrade_pre16(data))  # type: ignore[misc]

    def validate(self) -> None:
        choices = {"mvnln": (self.mvnln, MVNLN_FORMS), "loss.id_form": (self.loss.id_form,
                   ID_FORMS), "loss.cr_margin": (self.loss.cr_margin, MARGIN_FORMS)}
        for key, (value, known) in choices.items():
            if value not in known:
                raise ValueError(f"SSAN {key} {value!r}; known: {known}")
        if self.relation and self.mvnln == "paper" and self.num_parts < 2:
            raise ValueError("MV-NLN relates a part to the other parts: num_parts >= 2")
        if self.relation and self.mvnln == "shared-mha" and self.relation_dim != self.embed_dim:
            raise ValueError("mvnln shared-mha keeps the local width: relation_dim must equal "
                             f"embed_dim ({self.relation_dim} != {self.embed_dim})")


def upgrade_pre16(data: dict[str, Any]) -> dict[str, Any]:
    """A config stored before issue 16 (its loss has the boolean ``adaptive_margin``) is read
    in the form it was trained in: shared-MHA MV-NLN of width M, BranchNorm, similarity
    margin, all branch weights 1, ID loss on global + concatenated local features."""
    loss = data.get("loss") or {}
    if not isinstance(loss, dict) or "adaptive_margin" not in loss:
        return data
    log.warning("SSAN config %r predates issue 16: read in its pre-issue-16 form",
                data.get("name"))
    loss = dict(loss)
    loss.setdefault("cr_margin", "similarity" if loss.pop("adaptive_margin") else "fixed")
    for key, value in (("beta", 0.5), ("local_weight", 1.0), ("relation_weight", 1.0),
                       ("id_form", "concat")):
        loss.setdefault(key, value)
    data = {**data, "loss": loss}
    for key, value in (("mvnln", "shared-mha"), ("branch_norm", True),
                       ("relation_dim", data.get("embed_dim", 512))):
        data.setdefault(key, value)
    return data


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


class MultiViewNonLocal(nn.Module):
    """MV-NLN (Eq. 13-16) over the K part features ``l_k`` (B, K, M), every map part-specific:

    - Eq. 13: ``a_ki = cos(theta_k(l_k), phi_i(l_i))``, theta_k, phi_i: M -> N;
    - Eq. 14: ``abar_ki = softmax_{i != k}(a_ki)``: a part never attends to itself;
    - Eq. 15: ``r_k = l_k + W_gamma^k sum_{i != k} abar_ki phibar_i(l_i)``, phibar the unit-norm
      phi (the aggregated features are the normalised projections, as the authors' code);
    - Eq. 16: ``n_k = W_n^k r_k``, W_n^k: M -> N.
    """

    def __init__(self, parts: int, dim: int, relation_dim: int) -> None:
        super().__init__()
        self.theta = PartwiseLinear(parts, dim, relation_dim)
        self.phi = PartwiseLinear(parts, dim, relation_dim)
        self.gamma = PartwiseLinear(parts, relation_dim, dim)  # W_gamma^k
        self.out = PartwiseLinear(parts, dim, relation_dim)  # W_n^k

    def affinities(self, parts: torch.Tensor) -> torch.Tensor:
        """parts (B, K, M) -> abar (B, K, K), row k over the other parts i (diagonal 0)."""
        query = F.normalize(self.theta(parts), dim=-1)  # (B, K, N)
        key = F.normalize(self.phi(parts), dim=-1)  # (B, K, N)
        cosine = query @ key.transpose(1, 2)  # (B, K, K)  a_ki
        eye = torch.eye(parts.shape[1], dtype=torch.bool, device=parts.device)
        return cosine.masked_fill(eye, float("-inf")).softmax(dim=-1)  # (B, K, K)

    def forward(self, parts: torch.Tensor) -> torch.Tensor:
        """parts (B, K, M) -> relation features (B, K, N)."""
        values = F.normalize(self.phi(parts), dim=-1)  # (B, K, N)  phibar_i
        context = self.affinities(parts) @ values  # (B, K, N)
        return self.out(parts + self.gamma(context))  # (B, K, N)


class PartRelation(nn.Module):
    """``mvnln: shared-mha``, the earlier variant: one multi-head attention shared by all
    parts over all K parts (itself included), scaled dot products, residual, no W_n^k:
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
    """``branch_norm: true`` (not in the paper): one modality's batch norms after the shared
    projections, global (B, D) and local (B, K, D), statistics per modality. Max-pooled maps
    are all-positive with a large common component; without centring, every feature points
    the same way and hardest-negative ranking stalls at its collapse value (seen in the first
    stand-in CPU run of issue 6, loss fixed at 2 alpha)."""

    def __init__(self, dim: int, parts: int) -> None:
        super().__init__()
        self.global_bn = nn.BatchNorm1d(dim)
        self.local_bn = nn.BatchNorm1d(parts * dim)

    def forward(self, pooled: torch.Tensor, parts: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.global_bn(pooled), self.local_bn(parts.flatten(1)).view_as(parts)


@register_family("ssan", SSANConfig)
class SSAN(OptionalWeightsMixin, DualEncoderModel):
    training_only_prefixes = ("id_global.", "id_local.", "id_relation.")
    onnx_towers = ("image",)  # the BiLSTM's packed sequences have data-dependent shapes

    @seeded_init
    def __init__(self, config: SSANConfig) -> None:
        super().__init__()
        self.config = config
        config.validate()
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
        if config.branch_norm:
            self.image_norm, self.text_norm = BranchNorm(dim, k), BranchNorm(dim, k)
        if config.relation:
            self.relation = (MultiViewNonLocal(k, dim, config.relation_dim)
                             if config.mvnln == "paper" else PartRelation(dim,
                                                                          config.relation_views))
        if config.num_classes:
            self._build_id_heads()

    def _build_id_heads(self) -> None:
        """Training-only classifiers, each shared by the two modalities: ``paper`` one per
        part (global; each local part; each relation part), ``concat`` global + one over the
        concatenated local features."""
        cfg, k, dim = self.config, self.config.num_parts, self.config.embed_dim

        def head(width: int) -> IdentityClassifier:
            return IdentityClassifier(width, cfg.num_classes, cfg.loss.label_smoothing)

        self.id_global = head(dim)
        if cfg.loss.id_form == "concat":
            self.id_local = head(k * dim)
            return
        self.id_local = nn.ModuleList(head(dim) for _ in range(k))
        if cfg.relation:
            self.id_relation = nn.ModuleList(head(self.relation_width) for _ in range(k))

    @property
    def relation_width(self) -> int:
        """N: the width of one relation feature (M for the shared-mha variant)."""
        return self.config.relation_dim if self.config.mvnln == "paper" else self.config.embed_dim

    # ---- inference path ----
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self._tokenizer(texts)

    def tokenizer_spec(self) -> dict[str, Any]:
        return {"kind": "word-vocabulary", "normalize": "lower-alnum", "pad": 0, "unk": 1,
                "max_length": self.config.max_words, "vocab": list(self.config.vocab)}

    def encode_image_branches(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> global (B, M), local (B, K, M), relation (B, K, N) when configured."""
        fmap, _ = self.visual(images)  # (B, C, h, w)
        pooled = fmap.amax(dim=(2, 3))  # (B, C) global max pooling
        parts = stripe_max_pool(fmap, self.config.num_parts)  # (B, K, C)
        return self._branches(pooled, parts, "image")

    def encode_text_branches(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        words, mask = self.textual(tokens)  # (B, L, H), (B, L)
        pooled = words.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)  # (B, H)
        return self._branches(pooled, self.word_attention(words, mask), "text")

    def _branches(self, pooled: torch.Tensor, parts: torch.Tensor,
                  modality: str) -> dict[str, torch.Tensor]:
        """pooled (B, C), parts (B, K, C) -> the shared projections, then (``branch_norm``)
        the modality's norm, then the shared relation module."""
        glob, local = self.global_proj(pooled), self.part_proj(parts)  # (B, M), (B, K, M)
        if self.config.branch_norm:
            glob, local = getattr(self, f"{modality}_norm")(glob, local)
        out = {"global": glob, "local": local}
        if self.config.relation:
            out["relation"] = self.relation(local)  # (B, K, N)
        return out

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self._export(self.encode_image_branches(images))

    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._export(self.encode_text_branches(tokens))

    def _export(self, branches: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> (B, M + K*M [+ K*N]): each branch unit-norm, so <a, b> = S_g + S_l + S_n."""
        return torch.cat([F.normalize(v.flatten(1), dim=-1) for v in branches.values()], dim=1)

    def parts(self) -> tuple[Part, ...]:
        d, k, n = self.config.embed_dim, self.config.num_parts, self.relation_width
        out = [Part("global", 0, d, "global")]
        out += [Part(f"part_{i + 1}", d * (1 + i), d * (2 + i), "local") for i in range(k)]
        if self.config.relation:
            start = d * (1 + k)
            out += [Part(f"relation_{i + 1}", start + n * i, start + n * (i + 1), "relation")
                    for i in range(k)]
        return tuple(out)

    # ---- training ----
    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``w_b`` x Compound Ranking on S_g, S_l, S_n (``cr_<branch>``) plus ``w_b`` x ID loss
        (``id_<branch>``) of both modalities."""
        cfg, pids = self.config.loss, batch["pids"]
        image = self.encode_image_branches(batch["images"])
        text = self.encode_text_branches(batch["tokens"])
        weights = dict(zip(BRANCHES, (cfg.global_weight, cfg.local_weight,
                                      cfg.relation_weight), strict=True))
        terms: dict[str, torch.Tensor] = {}
        for name in image:
            if not (cfg.ranking and weights[name]):
                continue
            sim = (F.normalize(image[name].flatten(1), dim=-1)
                   @ F.normalize(text[name].flatten(1), dim=-1).t())  # (B, B)
            terms[f"cr_{name}"] = weights[name] * cfg.ranking * compound_ranking_loss(
                sim, pids, cfg.margin, cfg.beta, cfg.cr_margin)
        if cfg.id and self.config.num_classes:
            for name, value in self._id_losses(image, text, pids).items():
                if weights[name]:
                    terms[f"id_{name}"] = weights[name] * cfg.id * value
        return terms

    def _id_losses(self, image: dict[str, torch.Tensor], text: dict[str, torch.Tensor],
                   pids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted ID loss of each branch that has classifiers."""
        out = {"global": self.id_global(image["global"], pids)
               + self.id_global(text["global"], pids)}
        if self.config.loss.id_form == "concat":
            out["local"] = (self.id_local(image["local"].flatten(1), pids)
                            + self.id_local(text["local"].flatten(1), pids))
            return out
        out["local"] = part_identity_loss(self.id_local, image["local"], text["local"], pids)
        if self.config.relation:
            out["relation"] = part_identity_loss(self.id_relation, image["relation"],
                                                 text["relation"], pids)
        return out

    # ---- checkpoints ----
    def backbone_towers(self) -> list[tuple[str, nn.Module, str]]:
        return [("visual.", self.visual, "image_backbone")]


def _drop_attention_pool(backbone: nn.Module) -> None:
    """SSAN pools the map itself: a backbone-owned attention pool would be an untrained,
    exported dead weight, so it becomes an identity where the backbone allows it."""
    if isinstance(getattr(backbone, "global_pool", None), nn.Module) and not isinstance(
            getattr(type(backbone), "global_pool", None), property):
        backbone.global_pool = nn.Identity()
