"""End to end on a tiny fixture: train, resume, checkpoint, `eval --json`."""

import json

import yaml

from models import evaluate, train
from models.factory import load_model
from tests.models.conftest import tiny_vgsg, write_cuhk_fixture


def _train_config(tmp_path, epochs=1):
    root = write_cuhk_fixture(tmp_path / "data", {"train": [1, 2, 3, 4], "val": [7, 8, 9]})
    config = {"model": tiny_vgsg(), "data": {"dataset": "cuhk-pedes", "root": str(root),
                                             "split": "train", "dev_split": "val"},
              "train": {"epochs": epochs, "p": 2, "k": 2, "warmup_steps": 1, "log_every": 1,
                        "threads": 1},
              "output": str(tmp_path / "run")}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, root


def test_train_resume_and_eval_cli(tmp_path, capsys):
    path, root = _train_config(tmp_path)
    assert train.main(["--config", str(path)]) == 0
    run = tmp_path / "run"
    assert (run / "last.pt").is_file() and (run / "model.pt").is_file()
    model, payload = load_model(run / "model.pt")
    assert payload["config"]["num_classes"] == 4 and payload["extra"]["history"]
    assert model.config.family == "vgsg"
    capsys.readouterr()

    assert train.main(["--config", str(path), "--resume", str(run / "last.pt"),
                       "--epochs", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and summary["steps"] == 4

    assert evaluate.main(["--checkpoint", str(run / "model.pt"), "--root", str(root),
                          "--split", "val", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"rank1", "rank5", "rank10", "mAP", "mINP", "queries", "gallery"}
    assert metrics["queries"] == 12 and metrics["gallery"] == 6
    assert 0 <= metrics["rank1"] <= 100
