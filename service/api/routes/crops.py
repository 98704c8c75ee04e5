from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, Response

from service.api.administration import thumbnail
from service.api.deps import OptionalKey, SessionDep, SettingsDep, deny, key_owner
from service.api.schemas import ErrorResponse
from service.search.urls import valid_signature
from service.store import crud
from service.store.orm import Crop, CropStatus

PUBLIC_CACHE = "public, max-age=86400, immutable"


def image_access(request: Request, settings: SettingsDep, session: SessionDep,
                 key: OptionalKey = None,
                 exp: Annotated[int | None, Query(ge=0, le=2**40, description="Expiry of a "
                                                  "signed URL (unix time)",
                                                  examples=[1780000000])] = None,
                 sig: Annotated[str | None, Query(max_length=64, description="Signature of a "
                                                  "URL from search results",
                                                  examples=["3f2a9c0d"])] = None) -> str:
    """Images are public unless searches need a key; then a key or a signed URL is needed.
    -> the Cache-Control to send: a key-protected image is cached by the browser alone, no
    longer than a signed URL lives (for a signed URL: no longer than it has left)."""
    if not settings.search_requires_key:
        return PUBLIC_CACHE
    if key and key_owner(request, session, key) is not None:
        return _private_cache(settings.signed_url_seconds)
    if valid_signature(settings, request.url.path, exp, sig):
        return _private_cache(min(exp - int(time.time()), settings.signed_url_seconds))
    if not key and sig is None:
        raise deny(request, 401, "send X-API-Key or use the signed URL from the search results")
    raise deny(request, 403, "the key or the URL signature is not valid (signed URLs expire "
               "soon: TBPS_SIGNED_URL_SECONDS)")


def _private_cache(seconds: int) -> str:
    return f"private, max-age={max(seconds, 0)}"


ImageCache = Annotated[str, Depends(image_access)]
router = APIRouter(tags=["crops"], responses={
    401: {"model": ErrorResponse, "description": "Key or signed URL needed"},
    403: {"model": ErrorResponse, "description": "Key or signature not valid"}})

MEDIA_TYPES = {"jpg": "image/jpeg", "png": "image/png", "bmp": "image/bmp", "webp": "image/webp"}
CropId = Path(..., ge=1, le=2**62, description="Crop id", examples=[42])


def _live_crop(session, crop_id: int) -> Crop:
    crop = crud.get_crop(session, crop_id=crop_id)
    if crop is None or crop.status == CropStatus.deleted:
        raise HTTPException(status_code=404, detail=f"no crop with id {crop_id}")
    return crop


@router.get("/crops/{crop_id}/image", response_class=FileResponse,
            responses={200: {"content": {m: {"schema": {"type": "string", "format": "binary"}}
                                         for m in MEDIA_TYPES.values()},
                             "description": "The image"},
                       404: {"model": ErrorResponse}})
def crop_image(session: SessionDep, settings: SettingsDep, cache: ImageCache,
               crop_id: int = CropId) -> FileResponse:
    """The stored crop, as uploaded."""
    crop = _live_crop(session, crop_id)
    path = settings.resolved_crops_dir / crop.stored_path
    if not path.is_file():
        raise HTTPException(status_code=404, detail=f"the file of crop {crop_id} is missing")
    media = MEDIA_TYPES.get(path.suffix.lstrip("."), "application/octet-stream")
    return FileResponse(path, media_type=media, headers={"Cache-Control": cache})


@router.get("/crops/{crop_id}/thumbnail", response_class=FileResponse,
            responses={200: {"content": {"image/jpeg": {"schema": {"type": "string",
                                                                    "format": "binary"}}},
                             "description": "A JPEG thumbnail"},
                       404: {"model": ErrorResponse}})
def crop_thumbnail(session: SessionDep, settings: SettingsDep, cache: ImageCache,
                   crop_id: int = CropId) -> Response:
    """A small JPEG of the crop (longest side TBPS_THUMBNAIL_SIZE), made once and cached
    (made each time while the data dir cannot be written)."""
    crop = _live_crop(session, crop_id)
    made = thumbnail(settings, crop)
    if made is None:
        raise HTTPException(status_code=404, detail=f"the file of crop {crop_id} is missing")
    headers = {"Cache-Control": cache}
    if isinstance(made, bytes):
        return Response(made, media_type="image/jpeg", headers=headers)
    return FileResponse(made, media_type="image/jpeg", headers=headers)
