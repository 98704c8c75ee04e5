"""The first minutes with the `tbps` command: help answers without loading the heavy parts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "sqlalchemy", "fastapi", "onnxruntime", "faiss")


def _modules_after(argv: list[str]) -> set[str]:
    """Top-level modules imported by `python -m service.cli ARGV` (run in a fresh process)."""
    code = ("import runpy, sys, json\n"
            f"sys.argv = ['tbps', *{argv!r}]\n"
            "try:\n    runpy.run_module('service.cli.main', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_help_imports_no_torch() -> None:
    loaded = _modules_after(["--help"])
    assert "service" in loaded and not loaded & set(HEAVY), loaded & set(HEAVY)


def test_subcommand_help_imports_no_torch() -> None:
    for command in ("train", "eval", "calibrate", "search"):
        assert "torch" not in _modules_after([command, "--help"]), command


def test_the_data_dir_is_the_checkouts_from_any_folder(tmp_path, monkeypatch) -> None:
    from service.config import Settings

    monkeypatch.delenv("TBPS_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert Settings().data_dir == REPO / "data"  # where `make run` keeps it


def test_search_creates_no_data_dir_and_names_the_one_it_reads(tmp_path) -> None:
    missing = tmp_path / "gallery"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "TBPS_DATA_DIR": str(missing)}
    out = subprocess.run([sys.executable, "-m", "service.cli", "search", "a man"], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    assert out.returncode == 1
    assert f"no data dir at {missing}" in out.stderr and "TBPS_DATA_DIR" in out.stderr
    assert list(tmp_path.iterdir()) == []  # neither the named dir nor ./data


def test_a_training_reports_its_progress_without_verbose() -> None:
    """`tbps train` logs its steps and dev evaluations at INFO without -v; other commands stay
    quiet unless asked."""
    from service.cli.main import build_parser

    train = build_parser().parse_args(["train", "--config", "x.yaml"])
    search = build_parser().parse_args(["search", "a man"])
    assert getattr(train, "progress_log", False) is True
    assert getattr(search, "progress_log", False) is False and not search.verbose
