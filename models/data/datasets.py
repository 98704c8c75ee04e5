"""Readers for the three text-based person search benchmarks in their published layouts.

Every reader returns a list of ``Record`` (one image, its person id, its captions, its split),
so that training and evaluation do not care which benchmark they read:

- CUHK-PEDES: ``reid_raw.json`` (list of {"id", "split", "file_path", "captions"}) + ``imgs/``.
- ICFG-PEDES: ``ICFG-PEDES.json`` (list of {"id", "split", "file_path", "captions"}) + ``imgs/``.
- RSTPReid: ``data_captions.json`` (list of {"id", "split", "img_path", "captions"}) + ``imgs/``.
- CUHK-PEDES re-ID images: ``persons.json`` (list of {"file_path", "person"}) + ``imgs/``: the
  official train split with person labels and no captions (every record's split is "train";
  person names become ids 0..N-1 in sorted order), for training the image tower on identity.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

DEV_IDS_PER_DATASET = 200  # val person ids held out of training as the fixed `dev` split


@dataclass(frozen=True)
class Record:
    image_path: Path
    pid: int
    captions: tuple[str, ...]
    split: str


def _read_json_list(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with path.open() as fh:
        data = json.load(fh)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    return data


def _records(root: Path, rows: list[dict], path_key: str) -> list[Record]:
    return [Record(image_path=root / "imgs" / row[path_key], pid=int(row["id"]),
                   captions=tuple(row["captions"]), split=str(row["split"]))
            for row in rows]


def read_cuhk_pedes(root: Path) -> list[Record]:
    root = Path(root)
    return _records(root, _read_json_list(root / "reid_raw.json"), "file_path")


def read_icfg_pedes(root: Path) -> list[Record]:
    root = Path(root)
    return _records(root, _read_json_list(root / "ICFG-PEDES.json"), "file_path")


def read_rstpreid(root: Path) -> list[Record]:
    """RSTPReid names the split "train"/"val"/"test" and the image key ``img_path``."""
    root = Path(root)
    return _records(root, _read_json_list(root / "data_captions.json"), "img_path")


def read_cuhk_pedes_reid(root: Path) -> list[Record]:
    """Person-labelled images without captions (``persons.json``); ids in sorted-name order."""
    root = Path(root)
    rows = _read_json_list(root / "persons.json")
    ids = {name: i for i, name in enumerate(sorted({str(row["person"]) for row in rows}))}
    return [Record(image_path=root / "imgs" / row["file_path"], pid=ids[str(row["person"])],
                   captions=(), split="train") for row in rows]


READERS: dict[str, Callable[[Path], list[Record]]] = {
    "cuhk-pedes": read_cuhk_pedes,
    "cuhk-pedes-reid": read_cuhk_pedes_reid,
    "icfg-pedes": read_icfg_pedes,
    "rstpreid": read_rstpreid,
}


def read_dataset(name: str, root: Path) -> list[Record]:
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(READERS)}")
    return READERS[name](Path(root))


def dev_ids(records: Sequence[Record], n: int = DEV_IDS_PER_DATASET) -> set[int]:
    """The fixed development ids: the ``n`` smallest person ids of the ``val`` split.

    For CUHK-PEDES (val ids 11004..12003) that is ids 11004..11203.
    """
    val = sorted({r.pid for r in records if r.split == "val"})
    if len(val) < n:
        raise ValueError(f"only {len(val)} val ids; cannot hold out {n} as dev")
    return set(val[:n])


def select_split(records: Sequence[Record], split: str) -> list[Record]:
    """Records of one split.

    ``train``/``val``/``test`` are the dataset's own splits; ``dev`` is the held-out val ids
    (``dev_ids``); ``trainval-dev`` is everything trained on during model selection: train plus
    the other val ids; ``trainval`` is train plus every val id (the final, all-data training).
    """
    if split == "trainval":
        return [r for r in records if r.split in ("train", "val")]
    if split in ("dev", "trainval-dev"):
        held = dev_ids(records)
        if split == "dev":
            return [r for r in records if r.split == "val" and r.pid in held]
        return [r for r in records
                if r.split == "train" or (r.split == "val" and r.pid not in held)]
    out = [r for r in records if r.split == split]
    if not out:
        known = sorted({r.split for r in records} | {"dev", "trainval-dev", "trainval"})
        raise ValueError(f"split {split!r} is empty; known: {known}")
    return out


def split_by_person(records: Sequence[Record], fraction: float, seed: int = 0
                    ) -> tuple[list[Record], list[Record]]:
    """Split records into two disjoint sets of person ids (``fraction`` of ids go second)."""
    import random

    ids = sorted({r.pid for r in records})
    random.Random(seed).shuffle(ids)
    second = set(ids[: round(len(ids) * fraction)])
    return ([r for r in records if r.pid not in second], [r for r in records if r.pid in second])


def remap_pids(records: Sequence[Record]) -> dict[int, int]:
    """Person id -> class index 0..C-1 (sorted by id), for the ID loss."""
    return {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
