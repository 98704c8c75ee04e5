"""Write a trained checkpoint as the bundled one: float16 weights, training-only heads and
package-frozen backbone weights left out (as ``save_checkpoint`` does), its training history
kept; prints the sha256 and size for the model card.

    .venv/bin/python scripts/bundle_checkpoint.py runs/RUN/model.pt models/checkpoints/default.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

from models.factory import load_model, save_checkpoint


def main(argv: list[str]) -> int:
    src, dst = Path(argv[0]), Path(argv[1])
    model, payload = load_model(src)
    digest = save_checkpoint(dst, model, extra=payload.get("extra", {}), half=True)
    print(f"{dst}: {dst.stat().st_size:,} bytes, sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
