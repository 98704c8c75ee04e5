#!/usr/bin/env bash
# Index and search a gallery with one trained checkpoint through the unchanged CLI, indexer and
# service: `tbps ingest` -> `tbps index` -> `tbps search`. The gallery is the first N dev-split
# images of CUHK-PEDES, linked (not copied) into a temporary folder outside the repo.
#   bench/serve_checkpoint.sh CHECKPOINT [N] [QUERY]
set -euo pipefail
checkpoint=$(realpath "$1"); n=${2:-60}
query=${3:-"a woman wearing a white shirt and black pants"}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/tbps-serve-XXXXXX)
cd "$root"
PYTHONPATH="$root" .venv/bin/python - "$root/../shared/data/cuhk-pedes" "$work/gallery" "$n" <<'PY'
import sys
from pathlib import Path
from models.data.datasets import read_dataset, select_split
root, out, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for r in select_split(read_dataset("cuhk-pedes", root), "dev")[:n]:
    link = out / "dev" / f"{r.pid}_{r.image_path.name}"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(r.image_path.resolve())
PY
export TBPS_DATA_DIR="$work/data" TBPS_CHECKPOINT="$checkpoint" TBPS_DEVICE=cpu
.venv/bin/tbps migrate
.venv/bin/tbps ingest "$work/gallery"
.venv/bin/tbps index
.venv/bin/tbps search "$query" --top-k 5
rm -rf "$work"
