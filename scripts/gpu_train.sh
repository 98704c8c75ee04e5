#!/usr/bin/env bash
# The GPU recipe as one prepared job for the device tool (docs/results.md, "GPU recipe").
# Here:   .venv/bin/python scripts/gpu_pack.py          (builds the ignored .gpu/a and .gpu/b)
# Device: call 1, carry [".gpu/a"]:  bash scripts/gpu_train.sh stage
#         call 2 at once (the machine is still warm), carry [".gpu/b"]:
#                 bash scripts/gpu_train.sh train [CONFIG]   (default: the dev-held-out config)
# Here:   bash scripts/gpu_train.sh join FILES_AT            (reassembles runs/gpu/model.pt)
# `stage` copies data, weights and wheels to $STAGE (kept while the machine is warm) and installs
# the wheels; `train` trains, evaluates on dev and writes the checkpoint in 15 MiB pieces, the
# metrics and the log to $OUT. DEVICE=cpu MAX_STEPS=2 runs the same path on a CPU (tests).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${STAGE:-/root/tbps-gpu}
OUT=${OUT:-runs/gpu-out}
PY=${PY:-python3}
mode=${1:?usage: gpu_train.sh stage|train [CONFIG]|join FILES_AT}

case "$mode" in
stage)
  mkdir -p "$STAGE"
  cp -r .gpu/a/. "$STAGE"/
  $PY -m pip install -q --no-deps --no-index "$STAGE"/wheels/*.whl
  $PY -c "import open_clip, timm, efficientnet_lite_pytorch, torch; print('staged; cuda', torch.cuda.is_available())"
  ;;
train)
  config=${2:-models/configs/train/vgsg-effl0-minilm-gpu.yaml}
  mkdir -p "$OUT"
  run=runs/gpu
  extra=()
  if [ -n "${DEVICE:-}" ]; then extra+=(--set "train.device=$DEVICE" --set train.num_workers=0); fi
  if [ -n "${MAX_STEPS:-}" ]; then extra+=(--max-steps "$MAX_STEPS"); fi
  nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1 || true
  PYTHONUNBUFFERED=1 PYTHONPATH=. $PY -m models.train --config "$config" --output "$run" \
    --set "data.root=$STAGE/data" \
    --set "model_overrides.image_backbone.weights=$STAGE/efficientnet-lite0.pth" \
    --set "model_overrides.text_backbone.weights=$PWD/.gpu/b/minilm" \
    "${extra[@]}" 2>&1 | tee "$OUT/train.log"
  # The checkpoint names its weights by the local paths used here: point them back at the pip
  # packages that hold the same files, so the checkpoint loads on any tbps install.
  PYTHONPATH=. $PY scripts/gpu_checkpoint.py "$run/model.pt" "$run/model-portable.pt"
  PYTHONPATH=. $PY -m models.evaluate --checkpoint "$run/model-portable.pt" --dataset cuhk-pedes \
    --root "$STAGE/data" --split dev --json > "$OUT/dev.json"
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
