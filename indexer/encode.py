"""Encoder stage: uint8 batches from the reader -> (B, D) float32 exported vectors.

The encoder's ``preprocess.normalise`` runs on the encoder's device (CUDA when present, where
the ``TorchEncoder`` also applies float16 autocast), so only uint8 pixels cross the bus.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from models.encoder import Encoder

log = logging.getLogger(__name__)


def encoder_device(encoder: Encoder) -> torch.device:
    return torch.device(getattr(encoder, "device", "cpu"))


def encode_batch(encoder: Encoder, images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) uint8 -> (B, D) float32 exported vectors."""
    if not len(images):
        return np.zeros((0, encoder.spec.dim), np.float32)
    pixels = images.to(encoder_device(encoder), non_blocking=True)  # (B, 3, H, W) uint8
    x = encoder.preprocess.normalise(pixels)  # (B, 3, H, W) float32
    vectors = encoder.encode_image(x)  # (B, D)
    return np.asarray(vectors, dtype=np.float32)
