"""Where a training step spends its time, per training config, on this CPU.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.train_step_bench \
        models/configs/train/vgsg-effl0-minilm-cached-sgtl-ft.yaml ... [--steps 3]

Builds each config's model (1,280 ID classes, as the trainval-dev split), feeds it random
batches shaped like its loader's (cached trunk outputs for ``cache_trunk`` configs, else
pixels at the config's image size; captions of ``--tokens`` tokens), under the config's
``train.precision`` (bfloat16 autocast for ``bf16``), and times ``--steps`` full optimizer
steps after one warm-up step, then profiles one more with ``torch.profiler``. Prints a table
of step times and the top operators per config; writes
``bench/results/train_step_<model name>.json``. Dataset-free, so it isolates the model's cost
from data loading.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.envinfo import environment, format_table, machine_line
from models.train import PRECISIONS, TrainSettings, flush_denormals, load_train_config, model_config

RESULTS = Path(__file__).resolve().parent / "results"


def fake_batch(model: Any, batch: int, tokens: int) -> dict[str, Any]:
    """Random inputs with the shapes the cached-trunk loader yields (the trunks' own widths)."""
    with torch.no_grad():
        grid = model.image_trunk(torch.zeros(1, 3, *model.config.image_size)).shape[1:]
        hidden = model.text_trunk(model.tokenize(["a"]))["hidden_states"].shape[-1]
    return {"images": torch.randn(batch, *grid).clamp(min=0),
            "tokens": {"hidden_states": torch.randn(batch, tokens, hidden),
                       "attention_mask": torch.ones(batch, tokens, dtype=torch.long)},
            "pids": torch.arange(batch) // 4, "from_trunk": True}


def pixel_batch(model: Any, batch: int, tokens: int) -> dict[str, Any]:
    """Random pixels at the model's input size and captions of ``tokens`` words."""
    captions = [" ".join(["word"] * (tokens - 2))] * batch
    return {"images": torch.randn(batch, 3, *model.config.image_size),
            "tokens": model.tokenize(captions), "pids": torch.arange(batch) // 2}


def measure(path: Path, steps: int, tokens: int, top: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    from models.factory import create_model

    data = load_train_config(path)
    settings = TrainSettings(**data.get("train", {}))
    model = create_model(model_config(data, 1280)).train()
    size = settings.batch_size if settings.batching == "pairs" else settings.p * settings.k
    make = fake_batch if settings.cache_trunk else pixel_batch
    batch = make(model, size, tokens)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    dtype = PRECISIONS[settings.precision]

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            terms = model.training_losses(batch)
        loss = sum(t.float() for t in terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with flush_denormals(settings.cache_trunk):
        step()  # warm-up
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return {"config": str(path), "model": model.config.name, "batch": size,
            "precision": settings.precision, "image_size": list(model.config.image_size),
            "tokens": tokens, "step_s": statistics.median(times), "steps": steps,
            "ms_per_pair": 1000 * statistics.median(times) / size,
            "top_ops": [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count}
                        for e in ops[:top]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, help="training config files")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=60, help="caption length in tokens")
    parser.add_argument("--top", type=int, default=6, help="operators to list per config")
    args = parser.parse_args()
    env = environment()
    rows = [measure(path, args.steps, args.tokens, args.top) for path in args.configs]
    print(machine_line(env))
    print(format_table(rows, [("model", lambda r: r["model"]), ("batch", lambda r: r["batch"]),
                              ("precision", lambda r: r["precision"]),
                              ("step s (median)", lambda r: r["step_s"]),
                              ("ms / pair", lambda r: r["ms_per_pair"])]))
    for row in rows:
        print(f"\n{row['model']}: top operators by self time in one step")
        print(format_table(row["top_ops"], [("operator", lambda o: o["op"]),
                                            ("self s", lambda o: o["self_s"]),
                                            ("calls", lambda o: o["calls"])]))
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"train_step_{row['model']}.json"
        out.write_text(json.dumps({**row, "environment": env}, indent=2) + "\n")


if __name__ == "__main__":
    main()
