"""What every benchmark shares: the machine it ran on (CPU model, cores, load, GPU, library
versions), its peak memory, and the table it prints."""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_rss_mib() -> dict[str, float]:
    """Peak resident memory of this process and of its finished children (reader workers)."""
    to_mib = 1 / 1024  # ru_maxrss is in KiB on Linux
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mib,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * to_mib}


def environment() -> dict[str, Any]:
    import faiss
    import numpy as np
    import torch

    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
        "versions": {"torch": torch.__version__, "faiss": faiss.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
    }


Column = tuple[str, Callable[[dict[str, Any]], Any]]


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A Markdown table (readable in a terminal, pasteable into docs/results.md)."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.4g}" if abs(value) < 1 else f"{value:,.1f}"
        return str(value)

    lines = ["| " + " | ".join(h for h, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(get(row)) for _, get in columns) + " |")
    return "\n".join(lines)


def machine_line(env: dict[str, Any]) -> str:
    gpu = env.get("cuda") or "no GPU"
    return (f"{env['cpu_model']}, {env['cpu_cores']} cores, {gpu}; load {env['loadavg_1min']} "
            f"at {env['when']}")
