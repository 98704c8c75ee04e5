"""Image backbones: CLIP ModifiedResNet (RN50 family), CLIP ViT, ImageNet EfficientNet-Lite.

Each returns the final feature map and a global feature from attention pooling (for the ViT,
the class token through ``ln_post`` and the projection, as in CLIP).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

from models.backbones.clip_weights import load_clip_state_dict, split_towers
from models.backbones.effnet_keys import block_layout, is_package_key, package_to_timm_key
from models.backbones.freezing import FreezableMixin
from models.backbones.pooling import make_attention_pool, resize_grid_embedding
from models.config import ImageBackboneConfig


class ClipResNetBackbone(FreezableMixin, nn.Module):
    """ModifiedResNet with the last stage at stride 1 and the attention pool resized to the grid."""

    def __init__(self, cfg: ImageBackboneConfig, embed_dim: int,
                 image_size: tuple[int, int]) -> None:
        super().__init__()
        arch = cfg.arch
        base = int(arch.get("image_size", 224))  # the size the weights were trained at
        self.net = ModifiedResNet(layers=list(arch["layers"]), output_dim=embed_dim,
                                  heads=int(arch["heads"]), image_size=base,
                                  width=int(arch.get("width", 64)))
        if cfg.weights:
            visual, _ = split_towers(load_clip_state_dict(cfg.weights))
            self.net.load_state_dict(visual)
        stride = 32
        if cfg.last_stride == 1:
            block = self.net.layer4[0]
            block.avgpool = nn.Identity()
            if block.downsample is not None:
                block.downsample[0] = nn.Identity()  # the "-1" AvgPool2d
            stride = 16
        self.grid = (image_size[0] // stride, image_size[1] // stride)
        self.channels = self.net.attnpool.k_proj.in_features
        pos = resize_grid_embedding(self.net.attnpool.positional_embedding.data,
                                    (base // 32, base // 32), self.grid)
        self.net.attnpool.positional_embedding = nn.Parameter(pos)
        self.freeze(cfg.frozen_stages)

    @property
    def global_pool(self) -> nn.Module:
        return self.net.attnpool

    def stages(self) -> list[nn.Module]:
        n = self.net
        stem = nn.ModuleList([n.conv1, n.bn1, n.conv2, n.bn2, n.conv3, n.bn3])
        return [stem, n.layer1, n.layer2, n.layer3, n.layer4]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.net.stem(images)
        x = self.net.layer4(self.net.layer3(self.net.layer2(self.net.layer1(x))))  # (B, C, h, w)
        return x, self.net.attnpool(x)  # (B, C, h, w), (B, D)


class ClipViTBackbone(FreezableMixin, nn.Module):
    """CLIP VisionTransformer at a non-square input: positional embedding interpolated."""

    global_pool = None

    def __init__(self, cfg: ImageBackboneConfig, embed_dim: int,
                 image_size: tuple[int, int]) -> None:
        super().__init__()
        arch = cfg.arch
        base, patch = int(arch.get("image_size", 224)), int(arch["patch_size"])
        self.net = VisionTransformer(image_size=base, patch_size=patch,
                                     width=int(arch["width"]), layers=int(arch["layers"]),
                                     heads=int(arch["heads"]),
                                     mlp_ratio=float(arch.get("mlp_ratio", 4.0)),
                                     output_dim=embed_dim, output_tokens=True)
        if cfg.weights:
            visual, _ = split_towers(load_clip_state_dict(cfg.weights))
            self.net.load_state_dict(visual)
        self.grid = (image_size[0] // patch, image_size[1] // patch)
        self.channels = int(arch["width"])
        pos = resize_grid_embedding(self.net.positional_embedding.data,
                                    (base // patch, base // patch), self.grid)
        self.net.positional_embedding = nn.Parameter(pos)
        self.freeze(cfg.frozen_stages)

    def stages(self) -> list[nn.Module]:
        n = self.net
        embed = nn.ModuleList([n.conv1, n.ln_pre])
        return [embed, *n.transformer.resblocks]

    def freeze(self, frozen_stages: int) -> None:
        super().freeze(frozen_stages)
        if frozen_stages > 0:
            self.net.class_embedding.requires_grad_(False)
            self.net.positional_embedding.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = self.net(images)  # (B, D) class token through ln_post + proj; (B, h*w, C)
        b, _, c = tokens.shape
        fmap = tokens.transpose(1, 2).reshape(b, c, *self.grid)  # (B, C, h, w)
        return fmap, pooled


class EfficientNetBackbone(FreezableMixin, nn.Module):
    """ImageNet EfficientNet-Lite (timm's ``tf_efficientnet_lite*``: TF "same" padding, BN eps
    1e-3 and momentum 0.01, ReLU6, drop path 0.2 as the package trains), last stride-2 stage at
    stride 1 (output stride 16), then an optional 1x1 neck to ``pool_width`` channels and
    CLIP-style global attention pooling. Weights: the package's state dict, keys renamed."""

    def __init__(self, cfg: ImageBackboneConfig, embed_dim: int,
                 image_size: tuple[int, int]) -> None:
        super().__init__()
        import timm

        name = str(cfg.arch.get("name", "efficientnet-lite0"))
        self.net = timm.create_model(_timm_name(name), pretrained=False, num_classes=0,
                                     global_pool="", bn_momentum=0.01, drop_path_rate=0.2)
        self.block_layout = block_layout(self.net)
        if cfg.weights:
            self.net.load_state_dict(self._package_state(cfg.weights))
        stride = 32
        if cfg.last_stride == 1:
            last = [b for stage in self.net.blocks for b in stage if b.conv_dw.stride[0] == 2][-1]
            last.conv_dw.stride = (1, 1)  # "same" padding follows the stride
            stride = 16
        self.grid = (image_size[0] // stride, image_size[1] // stride)
        self.channels, self.neck = _neck(self.net.num_features, cfg.pool_width)
        self.global_pool = make_attention_pool(self.grid, self.channels, cfg.pool_heads, embed_dim)
        self.freeze(cfg.frozen_stages)

    def _package_state(self, ref: str) -> dict[str, torch.Tensor]:
        """The package's ``.pth`` (ImageNet classifier dropped), keys in timm's names."""
        state = torch.load(_weights_file(ref), map_location="cpu", weights_only=True)
        return {package_to_timm_key(k, self.block_layout): v
                for k, v in state.items() if not k.startswith("_fc.")}

    def legacy_key(self, key: str) -> str:
        """A state key of a checkpoint from the package-based backbone -> the current name."""
        if key.startswith("net.") and is_package_key(key[4:]):
            return "net." + package_to_timm_key(key[4:], self.block_layout)
        return key

    def stages(self) -> list[nn.Module]:
        """Stem; one group per stage (a channel change); the last also holds conv_head + BN."""
        n = self.net
        *middle, last = n.blocks
        return [nn.Sequential(n.conv_stem, n.bn1), *middle,
                nn.Sequential(last, n.conv_head, n.bn2)]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.neck(self.net.forward_features(images))  # (B, C, h, w)
        return fmap, self.global_pool(fmap)  # (B, C, h, w), (B, D)

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen leading stages (always the stem): (B, 3, H, W) -> (B, C', h', w')."""
        for stage in self.stages()[: self._trunk_stages()]:
            images = stage(images)
        return images

    def head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything after ``trunk``: ``forward(images) == head(trunk(images))``."""
        for stage in self.stages()[self._trunk_stages():]:
            x = stage(x)
        fmap = self.neck(x)  # (B, C, h, w)
        return fmap, self.global_pool(fmap)

    def _trunk_stages(self) -> int:
        return max(1, self.frozen_stages)


class TorchvisionResNetBackbone(FreezableMixin, nn.Module):
    """torchvision ResNet (``arch.name``: resnet50, the SSAN paper's backbone), ImageNet weights
    from a local state-dict file when a user has one (``weights``: its path); last stage at
    stride 1 when ``last_stride`` is 1; optional 1x1 neck; CLIP-style attention pooling."""

    def __init__(self, cfg: ImageBackboneConfig, embed_dim: int,
                 image_size: tuple[int, int]) -> None:
        super().__init__()
        import torchvision

        self.net = getattr(torchvision.models, str(cfg.arch.get("name", "resnet50")))(weights=None)
        del self.net.fc  # the ImageNet classifier is never used
        if cfg.weights:
            state = torch.load(_weights_file(cfg.weights), map_location="cpu", weights_only=True)
            self.net.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
        stride = 32
        if cfg.last_stride == 1:
            block = self.net.layer4[0]
            (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = (1, 1)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
            stride = 16
        self.grid = (image_size[0] // stride, image_size[1] // stride)
        # self.net.inplanes: channels of layer4's output
        self.channels, self.neck = _neck(self.net.inplanes, cfg.pool_width)
        self.global_pool = make_attention_pool(self.grid, self.channels, cfg.pool_heads, embed_dim)
        self.freeze(cfg.frozen_stages)

    def stages(self) -> list[nn.Module]:
        n = self.net
        return [nn.ModuleList([n.conv1, n.bn1]), n.layer1, n.layer2, n.layer3, n.layer4]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(images))))  # (B, 64, H/4, W/4)
        fmap = self.neck(n.layer4(n.layer3(n.layer2(n.layer1(x)))))  # (B, C, h, w)
        return fmap, self.global_pool(fmap)  # (B, C, h, w), (B, D)


def _neck(in_channels: int, width: int) -> tuple[int, nn.Module]:
    """A 1x1 conv + BN + ReLU to ``width`` channels before pooling (identity when 0)."""
    if not width:
        return in_channels, nn.Identity()
    return width, nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False),
                                nn.BatchNorm2d(width), nn.ReLU(inplace=True))


def _timm_name(name: str) -> str:
    """The package's model name (``efficientnet-lite0``) -> timm's (``tf_efficientnet_lite0``)."""
    if not name.startswith("efficientnet-lite"):
        raise ValueError(f"{name!r}: only EfficientNet-Lite (efficientnet-lite0..4) is supported")
    return "tf_" + name.replace("-", "_")


def _weights_file(ref: str) -> str:
    """``package:<module>`` -> the weights file that module ships; else the path itself."""
    if not ref.startswith("package:"):
        return ref
    module = importlib.import_module(ref.split(":", 1)[1])
    getters = [getattr(module, n) for n in dir(module) if n.endswith("ModelFile")]
    if not getters:
        raise ValueError(f"{ref}: the package exposes no *ModelFile class")
    return str(getters[0].get_model_file_path())


IMAGE_BACKBONES: dict[str, Any] = {
    "clip-resnet": ClipResNetBackbone,
    "clip-vit": ClipViTBackbone,
    "efficientnet": EfficientNetBackbone,
    "torchvision-resnet": TorchvisionResNetBackbone,
}


def build_image_backbone(cfg: ImageBackboneConfig, embed_dim: int,
                         image_size: tuple[int, int]) -> nn.Module:
    if cfg.kind not in IMAGE_BACKBONES:
        raise ValueError(f"unknown image backbone {cfg.kind!r}; known: {sorted(IMAGE_BACKBONES)}")
    return IMAGE_BACKBONES[cfg.kind](cfg, embed_dim, tuple(image_size))
