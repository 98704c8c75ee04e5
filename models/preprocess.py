"""The one image preprocessing of an encoder: an image -> the model's input tensor.

A checkpoint's ``preprocess`` entry (image size, mean, std, resize method) is a ``Preprocess``.
It runs in two halves so that a caller can move the work around without changing the result:
``pixels`` (decoded image -> resized (3, H, W) uint8; the indexer's reader processes run it,
the trainer runs it once per image) and ``normalise`` (uint8 -> float32 on the tensor's own
device; the indexer runs it on the encoder's device). ``preprocess(image)`` is both, and is
what ``Encoder.preprocess`` is. The object is a frozen dataclass of plain values, so it pickles
into worker processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2 as T

RESIZE_METHODS = ("bicubic", "bilinear", "nearest")


@dataclass(frozen=True)
class Preprocess:
    """Resize to ``image_size`` (height, width) with ``resize`` (antialiased), scale to [0, 1],
    subtract ``mean`` and divide by ``std`` per RGB channel."""

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "bicubic"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_METHODS:
            raise ValueError(f"unknown resize method {self.resize!r}; "
                             f"use one of {', '.join(RESIZE_METHODS)}")
        if len(self.image_size) != 2 or len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("preprocess needs image_size (height, width) and 3 means and stds")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocess:
        """A checkpoint's ``preprocess`` entry (or a model config); ``resize`` defaults to the
        bicubic resize every checkpoint before it was recorded used."""
        return cls(image_size=(int(data["image_size"][0]), int(data["image_size"][1])),
                   mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
                   std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
                   resize=str(data.get("resize", "bicubic")))

    @classmethod
    def of(cls, config: Any) -> Preprocess:
        """The preprocessing a model config (``image_size``, ``mean``, ``std``) implies."""
        return cls.from_dict({"image_size": config.image_size, "mean": config.mean,
                              "std": config.std})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    def pixels(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """A decoded PIL image (any mode) or a (3, h, w) uint8 tensor -> (3, H, W) uint8."""
        if isinstance(image, Image.Image):
            image = T.functional.pil_to_tensor(image if image.mode == "RGB"
                                               else image.convert("RGB"))  # (3, h, w)
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, h, w) uint8 image, got {tuple(image.shape)} "
                             f"{image.dtype}")
        return T.functional.resize(image, list(self.image_size), antialias=True,
                                   interpolation=T.InterpolationMode(self.resize))

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """(3, H, W) or (B, 3, H, W) uint8 -> float32 model input, on the same device."""
        if pixels.dtype != torch.uint8:
            raise ValueError(f"normalise takes uint8 pixels, got {pixels.dtype}")
        x = pixels.to(torch.float32).div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(3, 1, 1)
        return x.sub_(mean).div_(std)

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """One image -> (3, H, W) float32 model input."""
        return self.normalise(self.pixels(image))
