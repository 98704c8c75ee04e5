"""The database side of indexing: which crops to encode, and recording what happened."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from indexer.filters import ATTRIBUTES
from indexer.manifest import Manifest
from service.search.filters import CROP_COLUMNS
from service.store.orm import Crop, CropStatus, IndexStatus, IndexVersion

CHUNK = 5000  # ids per IN (...) clause, well under SQLite's variable limit


def _chunks(ids: list[int]) -> Iterable[list[int]]:
    for lo in range(0, len(ids), CHUNK):
        yield ids[lo : lo + CHUNK]


def indexable_items(session: Session, crops_dir: Path,
                    ids: Iterable[int] | None = None) -> list[tuple[int, Path]]:
    """(crop id, file path) of every crop not deleted (or of those among ``ids``), by id."""
    stmt = select(Crop.id, Crop.stored_path).where(Crop.status != CropStatus.deleted)
    if ids is None:
        rows = session.execute(stmt.order_by(Crop.id)).all()
    else:
        rows = [r for chunk in _chunks(sorted(set(int(i) for i in ids)))
                for r in session.execute(stmt.where(Crop.id.in_(chunk)).order_by(Crop.id))]
    return [(int(cid), Path(crops_dir) / path) for cid, path in rows]


def crop_attributes(session: Session):
    """An ``indexer.jobs.Attributes`` over the crops table: crop ids -> {attribute: (N,)
    values} for every column of ``service.search.filters.CROP_COLUMNS`` (camera id, capture time,
    height ...; unknown as each attribute says), for engines that filter inside."""

    def read(ids: np.ndarray) -> dict[str, np.ndarray]:
        found: dict[int, tuple] = {}
        for chunk in _chunks([int(i) for i in ids]):
            columns = (getattr(Crop, c.column) for c in CROP_COLUMNS)
            stmt = select(Crop.id, *columns).where(Crop.id.in_(chunk))
            found |= {int(row[0]): tuple(c.value(v) for c, v in zip(CROP_COLUMNS, row[1:],
                                                                     strict=True))
                      for row in session.execute(stmt)}
        missing = tuple(c.value(None) for c in CROP_COLUMNS)
        rows = [found.get(int(i), missing) for i in ids]
        return {c.attribute: np.asarray([r[j] for r in rows], ATTRIBUTES[c.attribute].dtype)
                for j, c in enumerate(CROP_COLUMNS)}

    return read


def stored_paths(session: Session) -> set[str]:
    """Stored file paths (relative to the crops folder) of every crop not deleted."""
    stmt = select(Crop.stored_path).where(Crop.status != CropStatus.deleted)
    return set(session.scalars(stmt))


def crop_statuses(session: Session) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N,), statuses (N,) str) of every crop row."""
    rows = session.execute(select(Crop.id, Crop.status)).all()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    statuses = np.array([CropStatus(r[1]).value for r in rows], dtype=object)
    return ids, statuses


def mark_indexed(session: Session, ids: Iterable[int]) -> None:
    """Mark crops indexed (crops deleted meanwhile stay deleted)."""
    for chunk in _chunks([int(i) for i in ids]):
        session.execute(update(Crop).where(Crop.id.in_(chunk), Crop.status != CropStatus.deleted)
                        .values(status=CropStatus.indexed, error=None))


def mark_failed(session: Session, failed: Iterable[tuple[int, str]]) -> None:
    for crop_id, reason in failed:
        session.execute(update(Crop).where(Crop.id == int(crop_id),
                                           Crop.status != CropStatus.deleted)
                        .values(status=CropStatus.failed, error=reason[:2000]))


def mark_pending(session: Session, ids: Iterable[int]) -> None:
    for chunk in _chunks([int(i) for i in ids]):
        session.execute(update(Crop).where(Crop.id.in_(chunk), Crop.status != CropStatus.deleted)
                        .values(status=CropStatus.pending))


def record_live(session: Session, *, version: str, path: Path | str, manifest: Manifest,
                count: int) -> None:
    """Make the row of base ``version`` the only live one (creating it if needed)."""
    for row in session.scalars(select(IndexVersion).where(IndexVersion.status == IndexStatus.live,
                                                          IndexVersion.version != version)):
        row.status = IndexStatus.retired
    row = session.scalar(select(IndexVersion).where(IndexVersion.version == version))
    if row is None:
        row = IndexVersion(version=version, path=str(path), dim=manifest.dim,
                           factory=manifest.factory[:256],
                           checkpoint_sha256=manifest.checkpoint_sha256)
        session.add(row)
    row.status, row.count = IndexStatus.live, int(count)
    row.published_at = datetime.now(UTC)
