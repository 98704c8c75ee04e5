"""Sightings of the person in one crop, with or without person ids (issue 26). No FastAPI.

"Sightings of this person" for any crop: its search by example (``like`` = the crop, its
stored vector) keeps the crops scoring at least the same-person threshold of the checkpoint's
calibration (chosen on dev for a stated precision, ``tbps calibrate``), and adds the crops that
share its stored person/track id where it has one (the demo, a tracker's output). Each sighting
says why it is there (``by``): ``appearance``, ``person_id``, ``both``, or ``self`` for the crop
itself. In capture-time order (crops without a time last, then by id), with a per-camera
summary. Without a calibration no appearance threshold exists: person ids alone answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from service.search import persons
from service.search.engine import Hit, SearchEngine, SearchQuery, UnknownExamples
from service.store import crud
from service.store.orm import CropStatus, as_utc

MAX_SIGHTINGS = persons.MAX_SIGHTINGS  # the same cap as a person id's sightings


class UnknownCrop(LookupError):
    """No such crop, or a deleted one."""


@dataclass
class Seen:
    crop_id: int
    camera: str | None
    captured_at: datetime | None
    file_name: str | None
    confidence: float | None  # P(same person) of its example-search score, when it has one
    by: str  # self / appearance / person_id / both


@dataclass
class CameraSpan:
    camera: str | None
    first_seen: datetime | None
    last_seen: datetime | None
    count: int


@dataclass
class Sightings:
    crop_id: int
    person_id: str | None
    threshold: float | None  # the same-person score threshold (None: no calibration)
    precision: float | None  # its precision and recall on dev pairs
    recall: float | None
    truncated: bool
    cameras: list[CameraSpan] = field(default_factory=list)
    sightings: list[Seen] = field(default_factory=list)


def crop_sightings(session: Session, engine: SearchEngine, *, crop_id: int,
                   limit: int = MAX_SIGHTINGS) -> Sightings:
    """UnknownCrop: no such live crop, or one not in the live index yet; IndexNotReady: no
    usable index."""
    crop = crud.get_crop(session, crop_id=crop_id)
    if crop is None or crop.status == CropStatus.deleted:
        raise UnknownCrop(f"no crop with id {crop_id} (unknown or deleted)")
    engine.check_ready()
    found: dict[int, Seen] = {crop.id: Seen(crop.id, crop.camera.name if crop.camera else None,
                                            as_utc(crop.captured_at), crop.original_name, None,
                                            "self")}
    hits, same = _appearance(session, engine, crop_id, limit)
    scored = {h.crop_id: h for h in hits}
    for hit in same:
        found[hit.crop_id] = _seen(hit, "appearance")
    more = len(same) >= limit  # the example search stopped at `limit`
    if crop.person_id is not None:
        rows = persons.sightings(session, person_id=crop.person_id, limit=limit + 1)
        more = more or len(rows) > limit
        for row in rows:
            if row.id in found:
                found[row.id].by = "both" if found[row.id].by == "appearance" else found[row.id].by
                continue
            hit = scored.get(row.id)
            found[row.id] = Seen(row.id, row.camera.name if row.camera else None,
                                 as_utc(row.captured_at), row.original_name,
                                 hit.confidence if hit else None, "person_id")
    ordered = sorted(found.values(), key=_time_order)
    shown = ordered[:limit]
    rule = engine.confidence.same_person if engine.confidence else {}
    return Sightings(crop.id, crop.person_id, rule.get("threshold"), rule.get("precision"),
                     rule.get("recall"), more or len(ordered) > limit, cameras(shown), shown)


def _appearance(session: Session, engine: SearchEngine, crop_id: int,
                limit: int) -> tuple[list[Hit], list[Hit]]:
    """-> (the example search's best ``limit`` hits, those at or above the threshold)."""
    if engine.confidence is None:
        return [], []
    threshold = float(engine.confidence.same_person["threshold"])
    try:
        result = engine.search(session, SearchQuery(description=None, like=(crop_id,),
                                                    top_k=limit))
    except UnknownExamples:
        raise UnknownCrop(f"crop {crop_id} is not in the live index yet (indexing pending or "
                          "failed: GET /status); its sightings by appearance need it") from None
    return result.hits, [h for h in result.hits if h.score >= threshold]


def _seen(hit: Hit, by: str) -> Seen:
    return Seen(hit.crop_id, hit.camera, hit.captured_at, hit.file_name, hit.confidence, by)


def _time_order(seen: Seen) -> tuple:
    """Capture time, crops without one last, then id."""
    when = seen.captured_at
    return (when is None, when.timestamp() if when else 0.0, seen.crop_id)


def cameras(shown: list[Seen]) -> list[CameraSpan]:
    """One span per camera, in order of first sighting (cameras seen only at unknown times
    after those with times)."""
    spans: dict[str | None, CameraSpan] = {}
    for seen in shown:  # in time order: the first is the earliest
        span = spans.setdefault(seen.camera, CameraSpan(seen.camera, None, None, 0))
        span.count += 1
        if seen.captured_at is not None:
            span.first_seen = span.first_seen or seen.captured_at
            span.last_seen = seen.captured_at
    return sorted(spans.values(), key=lambda s: (s.first_seen is None,
                                                 s.first_seen.timestamp() if s.first_seen
                                                 else 0.0))
