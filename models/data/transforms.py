"""The paper's training augmentations: horizontal flip, pad and crop, random erasing.

Images are decoded and resized once (``load_resized``) and kept as uint8 tensors, so that an
epoch on a CPU spends its time in the model rather than in JPEG decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2 as T


def load_resized(path: Path, image_size: Sequence[int]) -> torch.Tensor:
    """Image file -> (3, H, W) uint8, bicubic resize to ``image_size`` (height, width)."""
    with Image.open(path) as im:
        pixels = T.functional.pil_to_tensor(im.convert("RGB"))  # (3, h, w) uint8
    return T.functional.resize(pixels, list(image_size),
                               interpolation=T.InterpolationMode.BICUBIC, antialias=True)


def build_train_transform(image_size: Sequence[int], mean: Sequence[float],
                          std: Sequence[float], pad: int = 10,
                          erase_p: float = 0.5) -> T.Compose:
    """(3, H, W) uint8 at ``image_size`` -> augmented, normalised float tensor."""
    return T.Compose([
        T.RandomHorizontalFlip(0.5),
        T.Pad(pad),
        T.RandomCrop(tuple(image_size)),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(list(mean), list(std)),
        T.RandomErasing(p=erase_p, scale=(0.02, 0.4), value=0),
    ])


def build_resized_eval_transform(mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """(3, H, W) uint8 already at the model's size -> normalised float tensor."""
    return T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std))])
