"""The full index build on Ray Data (``tbps index --engine ray [--address ADDR]``).

The crop list becomes a Dataset; ``map_batches`` runs ``EncodeCrops`` actors, each loading
the encoder from the checkpoint once, then decoding, resizing and encoding its batches with
the local indexer's own stages (``indexer.reader.CropFiles`` with the encoder's ``Preprocess``
and the ``ImageLimits`` given, ``indexer.encode.encode_batch``), so the vectors and the
refused crops are the local indexer's. One actor per GPU when the cluster has GPUs, else a
pool of CPU actors. The driver gathers the encoded rows as they stream back (with
progress), then writes them with ``IndexBackend.build``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.backends.base import IndexBackend, Rows
from indexer.encode import encode_batch
from indexer.filters import ATTRIBUTES, attribute_arrays
from indexer.limits import ImageLimits
from indexer.reader import CropFiles, collate

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CropItem:
    """One crop to index: its id, file, and what in-engine filters need."""

    id: int
    path: Path
    attributes: Mapping[str, float] = field(default_factory=dict)  # indexer.filters names


@dataclass
class RayReport:
    version: str
    indexed: int
    failed: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0


class EncodeCrops:
    """A Ray Data actor: the encoder loaded once; batches of crop rows -> vectors."""

    def __init__(self, encoder_options: dict[str, Any],
                 limits: ImageLimits = ImageLimits()) -> None:
        from models.factory import load_encoder

        self.encoder = load_encoder(**encoder_options)
        self.limits = limits

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = list(zip(batch["id"].tolist(), map(Path, batch["path"].tolist()), strict=True))
        files = CropFiles(items, self.encoder.preprocess, self.limits)
        decoded = collate([files[i] for i in range(len(files))])
        vectors = encode_batch(self.encoder, decoded.images)  # (B_ok, D)
        failed_ids = [cid for cid, _ in decoded.failed]
        dim = self.encoder.spec.dim
        ids = np.asarray(decoded.ids + failed_ids, np.int64)  # (B,)
        by_id = dict(zip(batch["id"].tolist(), range(len(batch["id"])), strict=True))
        order = [by_id[int(i)] for i in ids]
        return {"id": ids, "vector": np.concatenate([vectors, np.zeros((len(failed_ids), dim),
                                                                       np.float32)]),
                "error": np.asarray([""] * len(decoded.ids) + [r for _, r in decoded.failed],
                                    dtype=object),
                **{name: batch[name][order] for name in ATTRIBUTES if name in batch}}


def encode_dataset(items: Sequence[CropItem], encoder_options: dict[str, Any], *,
                   batch_size: int = 64, actors: int | None = None,
                   limits: ImageLimits = ImageLimits()) -> Any:
    """The lazy Ray Dataset of encoded crops (columns id, vector, error, and one per
    attribute of ``indexer.filters.ATTRIBUTES``: camera_id, ts ...);
    ``limits``: the reader's (the service passes ``Settings.image_limits``)."""
    import ray

    rows = [{"id": c.id, "path": str(c.path),
             **{name: c.attributes.get(name, attr.unknown) for name, attr in ATTRIBUTES.items()}}
            for c in items]
    gpus = int(ray.cluster_resources().get("GPU", 0))
    size = actors or gpus or max(1, int(ray.cluster_resources().get("CPU", 1)))
    log.info("Ray Data: %d crops, %d %s actors, batches of %d", len(rows), size,
             "GPU" if gpus else "CPU", batch_size)
    return ray.data.from_items(rows).map_batches(
        EncodeCrops, fn_constructor_kwargs={"encoder_options": encoder_options,
                                            "limits": limits},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=size),
        num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)


def encoded_rows(dataset: Any, *, total: int, progress: Progress | None = None,
                 batch_size: int | None = None) -> Iterator[tuple[Rows, list[tuple[int, str]]]]:
    """Stream an encoded Dataset as (Rows of good crops, failures) batches, as they come
    (``batch_size`` None: the actors' batches)."""
    done = 0
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        ok = batch["error"] == ""
        failed = [(int(i), str(e)) for i, e in zip(batch["id"][~ok], batch["error"][~ok],
                                                    strict=True)]
        rows = Rows(batch["id"][ok].astype(np.int64), batch["vector"][ok].astype(np.float32),
                    attribute_arrays(int(ok.sum()), {name: batch[name][ok] for name in ATTRIBUTES
                                                     if name in batch}))
        done += len(batch["id"])
        if progress:
            progress(done, total)
        yield rows, failed


def build_with_ray(backend: IndexBackend, items: Sequence[CropItem],
                   encoder_options: dict[str, Any], encoder_spec: dict[str, Any], *,
                   address: str | None = None, factory: str | None = None,
                   batch_size: int = 64, actors: int | None = None,
                   progress: Progress | None = None,
                   limits: ImageLimits = ImageLimits()) -> RayReport:
    """Encode ``items`` on Ray (``address`` None: a local Ray), build a backend version from
    the vectors and publish it. Encoded batches stream back to the driver as the actors finish
    them (``progress`` per batch) and are kept there until all are in, so the build knows how
    many crops decoded before it starts writing: (N, D) float32 in the driver's memory."""
    import ray

    started = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    encoded = encode_dataset(items, encoder_options, batch_size=batch_size, actors=actors,
                             limits=limits)
    kept: list[Rows] = []
    failed: list[tuple[int, str]] = []
    for rows, bad in encoded_rows(encoded, total=len(items), progress=progress):
        kept.append(rows)
        failed.extend(bad)
    good = sum(len(rows) for rows in kept)
    with backend.lock():
        version = backend.build(kept, total=good, encoder=encoder_spec, factory=factory)
        backend.publish(version)
    report = RayReport(version, good, failed, time.perf_counter() - started)
    log.info("Ray build %s: %d crops indexed, %d failed, %.1fs", version, good, len(failed),
             report.seconds)
    return report
