import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.factory import create_model, load_model, save_checkpoint
from tests.models.conftest import TINY_VIT, tiny_vgsg

CAPTIONS = ["a man in a red coat and blue jeans", "a woman with a black bag",
            "a person wearing white shoes", "a girl in a yellow dress",
            "a man carrying a backpack", "a boy in shorts"]


def _batch(model, n=6):
    torch.manual_seed(1)
    return {"images": torch.randn(n, 3, *model.config.image_size),
            "tokens": model.tokenize(CAPTIONS[:n]),
            "pids": torch.tensor([0, 0, 1, 1, 2, 2][:n])}


@pytest.mark.parametrize("image_backbone", ["rn", "vit"])
def test_export_inner_product_is_cos_global_plus_cos_local(image_backbone):
    overrides = {} if image_backbone == "rn" else {"image_backbone": dict(TINY_VIT)}
    model = create_model(tiny_vgsg(**overrides)).eval()
    batch = _batch(model)
    with torch.no_grad():
        img_g, img_l, _ = model.encode_image_parts(batch["images"])
        txt_g, txt_l, _, _ = model.encode_text_parts(batch["tokens"])
        expected = (F.cosine_similarity(txt_g[:, None], img_g[None], dim=-1)
                    + F.cosine_similarity(txt_l.flatten(1)[:, None], img_l.flatten(1)[None],
                                          dim=-1))  # (T, I)
        exported = model.text_features(batch["tokens"]) @ model.image_features(batch["images"]).T
    assert torch.allclose(exported, expected, atol=1e-5)
    parts = model.parts()
    assert [p.name for p in parts] == ["global", "stripe_1", "stripe_2", "stripe_3", "stripe_4"]
    assert parts[-1].stop == model.export_dim == 16 * 5
    with torch.no_grad():
        t = model.text_features(batch["tokens"])
        i = model.image_features(batch["images"])
    summed = sum(t[:, p.start:p.stop] @ i[:, p.start:p.stop].T for p in parts)  # per-part sum
    assert torch.allclose(summed, exported, atol=1e-5)


@pytest.mark.parametrize("overrides,expected", [
    ({}, {"itc_global", "id_global", "itc_local", "id_local", "itc_vg", "id_vg",
          "similarity_transfer", "class_transfer"}),
    ({"vgkt": False}, {"itc_global", "id_global", "itc_local", "id_local"}),
    ({"text_local": "conv", "vgkt": False}, {"itc_global", "id_global", "itc_local",
                                             "id_local"}),
    ({"text_local": "none"}, {"itc_global", "id_global"}),
])
def test_ablation_switches_change_loss_terms(overrides, expected):
    model = create_model(tiny_vgsg(**overrides)).train()
    terms = model.training_losses(_batch(model))
    assert set(terms) == expected
    loss = sum(terms.values())
    assert torch.isfinite(loss)
    loss.backward()
    if overrides.get("text_local") == "none":
        assert model.export_dim == 16 and len(model.parts()) == 1


def test_knowledge_transfer_sends_no_gradient_into_vision_guided_attention():
    model = create_model(tiny_vgsg(loss={"id": 0, "itc_global": 0, "itc_local": 0, "itc_vg": 0,
                                         "similarity_transfer": 1.0, "class_transfer": 1.0}))
    model.config.loss.id = 0
    terms = model.training_losses(_batch(model))
    assert set(terms) == {"similarity_transfer"}
    terms["similarity_transfer"].backward()
    assert model.vgkt.pixel_proj.weight.grad is None
    assert model.text_local.queries.grad is not None  # the student does learn


def test_class_transfer_teacher_is_detached():
    from models.losses.knowledge_transfer import class_probability_transfer

    teacher = torch.randn(4, 5, requires_grad=True)
    student = torch.randn(4, 5, requires_grad=True)
    class_probability_transfer(teacher, student).backward()
    assert teacher.grad is None and student.grad is not None


def test_checkpoint_round_trip_drops_training_heads(tmp_path):
    model = create_model(tiny_vgsg()).eval()
    save_checkpoint(tmp_path / "m.pt", model, half=True)
    payload = torch.load(tmp_path / "m.pt", weights_only=False)
    assert not any(k.startswith(("vgkt.", "id_global.", "id_local."))
                   for k in payload["state_dict"])
    assert payload["format_version"] >= 1 and payload["tokenizer"]["kind"] == "openai-clip-bpe"
    loaded, _ = load_model(tmp_path / "m.pt")
    batch = _batch(model)
    with torch.no_grad():
        a = loaded.image_features(batch["images"]).numpy()
        b = model.image_features(batch["images"]).numpy()
    np.testing.assert_allclose(a, b, atol=2e-2)  # float16 storage


def test_stripe_pools_are_not_shared_with_the_global_pool():
    model = create_model(tiny_vgsg())
    pools = [model.visual.global_pool, *model.stripe_pools]
    weights = {id(p.k_proj.weight) for p in pools}
    assert len(weights) == 5
    # initialised from the global pool, positional rows taken from the stripe's grid rows
    grid = model.visual.grid
    rows = grid[0] // 4 * grid[1]
    torch.testing.assert_close(model.stripe_pools[1].positional_embedding[1:],
                               model.visual.global_pool.positional_embedding[1 + rows:1 + 2 * rows])


def test_rn_last_stage_runs_at_stride_16():
    model = create_model(tiny_vgsg())
    fmap, pooled = model.visual(torch.randn(2, 3, 64, 32))
    assert fmap.shape[-2:] == (4, 2) and model.visual.grid == (4, 2)
    assert pooled.shape == (2, 16)


def test_shared_layer_is_off_by_default_and_adds_no_weights():
    model = create_model(tiny_vgsg())
    assert model.config.shared_layer is False and not hasattr(model, "shared")
    assert not any(k.startswith("shared.") for k in model.state_dict())


def test_shared_layer_maps_both_modalities_through_one_linear():
    """Sec. IV-C's shared layer: the same D -> D map after each tower, identity at first."""
    model = create_model(tiny_vgsg(shared_layer=True)).eval()
    assert torch.equal(model.shared.weight, torch.eye(16))
    torch.manual_seed(4)
    torch.nn.init.normal_(model.shared.weight)
    torch.nn.init.normal_(model.shared.bias)
    w, b = model.shared.weight, model.shared.bias
    batch = _batch(model)
    with torch.no_grad():
        _, img_pooled = model.visual(batch["images"])  # (B, D) the tower's own output
        _, txt_pooled, _ = model.textual(batch["tokens"])  # (B, D)
        img = model.image_features(batch["images"])[:, :16]
        txt = model.text_features(batch["tokens"])[:, :16]
        img_l, txt_l = model.encode_image_parts(batch["images"])[1], model.encode_text_parts(
            batch["tokens"])[1]
    assert torch.allclose(img, F.normalize(img_pooled @ w.T + b, dim=-1), atol=1e-5)
    assert torch.allclose(txt, F.normalize(txt_pooled @ w.T + b, dim=-1), atol=1e-5)
    plain = create_model(tiny_vgsg()).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith("shared.")})
    with torch.no_grad():
        raw_l = plain.encode_image_parts(batch["images"])[1]  # (B, K, D) before the layer
        raw_t = plain.encode_text_parts(batch["tokens"])[1]
    assert torch.allclose(img_l, raw_l @ w.T + b, atol=1e-5)
    assert torch.allclose(txt_l, raw_t @ w.T + b, atol=1e-5)


def test_checkpoint_round_trip_with_shared_layer_and_text_drop_path(tmp_path):
    text = {**tiny_vgsg()["text_backbone"], "drop_path": 0.1}
    model = create_model(tiny_vgsg(shared_layer=True, text_backbone=text)).eval()
    save_checkpoint(tmp_path / "m.pt", model)
    loaded, _ = load_model(tmp_path / "m.pt")
    assert loaded.config.shared_layer and loaded.config.text_backbone.drop_path == 0.1
    batch = _batch(model)
    with torch.no_grad():
        for fn in ("image_features", "text_features"):
            source = batch["images"] if fn == "image_features" else batch["tokens"]
            assert torch.allclose(getattr(loaded, fn)(source), getattr(model, fn)(source),
                                  atol=1e-6)


def test_bundled_checkpoint_loads_with_both_options_off():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "models" / "checkpoints" / "default.pt"
    model, _ = load_model(path)
    assert model.config.shared_layer is False and model.config.text_backbone.drop_path == 0.0
    assert not hasattr(model, "shared")


def test_a_training_step_with_eq2_shared_layer_and_text_drop_path():
    text = {**tiny_vgsg()["text_backbone"], "drop_path": 0.2}
    model = create_model(tiny_vgsg(shared_layer=True, text_backbone=text,
                                   loss={"itc_form": "vitaa-align"})).train()
    terms = model.training_losses(_batch(model))
    assert {"itc_global", "itc_local", "itc_vg", "similarity_transfer"} <= set(terms)
    loss = sum(terms.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert model.shared.weight.grad is not None and model.shared.weight.grad.abs().sum() > 0
