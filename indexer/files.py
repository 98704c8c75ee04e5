"""Durable writes shared by the store and the writer: fsync helpers and the version arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file below ``folder``, then the folders themselves."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    for path in sorted([p for p in folder.rglob("*") if p.is_dir()] + [folder], reverse=True):
        fsync_dir(path)


def write_arrays(folder: Path, vectors: np.ndarray, ids: np.ndarray) -> None:
    """``ids.npy`` (N,) int64 and ``vectors.npy`` (N, D) float16 into ``folder``."""
    vectors = np.asarray(vectors)
    ids = np.asarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"vectors {vectors.shape} and ids {ids.shape} do not match")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("crop ids must be unique")
    np.save(folder / "ids.npy", ids)
    np.save(folder / "vectors.npy", vectors.astype(np.float16))
