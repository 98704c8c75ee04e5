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

        Stages may be ad-hoc ``ModuleList`` groups, so keys are found per registered module.
        """
        names = {id(m): n for n, m in self.named_modules()}  # type: ignore[attr-defined]
        keys: set[str] = set()
        for stage in self.frozen_modules():
            for module in stage.modules():
                if id(module) not in names:
                    continue
                prefix = f"{names[id(module)]}." if names[id(module)] else ""
                local = [n for n, _ in module.named_parameters(recurse=False)]
                local += [n for n, _ in module.named_buffers(recurse=False)
                          if n not in module._non_persistent_buffers_set]
                keys.update(prefix + n for n in local)
        return keys

    def train(self, mode: bool = True):  # type: ignore[override]
        nn.Module.train(self, mode)  # type: ignore[arg-type]
        for module in self.frozen_modules():
            module.eval()
        return self
