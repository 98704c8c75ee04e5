"""Encoder stage: uint8 batches from the reader -> (B, D) float32 exported vectors.

Scaling and normalisation run on the encoder's device (CUDA when present, where the
``TorchEncoder`` also applies float16 autocast), so only uint8 pixels cross the bus.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from models.encoder import Encoder

log = logging.getLogger(__name__)


def encoder_device(encoder: Encoder) -> torch.device:
    return torch.device(getattr(encoder, "device", "cpu"))


def normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
              device: torch.device) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, H, W) float32 on ``device``, as the encoder's preprocess."""
    x = images.to(device, non_blocking=True).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return x.sub_(m).div_(s)


def encode_batch(encoder: Encoder, images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) uint8 -> (B, D) float32 exported vectors."""
    if not len(images):
        return np.zeros((0, encoder.spec.dim), np.float32)
    spec = encoder.spec
    x = normalise(images, spec.mean, spec.std, encoder_device(encoder))  # (B, 3, H, W)
    vectors = encoder.encode_image(x)  # (B, D)
    return np.asarray(vectors, dtype=np.float32)
