"""Tiny models and datasets built in memory / under tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_CLIP_TEXT = {"kind": "clip", "arch": {"width": 32, "heads": 2, "layers": 1,
                                           "context_length": 24}}
TINY_RN = {"kind": "clip-resnet", "arch": {"layers": [1, 1, 1, 1], "width": 8, "heads": 2,
                                           "image_size": 64}}
TINY_VIT = {"kind": "clip-vit", "arch": {"width": 32, "layers": 1, "heads": 2, "patch_size": 16,
                                         "image_size": 64}}


def tiny_vgsg(**overrides) -> dict:
    """A VGSG config small enough to train a step in well under a second."""
    config = {"family": "vgsg", "name": "tiny-vgsg", "embed_dim": 16, "image_size": [64, 32],
              "image_backbone": dict(TINY_RN), "text_backbone": dict(TINY_CLIP_TEXT),
              "stripes": 4, "sgtl_layers": 2, "sgtl_heads": 2, "num_classes": 5}
    config.update(overrides)
    return config


@pytest.fixture
def tiny_config() -> dict:
    return tiny_vgsg()


def write_cuhk_fixture(root: Path, ids_per_split: dict[str, list[int]],
                       images_per_id: int = 2) -> Path:
    """A CUHK-PEDES-shaped folder: reid_raw.json + imgs/ with small random images."""
    rng = np.random.default_rng(0)
    rows = []
    (root / "imgs" / "cam").mkdir(parents=True, exist_ok=True)
    for split, ids in ids_per_split.items():
        for pid in ids:
            for j in range(images_per_id):
                rel = f"cam/{pid:05d}_{j}.png"
                pixels = rng.integers(0, 255, (40, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "imgs" / rel)
                rows.append({"id": pid, "split": split, "file_path": rel,
                             "captions": [f"person {pid} wears a red coat, view {j}.",
                                          f"a person number {pid} with black shoes"],
                             "processed_tokens": []})
    (root / "reid_raw.json").write_text(json.dumps(rows))
    return root
