"""State-dict key names between the ``efficientnet_lite_pytorch`` package and timm's EfficientNet.

The package numbers its blocks flat (``_blocks.<i>``); timm nests them by stage
(``blocks.<stage>.<j>``). A ``BlockLayout`` lists, per flat block index, its timm position and
whether it is an inverted residual (with a 1x1 expansion) or a depthwise-separable block. The
functions here are pure: they rename keys and know nothing of tensors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

BlockLayout = Sequence[tuple[int, int, bool]]  # flat index -> (stage, index in stage, expanded)

# package name -> timm name, outside the blocks (the package's classifier ``_fc`` is not mapped)
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
# inside an inverted-residual block (expand 1x1, depthwise, project 1x1)
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
             "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
# inside a depthwise-separable block (no expansion: depthwise, project 1x1)
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
              "_bn2": "bn2"}

_PACKAGE_BLOCK = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TIMM_BLOCK = re.compile(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(\w+)")


def block_layout(net: nn.Module) -> list[tuple[int, int, bool]]:
    """The layout of a timm EfficientNet: its ``blocks`` stages, flattened in order.

    Inverted residuals are told apart by their public ``conv_pwl`` (the projection).
    """
    return [(s, j, hasattr(block, "conv_pwl"))
            for s, stage in enumerate(net.blocks) for j, block in enumerate(stage)]


def package_to_timm_key(key: str, layout: BlockLayout) -> str:
    """``_blocks.<i>.<module>.<tensor>`` or a stem/head key -> timm's name; KeyError if unknown."""
    match = _PACKAGE_BLOCK.fullmatch(key)
    if match is None:
        module, tensor = key.split(".", 1)
        return f"{_TOP[module]}.{tensor}"
    flat, module, tensor = int(match[1]), match[2], match[3]
    stage, index, expanded = layout[flat]
    names = _INVERTED if expanded else _SEPARABLE
    return f"blocks.{stage}.{index}.{names[module]}.{tensor}"


def timm_to_package_key(key: str, layout: BlockLayout) -> str:
    """The inverse of ``package_to_timm_key``."""
    match = _TIMM_BLOCK.fullmatch(key)
    if match is None:
        module, tensor = key.split(".", 1)
        return f"{_inverse(_TOP)[module]}.{tensor}"
    stage, index, module, tensor = int(match[1]), int(match[2]), match[3], match[4]
    flat = [(s, j) for s, j, _ in layout].index((stage, index))
    names = _INVERTED if layout[flat][2] else _SEPARABLE
    return f"_blocks.{flat}.{_inverse(names)[module]}.{tensor}"


def is_package_key(key: str) -> bool:
    """Whether ``key`` (relative to the network) uses the package's names."""
    return key.startswith("_")


def _inverse(names: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in names.items()}
