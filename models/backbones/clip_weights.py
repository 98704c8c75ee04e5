"""Reading CLIP weights from a local file the user gives (nothing is downloaded).

Accepted: an OpenAI release ``.pt`` (TorchScript archive or plain state dict) and an open_clip
state dict (optionally under ``"state_dict"``, optionally with ``module.`` prefixes).
"""

from __future__ import annotations

from pathlib import Path

import torch

_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "logit_scale",
                      "logit_bias")


def load_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Any supported CLIP checkpoint file -> a flat open_clip-style state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights not found: {path}")
    try:
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    except RuntimeError:  # not a TorchScript archive: a pickled state dict
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a CLIP state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()
            if k not in _OPENAI_EXTRA_KEYS}


def split_towers(state: dict[str, torch.Tensor]
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A full CLIP state dict -> (vision tower ``visual.*`` without prefix, text tower)."""
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    text = {k: v for k, v in state.items() if not k.startswith("visual.")}
    return visual, text
