"""SSAN: shapes, hand-computed loss values, gradient flow, exported S_g + S_l + S_n,
vocabulary in the checkpoint, and the unchanged indexer/service on an SSAN checkpoint."""

import pytest
import torch
import torch.nn.functional as F

from models.factory import create_model, load_model, read_checkpoint, save_checkpoint
from models.losses.compound_ranking import compound_ranking_loss
from models.ssan import WordAttention
from models.text_lstm import build_vocabulary
from tests.models.conftest import write_cuhk_fixture
from tests.models.family_helpers import (
    CAPTIONS,
    assert_reaches,
    index_and_search,
    reached_by,
    tiny_batch,
    train_and_eval,
)

TINY_RESNET = {"kind": "torchvision-resnet", "arch": {"name": "resnet18"}, "pool_width": 16,
               "frozen_stages": 1}


def tiny_ssan(**overrides) -> dict:
    config = {"family": "ssan", "name": "tiny-ssan", "embed_dim": 8, "image_size": [64, 32],
              "image_backbone": dict(TINY_RESNET), "num_parts": 3, "word_dim": 8,
              "lstm_hidden": 16, "relation_views": 2, "num_classes": 2,
              "vocab": build_vocabulary(CAPTIONS)}
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def model():
    return create_model(tiny_ssan())


# ---- shapes ----
def test_shapes_parts_and_groups(model):
    model.eval()
    batch = tiny_batch(model)
    with torch.no_grad():
        img, txt = model.image_features(batch["images"]), model.text_features(batch["tokens"])
        branches = model.encode_text_branches(batch["tokens"])
    assert img.shape == txt.shape == (4, 8 + 3 * 8 + 3 * 8) == (4, model.export_dim)
    assert {k: tuple(v.shape) for k, v in branches.items()} == {
        "global": (4, 8), "local": (4, 3, 8), "relation": (4, 3, 8)}
    groups = [p.group for p in model.parts()]
    assert groups == ["global"] + ["local"] * 3 + ["relation"] * 3
    assert torch.allclose(img.norm(dim=1), torch.full((4,), 3 ** 0.5), atol=1e-5)


def test_text_export_is_per_text(model):
    """Padding in a batch (and the other texts) never changes a caption's vector."""
    model.eval()
    with torch.no_grad():
        alone = model.text_features(model.tokenize([CAPTIONS[1]]))
        batched = model.text_features(model.tokenize(CAPTIONS))[1:2]
        unknown = model.text_features(model.tokenize(["zebra", ""]))
    assert torch.allclose(alone, batched, atol=1e-5)
    assert torch.allclose(unknown[0], unknown[1], atol=1e-6)  # both one <unk> word


# ---- loss values on hand-made inputs ----
def test_compound_ranking_strong_terms_by_hand():
    pids = torch.tensor([0, 1])
    easy = torch.tensor([[0.9, 0.1], [0.3, 0.8]])
    assert compound_ranking_loss(easy, pids, margin=0.2).item() == 0.0
    hard = torch.tensor([[0.5, 0.6], [0.2, 0.4]])
    # image 0: [0.2 - 0.5 + 0.6] = 0.3; text 1 vs image 0: [0.2 - 0.4 + 0.6] = 0.4; others <= 0
    assert compound_ranking_loss(hard, pids, margin=0.2).item() == pytest.approx(0.7 / 2)


def test_compound_ranking_weak_terms_and_adaptive_margin_by_hand():
    pids = torch.tensor([0, 0, 1])
    sim = torch.tensor([[0.9, 0.2, 0.1],
                        [0.0, 0.9, 0.1],
                        [0.1, 0.1, 0.9]])
    # strong terms all satisfied (0.9 vs negatives 0.1, margin 0.2)
    # weak (0,1): S=0.2, a=0.2*(1.2)/2=0.12; [0.12-0.2+0.1]=0.02 (row), [0.12-0.2+0.1]=0.02 (col)
    # weak (1,0): S=0.0, a=0.1; [0.1-0+0.1]=0.2 (row), [0.1-0+0.1]=0.2 (col)
    weak = (0.04 + 0.4) / 2
    assert compound_ranking_loss(sim, pids, 0.2, beta=0.5).item() == pytest.approx(0.5 * weak)
    fixed = ((0.2 - 0.2 + 0.1) * 2 + (0.2 + 0.1) * 2) / 2
    assert compound_ranking_loss(sim, pids, 0.2, beta=0.5, adaptive=False).item() == \
        pytest.approx(0.5 * fixed)
    assert compound_ranking_loss(sim, pids, 0.2, beta=0.0).item() == 0.0


def test_word_attention_weights_and_masks_words():
    wam = WordAttention(2, 1)
    with torch.no_grad():
        wam.score.weight.zero_()
        wam.score.bias.fill_(0.0)  # every weight sigmoid(0) = 1/2
    words = torch.tensor([[[1.0, -4.0], [3.0, 2.0], [9.0, 9.0]]])  # (1, 3, 2), last is padding
    mask = torch.tensor([[True, True, False]])
    assert wam(words, mask).tolist() == [[[1.5, 1.0]]]


# ---- gradient flow ----
@pytest.mark.parametrize("term,reaches,not_reaches", [
    ("cr_global", ("visual.net.layer4", "textual.", "global_proj."),
     ("part_proj.", "word_attention.", "relation.", "id_")),
    ("cr_local", ("visual.net.layer4", "textual.", "word_attention.", "part_proj."),
     ("global_proj.", "relation.", "id_")),
    ("cr_relation", ("relation.", "part_proj.", "word_attention."), ("global_proj.", "id_")),
    ("id_global", ("id_global.", "global_proj.", "textual."), ("id_local.", "part_proj.")),
])
def test_gradient_flow_of_each_term(model, term, reaches, not_reaches):
    names = reached_by(model, term)
    assert_reaches(names, reaches, not_reaches)
    assert not any(n.startswith(("visual.net.conv1", "visual.net.bn1")) for n in names)  # frozen


def test_ablation_without_relation_branch():
    m = create_model(tiny_ssan(relation=False, num_classes=0))
    assert set(m.training_losses(tiny_batch(m))) == {"cr_global", "cr_local"}
    assert m.export_dim == 8 + 3 * 8 and not hasattr(m, "relation")


# ---- export ----
def test_exported_inner_product_is_sg_plus_sl_plus_sn(model):
    model.eval()
    batch = tiny_batch(model)
    with torch.no_grad():
        img = model.encode_image_branches(batch["images"])
        txt = model.encode_text_branches(batch["tokens"])
        expected = sum(F.cosine_similarity(txt[k].flatten(1)[:, None], img[k].flatten(1)[None],
                                           dim=-1) for k in ("global", "local", "relation"))
        exported = model.text_features(batch["tokens"]) @ model.image_features(batch["images"]).T
    assert torch.allclose(exported, expected, atol=1e-5)


def test_checkpoint_carries_vocabulary_and_drops_id_heads(tmp_path, model):
    path = tmp_path / "ssan.pt"
    save_checkpoint(path, model)
    payload = read_checkpoint(path)
    assert payload["tokenizer"]["vocab"] == payload["config"]["vocab"] == model.config.vocab
    assert not any(k.startswith("id_") for k in payload["state_dict"])
    loaded, _ = load_model(path)
    model.eval()
    batch = tiny_batch(model)
    with torch.no_grad():
        assert torch.allclose(loaded.text_features(batch["tokens"]),
                              model.text_features(batch["tokens"]), atol=1e-6)
        assert torch.allclose(loaded.image_features(batch["images"]),
                              model.image_features(batch["images"]), atol=1e-6)


def test_vocabulary_is_built_from_training_captions(tmp_path):
    root = write_cuhk_fixture(tmp_path / "cuhk", {"train": [1, 2], "test": [900]})
    m = create_model(tiny_ssan(vocab=[], vocab_from={"root": str(root), "split": "train"}))
    assert "coat" in m.config.vocab and "900" not in m.config.vocab and "1" in m.config.vocab
    with pytest.raises(ValueError, match="vocabulary"):
        create_model(tiny_ssan(vocab=[]))


def test_indexed_and_served_through_unchanged_indexer_and_service(tmp_path, settings,
                                                                 image_folder, model):
    path = tmp_path / "ssan.pt"
    save_checkpoint(path, model)
    report, result, encoder = index_and_search(path, settings, image_folder, CAPTIONS[2])
    assert report.indexed == 6 and len(result.hits) == 3 and encoder.spec.dim == 56
    hit = result.hits[0]
    assert set(hit.parts) == {p.name for p in model.parts()}
    assert sum(hit.parts.values()) == pytest.approx(hit.score, abs=1e-4)


def test_generic_trainer_and_evaluator(tmp_path, capsys):
    config = tiny_ssan(vocab=[], num_classes=0,
                       vocab_from={"root": str(tmp_path / "data"), "split": "train"})
    payload, metrics = train_and_eval(tmp_path, config, capsys)
    assert payload["config"]["num_classes"] == 4 and "coat" in payload["config"]["vocab"]
    assert metrics["queries"] == 12 and 0 <= metrics["rank1"] <= 100
