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
            "try:\n    runpy.run_module('service.cli', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_help_imports_no_torch() -> None:
    loaded = _modules_after(["--help"])
    assert "service" in loaded and not loaded & set(HEAVY), loaded & set(HEAVY)


def test_subcommand_help_imports_no_torch() -> None:
    for command in ("train", "eval", "search"):
        assert "torch" not in _modules_after([command, "--help"]), command
