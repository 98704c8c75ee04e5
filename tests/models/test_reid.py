"""Person re-ID training of the image tower (models/reid.py), its loss and the image-to-image
evaluation, on tiny fixtures; every formula checked against loops written here."""

import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from models import evaluate, train
from models.data.datasets import read_dataset
from models.evaluate import image_to_image_metrics, rank_metrics
from models.factory import create_model, load_model
from models.losses.triplet import batch_hard_triplet_loss
from tests.models.conftest import tiny_vgsg, write_cuhk_fixture


def _hand_triplet(x, labels, margin):
    """Hermans et al. Eq. 5 by loops: per anchor, farthest positive and nearest negative."""
    n, losses = len(labels), []

    def dist(a, b):
        return math.sqrt(sum((x[a][d] - x[b][d]) ** 2 for d in range(len(x[a]))))

    for a in range(n):
        pos = [dist(a, p) for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [dist(a, q) for q in range(n) if labels[q] != labels[a]]
        if not pos or not neg:
            continue
        gap = max(pos) - min(neg)
        losses.append(math.log1p(math.exp(gap)) if margin is None else max(0.0, gap + margin))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("margin", [0.3, 5.0, None])
def test_batch_hard_triplet_matches_a_hand_computation(margin):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 5)).round(3)
    labels = [0, 0, 1, 1, 1, 2, 2, 3]  # id 3 has no positive: left out of the mean
    got = batch_hard_triplet_loss(torch.tensor(x, dtype=torch.float32),
                                  torch.tensor(labels), margin)
    assert got.item() == pytest.approx(_hand_triplet(x.tolist(), labels, margin), rel=1e-5)


def test_triplet_of_a_batch_without_positives_is_zero_and_differentiable():
    x = torch.randn(3, 4, requires_grad=True)
    loss = batch_hard_triplet_loss(x, torch.tensor([0, 1, 2]))
    loss.backward()
    assert loss.item() == 0.0 and x.grad is not None


def _hand_image_to_image(features, pids):
    """Each image queries the others: CMC rank-1 and AP by loops."""
    n, r1, aps = len(pids), [], []
    for q in range(n):
        others = [g for g in range(n) if g != q]
        scores = {g: sum(a * b for a, b in zip(features[q], features[g], strict=True))
                  for g in others}
        ranked = sorted(others, key=lambda g: -scores[g])
        hits = [pids[g] == pids[q] for g in ranked]
        if not any(hits):
            continue
        r1.append(1.0 if hits[0] else 0.0)
        found, precisions = 0, []
        for i, hit in enumerate(hits, start=1):
            if hit:
                found += 1
                precisions.append(found / i)
        aps.append(sum(precisions) / len(precisions))
    return 100 * sum(r1) / len(r1), 100 * sum(aps) / len(aps), len(r1)


def test_image_to_image_leaves_each_query_out_of_its_gallery():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(9, 4))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    pids = np.array([1, 1, 1, 2, 2, 3, 3, 4, 5])  # 4 and 5: alone, not queries
    got = image_to_image_metrics(features, pids)
    rank1, m_ap, queries = _hand_image_to_image(features.tolist(), pids.tolist())
    assert got["rank1"] == pytest.approx(rank1) and got["mAP"] == pytest.approx(m_ap)
    assert got["queries"] == queries == 7 and got["gallery"] == 8


def test_an_excluded_item_is_never_a_match_even_at_the_top():
    sim = np.array([[1.0, 0.5, 0.2]])  # item 0 (the query itself) scores highest
    out = rank_metrics(sim, np.array([7]), np.array([7, 3, 7]),
                       exclude=np.array([[True, False, False]]))
    assert out["rank1"] == 0.0 and out["rank5"] == 100.0
    assert out["mAP"] == pytest.approx(50.0) and out["mINP"] == pytest.approx(50.0)


def write_reid_fixture(root, persons, images_per_person=3):
    """A cuhk-pedes-reid shaped folder: persons.json + imgs/<source>/<file>."""
    rng = np.random.default_rng(0)
    rows = []
    for name in persons:
        source = name.split(":")[0]
        (root / "imgs" / source).mkdir(parents=True, exist_ok=True)
        for j in range(images_per_person):
            rel = f"{source}/{name.split(':')[1]}_{j}.jpg"
            Image.fromarray(rng.integers(0, 255, (40, 20, 3), dtype=np.uint8)).save(
                root / "imgs" / rel)
            rows.append({"file_path": rel, "person": name})
    (root / "persons.json").write_text(json.dumps(rows))
    return root


def test_reid_reader_numbers_persons_in_sorted_order(tmp_path):
    root = write_reid_fixture(tmp_path, ["Market:0002", "CUHK01:0001", "Market:0001"], 2)
    records = read_dataset("cuhk-pedes-reid", root)
    assert len(records) == 6 and {r.split for r in records} == {"train"}
    assert all(r.captions == () and r.image_path.is_file() for r in records)
    by_file = {r.image_path.name: r.pid for r in records}
    assert by_file["0001_0.jpg"] != by_file["0002_0.jpg"]
    assert sorted({r.pid for r in records}) == [0, 1, 2]
    assert records[2].pid == 0  # "CUHK01:0001" sorts first


def _reid_config(tmp_path, name="run", **train_overrides):
    reid = write_reid_fixture(tmp_path / "reid", [f"SRC:{i:04d}" for i in range(6)])
    dev = tmp_path / "cuhk"
    if not dev.exists():
        write_cuhk_fixture(dev, {"train": [1, 2], "val": [7, 8, 9]})
    config = {"objective": "reid", "model": tiny_vgsg(vgkt=False, num_classes=0),
              "data": {"dataset": "cuhk-pedes-reid", "root": str(reid), "split": "train",
                       "dev_dataset": "cuhk-pedes", "dev_root": str(dev), "dev_split": "val",
                       "reid": {"margin": 0.3}},
              "train": {"epochs": 2, "p": 2, "k": 2, "warmup_steps": 1, "log_every": 1,
                        "threads": 1, "eval_every_steps": 2, "channels_last": True,
                        "cache_dir": str(tmp_path / "cache"), **train_overrides},
              "output": str(tmp_path / name)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, dev


def test_reid_training_writes_a_checkpoint_of_the_family_and_a_curve(tmp_path, capsys):
    path, dev = _reid_config(tmp_path)
    before = create_model(tiny_vgsg(vgkt=False, num_classes=0)).state_dict()  # same seed
    assert train.main(["--config", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 6  # 6 persons / P=2: 3 steps an epoch, 2 epochs
    model, payload = load_model(tmp_path / "run" / "model.pt")
    history = payload["extra"]["history"]
    # the start, every 2 steps and each epoch's end (3 steps an epoch), each step once
    assert [h["step"] for h in history] == [0, 2, 3, 4, 6]
    assert {"rank1", "mAP", "global_rank1", "global_mAP"} <= set(history[0])
    state = model.state_dict()
    trained = [k for k in state if k.startswith("visual.") and k in before
               and not torch.equal(state[k], before[k])]
    untouched = [k for k in state if k.startswith("textual.") and k in before
                 and not torch.equal(state[k], before[k])]
    assert trained and not untouched  # the image tower learned, the text tower did not move
    assert not any(k.startswith("classifiers.") for k in payload["state_dict"])
    assert (tmp_path / "cache").is_dir() and list((tmp_path / "cache").glob("pixels-*.npy"))
    assert evaluate.main(["--checkpoint", str(tmp_path / "run" / "model.pt"), "--root", str(dev),
                          "--split", "val", "--mode", "image", "--engine", "torch",
                          "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["queries"] == 6 and metrics["gallery"] == 5
    assert metrics["rank1"] == pytest.approx(history[-1]["rank1"], abs=1e-6)


def test_a_stopped_reid_run_resumes_to_the_same_weights(tmp_path):
    path, _ = _reid_config(tmp_path, "straight", eval_every_steps=0, eval_every=0)
    data = train.load_train_config(path)
    from models.reid import ReidTrainer

    straight = ReidTrainer(data, train.TrainSettings(**data["train"]), data["output"])
    straight.fit()
    path, _ = _reid_config(tmp_path, "stopped", eval_every_steps=0, eval_every=0)
    data = train.load_train_config(path)
    first = ReidTrainer(data, train.TrainSettings(**data["train"]), data["output"])
    step = first.train_step

    def stop_after_four(batch):
        out = step(batch)
        first.stop_requested = first.step == 3
        return out

    first.train_step = stop_after_four
    assert first.fit()["stopped"]
    assert train.main(["--config", str(path), "--resume"]) == 0
    resumed = torch.load(tmp_path / "stopped" / "last.pt", weights_only=False)
    assert resumed["step"] == 6
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed["model"][key], value), key
    for key, value in straight.head.state_dict().items():
        assert torch.equal(resumed["reid_head"][key], value), key


def test_an_unknown_objective_is_refused(tmp_path):
    path, _ = _reid_config(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["objective"] = "rerank"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit, match="objective 'rerank'"):
        train.main(["--config", str(path)])


def test_the_reid_objective_is_found_when_the_trainer_runs_as_a_script():
    """``python -m models.train`` runs a second copy of the module (``__main__``): the objective
    registered by models.reid must still be found through it."""
    import runpy

    script = runpy.run_module("models.train", run_name="as_script", alter_sys=True)
    assert script["TRAINERS"] is not train.TRAINERS
    found = script["trainer_class"]("reid")
    assert found.__name__ == "ReidTrainer" and issubclass(found, train.Trainer)
