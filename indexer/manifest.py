"""The index manifest: one typed record of what built an index version and how to search it.

Stored as ``manifest.json`` beside the version's arrays (FAISS) or in the engine's metadata
(remote backends). ``Manifest.from_dict`` also reads manifests written before this type existed
(missing keys take the defaults those versions implied); keys it does not know are kept in
``extra`` and written back unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.encoder import Encoder, EncoderSpec

DEFAULT_FACTORY = "Flat"
# what Milvus versions built before manifests named their rows' attributes stored
LEGACY_MILVUS_ATTRIBUTES = ("camera_id", "ts")


def normalise_factory(factory: str | None) -> str:
    """Old spellings of exact search ("IDMap2,Flat", "IDMap,Flat", "") mean "Flat"."""
    factory = (factory or DEFAULT_FACTORY).strip()
    for prefix in ("IDMap2,", "IDMap,"):
        factory = factory.removeprefix(prefix)
    return factory or DEFAULT_FACTORY


@dataclass(frozen=True)
class FirstStage:
    """The approximate first stage of a two-stage index: it searches ``[start, stop)`` of each
    vector (the global part, or the whole vector) and returns ``candidates`` rows that are
    re-ranked on the full vectors."""

    factory: str  # the engine's description of the approximate index (a FAISS factory string)
    input: str = "global"  # "global" part or "full" vector
    nprobe: int = 128
    candidates: int = 256
    start: int = 0
    stop: int = 0
    nlist: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FirstStage:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Manifest:
    """What built a version (checkpoint, encoder spec) and what it holds (count, dim, spec)."""

    checkpoint_sha256: str
    dim: int
    count: int
    factory: str = DEFAULT_FACTORY  # "Flat", a first-stage factory, or "full:<factory>"
    encoder: dict[str, Any] = field(default_factory=dict)  # EncoderSpec.to_dict() of the model
    first_stage: FirstStage | None = None  # None: exact search over the full vectors
    metric: str = "inner_product"
    vectors_dtype: str = "float16"
    backend: str = "faiss"
    created_at: str = ""
    version: str | None = None
    attributes: tuple[str, ...] = ()  # per-row attributes the engine stores (filters in it)
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, kept as read

    # ---- the questions asked of a manifest ----
    def built_by(self, encoder: Encoder | EncoderSpec | str) -> bool:
        """Was this index built by this encoder's checkpoint (so its vectors are comparable
        with the encoder's queries)?"""
        return self.checkpoint_sha256 == _sha_of(encoder)

    @property
    def exact(self) -> bool:
        return self.first_stage is None

    @property
    def parts(self) -> list[dict[str, Any]]:
        return list(self.encoder.get("parts", []))

    def same_factory(self, factory: str | None) -> bool:
        """True when ``factory`` (None: no preference) names this version's spec."""
        return not factory or normalise_factory(factory) == self.factory

    # ---- (de)serialisation ----
    @classmethod
    def new(cls, *, encoder: dict[str, Any], count: int, dim: int, factory: str,
            first_stage: FirstStage | None, backend: str = "faiss",
            attributes: tuple[str, ...] = ()) -> Manifest:
        return cls(checkpoint_sha256=str(encoder.get("checkpoint_sha256", "")), dim=int(dim),
                   count=int(count), factory=factory, encoder=dict(encoder),
                   first_stage=first_stage, backend=backend, attributes=tuple(attributes),
                   created_at=datetime.now(UTC).isoformat())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {f.name for f in fields(cls)} - {"extra"}
        stage = data.get("first_stage")
        backend = str(data.get("backend", "faiss"))
        attributes = data.get("attributes",
                              LEGACY_MILVUS_ATTRIBUTES if backend == "milvus" else ())
        return cls(
            checkpoint_sha256=str(data.get("checkpoint_sha256", "")),
            dim=int(data.get("dim", 0)), count=int(data.get("count", 0)),
            factory=normalise_factory(data.get("factory")),
            encoder=dict(data.get("encoder") or {}),
            first_stage=FirstStage.from_dict(stage) if stage else None,
            metric=str(data.get("metric", "inner_product")),
            vectors_dtype=str(data.get("vectors_dtype", "float16")),
            backend=backend, attributes=tuple(attributes),
            created_at=str(data.get("created_at", "")), version=data.get("version"),
            extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out["first_stage"] = self.first_stage.to_dict() if self.first_stage else None
        out["encoder"] = dict(self.encoder)
        out["attributes"] = list(self.attributes)
        return {**self.extra, **out}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls.from_dict(json.loads(text))

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls.from_json(Path(path).read_text())

    def replace(self, **changes: Any) -> Manifest:
        return replace(self, **changes)


def _sha_of(encoder: Encoder | EncoderSpec | str) -> str:
    if isinstance(encoder, str):
        return encoder
    spec = encoder if isinstance(encoder, EncoderSpec) else encoder.spec
    return spec.checkpoint_sha256
