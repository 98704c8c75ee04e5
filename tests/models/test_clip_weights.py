"""CLIP weights from a local file: OpenAI .pt (TorchScript or state dict), open_clip dict."""

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from models.backbones.clip_weights import load_clip_state_dict
from models.factory import create_model
from tests.models.conftest import TINY_CLIP_TEXT, TINY_RN, TINY_VIT, tiny_vgsg


def _tiny_clip(vision: dict) -> CLIP:
    torch.manual_seed(3)
    arch = vision["arch"]
    vision_cfg = (CLIPVisionCfg(layers=arch["layers"], width=arch["width"], image_size=64,
                                head_width=arch["width"] * 32 // arch["heads"])
                  if vision["kind"] == "clip-resnet" else
                  CLIPVisionCfg(layers=arch["layers"], width=arch["width"], image_size=64,
                                patch_size=arch["patch_size"], head_width=16))
    text = TINY_CLIP_TEXT["arch"]
    return CLIP(embed_dim=16, vision_cfg=vision_cfg,
                text_cfg=CLIPTextCfg(context_length=text["context_length"], width=text["width"],
                                     heads=text["heads"], layers=text["layers"]))


def _write(clip: CLIP, path, fmt: str) -> None:
    state = clip.state_dict()
    if fmt == "open_clip":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif fmt == "openai-state-dict":
        extra = {"input_resolution": torch.tensor(64), "context_length": torch.tensor(24),
                 "vocab_size": torch.tensor(49408)}
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}
                   | extra, path)
    else:  # an OpenAI-style TorchScript archive
        torch.jit.save(torch.jit.script(_StateHolder(state)), str(path))


class _StateHolder(torch.nn.Module):
    """A scriptable module whose state dict is exactly a CLIP state dict (stand-in for the
    traced OpenAI release archives)."""

    def __init__(self, state):
        super().__init__()
        for key, value in state.items():
            module = self
            *parents, leaf = key.split(".")
            for name in parents:
                if not hasattr(module, name):
                    module.add_module(name, torch.nn.Module())
                module = getattr(module, name)
            module.register_buffer(leaf, value.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize("fmt", ["open_clip", "openai-state-dict", "torchscript"])
@pytest.mark.parametrize("vision", [TINY_RN, TINY_VIT], ids=["rn", "vit"])
def test_backbones_load_clip_weights_from_a_local_file(tmp_path, fmt, vision):
    clip = _tiny_clip(vision)
    path = tmp_path / "clip.pt"
    _write(clip, path, fmt)
    assert "logit_scale" not in load_clip_state_dict(path)
    config = tiny_vgsg(image_backbone={**vision, "weights": str(path)},
                       text_backbone={**TINY_CLIP_TEXT, "weights": str(path)})
    model = create_model(config)
    src = clip.state_dict()
    atol = 1e-3 if fmt == "openai-state-dict" else 0  # that file stores float16
    key = "transformer.resblocks.0.mlp.c_fc.weight"
    torch.testing.assert_close(model.textual.net.state_dict()[key], src[key], atol=atol, rtol=0)
    visual_key = ("layer1.0.conv1.weight" if vision["kind"] == "clip-resnet"
                  else "transformer.resblocks.0.attn.in_proj_weight")
    torch.testing.assert_close(model.visual.net.state_dict()[visual_key],
                               src[f"visual.{visual_key}"], atol=atol, rtol=0)
    # the checkpoint stores the weights, so it forgets the user's file path
    assert model.checkpoint_config()["image_backbone"]["weights"] == ""


def test_positional_embedding_resized_to_the_person_grid(tmp_path):
    clip = _tiny_clip(TINY_RN)
    _write(clip, tmp_path / "clip.pt", "open_clip")
    weights = str(tmp_path / "clip.pt")
    model = create_model(tiny_vgsg(image_backbone={**TINY_RN, "weights": weights}))
    # 64x64 weights (2x2 grid at stride 32) -> 64x32 input at stride 16: a 4x2 grid
    assert model.visual.net.attnpool.positional_embedding.shape[0] == 4 * 2 + 1
    torch.testing.assert_close(model.visual.net.attnpool.positional_embedding[0],
                               clip.visual.attnpool.positional_embedding[0])
