"""Base class of every model family: the pieces the generic encoder and trainer rely on."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from models.config import BaseModelConfig
from models.encoder import Part

F = TypeVar("F", bound=Callable[..., None])


def seeded_init(init: F) -> F:
    """Decorate a model's ``__init__(self, config, ...)``: its weights are drawn from
    ``torch.manual_seed(config.seed)`` inside a forked CPU RNG, so that building a model is
    reproducible and leaves the caller's global RNG state untouched."""

    @functools.wraps(init)
    def wrapper(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            init(self, config, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class DualEncoderModel(nn.Module):
    """A text-image dual encoder whose exported features are unit-norm per part.

    Subclasses implement ``tokenize``, ``image_features`` and ``text_features`` (inference
    path only; training-only heads are kept out of these) and may override ``parts``.
    """

    config: BaseModelConfig
    # towers ``torch.onnx.export`` can trace; the others run in torch under the onnx engine
    onnx_towers: tuple[str, ...] = ("image", "text")

    def tokenize(self, texts: Sequence[str]) -> Any:
        raise NotImplementedError

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised pixels -> (N, D) exported features."""
        raise NotImplementedError

    def text_features(self, tokens: Any) -> torch.Tensor:
        """Output of ``tokenize`` -> (N, D) exported features."""
        raise NotImplementedError

    def parts(self) -> tuple[Part, ...]:
        return (Part("global", 0, self.config.embed_dim, "global"),)

    @property
    def export_dim(self) -> int:
        return max(p.stop for p in self.parts())

    def tokenizer_spec(self) -> dict[str, Any]:
        """How texts become tokens; stored in checkpoints."""
        return {}

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named, already-weighted loss terms for one batch; the trainer sums and logs them.

        ``batch`` holds ``images`` (B, 3, H, W), ``tokens`` (output of ``tokenize``) and
        ``pids`` (B,) int64 person ids remapped to 0..num_classes-1.
        """
        raise NotImplementedError(f"{type(self).__name__} is inference-only")

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights needed at inference (training-only heads may be dropped by subclasses)."""
        return self.state_dict()
