"""Freezing leading stages of a backbone: no gradients, batch-norm statistics kept fixed."""

from __future__ import annotations

from torch import nn


class FreezableMixin:
    """For ``nn.Module`` backbones that list their stages in ``stages()`` (input first)."""

    frozen_stages: int = 0

    def stages(self) -> list[nn.Module]:
        raise NotImplementedError

    def frozen_modules(self) -> list[nn.Module]:
        return self.stages()[: self.frozen_stages]

    def freeze(self, frozen_stages: int) -> None:
        self.frozen_stages = frozen_stages
        for module in self.frozen_modules():
            for param in module.parameters():
                param.requires_grad_(False)

    def frozen_state_keys(self) -> set[str]:
        """State-dict keys (relative to this backbone) that freezing keeps at their init.

        Stages may be ad-hoc groups (a ``Sequential`` made on the fly), so keys are found under
        the first registered module on each path down from a stage.
        """
        names = {id(m): n for n, m in self.named_modules()}  # type: ignore[attr-defined]
        keys: set[str] = set()
        for stage in self.frozen_modules():
            keys |= _registered_state_keys(stage, names)
        return keys

    def train(self, mode: bool = True):  # type: ignore[override]
        nn.Module.train(self, mode)  # type: ignore[arg-type]
        for module in self.frozen_modules():
            module.eval()
        return self


def _registered_state_keys(module: nn.Module, names: dict[int, str]) -> set[str]:
    """``module``'s state keys under its registered name, or its children's when unregistered."""
    if id(module) in names:
        prefix = f"{names[id(module)]}." if names[id(module)] else ""
        return set(module.state_dict(prefix=prefix, keep_vars=True))
    return set().union(*(_registered_state_keys(c, names) for c in module.children()))
