"""Architectures as data: YAML files under ``models/configs`` loaded into typed dataclasses.

Every family has one dataclass; the common fields (family, name, embedding size, input
geometry, normalisation) live in ``BaseModelConfig``. A checkpoint stores ``to_dict()`` so that
loading it needs nothing else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

T = TypeVar("T", bound="BaseModelConfig")


@dataclass
class BaseModelConfig:
    family: str
    name: str
    embed_dim: int = 512
    image_size: tuple[int, int] = (384, 128)  # (height, width)
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """Build from a plain dict, refusing unknown keys so that typos fail loudly."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown keys for {cls.__name__}: {unknown}")
        kwargs = dict(data)
        for key in ("image_size", "mean", "std"):
            if key in kwargs and kwargs[key] is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


@dataclass
class ClipConfig(BaseModelConfig):
    """A plain open_clip CLIP built from its architecture (no weights downloaded)."""

    vision: dict[str, Any] = field(default_factory=dict)  # open_clip CLIPVisionCfg fields
    text: dict[str, Any] = field(default_factory=dict)  # open_clip CLIPTextCfg fields
    quick_gelu: bool = False
    seed: int = 0  # weights of an untrained model are a function of this seed


@dataclass
class ImageBackboneConfig:
    """``kind``: clip-resnet | clip-vit | efficientnet. ``arch``: the family's sizes
    (clip-resnet: layers, width, heads; clip-vit: width, layers, heads, patch_size;
    efficientnet: name). ``weights``: "" | "package:<module>" | a local file."""

    kind: str = "efficientnet"
    arch: dict[str, Any] = field(default_factory=dict)
    weights: str = ""
    last_stride: int = 1  # 1: the last stride-2 stage runs at stride 1 (output stride 16)
    frozen_stages: int = 0  # leading stages kept frozen (stem counts as one)
    pool_width: int = 0  # efficientnet: 1x1 neck to this many channels before pooling
    pool_heads: int = 8  # heads of attention pools built here (CLIP RN keeps its own)


@dataclass
class TextBackboneConfig:
    """``kind``: clip | minilm. ``arch``: clip: width, heads, layers, context_length;
    minilm: max_length (folder: where config.json/tokenizer.json live when no weights)."""

    kind: str = "minilm"
    arch: dict[str, Any] = field(default_factory=dict)
    weights: str = ""
    frozen_stages: int = 0  # embeddings count as one stage, then one per layer
    # Stochastic depth ("drop path", VGSG Sec. IV-C, Table II column D; Huang et al. [60]) on
    # every residual branch of the transformer layers, in training only: the rate grows
    # linearly with depth up to this value at the last layer; 0 = off. Frozen layers stay in
    # eval mode: never dropped.
    drop_path: float = 0.0


@dataclass
class VGSGLossConfig:
    """Weights and temperatures of VGSG Eq. 13's terms; a weight of 0 switches a term off.

    ``itc_form`` picks the cross-modal loss behind the ``itc_*`` terms:
    - "vitaa-align": Eq. 2 as the paper gives it, the alignment loss of its reference [18]
      (ViTAA), temperatures ``align_tau_pos`` / ``align_tau_neg`` and absolute cosine bounds
      ``align_alpha`` / ``align_beta`` at the paper's 10 / 40 and 0.6 / 0.4;
    - "infonce": CLIP's symmetric InfoNCE (the paired caption the one positive), temperature
      ``tau``; not the paper's Eq. 2;
    - "mp-margin": identity-aware multi-positive InfoNCE with an additive ``margin``, this
      project's first form;
    - "sdm": similarity-distribution matching (IRRA) with one learnable logit scale, init
      ``sdm_scale`` and clamped at ``sdm_scale_max``."""

    itc_form: str = "infonce"
    align_tau_pos: float = 10.0  # Eq. 2: temperature of the positive pairs (tau_p)
    align_tau_neg: float = 40.0  # Eq. 2: temperature of the negative pairs (tau_n)
    align_alpha: float = 0.6  # Eq. 2: a positive cosine is pushed above alpha
    align_beta: float = 0.4  # Eq. 2: a negative cosine is pushed below beta
    sdm_scale: float = 50.0
    sdm_scale_max: float = 100.0
    id: float = 1.0  # ID loss on global and local features of both modalities
    label_smoothing: float = 0.1
    itc_global: float = 1.0  # the itc_form loss on global pairs (Eq. 2's place in Eq. 13)
    itc_local: float = 1.0  # ... on (image stripes, semantic-group text) pairs
    itc_vg: float = 1.0  # ... on (image stripes, vision-guided text) pairs
    tau: float = 0.02  # infonce, mp-margin
    margin: float = 0.1  # mp-margin
    similarity_transfer: float = 1.0  # Eq. 10-11
    st_tau: float = 4.0  # Eq. 10's relation temperature (Sec. IV-B: 4)
    class_transfer: float = 1.0  # Eq. 12
    ct_tau: float = 1.0  # Eq. 12 has no temperature: 1


@dataclass
class VGSGConfig(BaseModelConfig):
    """VGSG. ``text_local``: "sgtl" (the paper), "conv" (the "Local" ablation) or "none"
    (global-only baseline); ``vgkt`` switches the training-only knowledge transfer.

    ``shared_layer``: Sec. IV-C's "shared layer with visual and textual embedding" (Table II,
    column S): one linear map D -> D, shared by the two modalities, after each tower's own
    projection, on the global, stripe / group and vision-guided features alike (a layer
    shared across modalities, as SSAN's shared 1x1 conv [5]); identity at initialisation, so a
    warm start begins where it was. Off by default: checkpoints without it load unchanged."""

    image_backbone: ImageBackboneConfig = field(default_factory=ImageBackboneConfig)
    text_backbone: TextBackboneConfig = field(default_factory=TextBackboneConfig)
    stripes: int = 4  # K
    text_local: str = "sgtl"
    vgkt: bool = True
    shared_layer: bool = False
    sgtl_layers: int = 2
    sgtl_heads: int = 8
    num_classes: int = 0  # person ids of the training set (ID-loss classifiers)
    loss: VGSGLossConfig = field(default_factory=VGSGLossConfig)
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VGSGConfig:
        data = dict(data)
        nested = {"image_backbone": ImageBackboneConfig, "text_backbone": TextBackboneConfig,
                  "loss": VGSGLossConfig}
        parts = {k: _dataclass_from(t, data.pop(k, {})) for k, t in nested.items()}
        config = super().from_dict(data)
        for key, value in parts.items():
            setattr(config, key, value)
        return config


def _dataclass_from(cls: type, data: Any) -> Any:
    if isinstance(data, cls):
        return data
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown keys for {cls.__name__}: {unknown}")
    return cls(**data)


def read_config_file(name_or_path: str | Path) -> dict[str, Any]:
    """Read a YAML config by path, or by name from ``models/configs``."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no model config {name_or_path!r}; known: {known}")
    with path.open() as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict) or "family" not in data:
        raise ValueError(f"{path}: a model config is a mapping with a 'family' key")
    return data
