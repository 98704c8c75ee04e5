#!/usr/bin/env bash
# The GPU recipe as one prepared job for the device tool (docs/results.md, "GPU recipe").
# Here:   .venv/bin/python scripts/gpu_pack.py   (the ignored .gpu/pNN: data, weights, wheels;
#                                                  it prints the device calls to make)
# Device: one call per part while the machine stays warm, carrying that part:
#           bash scripts/gpu_train.sh stage p00           (carry [".gpu/p00"]) ...
#           bash scripts/gpu_train.sh train pNN [CONFIG]  (carry [".gpu/pNN"], the last part)
#         CONFIG defaults to the dev-held-out models/configs/train/vgsg-effl0-minilm-gpu.yaml.
# Here:   bash scripts/gpu_train.sh join FILES_AT        (reassembles runs/gpu/model.pt)
# `train` joins and unpacks the bundle under $STAGE, installs its wheels, trains, evaluates on
# dev and writes the checkpoint in 15 MiB pieces, the metrics and the log to $OUT.
# DEVICE=cpu MAX_STEPS=2 EXTRA_SET="train.batch_size=8" runs the same path on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${STAGE:-/root/tbps-gpu}
OUT=${OUT:-runs/gpu-out}
PY=${PY:-python3}
mode=${1:?usage: gpu_train.sh stage PART|train PART [CONFIG]|join FILES_AT}

case "$mode" in
stage)
  part=${2:?stage needs the part name (p00, p01, ...)}
  mkdir -p "$STAGE/parts"
  cp .gpu/"$part"/* "$STAGE/parts/"
  ls -l "$STAGE/parts"
  ;;
train)
  part=${2:?train needs the last part name}
  config=${3:-models/configs/train/vgsg-effl0-minilm-gpu.yaml}
  mkdir -p "$STAGE/parts" "$OUT"
  cp .gpu/"$part"/* "$STAGE/parts/"
  cat "$STAGE"/parts/bundle.tar.[0-9]* > "$STAGE/bundle.tar"
  echo "$(cat "$STAGE/parts/bundle.tar.sha256")  $STAGE/bundle.tar" | sha256sum -c -
  tar -xf "$STAGE/bundle.tar" -C "$STAGE"
  $PY -m pip install -q --no-deps --no-index "$STAGE"/bundle/wheels/*.whl
  $PY -c "import open_clip, timm, efficientnet_lite_pytorch, torch; print('cuda', torch.cuda.is_available())"
  B=$STAGE/bundle
  run=runs/gpu
  extra=()
  if [ -n "${DEVICE:-}" ]; then extra+=(--set "train.device=$DEVICE" --set train.num_workers=0); fi
  if [ -n "${MAX_STEPS:-}" ]; then extra+=(--max-steps "$MAX_STEPS"); fi
  for kv in ${EXTRA_SET:-}; do extra+=(--set "$kv"); done  # e.g. EXTRA_SET="train.batch_size=8"
  # At most 8 files come back: the checkpoint's pieces (5), dev.json, train.log, the sha256.
  nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/train.log" 2>&1 || true
  PYTHONUNBUFFERED=1 PYTHONPATH=. $PY -m models.train --config "$config" --output "$run" \
    --set "data.root=$B/data" \
    --set "model_overrides.image_backbone.weights=$B/efficientnet-lite0.pth" \
    --set "model_overrides.text_backbone.weights=$B/minilm" \
    "${extra[@]}" 2>&1 | tee -a "$OUT/train.log"
  # The checkpoint names its weights by the local paths used here: point them back at the pip
  # packages that hold the same files, so the checkpoint loads on any tbps install.
  PYTHONPATH=. $PY scripts/gpu_checkpoint.py "$run/model.pt" "$run/model-portable.pt"
  PYTHONPATH=. $PY -m models.evaluate --checkpoint "$run/model-portable.pt" --dataset cuhk-pedes \
    --root "$B/data" --split dev --json > "$OUT/dev.json"
  split -b 15M -d "$run/model-portable.pt" "$OUT/model.pt.part"
  sha256sum "$run/model-portable.pt" > "$OUT/model.pt.sha256"
  cat "$OUT/dev.json"
  ;;
join)
  from=${2:?join needs the folder the device files came back to}
  mkdir -p runs/gpu
  cat "$from"/model.pt.part* > runs/gpu/model.pt
  (cd runs/gpu && sha256sum model.pt) | cut -d' ' -f1 | grep -q "$(cut -d' ' -f1 "$from/model.pt.sha256")"
  echo "runs/gpu/model.pt reassembled, sha256 matches"
  ;;
*) echo "unknown mode $mode" >&2; exit 2 ;;
esac
