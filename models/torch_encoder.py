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
                 batch_size: int = 64) -> None:
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.batch_size = batch_size
        self.spec = model_spec(model, checkpoint_sha256)
        self.preprocess = Preprocess.of(model.config)
        self._autocast = self.device.type == "cuda"

    @torch.inference_mode()
    def encode_image(self, images: Sequence[Image.Image] | torch.Tensor) -> np.ndarray:
        if not isinstance(images, torch.Tensor):
            if len(images) == 0:
                return np.zeros((0, self.spec.dim), np.float32)
            images = torch.stack([self.preprocess(im) for im in images])
        chunks = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size].to(self.device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self._autocast):
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
            with torch.autocast("cuda", dtype=torch.float16, enabled=self._autocast):
                chunks.append(self.model.text_features(tokens).float().cpu())
        return torch.cat(chunks).numpy().astype(np.float32, copy=False)


def _to_device(tokens, device: torch.device):
    if isinstance(tokens, torch.Tensor):
        return tokens.to(device)
    if isinstance(tokens, dict):
        return {k: v.to(device) for k, v in tokens.items()}
    return tokens
