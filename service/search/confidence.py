"""Match confidence of served hits: the checkpoint's calibration sidecar (``tbps calibrate``,
``models.calibration``) turns a score into P(same person) and a level (strong / possible /
weak). No FastAPI imports here.

Which calibration a query uses: a description alone -> ``text``; examples (``like``) or a photo
alone -> ``image``; a description with examples or a photo -> ``blend`` (fitted on dev at the
sidecar's chosen ``text_weight``: exact at that weight, an approximation at another).
Each mode serves the map its sidecar names (Platt's logistic or an isotonic map; a sidecar
written before the isotonic option has Platt's only and serves it).
A sidecar is used only when its checkpoint sha256 is the served encoder's: a score scale belongs
to one model. Without one every confidence field is null.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from models.calibration import Calibration, ScoreMap, sidecar_path
from models.encoder import EncoderSpec

log = logging.getLogger(__name__)

GOOD_LEVELS = ("strong", "possible")


@dataclass(frozen=True)
class Confidence:
    """A loaded sidecar and the questions the search asks of it."""

    calibration: Calibration

    @staticmethod
    def mode(*, text: bool, examples: bool) -> str:
        if text and examples:
            return "blend"
        return "image" if examples else "text"

    @cached_property
    def maps(self) -> dict[str, ScoreMap]:
        """Mode -> the map it serves, built once (not per hit)."""
        return {mode: self.calibration.map(mode) for mode in self.calibration.modes}

    def probability(self, mode: str, scores: np.ndarray) -> np.ndarray:
        """(N,) scores -> (N,) P(same person), rounded to 3 decimals."""
        return np.round(self.maps[mode].prob(scores), 3)

    def level(self, p: float) -> str:
        return self.calibration.level(p)

    def good_score(self, mode: str) -> float:
        """The lowest score whose match is at least "possible" (the map is non-decreasing);
        +-inf where no score's or every score's is."""
        low = min(self.calibration.levels[name] for name in GOOD_LEVELS)
        return self.maps[mode].score_at(low)

    @property
    def text_weight(self) -> float:
        return float(self.calibration.text_weight["chosen"])

    @property
    def same_person(self) -> dict:
        """threshold, precision, recall (image mode, chosen on dev)."""
        return self.calibration.same_person


def calibration_path(checkpoint: Path | None, configured: Path | None) -> Path:
    """The configured sidecar, else the one beside the checkpoint (default: the bundled one)."""
    if configured is not None:
        return Path(configured)
    from models.factory import DEFAULT_CHECKPOINT

    return sidecar_path(Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT)


def load_confidence(path: Path, spec: EncoderSpec) -> Confidence | None:
    """The sidecar at ``path`` when it calibrates this encoder; else None and one warning."""
    if not path.is_file():
        log.warning("no calibration sidecar %s: hits carry no confidence (run `tbps "
                    "calibrate --checkpoint ...`)", path)
        return None
    try:
        calibration = Calibration.load(path)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("calibration sidecar %s not readable (%s): hits carry no confidence",
                    path, exc)
        return None
    if not calibration.matches(spec.checkpoint_sha256):
        log.warning("calibration sidecar %s is for checkpoint %s, not the served %s: hits "
                    "carry no confidence (run `tbps calibrate` for this checkpoint)", path,
                    calibration.checkpoint_sha256[:12], spec.checkpoint_sha256[:12])
        return None
    return Confidence(calibration)
