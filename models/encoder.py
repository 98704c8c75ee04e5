"""The narrow interface every downstream component uses: the indexer and the service know
nothing about stripes, groups or papers beyond what ``EncoderSpec`` says.

An exported vector is a concatenation of *parts* (for VGSG: the L2-normalised global feature
followed by the L2-normalised concatenated stripe features). Each part is unit-length, so the
inner product of two exported vectors is the model's similarity: the sum of per-part cosines.
A model with a single part exports plain L2-normalised vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from models.preprocess import Preprocess


@dataclass(frozen=True)
class Part:
    """A slice ``[start, stop)`` of the exported vector that is scored on its own.

    ``group`` names the unit-normalised block the slice belongs to (stripes of VGSG share the
    block "local"); a part's score is the inner product over its slice.
    """

    name: str
    start: int
    stop: int
    group: str = ""


@dataclass(frozen=True)
class EncoderSpec:
    """What a consumer needs to know about an encoder, and nothing more."""

    name: str
    dim: int
    checkpoint_sha256: str
    image_size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    parts: tuple[Part, ...] = field(default_factory=tuple)
    max_text_length: int = 256  # characters accepted by the service

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def norm(self) -> float:
        """Euclidean norm of every exported vector (sqrt of the number of unit blocks)."""
        groups = {p.group or p.name for p in self.parts} or {"global"}
        return float(np.sqrt(len(groups)))


@runtime_checkable
class Encoder(Protocol):
    spec: EncoderSpec
    # one image -> (3, H, W) float model input; its ``pixels`` / ``normalise`` halves let the
    # indexer resize in reader processes and normalise on the encoder's device
    preprocess: Preprocess

    def encode_image(self, images: Sequence[Image.Image] | torch.Tensor) -> np.ndarray:
        """(N,) PIL images or a preprocessed (N, 3, H, W) batch -> (N, D) float32."""

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) descriptions -> (N, D) float32."""


def part_scores(spec: EncoderSpec, query: np.ndarray, items: np.ndarray) -> list[dict[str, float]]:
    """Per-part inner products of one query (D,) against items (N, D)."""
    parts = spec.parts or (Part("global", 0, spec.dim),)
    out = []
    for row in items:
        out.append({p.name: float(query[p.start : p.stop] @ row[p.start : p.stop]) for p in parts})
    return out
