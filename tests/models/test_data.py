from collections import Counter

import torch

from models.data.datasets import (
    dev_ids,
    read_cuhk_pedes,
    read_icfg_pedes,
    read_rstpreid,
    remap_pids,
    select_split,
    split_by_person,
)
from models.data.sampler import IdentityBalancedSampler
from models.data.transforms import build_train_transform, load_resized
from models.preprocess import Preprocess
from tests.models.conftest import write_cuhk_fixture


def test_cuhk_reader_and_dev_split(tmp_path):
    root = write_cuhk_fixture(tmp_path, {"train": [1, 2], "val": list(range(100, 305))},
                              images_per_id=1)
    records = read_cuhk_pedes(root)
    assert len(records) == 207 and records[0].image_path.is_file()
    assert dev_ids(records) == set(range(100, 300))  # the 200 smallest val ids
    dev = select_split(records, "dev")
    train = select_split(records, "trainval-dev")
    assert {r.pid for r in dev} == set(range(100, 300))
    assert {r.pid for r in train} == {1, 2, 300, 301, 302, 303, 304}
    assert len(select_split(records, "val")) == 205


def test_icfg_and_rstp_layouts(tmp_path):
    (tmp_path / "ICFG-PEDES.json").write_text(
        '[{"id": 3, "split": "test", "file_path": "test/0003/a.jpg", "captions": ["x"]}]')
    (tmp_path / "data_captions.json").write_text(
        '[{"id": 4, "split": "val", "img_path": "b.jpg", "captions": ["y", "z"]}]')
    icfg, rstp = read_icfg_pedes(tmp_path), read_rstpreid(tmp_path)
    assert icfg[0].image_path == tmp_path / "imgs" / "test/0003/a.jpg" and icfg[0].pid == 3
    assert rstp[0].captions == ("y", "z") and rstp[0].split == "val"


def test_split_by_person_is_disjoint(tmp_path):
    records = read_cuhk_pedes(write_cuhk_fixture(tmp_path, {"train": list(range(10))}))
    a, b = split_by_person(records, 0.3, seed=1)
    assert {r.pid for r in a}.isdisjoint({r.pid for r in b})
    assert len({r.pid for r in b}) == 3
    assert sorted(remap_pids(records).values()) == list(range(10))


def test_identity_balanced_sampler():
    pids = [0, 0, 0, 1, 1, 2, 3, 3, 3, 3]
    sampler = IdentityBalancedSampler(pids, p=2, k=2, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2
    for batch in batches:
        counts = Counter(pids[i] for i in batch)
        assert len(counts) == 2 and set(counts.values()) == {2}


def test_train_transform_shapes(tmp_path):
    records = read_cuhk_pedes(write_cuhk_fixture(tmp_path, {"train": [1]}, images_per_id=1))
    preprocess = Preprocess((32, 16), (0.5,) * 3, (0.5,) * 3)
    pixels = load_resized(records[0].image_path, preprocess)
    assert pixels.shape == (3, 32, 16) and pixels.dtype == torch.uint8
    out = build_train_transform(preprocess)(pixels)
    assert out.shape == (3, 32, 16) and out.dtype == torch.float32
