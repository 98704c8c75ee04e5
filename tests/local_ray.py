"""A local Ray for the tests, started with retries.

``ray.init`` gives a new raylet 30 seconds (a constant inside Ray) to register with its GCS
and raises a bare ``Exception("The current node timed out during startup ...")`` otherwise.
On a loaded 2-core CI machine (the embedded Milvus of the same session starting up) that
happened once in a run where the same start takes 6 s on a busy machine here. A failed start
leaves its processes running (Ray never hands back the half-built node), so they are stopped
before the next try: they are this process's descendants whose command line runs Ray's own
binaries or modules; the session's Milvus, also a child, is not one of them.

One local Ray at a time on this machine (a lock file): under pytest-xdist the other worker's
Ray test waits instead of starting a second cluster on the same two cores.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from indexer.backends.locking import waiting_turn

ATTEMPTS = 3
STARTUP_TIMEOUT = "timed out during startup"
LOCK = Path(tempfile.gettempdir()) / "tbps-test-local-ray.lock"


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'
        ppid = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def ray_descendants(ray_dir: Path) -> list[int]:
    """This process's descendants whose command line names a file under ``ray_dir``."""
    tree, found, todo = _children(), [], [os.getpid()]
    while todo:
        for pid in tree.get(todo.pop(), []):
            todo.append(pid)
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if str(ray_dir).encode() in cmdline or b" -m ray." in cmdline:
                found.append(pid)
    return found


def stop_processes(pids: list[int], grace_s: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.1)
        for pid in pids:  # reap the ones that are our own children
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def local_ray(num_cpus: int = 2) -> Iterator[object]:
    """``ray.init`` on this machine (``num_cpus`` CPUs, 200 MiB object store, no dashboard),
    tried up to ATTEMPTS times when the raylet registers late; shut down on exit. Waits for
    another process's local Ray to end first."""
    with waiting_turn(LOCK):
        yield from _local_ray(num_cpus)


def _local_ray(num_cpus: int) -> Iterator[object]:
    import ray

    ray_dir = Path(ray.__file__).parent
    for attempt in range(1, ATTEMPTS + 1):
        try:
            ray.init(num_cpus=num_cpus, object_store_memory=200 * 2**20,
                     include_dashboard=False, log_to_driver=False)
            break
        except Exception as error:  # Ray raises a bare Exception for this
            if STARTUP_TIMEOUT not in str(error) or attempt == ATTEMPTS:
                raise
            ray.shutdown()
            stop_processes(ray_descendants(ray_dir))
    try:
        yield ray
    finally:
        ray.shutdown()
