"""Run the embedded Milvus standalone server until stopped (SIGTERM / Ctrl-C), so that the
benchmarks and the test suite can share one:

    .venv/bin/python -m bench.milvus_server bench/.work/milvus &
    TBPS_MILVUS_URI=http://127.0.0.1:19530 TBPS_INDEX_BACKEND=milvus .venv/bin/python -m pytest ...
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from indexer.backends.milvus_local import local_milvus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="where the server keeps its data")
    args = ap.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with local_milvus(args.folder) as uri:
        print(f"Milvus at {uri} (data in {args.folder}); SIGTERM stops it", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
