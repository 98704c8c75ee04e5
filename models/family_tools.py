"""Small pieces the VFE-TPS and SSAN families share: nested config parsing, and which backbone
weights a checkpoint may leave out (frozen ones an installed package rebuilds)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from models.config import BaseModelConfig, _dataclass_from

C = TypeVar("C", bound=BaseModelConfig)


def nested_from_dict(cls: type[C], data: dict[str, Any], nested: dict[str, type]) -> C:
    """``BaseModelConfig.from_dict`` plus dataclass-typed fields given as mappings."""
    data = dict(data)
    built = {key: _dataclass_from(kind, data.pop(key, {})) for key, kind in nested.items()}
    config = BaseModelConfig.from_dict.__func__(cls, data)  # type: ignore[attr-defined]
    for key, value in built.items():
        setattr(config, key, value)
    return config


class NestedConfigMixin:
    """``from_dict`` for a ``BaseModelConfig`` whose dataclass-typed fields (backbones, loss
    weights) are given as mappings; put it before ``BaseModelConfig`` in the bases."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        hints = typing.get_type_hints(cls)
        nested = {f.name: hints[f.name] for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                  if dataclasses.is_dataclass(hints[f.name])}
        return nested_from_dict(cls, data, nested)  # type: ignore[type-var]


def package_frozen_keys(towers: Iterable[tuple[str, nn.Module, Any]]) -> set[str]:
    """State keys of frozen backbone stages whose weights come from an installed package.

    ``towers``: (state-dict prefix, backbone module, its backbone config) triples.
    """
    keys: set[str] = set()
    for prefix, backbone, cfg in towers:
        if cfg.weights.startswith("package:"):
            keys.update(prefix + k for k in backbone.frozen_state_keys())
    return keys


def drop_local_weight_files(data: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """Backbone weights read from a local file are stored in the checkpoint itself, so the
    file path is dropped from the stored config; package references stay."""
    for key in keys:
        if Path(data[key]["weights"]).is_file():
            data[key]["weights"] = ""
    return data


class OptionalWeightsMixin:
    """For a ``DualEncoderModel``: checkpoints leave out training-only heads (state keys under
    ``training_only_prefixes``) and frozen backbone stages an installed package rebuilds."""

    training_only_prefixes: tuple[str, ...] = ()

    def backbone_towers(self) -> list[tuple[str, nn.Module, str]]:
        """(state prefix, backbone, name of its config field) of each pretrained tower."""
        raise NotImplementedError

    def is_optional_weight(self, key: str) -> bool:
        if not hasattr(self, "_frozen_keys"):  # fixed after __init__: computed once
            config = self.config  # type: ignore[attr-defined]
            self._frozen_keys = package_frozen_keys(
                (prefix, module, getattr(config, field))
                for prefix, module, field in self.backbone_towers())
        return key.startswith(self.training_only_prefixes) or key in self._frozen_keys

    def inference_state_dict(self) -> dict[str, Any]:
        state = self.state_dict()  # type: ignore[attr-defined]
        return {k: v for k, v in state.items() if not self.is_optional_weight(k)}

    def checkpoint_config(self) -> dict[str, Any]:
        """The config to store: local weight files are in the checkpoint, their paths go."""
        data = self.config.to_dict()  # type: ignore[attr-defined]
        return drop_local_weight_files(data, [field for _, _, field in self.backbone_towers()])
