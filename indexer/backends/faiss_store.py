"""Index versions on disk, published atomically, with cheap incremental generations.

Layout under the index root::

    versions/<base>/manifest.json     checkpoint hash, dimension, count, factory string, spec
    versions/<base>/ids.npy           (N,) int64 crop ids, row order of the vectors
    versions/<base>/vectors.npy       (N, D) float16 full vectors (memory-mapped when loaded)
    versions/<base>/first_stage.faiss approximate index over the global slice (two-stage specs)
    versions/<base>/deltas/<gen>/     added_ids.npy, added_vectors.npy (float16), removed_ids.npy
    CURRENT                           live pointer: "<base>" or "<base>+<gen>" (replaced by rename)
    PREVIOUS                          the pointer live before the last full build, for rollback
    LOCK                              flock taken by every writer of deltas and pointers

A version folder (or a delta folder) is written under a temporary name, fsynced and renamed into
place; only then is CURRENT swapped, so a reader sees the old state or the new one, never a
half-written one. Adds and deletes are published as a new generation of the live base: CURRENT
changes, so a searcher that compares ``current_version()`` with the version it holds reloads
(the base arrays are memory-mapped, so a reload costs the deltas only).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from indexer.backends.base import NoIndex, split_pointer
from indexer.backends.faiss_loaded import LoadedIndex, load_index
from indexer.backends.locking import waiting_turn
from indexer.files import fsync_dir, fsync_tree, write_arrays
from indexer.manifest import Manifest

log = logging.getLogger(__name__)

__all__ = ["IndexStore", "LoadedIndex", "new_version_name"]


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


def new_version_name() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


class IndexStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions = self.root / "versions"

    # ---- pointers ----
    def _pointer(self, name: str) -> str | None:
        path = self.root / name
        if not path.exists():
            return None
        return path.read_text().strip() or None

    def current_version(self) -> str | None:
        """The live pointer, "<base>" or "<base>+<gen>"; it changes on every publish."""
        return self._pointer("CURRENT")

    def previous_version(self) -> str | None:
        return self._pointer("PREVIOUS")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for writers (deltas, publish, rollback) across processes."""
        self.root.mkdir(parents=True, exist_ok=True)
        with waiting_turn(self.root / "LOCK"):
            yield

    # ---- full versions ----
    def staging_dir(self, version: str) -> Path:
        """An empty folder to write a version into; ``commit_staging`` makes it complete."""
        self.versions.mkdir(parents=True, exist_ok=True)
        staging = self.versions / f".staging-{version}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        return staging

    def commit_staging(self, staging: Path, version: str, manifest: Manifest) -> str:
        """Write the manifest last, fsync everything and rename the folder into place."""
        (staging / "manifest.json").write_text(manifest.replace(version=version).to_json())
        fsync_tree(staging)
        staging.rename(self.versions / version)
        fsync_dir(self.versions)
        return version

    def write_version(self, vectors: np.ndarray, ids: np.ndarray, encoder: dict[str, Any],
                      version: str | None = None) -> str:
        """Write a complete exact (Flat) version from in-memory arrays; not yet live.
        ``encoder`` is the ``EncoderSpec.to_dict()`` that made the vectors."""
        version = version or new_version_name()
        staging = self.staging_dir(version)
        write_arrays(staging, vectors, ids)
        manifest = Manifest.new(encoder=encoder, count=len(ids), dim=vectors.shape[1],
                                factory="Flat", first_stage=None)
        return self.commit_staging(staging, version, manifest)

    def publish(self, version: str, *, keep_previous: bool = False) -> None:
        """Make a full version live by an atomic rename of CURRENT; the old one becomes
        PREVIOUS (unless ``keep_previous``: a compaction of the same content)."""
        base, _ = split_pointer(version)
        if not (self.versions / base / "manifest.json").exists():
            raise NoIndex(f"index version {version} is not complete")
        with self.lock():
            current = self.current_version()
            if current and split_pointer(current)[0] != base and not keep_previous:
                _write_text_atomic(self.root / "PREVIOUS", current)
            _write_text_atomic(self.root / "CURRENT", version)
        log.info("published index %s", version)

    def rollback(self) -> str:
        """Swap CURRENT and PREVIOUS; returns the pointer now live."""
        with self.lock():
            current, previous = self.current_version(), self.previous_version()
            if previous is None:
                raise NoIndex("no previous index version to roll back to")
            if not (self.versions / split_pointer(previous)[0] / "manifest.json").exists():
                raise NoIndex(f"previous index version {previous} is gone")
            _write_text_atomic(self.root / "CURRENT", previous)
            if current:
                _write_text_atomic(self.root / "PREVIOUS", current)
        log.info("rolled back index from %s to %s", current, previous)
        return previous

    # ---- incremental generations ----
    def add_delta(self, added_ids: np.ndarray, added_vectors: np.ndarray,
                  removed_ids: np.ndarray) -> str:
        """Publish adds and deletes as the next generation of the live base; returns the
        new pointer. Adding an id that is already indexed replaces its vector."""
        with self.lock():
            current = self.current_version()
            if current is None:
                raise NoIndex("no live index to add to: build one first")
            base, gen = split_pointer(current)
            deltas = self.versions / base / "deltas"
            deltas.mkdir(exist_ok=True)
            for orphan in deltas.iterdir():  # written by a run killed before its publish
                if orphan.name.startswith(".") or int(orphan.name) > gen:
                    shutil.rmtree(orphan)
            folder = self._write_delta(deltas, gen + 1, added_ids, added_vectors, removed_ids)
            pointer = f"{base}+{gen + 1}"
            _write_text_atomic(self.root / "CURRENT", pointer)
        log.info("published %s: +%d -%d crops (%s)", pointer, len(added_ids), len(removed_ids),
                 folder)
        return pointer

    @staticmethod
    def _write_delta(deltas: Path, gen: int, added_ids: np.ndarray, added_vectors: np.ndarray,
                     removed_ids: np.ndarray) -> Path:
        tmp = deltas / f".tmp-{gen:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        np.save(tmp / "added_ids.npy", np.asarray(added_ids, dtype=np.int64))
        np.save(tmp / "added_vectors.npy", np.asarray(added_vectors, dtype=np.float16))
        np.save(tmp / "removed_ids.npy", np.asarray(removed_ids, dtype=np.int64))
        fsync_tree(tmp)
        final = deltas / f"{gen:06d}"
        tmp.rename(final)
        fsync_dir(deltas)
        return final

    # ---- reading and housekeeping ----
    def load(self, version: str | None = None, **options: Any) -> LoadedIndex | None:
        """Load a pointer (default: the live one); ``options`` go to ``load_index``."""
        version = version or self.current_version()
        if version is None:
            return None
        base, gen = split_pointer(version)
        return load_index(self.versions / base, version, gen, **options)

    def manifest(self, version: str) -> Manifest:
        base, _ = split_pointer(version)
        return Manifest.read(self.versions / base / "manifest.json")

    def prune(self) -> list[str]:
        """Delete version folders other than CURRENT's and PREVIOUS's bases, and leftovers of
        killed writes (``.staging-*``). Resumable builds (``.building-*``) are kept."""
        keep = {split_pointer(p)[0] for p in (self.current_version(), self.previous_version())
                if p}
        removed = []
        with self.lock():
            for folder in sorted(self.versions.iterdir()) if self.versions.exists() else []:
                if folder.name in keep or folder.name.startswith(".building-"):
                    continue
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        if removed:
            log.info("pruned index folders %s", removed)
        return removed
