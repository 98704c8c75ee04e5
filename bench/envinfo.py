"""The machine a benchmark ran on: CPU model, cores, load, GPU, library versions."""

from __future__ import annotations

import os
import platform
import resource
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
