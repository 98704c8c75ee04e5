"""The searchable crops' filter columns, held in memory as arrays.

Filters (camera, time range) are evaluated here with numpy, so a filtered search needs no
database round trip before the index search: the allowed ids go straight into the index's
exact id filter, and the one metadata query per request fetches the hits' rows afterwards.

Every process that adds, deletes or renames rewrites ``catalog.stamp`` in the data dir after
its commit (``touch_stamp``; deletions also ``catalog.full.stamp``), so API processes see each
other's changes: after uploads a search reads only the rows created since its last load (with
a 10-minute margin for slow transactions); after deletions, or 10 minutes after its last full
load, it reads them all again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.orm import Camera, Crop, CropStatus


def to_epoch(value: datetime) -> float:
    """Seconds since the epoch; naive datetimes are UTC (how the database stores them)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


@dataclass
class Catalog:
    """Every crop that is not deleted, sorted by id; one row per crop in each array."""

    ids: np.ndarray  # (N,) int64, ascending
    camera_ids: np.ndarray  # (N,) int64, -1 when unknown
    times: np.ndarray  # (N,) float64 epoch seconds, NaN when unknown
    persons: np.ndarray  # (N,) int64 code into person_names, -1 when unknown
    person_names: list[str]
    cameras: dict[str, int] = field(default_factory=dict)  # name -> id
    generation: int = 0  # which load this is, in the process that holds it

    @property
    def size(self) -> int:
        return int(len(self.ids))

    def positions(self, crop_ids: np.ndarray) -> np.ndarray:
        """Row of each crop id, or -1 for ids not in the catalog (deleted or unknown)."""
        crop_ids = np.asarray(crop_ids, dtype=np.int64)
        if self.size == 0:
            return np.full(len(crop_ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, crop_ids), self.size - 1)
        return np.where(self.ids[pos] == crop_ids, pos, -1)

    def filter_mask(self, *, cameras: list[str] | None, time_from: datetime | None,
                    time_to: datetime | None) -> np.ndarray | None:
        """(N,) bool of crops passing the filters, or None when there is no filter."""
        if cameras is None and time_from is None and time_to is None:
            return None
        mask = np.ones(self.size, dtype=bool)
        if cameras is not None:
            wanted = [self.cameras[name] for name in cameras if name in self.cameras]
            mask &= np.isin(self.camera_ids, np.asarray(wanted, dtype=np.int64))
        if time_from is not None:
            mask &= self.times >= to_epoch(time_from)  # NaN compares False: unknown times drop
        if time_to is not None:
            mask &= self.times <= to_epoch(time_to)
        return mask


_COLUMNS = (Crop.id, Crop.camera_id, Crop.captured_at, Crop.person_id)


def load_catalog(session: Session) -> Catalog:
    """One query for the crops' filter columns, one for the cameras."""
    rows = session.execute(select(*_COLUMNS).where(Crop.status != CropStatus.deleted)
                           .order_by(Crop.id)).all()
    return _merge(Catalog(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
                          np.zeros(0, np.int64), []), rows, _cameras(session))


def extend_catalog(session: Session, catalog: Catalog, *, since: datetime) -> Catalog:
    """The catalog plus crops created (or uploaded again) since ``since``: after uploads, a
    query for the new rows instead of all of them."""
    rows = session.execute(select(*_COLUMNS).where(Crop.status != CropStatus.deleted,
                                                   Crop.created_at >= since)).all()
    known = catalog.positions(np.asarray([r.id for r in rows], dtype=np.int64)) >= 0
    return _merge(catalog, [r for r, k in zip(rows, known, strict=True) if not k],
                  _cameras(session))


def _cameras(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Camera.name, Camera.id)).tuples().all())


def _merge(catalog: Catalog, rows: list, cameras: dict[str, int]) -> Catalog:
    """A new catalog: the old rows and ``rows`` (not yet in it), sorted by id."""
    names = {name: code for code, name in enumerate(catalog.person_names)}
    persons = [names.setdefault(r.person_id, len(names)) if r.person_id else -1 for r in rows]
    n = len(rows)
    ids = np.concatenate([catalog.ids, np.fromiter((r.id for r in rows), np.int64, n)])
    order = np.argsort(ids, kind="stable")
    cams = np.fromiter((r.camera_id if r.camera_id is not None else -1 for r in rows), np.int64, n)
    times = np.fromiter((to_epoch(r.captured_at) if r.captured_at else np.nan for r in rows),
                        np.float64, n)
    return Catalog(ids=ids[order],
                   camera_ids=np.concatenate([catalog.camera_ids, cams])[order],
                   times=np.concatenate([catalog.times, times])[order],
                   persons=np.concatenate([catalog.persons,
                                           np.asarray(persons, np.int64)])[order],
                   person_names=list(names), cameras=cameras)


def stamp_paths(data_dir: Path) -> tuple[Path, Path]:
    """(any change, changes that need a full reload: deletions)."""
    return Path(data_dir) / "catalog.stamp", Path(data_dir) / "catalog.full.stamp"


def read_stamp(data_dir: Path) -> tuple[str, str]:
    changed, deleted = (p.read_text() if p.exists() else "" for p in stamp_paths(data_dir))
    return changed, deleted


def touch_stamp(data_dir: Path, *, full: bool = False) -> None:
    """Tell every process that crops were added (``full`` False) or deleted (``full`` True)."""
    for path in stamp_paths(data_dir)[: 2 if full else 1]:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # one per call: threads
        tmp.write_text(uuid.uuid4().hex)
        tmp.replace(path)
