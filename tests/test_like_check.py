"""bench/like_check.py: its pure parts against hand computations, and one run of the whole
check (ingest, index, serve, HTTP) with the tiny model on a tiny CUHK-PEDES-style root."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import like_check as lc
from models.data.datasets import Record
from service.jobs.ingest import read_person_ids


def test_pick_persons_is_seeded_distinct_and_sorted():
    pids = [5, 3, 3, 9, 1, 7]
    picked = lc.pick_persons(pids, 3, seed=1)
    assert picked == sorted(picked) and len(set(picked)) == 3 and set(picked) <= set(pids)
    assert lc.pick_persons(pids, 3, seed=1) == picked
    assert {tuple(lc.pick_persons(pids, 3, seed=s)) for s in range(20)} != {tuple(picked)}
    assert lc.pick_persons(pids, 5, seed=0) == [1, 3, 5, 7, 9]  # every one of the 5 ids
    with pytest.raises(ValueError, match="asked for 6 persons; the split has 5"):
        lc.pick_persons(pids, 6, seed=0)


def _records(imgs: Path) -> list[Record]:
    rows = [(1, "CUHK01/a.png"), (1, "CUHK01/b.png"), (2, "Market/c.jpg"), (3, "cam_a/d.bmp")]
    return [Record(image_path=imgs / rel, pid=pid, captions=(f"caption of {rel}",), split="val")
            for pid, rel in rows]


def test_persons_file_is_what_tbps_ingest_reads(tmp_path):
    imgs = tmp_path / "dataset" / "imgs"
    records = _records(imgs)
    for r in records:
        r.image_path.parent.mkdir(parents=True, exist_ok=True)
        r.image_path.write_bytes(r.image_path.name.encode())
    assert lc.persons_entries(records, imgs, [1, 3]) == [
        {"id": 1, "file_path": "CUHK01/a.png"}, {"id": 1, "file_path": "CUHK01/b.png"},
        {"id": 3, "file_path": "cam_a/d.bmp"}]
    gallery, persons = lc.write_gallery(records, imgs, [1, 3], tmp_path / "work")
    assert read_person_ids(persons) == {"CUHK01/a.png": "1", "CUHK01/b.png": "1",
                                        "cam_a/d.bmp": "3"}
    files = sorted(p.relative_to(gallery).as_posix() for p in gallery.rglob("*") if p.is_file())
    assert files == ["CUHK01/a.png", "CUHK01/b.png", "cam_a/d.bmp"]
    assert (gallery / "cam_a" / "d.bmp").read_bytes() == b"d.bmp"  # a link to the dataset's


def test_examples_are_one_per_person_with_two_crops():
    crops = [{"crop_id": 1, "person_id": "A"}, {"crop_id": 2, "person_id": "A"},
             {"crop_id": 3, "person_id": "A"}, {"crop_id": 4, "person_id": "B"},
             {"crop_id": 5, "person_id": "C"}, {"crop_id": 6, "person_id": "C"},
             {"crop_id": 7, "person_id": None}, {"crop_id": 8, "person_id": None}]
    examples = lc.pick_examples(crops, 5, seed=0)  # only A and C have a second crop
    assert sorted(e["person_id"] for e in examples) == ["A", "C"]
    by_person = {e["person_id"]: e["crop_id"] for e in examples}
    assert by_person["A"] in (1, 2, 3) and by_person["C"] in (5, 6)
    assert lc.pick_examples(crops, 5, seed=0) == examples
    one = lc.pick_examples(crops, 1, seed=0)
    assert len(one) == 1 and one[0]["person_id"] in ("A", "C")
    assert lc.pick_examples(crops[3:5], 3, seed=0) == []


def test_rank_of_the_first_same_person_hit():
    hits = [{"crop_id": 9, "person_id": None}, {"crop_id": 8, "person_id": "12"},
            {"crop_id": 7, "person_id": "11004"}, {"crop_id": 6, "person_id": "11004"}]
    assert lc.first_same_person_rank(hits, "11004") == 3
    assert lc.first_same_person_rank(hits, 12) == 2  # an int id as the JSON file has it
    assert lc.first_same_person_rank(hits, "5") is None
    assert lc.first_same_person_rank([], "5") is None


def _outcome(rank, returned, desc_rank, status=200):
    return {"rank": rank, "example_returned": returned, "desc_like_rank": desc_rank,
            "desc_like_status": status}


def test_summary_and_the_bar_by_hand():
    outcomes = [_outcome(1, False, 1), _outcome(3, False, None), _outcome(None, True, 2),
                _outcome(1, False, 1, status=422), _outcome(6, False, 1)]
    summary = lc.summarize(outcomes)
    # rank-1: 2 of 5; rank-5: ranks 1, 3, 1 = 3 of 5; description + like rank-1: 3 of 5
    assert summary == {"examples": 5, "rank1_pct": 40.0, "rank5_pct": 60.0,
                       "example_returned": 1, "desc_like_rank1_pct": 60.0,
                       "desc_like_refused": 1}
    refused = {"unknown": {"crop_id": 99, "status": 404, "detail": "no crop with id 99",
                           "ok": True},
               "deleted": {"crop_id": 3, "status": 200, "detail": None, "ok": False}}
    failures = lc.bar_failures(summary, refused, min_rank1=60)
    assert failures == ["rank-1 40.0 % < 60 %", "1 examples among their own hits",
                        "1 description + like requests refused",
                        "deleted id 3: HTTP 200 None, not a 404 naming it"]
    assert lc.bar_failures(summary, refused, min_rank1=40)[0].startswith("1 examples")
    good = lc.summarize([_outcome(1, False, None)] * 3 + [_outcome(2, False, 1)])
    assert good["rank1_pct"] == 75.0 and lc.bar_failures(good, {}, 60) == []
    assert lc.bar_failures(lc.summarize([]), {}, 60) == [
        "no example crops (no person with two crops)"]


def _person_image(pid: int, view: int) -> bytes:
    """One colour pattern per person, a little noise per view: another view of the same
    person is far nearer than anyone else, even to an untrained encoder."""
    rng = np.random.default_rng(pid)
    base = rng.integers(0, 256, (96, 48, 3)).astype(np.int16)
    noise = np.random.default_rng(1000 * pid + view).integers(-3, 4, base.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tiny_root(root: Path) -> Path:
    """Test split: persons 1-5 with 2-3 views, person 6 with one; a train person beside."""
    rows = []
    for pid, views, split in [(1, 2, "test"), (2, 3, "test"), (3, 2, "test"), (4, 2, "test"),
                              (5, 2, "test"), (6, 1, "test"), (7, 2, "train")]:
        for view in range(views):
            rel = f"cam{view % 2}/{pid:04d}_{view}.png"
            (root / "imgs" / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / "imgs" / rel).write_bytes(_person_image(pid, view))
            rows.append({"id": pid, "split": split, "file_path": rel,
                         "captions": [f"person {pid} in view {view}", "someone walking"]})
    (root / "reid_raw.json").write_text(json.dumps(rows))
    return root


@pytest.mark.slow  # tbps migrate, ingest, index, create-key and serve as processes
def test_the_whole_check_with_the_tiny_model(tmp_path):
    from models.factory import create_model, file_sha256, save_checkpoint

    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(checkpoint, create_model("tiny-clip"))
    root, out = _tiny_root(tmp_path / "root"), tmp_path / "result.json"
    code = lc.main(["--root", str(root), "--split", "test", "--n", "6", "--examples", "4",
                    "--checkpoint", str(checkpoint), "--page-size", "3", "--pages", "3",
                    "--set", "TBPS_ENGINE=torch", "--work", str(tmp_path / "work"),
                    "--out", str(out)])
    result = json.loads(out.read_text())
    assert code == 0, result["failures"]
    assert result["crops"] == 12  # the test split's images (one is deleted after the like runs)
    assert result["summary"]["examples"] == 4 and result["summary"]["rank1_pct"] == 100.0
    assert result["summary"]["example_returned"] == 0
    assert all(o["hits_fetched"] == 9 and o["desc_like_status"] == 200
               for o in result["outcomes"])  # 3 pages of 3 through next_cursor
    assert "6" not in {o["person_id"] for o in result["outcomes"]}  # one image: never an example
    unknown, deleted = result["refusals"]["unknown"], result["refusals"]["deleted"]
    assert unknown["status"] == 404 and str(unknown["crop_id"]) in unknown["detail"]
    assert deleted["status"] == 404 and str(deleted["crop_id"]) in deleted["detail"]
    assert result["checkpoint_sha256"] == file_sha256(checkpoint)
