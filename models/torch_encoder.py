"""``Encoder`` implementation over any ``DualEncoderModel``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from models.base import DualEncoderModel
from models.encoder import EncoderSpec
from models.preprocess import Preprocess


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def model_spec(model: DualEncoderModel, checkpoint_sha256: str) -> EncoderSpec:
    """What any engine running ``model`` exports: size, preprocessing and parts."""
    pre = Preprocess.of(model.config)
    return EncoderSpec(name=model.config.name, dim=model.export_dim,
                       checkpoint_sha256=checkpoint_sha256, image_size=pre.image_size,
                       mean=pre.mean, std=pre.std, parts=model.parts())


class TorchEncoder:
    """Batches PIL images or texts through a model's exported inference path."""

    def __init__(self, model: DualEncoderModel, checkpoint_sha256: str, device: str = "auto",
                 batch_size: int = 64, precision: str = "auto") -> None:
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.batch_size = batch_size
        self.spec = model_spec(model, checkpoint_sha256)
        self.preprocess = Preprocess.of(model.config)
        self.precision = precision
        self._dtype = autocast_dtype(precision, self.device)

    @torch.inference_mode()
    def encode_image(self, images: Sequence[Image.Image] | torch.Tensor) -> np.ndarray:
        if not isinstance(images, torch.Tensor):
            if len(images) == 0:
                return np.zeros((0, self.spec.dim), np.float32)
            images = torch.stack([self.preprocess(im) for im in images])
        chunks = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size].to(self.device, non_blocking=True)
            with self._autocast():
                chunks.append(self.model.image_features(batch).float().cpu())
        return torch.cat(chunks).numpy().astype(np.float32, copy=False)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.spec.dim), np.float32)
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.model.tokenize(texts[start : start + self.batch_size])
            tokens = _to_device(tokens, self.device)
            with self._autocast():
                chunks.append(self.model.text_features(tokens).float().cpu())
        return torch.cat(chunks).numpy().astype(np.float32, copy=False)


    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self._dtype or torch.float32,
                              enabled=self._dtype is not None)


TORCH_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an encoder precision (None: float32). ``auto``: float16 on CUDA,
    float32 on the CPU; ``bf16`` on the CPU needs AVX-512 BF16 / AMX to pay (measured in
    docs/results.md, "Inference engine (issue 13)")."""
    if precision not in TORCH_PRECISIONS:
        raise ValueError(f"precision {precision!r} is not a torch engine precision; known: "
                         f"{', '.join(TORCH_PRECISIONS)} (int8 is an ONNX Runtime option)")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; on the CPU use bf16 or fp32")
    auto = torch.float16 if device.type == "cuda" else None
    return {"auto": auto, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _to_device(tokens, device: torch.device):
    if isinstance(tokens, torch.Tensor):
        return tokens.to(device)
    if isinstance(tokens, dict):
        return {k: v.to(device) for k, v in tokens.items()}
    return tokens
