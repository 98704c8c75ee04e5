"""The searchable crops' filter columns, held in memory as arrays.

Filters (``service.search.filters``: camera, time range, height ...) are evaluated here with numpy,
so a filtered search needs no database round trip before the index search: the allowed ids go
straight into the index's exact id filter, and the one metadata query per request fetches the
hits' rows afterwards.

Every process that adds, deletes or renames rewrites ``catalog.stamp`` in the data dir after
its commit (``touch_stamp``; deletions also ``catalog.full.stamp``), so API processes see each
other's changes: after uploads a search reads only the rows created since its last load (with
a 10-minute margin for slow transactions); after deletions, or 10 minutes after its last full
load, it reads them all again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.filters import ATTRIBUTES, SearchFilter
from service.search.filters import CROP_COLUMNS, to_epoch
from service.store.orm import Camera, Crop, CropStatus

__all__ = ["Catalog", "extend_catalog", "load_catalog", "read_stamp", "stamp_paths", "to_epoch",
           "touch_stamp"]


@dataclass
class Catalog:
    """Every crop that is not deleted, sorted by id; one row per crop in each array."""

    ids: np.ndarray  # (N,) int64, ascending
    columns: dict[str, np.ndarray]  # attribute (CROP_COLUMNS) -> (N,), unknown as it says
    persons: np.ndarray  # (N,) int64 code into person_names, -1 when unknown
    person_names: list[str]
    cameras: dict[str, int] = field(default_factory=dict)  # name -> id
    generation: int = 0  # which load this is, in the process that holds it

    @property
    def camera_ids(self) -> np.ndarray:
        """(N,) int64, -1 when unknown."""
        return self.columns["camera_id"]

    @property
    def times(self) -> np.ndarray:
        """(N,) float64 epoch seconds, NaN when unknown."""
        return self.columns["ts"]

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

    def filter_mask(self, flt: SearchFilter | None) -> np.ndarray | None:
        """(N,) bool of crops passing the filter, or None when there is no filter."""
        return None if flt is None or flt.empty else flt.mask(self.columns)


_COLUMNS = (Crop.id, Crop.person_id, *(getattr(Crop, c.column).label(c.attribute)
                                        for c in CROP_COLUMNS))


def load_catalog(session: Session) -> Catalog:
    """One query for the crops' filter columns, one for the cameras."""
    rows = session.execute(select(*_COLUMNS).where(Crop.status != CropStatus.deleted)
                           .order_by(Crop.id)).all()
    empty = {c.attribute: np.zeros(0, ATTRIBUTES[c.attribute].dtype) for c in CROP_COLUMNS}
    return _merge(Catalog(np.zeros(0, np.int64), empty, np.zeros(0, np.int64), []), rows,
                  _cameras(session))


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
    columns = {c.attribute: np.concatenate([
        catalog.columns[c.attribute],
        np.fromiter((c.value(getattr(r, c.attribute)) for r in rows),
                    ATTRIBUTES[c.attribute].dtype, n)])[order] for c in CROP_COLUMNS}
    return Catalog(ids=ids[order], columns=columns,
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
