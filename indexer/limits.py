"""The image limits of the indexer's reader, and the one place their defaults are written.

The service's settings (``TBPS_MAX_UPLOAD_BYTES``, ``TBPS_MAX_IMAGE_PIXELS``) default to these
and hand their values to the indexer through ``ReadOptions.limits``, so that an upload accepted
under the settings is never refused by the indexer, nor the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageLimits:
    """Largest crop file in bytes and largest image in pixels (width x height)."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError(f"image limits must be positive, got {self}")
