"""Adding crops: from a folder (``tbps ingest``) or from uploaded bytes (the admin API)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from service.config import Settings
from service.search.catalog import touch_stamp
from service.store import crud, storage
from service.store.orm import Crop, CropStatus

log = logging.getLogger(__name__)
ORIGINAL_NAME_MAX = Crop.__table__.c.original_name.type.length  # 512


@dataclass
class FileResult:
    name: str
    status: str  # "added" | "duplicate" | "rejected"
    crop_id: int | None = None
    reason: str | None = None
    new_file: str | None = None  # written by this call: removed if the transaction fails


@dataclass
class IngestReport:
    results: list[FileResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def added(self) -> int:
        return self.count("added")

    @property
    def duplicates(self) -> int:
        return self.count("duplicate")

    @property
    def rejected(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "rejected"]


def ingest_bytes(session: Session, settings: Settings, *, name: str, data: bytes,
                 camera: str | None, captured_at: datetime | None = None,
                 person_id: str | None = None) -> FileResult:
    """Validate, store content-addressed and record one crop. Duplicates are not stored twice.
    A file this call wrote is removed again when recording it fails (no file without a row)."""
    try:
        image = storage.check_image(data, max_bytes=settings.max_upload_bytes,
                                    max_pixels=settings.max_image_pixels)
    except storage.ImageRejected as exc:
        return FileResult(name, "rejected", reason=str(exc))
    existing = crud.get_crop_by_sha(session, sha256=image.sha256)
    if existing is not None and existing.status != CropStatus.deleted:
        if (settings.resolved_crops_dir / existing.stored_path).is_file():
            return _duplicate(name, existing.id)
        return _restore_file(settings, image, existing, name=name)
    rel, wrote = storage.store(image, settings.resolved_crops_dir)
    try:
        result = _record(session, image, rel, existing, name=fit_name(name), camera=camera,
                         captured_at=captured_at, person_id=person_id)
    except BaseException:
        if wrote:
            storage.remove(rel, settings.resolved_crops_dir)
        raise
    result.new_file = rel if wrote and result.status == "added" else None
    return result


def _duplicate(name: str, crop_id: int) -> FileResult:
    """Not stored twice; the reason names the crop it repeats."""
    return FileResult(name, "duplicate", crop_id=crop_id,
                      reason=f"already in the gallery as crop {crop_id}")


def _restore_file(settings: Settings, image: storage.CheckedImage, crop: Crop, *,
                  name: str) -> FileResult:
    """A crop row whose file is gone (lost to a crash or by hand): the upload of the same
    content stores the file again, so the crop is whole. A crop whose indexing failed for
    want of the file is pending again, for the add job the upload queues."""
    rel, wrote = storage.store(image, settings.resolved_crops_dir)  # the row's path: same content
    if crop.status == CropStatus.failed:
        crop.status, crop.error = CropStatus.pending, None
    log.warning("crop %s had no file: stored again from %s", crop.id, name)
    return FileResult(name, "added", crop_id=crop.id, new_file=rel if wrote else None)


def fit_name(name: str, limit: int = ORIGINAL_NAME_MAX) -> str:
    """A file name cut to ``limit`` characters, keeping its extension (the column's length:
    PostgreSQL refuses a longer one, and one file must not lose the batch)."""
    if len(name) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    keep = f"{dot}{ext}" if stem and len(ext) < 16 else ""
    return name[: limit - len(keep)] + keep


def _record(session: Session, image: storage.CheckedImage, rel: str, existing: Crop | None, *,
            name: str, camera: str | None, captured_at: datetime | None,
            person_id: str | None) -> FileResult:
    cam = crud.get_or_create_camera(session, name=camera) if camera else None
    if existing is not None:  # deleted before, uploaded again
        crud.revive_crop(session, existing, stored_path=rel, camera=cam, captured_at=captured_at,
                         person_id=person_id, original_name=name)
        return FileResult(name, "added", crop_id=existing.id)
    try:
        crop: Crop = crud.add_crop(session, sha256=image.sha256, stored_path=rel,
                                   width=image.width, height=image.height, camera=cam,
                                   captured_at=captured_at, person_id=person_id,
                                   original_name=name)
    except crud.DuplicateCrop as dup:  # a parallel upload of the same file won
        return _duplicate(name, dup.crop.id)
    return FileResult(name, "added", crop_id=crop.id)


def iter_files(folder: Path) -> Iterator[Path]:
    """Every regular file below ``folder``, in a stable order; hidden files skipped."""
    for path in sorted(folder.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if path.is_file() and not hidden:
            yield path


def read_person_ids(path: Path) -> dict[str, str]:
    """File path (relative to the image folder) -> person id, from a CUHK-PEDES style
    annotation file (``reid_raw.json``: a list of ``{"id": ..., "file_path": ...}``)."""
    entries = json.loads(Path(path).read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of {{id, file_path}} entries")
    out = {}
    for entry in entries:
        if isinstance(entry, dict) and "file_path" in entry and entry.get("id") is not None:
            out[Path(str(entry["file_path"])).as_posix()] = str(entry["id"])
    return out


def ingest_folder(session: Session, settings: Settings, folder: Path, *,
                  camera: str | None = None, persons: Mapping[str, str] | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  on_commit: Callable[[], None] | None = None,
                  commit_every: int = 500) -> IngestReport:
    """Ingest every file below ``folder``. Without ``camera`` the first sub-folder names it;
    ``persons`` maps a file's path below ``folder`` to its person id. Every ``commit_every``
    files are committed and announced to searching processes (the catalog stamp), then
    ``on_commit`` is called: a long ingest becomes indexable, and searchable, as it goes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    report, files = IngestReport(), list(iter_files(folder))
    for i, path in enumerate(files, 1):
        rel = path.relative_to(folder)
        cam = camera or (rel.parts[0] if len(rel.parts) > 1 else None)
        try:
            data = path.read_bytes()
        except OSError as exc:
            report.results.append(FileResult(str(rel), "rejected", reason=f"unreadable: {exc}"))
            continue
        result = ingest_bytes(session, settings, name=str(rel), data=data, camera=cam,
                              person_id=(persons or {}).get(rel.as_posix()))
        if result.status == "rejected":
            log.warning("skipped %s: %s", rel, result.reason)
        report.results.append(result)
        if i % commit_every == 0:
            _committed(session, settings, on_commit)
        if progress and (i % 100 == 0 or i == len(files)):
            progress(i, len(files))
    _committed(session, settings, on_commit)
    return report


def _committed(session: Session, settings: Settings, on_commit: Callable[[], None] | None) -> None:
    session.commit()
    touch_stamp(settings.data_dir)
    if on_commit:
        on_commit()
