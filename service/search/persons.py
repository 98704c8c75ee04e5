"""A person's sightings: every crop with their person/track id, in time order (the detail
view's strip of other sightings). No FastAPI imports here."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from service.store.orm import Crop, CropStatus

MAX_SIGHTINGS = 500


def sightings(session: Session, *, person_id: str, limit: int = MAX_SIGHTINGS) -> list[Crop]:
    """Crops of this person, not deleted, by capture time (unknown times last), then id."""
    stmt = (select(Crop).options(joinedload(Crop.camera))
            .where(Crop.person_id == person_id, Crop.status != CropStatus.deleted)
            .order_by(Crop.captured_at.is_(None), Crop.captured_at, Crop.id).limit(limit))
    return list(session.scalars(stmt))
