"""The in-memory filter columns: full loads, incremental loads after uploads, exact masks."""

from datetime import UTC, datetime, timedelta

import numpy as np

from service.search.catalog import extend_catalog, load_catalog
from service.search.filters import search_filter
from service.store import crud
from service.store.db import session_scope
from service.store.orm import CropStatus

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def _add(s, sha, camera, hours, person=None):
    return crud.add_crop(s, sha256=sha * 64, stored_path=f"{sha}.png", width=8, height=8,
                         camera=camera, captured_at=T0 + timedelta(hours=hours),
                         person_id=person, original_name=None)


def test_full_and_incremental_loads_agree(migrated_settings):
    url = migrated_settings.resolved_database_url
    with session_scope(url) as s:
        cam = crud.get_or_create_camera(s, name="a")
        ids = [_add(s, c, cam, h, "p1").id for c, h in zip("abc", (0, 1, 2), strict=True)]
        crud.mark_deleted(s, crops=[crud.get_crop(s, crop_id=ids[1])])
    with session_scope(url) as s:
        first = load_catalog(s)
    assert first.ids.tolist() == [ids[0], ids[2]]
    loaded_at = datetime.now(UTC) - timedelta(seconds=1)
    with session_scope(url) as s:
        other = crud.get_or_create_camera(s, name="b")
        new = _add(s, "d", other, 5, "p2").id
        crud.revive_crop(s, crud.get_crop(s, crop_id=ids[1]), stored_path="b.png", camera=other,
                         captured_at=T0, person_id=None, original_name=None)
    with session_scope(url) as s:
        grown = extend_catalog(s, first, since=loaded_at)
        full = load_catalog(s)
    for name in ("ids", "camera_ids", "times"):
        assert np.array_equal(getattr(grown, name), getattr(full, name), equal_nan=True), name
    for name, column in full.columns.items():
        assert np.array_equal(grown.columns[name], column, equal_nan=True), name
    assert grown.ids.tolist() == sorted([*ids, new])
    assert set(grown.cameras) == set(full.cameras) == {"a", "b"}
    names = [grown.person_names[c] if c >= 0 else None for c in grown.persons]
    assert names == [full.person_names[c] if c >= 0 else None for c in full.persons]
    mask = grown.filter_mask(search_filter({"cameras": ["b"], "time_from": T0 + timedelta(hours=4)},
                                           grown))
    assert grown.ids[mask].tolist() == [new]
    with session_scope(url) as s:
        assert crud.get_crop(s, crop_id=ids[1]).status == CropStatus.pending
