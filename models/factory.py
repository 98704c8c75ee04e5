"""Build models from configs, save and load self-describing checkpoints, and wrap a model as
an ``Encoder``. Families register themselves with ``register_family``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.config import BaseModelConfig, read_config_file
from models.preprocess import Preprocess

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "tbps-checkpoint"
CHECKPOINT_VERSION = 1
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default.pt"
FALLBACK_CONFIG = "tiny-clip"

# family name -> (config dataclass, model class)
_FAMILIES: dict[str, tuple[type[BaseModelConfig], Callable[..., Any]]] = {}
# modules that define families; imported lazily so that importing the factory stays cheap
_FAMILY_MODULES = ("models.clip_model", "models.vgsg", "models.vfe_tps", "models.ssan")


def register_family(name: str, config_cls: type[BaseModelConfig]) -> Callable[[type], type]:
    def wrap(model_cls: type) -> type:
        _FAMILIES[name] = (config_cls, model_cls)
        return model_cls

    return wrap


def _load_families() -> None:
    for module in _FAMILY_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def parse_config(data: dict[str, Any]) -> BaseModelConfig:
    _load_families()
    family = data.get("family")
    if family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(_FAMILIES)}")
    config_cls, _ = _FAMILIES[family]
    return config_cls.from_dict(data)


def create_model(config: BaseModelConfig | dict[str, Any] | str):
    """Build a model from a config object, a dict, or a config name/path."""
    if isinstance(config, (str, Path)):
        config = read_config_file(config)
    if isinstance(config, dict):
        config = parse_config(config)
    _, model_cls = _FAMILIES[config.family]
    return model_cls(config)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(path: Path, model, *, extra: dict[str, Any] | None = None,
                    half: bool = False) -> str:
    """Write a checkpoint that carries config, tokenizer, preprocessing and format version.

    Returns its sha256. With ``half`` floating weights are stored as float16.
    """
    state = model.inference_state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "config": getattr(model, "checkpoint_config", model.config.to_dict)(),
        "tokenizer": model.tokenizer_spec(),
        "preprocess": Preprocess.of(model.config).to_dict(),
        "state_dict": state,
        "extra": extra or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return file_sha256(path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a tbps checkpoint (train one with `tbps train`)")
    if payload.get("format_version", 0) > CHECKPOINT_VERSION:
        raise ValueError(f"{path} has format version {payload['format_version']}; "
                         f"this tbps reads up to {CHECKPOINT_VERSION}")
    return payload


def load_model(path: Path):
    """Rebuild a model from a checkpoint alone. Returns (model, payload)."""
    payload = read_checkpoint(path)
    model = create_model(payload["config"])
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in payload["state_dict"].items()}
    state = upgrade_legacy_keys(model, state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not getattr(model, "is_optional_weight", lambda k: False)(k)]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match config "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.eval()
    return model, payload


def upgrade_legacy_keys(model, state: dict[str, Any]) -> dict[str, Any]:
    """Rename the keys of an older checkpoint to the model's current names.

    Each submodule that renamed its weights (e.g. the EfficientNet backbone, once built on the
    ``efficientnet_lite_pytorch`` package, now on timm) has a ``legacy_key(key) -> key`` for keys
    relative to itself; current names pass through unchanged.
    """
    hooks = [(f"{name}." if name else "", module.legacy_key)
             for name, module in model.named_modules() if hasattr(module, "legacy_key")]

    def rename(key: str) -> str:
        for prefix, legacy_key in hooks:
            if key.startswith(prefix):
                return prefix + legacy_key(key[len(prefix):])
        return key

    return {rename(k): v for k, v in state.items()}


def load_encoder(checkpoint: Path | None = None, device: str = "auto", engine: str = "auto",
                 cache_dir: Path | None = None, threads: int | None = None,
                 precision: str = "auto", background_export: bool = False):
    """The encoder the service and indexer use.

    ``checkpoint`` None means the bundled default checkpoint when present, else the small
    randomly initialised stand-in (useful for tests and a first start; its results are noise).
    ``engine``: ``torch``, ``onnx`` (ONNX Runtime on the CPU, graphs exported once into
    ``cache_dir``, default beside the checkpoint) or ``auto`` (onnx on CPU, torch on CUDA).
    ``threads``: ONNX Runtime intra-op threads (default: torch's thread count).
    ``precision``: ``auto`` (torch: float16 autocast on CUDA, float32 on the CPU; ONNX Runtime:
    float32), ``fp32``, ``bf16`` / ``fp16`` (torch autocast) or ``int8`` (ONNX Runtime, the text
    tower's weights dynamically quantised; images stay float32).
    ``background_export``: with the onnx engine and no cached graphs, return at once an encoder
    that uses torch until the graphs are exported in a background thread (a server's start).
    """
    if checkpoint is None and DEFAULT_CHECKPOINT.is_file():
        checkpoint = DEFAULT_CHECKPOINT
    if checkpoint is None:
        log.warning("no checkpoint: using the untrained %s stand-in", FALLBACK_CONFIG)
        model = create_model(FALLBACK_CONFIG).eval()
        sha = f"untrained-{model.config.name}-seed{getattr(model.config, 'seed', 0)}"
    else:
        model, _ = load_model(Path(checkpoint))
        sha = file_sha256(Path(checkpoint))
    from models.onnx_encoder import default_cache_dir

    return wrap_encoder(model, sha, device=device, engine=engine, threads=threads,
                        cache_dir=cache_dir or default_cache_dir(checkpoint),
                        precision=precision, background_export=background_export)


def wrap_encoder(model, sha256: str, *, device: str = "auto", engine: str = "auto",
                 cache_dir: Path, threads: int | None = None, precision: str = "auto",
                 background_export: bool = False):
    """``model`` behind the ``Encoder`` interface of the chosen engine."""
    from models.onnx_encoder import OnnxEncoder, SwitchingEncoder, resolve_engine, tower_paths
    from models.torch_encoder import TorchEncoder, resolve_device

    if resolve_engine(engine, resolve_device(device)) == "onnx":
        cached = all(p.is_file() for p in tower_paths(model, sha256, cache_dir).values())
        kind = SwitchingEncoder if background_export and not cached else OnnxEncoder
        return kind(model, sha256, cache_dir, threads=threads, precision=precision)
    return TorchEncoder(model, sha256, device=device, precision=precision)

