"""reader -> encoder -> writer, wired together and timed per stage."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.device_decode import device_batches
from indexer.encode import encode_batch, encoder_device
from indexer.limits import ImageLimits
from indexer.reader import Batch, default_workers, read_batches
from indexer.writer import ShardWriter
from models.encoder import Encoder

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class ReadOptions:
    """How the reader stage runs; ``workers`` None means one per spare core. The service
    passes its settings' ``limits`` (``Settings.image_limits``)."""

    batch_size: int = 64
    workers: int | None = None
    limits: ImageLimits = field(default_factory=ImageLimits)
    decode_on_device: bool | None = None  # None: on a CUDA encoder (nvjpeg), else in workers


@dataclass
class StageTimes:
    """Seconds spent waiting on each stage (the reader overlaps with the others)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - since
        return now


def encoded_batches(encoder: Encoder, items: Sequence[tuple[int, Path]], options: ReadOptions,
                    times: StageTimes) -> Iterator[tuple[Batch, np.ndarray]]:
    """Yield each reader batch with its (B, D) float32 vectors."""
    device = encoder_device(encoder)
    on_device = (device.type == "cuda" if options.decode_on_device is None
                 else options.decode_on_device)
    if on_device:  # workers only read files; decode and resize run on the device
        batches = device_batches(items, encoder.preprocess, device,
                                 batch_size=options.batch_size,
                                 workers=default_workers() if options.workers is None
                                 else options.workers, limits=options.limits)
    else:
        batches = read_batches(items, encoder.preprocess, batch_size=options.batch_size,
                               workers=options.workers, pin_memory=device.type == "cuda",
                               limits=options.limits)
    mark = time.perf_counter()
    for batch in batches:
        mark = times.add("read", mark)
        vectors = encode_batch(encoder, batch.images)  # (B, D)
        mark = times.add("encode", mark)
        yield batch, vectors
        mark = time.perf_counter()


@dataclass
class Buffer:
    """Encoded crops accumulated until a shard (or the whole add) is written."""

    dim: int
    ids: list[int] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)

    def add(self, batch: Batch, vectors: np.ndarray) -> None:
        self.ids += batch.ids
        self.vectors.append(vectors)
        self.failed += batch.failed

    def __len__(self) -> int:
        return len(self.ids) + len(self.failed)

    def take(self) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        """-> (ids (N,), vectors (N, D) float32, failures) and empty the buffer."""
        vectors = (np.concatenate(self.vectors).astype(np.float32, copy=False) if self.vectors
                   else np.zeros((0, self.dim), np.float32))
        out = (np.asarray(self.ids, np.int64), vectors, self.failed)
        self.ids, self.vectors, self.failed = [], [], []
        return out


def encode_to_shards(encoder: Encoder, items: Sequence[tuple[int, Path]], writer: ShardWriter, *,
                     shard_size: int, options: ReadOptions, times: StageTimes,
                     progress: Progress | None = None, done: int = 0, total: int = 0) -> int:
    """Encode ``items`` into shards of about ``shard_size`` crops; returns crops processed."""
    buffer = Buffer(encoder.spec.dim)
    for batch, vectors in encoded_batches(encoder, items, options, times):
        buffer.add(batch, vectors)
        done += len(batch.ids) + len(batch.failed)
        if len(buffer) >= shard_size:
            mark = time.perf_counter()
            writer.write(*buffer.take())
            times.add("write", mark)
        if progress:
            progress(done, total)
    if len(buffer):
        mark = time.perf_counter()
        writer.write(*buffer.take())
        times.add("write", mark)
    return done


def encode_items(encoder: Encoder, items: Sequence[tuple[int, Path]], options: ReadOptions,
                 times: StageTimes, *, progress: Progress | None = None, done: int = 0,
                 total: int = 0) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """In-memory variant for incremental adds: (ids (N,), vectors (N, D), failures).
    ``progress(done + crops so far, total)`` is called after every batch."""
    buffer = Buffer(encoder.spec.dim)
    for batch, vectors in encoded_batches(encoder, items, options, times):
        buffer.add(batch, vectors)
        if progress:
            progress(done + len(buffer), total or len(items))
    return buffer.take()


class LoggedProgress:
    """A progress callback that logs ``n/N crops (rate, ETA)`` at the first batch, then at
    most every ``every_s`` seconds and at the end; it calls ``inner`` on every update."""

    def __init__(self, label: str, inner: Progress | None = None, every_s: float = 10.0) -> None:
        self.label, self.inner, self.every_s = label, inner, every_s
        self.started = self.last = time.monotonic()
        self.first: int | None = None  # crops done at the first call (resumed ones)

    def __call__(self, done: int, total: int) -> None:
        if self.inner:
            self.inner(done, total)
        now = time.monotonic()
        if self.first is None:
            self.first, self.started = done, now
            if done < total:
                log.info("%s: %d/%d crops, starting", self.label, done, total)
            return
        if now - self.last < self.every_s and done < total:
            return
        self.last = now
        rate = (done - self.first) / max(now - self.started, 1e-6)
        eta = (total - done) / rate if rate > 0 else float("nan")
        log.info("%s: %d/%d crops (%.1f crops/s, ETA %.0f s)", self.label, done, total, rate,
                 eta)
