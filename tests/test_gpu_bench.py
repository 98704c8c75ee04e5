"""bench/gpu_bench: its CPU path end to end in the short mode, and the driver script's refusal
where no GPU is visible."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from bench import gpu_bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not gpu_bench.DEFAULT_DEMO_GALLERY.is_dir(), reason="no demo gallery")
def test_short_cpu_run_measures_every_part_and_writes_json(tmp_path):
    out = tmp_path / "gpu.json"
    result = gpu_bench.main(["--device", "cpu", "--short", "--out", str(out),
                             "--work", str(tmp_path / "work")])
    assert json.loads(out.read_text()) == result
    index = result["indexing"]
    assert index["crops"] + index["failed"] == 64 and index["crops"] > 50
    assert index["crops_per_s"] > 0 and index["decode_only_crops_per_s"] > index["crops_per_s"]
    assert result["text_query"]["queries"] == 10 and result["text_query"]["p50_ms"] > 0
    (flat,) = result["search"]  # 20k vectors: the automatic spec is Flat too
    assert flat["spec"] == "Flat" and flat["recall@10"] == 1.0 and flat["vectors"] == 20_000
    assert result["device"] == "cpu" and result["environment"]["cpu_cores"] >= 1


def test_crop_files_repeat_the_gallery_and_an_empty_folder_is_refused(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.txt").write_bytes(b"x")
    assert [p.name for p in gpu_bench.crop_files(tmp_path, 3)] == ["a.jpg"] * 3
    with pytest.raises(SystemExit, match="no images"):
        gpu_bench.crop_files(tmp_path / "b.txt", 1)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine runs it")
def test_driver_script_refuses_without_a_gpu():
    run = subprocess.run(["bash", str(ROOT / "bench" / "gpu_bench.sh")], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and "no NVIDIA GPU visible" in run.stderr


def test_gpu_extra_pins_faiss_gpu_at_the_faiss_cpu_version_and_setup_gpu_installs_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {r.name: r for r in map(Requirement, project["dependencies"])}
    (gpu,) = map(Requirement, project["optional-dependencies"]["gpu"])
    assert gpu.name == "faiss-gpu" and str(gpu.specifier) == str(pins["faiss-cpu"].specifier)
    assert f'"{gpu.name}{gpu.specifier}"' in (ROOT / "Makefile").read_text()
