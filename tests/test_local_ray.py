"""The test helper that cleans up after a failed Ray start stops only Ray's processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.local_ray import ray_descendants, stop_processes

pytestmark = pytest.mark.slow  # starts a Ray cluster


def test_a_failed_starts_processes_are_found_and_stopped_and_others_are_left(tmp_path):
    fake_ray = tmp_path / "site-packages" / "ray"
    (fake_ray / "core").mkdir(parents=True)
    script = fake_ray / "core" / "raylet.py"
    script.write_text("import time\ntime.sleep(60)\n")
    other = tmp_path / "milvus.py"
    other.write_text("import time\ntime.sleep(60)\n")
    # a Ray process one level down (as the raylet under its launcher) and a non-Ray child
    launcher = subprocess.Popen(
        [sys.executable, "-c", "import os, subprocess, sys; "
         "subprocess.run([sys.executable, os.environ['RAYLET']])"],
        env={**os.environ, "RAYLET": str(script)})
    bystander = subprocess.Popen([sys.executable, str(other)])
    try:
        for _ in range(100):
            found = ray_descendants(fake_ray)
            if found:
                break
            time.sleep(0.05)
        assert len(found) == 1 and found[0] not in (launcher.pid, bystander.pid)
        stop_processes(found)
        assert not Path(f"/proc/{found[0]}").exists() or \
            Path(f"/proc/{found[0]}/stat").read_text().split()[2] == "Z"
        launcher.wait(timeout=10)  # it returns once its raylet is gone
        assert bystander.poll() is None
    finally:
        for proc in (launcher, bystander):
            proc.kill()
            proc.wait()
