"""The paper's training augmentations: horizontal flip, pad and crop, random erasing.

Images are decoded and resized once (``load_resized``) and kept as uint8 tensors, so that an
epoch on a CPU spends its time in the model rather than in JPEG decoding. Resizing and
normalising are the encoder's own (``models.preprocess.Preprocess``), so that a model trains on
the inputs it is later served.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2 as T

from models.preprocess import Preprocess


def load_resized(path: Path, preprocess: Preprocess) -> torch.Tensor:
    """Image file -> (3, H, W) uint8, resized as ``preprocess`` does."""
    with Image.open(path) as im:
        return preprocess.pixels(im)


def build_train_transform(preprocess: Preprocess, pad: int = 10,
                          erase_p: float = 0.5) -> T.Compose:
    """(3, H, W) uint8 at the model's size -> augmented, normalised float tensor."""
    return T.Compose([
        T.RandomHorizontalFlip(0.5),
        T.Pad(pad),
        T.RandomCrop(tuple(preprocess.image_size)),
        preprocess.normalise,
        T.RandomErasing(p=erase_p, scale=(0.02, 0.4), value=0),
    ])
