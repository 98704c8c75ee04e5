"""VFE-TPS: shapes, hand-computed loss values, gradient flow, exported similarity, checkpoints,
and the unchanged indexer/service on a VFE-TPS checkpoint."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.factory import create_model, load_model, read_checkpoint, save_checkpoint
from models.losses.cmpm import cmpm_loss, matching_kl
from models.losses.gvfc import is_gvfc_loss, sample_pairs
from models.losses.tgmim import masked_l1_loss
from models.tgmim import apply_patch_mask, random_patch_mask
from tests.models.conftest import TINY_CLIP_TEXT, TINY_RN, TINY_VIT
from tests.models.family_helpers import (
    CAPTIONS,
    assert_reaches,
    index_and_search,
    reached_by,
    tiny_batch,
    train_and_eval,
)


def tiny_vfe_tps(**overrides) -> dict:
    config = {"family": "vfe-tps", "name": "tiny-vfe-tps", "embed_dim": 16,
              "image_size": [64, 32], "image_backbone": dict(TINY_VIT),
              "text_backbone": dict(TINY_CLIP_TEXT), "tgmim_dim": 16, "tgmim_heads": 2,
              "tgmim_layers": 4}
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def model():
    return create_model(tiny_vfe_tps(image_backbone={**TINY_VIT, "frozen_stages": 1}))


# ---- shapes ----
@pytest.mark.parametrize("backbone", [TINY_VIT, TINY_RN])
def test_shapes_and_single_global_part(backbone):
    m = create_model(tiny_vfe_tps(image_backbone=dict(backbone))).eval()
    batch = tiny_batch(m)
    with torch.no_grad():
        img, txt = m.image_features(batch["images"]), m.text_features(batch["tokens"])
        words, _, mask = m.textual(batch["tokens"])
        fmap, _ = m.visual(batch["images"])
        pixels = m.tgmim(fmap, words, mask)
    assert img.shape == txt.shape == (4, 16) and m.export_dim == 16
    assert torch.allclose(img.norm(dim=1), torch.ones(4), atol=1e-5)
    assert [(p.name, p.group) for p in m.parts()] == [("global", "global")]
    assert m.visual.grid == (4, 2) and m.patch == 16
    assert pixels.shape == (4, 3, 64, 32)


def test_patch_mask_masks_the_configured_ratio():
    mask = random_patch_mask(3, (4, 2), 0.5, torch.Generator().manual_seed(0))
    assert mask.shape == (3, 4, 2) and mask.flatten(1).sum(1).tolist() == [4, 4, 4]
    images = torch.ones(3, 3, 64, 32)
    masked = apply_patch_mask(images, mask, 16)
    assert masked[0, :, :16, :16].abs().sum() == 0 if mask[0, 0, 0] else masked[0, 0, 0, 0] == 1
    assert masked.sum() == images.sum() / 2


# ---- loss values on hand-made inputs ----
def test_cmpm_matches_hand_computation():
    image = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    pids = torch.tensor([0, 1])
    # i2t logits x_i . zbar_j: [[2, sqrt2], [0, 1/sqrt2]]; t2i z_j . xbar_i: [[3, 0], [1, 1]]
    r = 1 / math.sqrt(2)

    def kl_row(logits, pos):
        p = torch.softmax(torch.tensor(logits, dtype=torch.float32), 0)
        return float(sum(pj * math.log(pj / ((1.0 if j == pos else 0.0) + 1e-8))
                         for j, pj in enumerate(p.tolist())))

    i2t = (kl_row([2, 2 * r], 0) + kl_row([0, r], 1)) / 2
    t2i = (kl_row([3, 0], 0) + kl_row([1, 1], 1)) / 2
    assert cmpm_loss(image, text, pids).item() == pytest.approx(i2t + t2i, rel=1e-5)


def test_cmpm_is_near_zero_when_matched_and_counts_every_same_person_pair():
    eye = 50 * torch.eye(3)
    assert cmpm_loss(eye, eye, torch.tensor([0, 1, 2])).item() < 1e-6
    # two images of one person: q spreads 1/2 on each, p from equal logits matches exactly
    image = torch.tensor([[10.0, 0.0], [10.0, 0.0]])
    assert cmpm_loss(image, image, torch.tensor([4, 4])).item() == pytest.approx(0, abs=1e-6)


def test_is_gvfc_matches_hand_computation_over_sampled_pairs():
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    pids = torch.tensor([0, 0, 1])
    assert sample_pairs(3, 0).tolist() == [[1, 2], [0, 2], [0, 1]]
    # anchor 0: logits [1, 0] (positive first); anchor 1: [1, 0]; anchor 2: no positive
    p = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    expected = float((p * (p.log() - torch.log(torch.tensor([1.0, 0.0]) + 1e-8))).sum())
    assert is_gvfc_loss(image, pids).item() == pytest.approx(expected, rel=1e-5)
    assert sample_pairs(6, 2, torch.Generator().manual_seed(0)).shape == (6, 2)
    assert matching_kl(torch.zeros(2, 2), torch.tensor([[1, 1], [1, 1]])).item() == pytest.approx(
        0, abs=1e-6)


def test_masked_l1_counts_masked_patches_only():
    target = torch.zeros(1, 3, 32, 32)
    prediction = torch.ones(1, 3, 32, 32)
    prediction[:, :, 16:, :] = 5.0  # error 5 on the unmasked bottom row of patches
    mask = torch.tensor([[[True, True], [False, False]]])
    assert masked_l1_loss(prediction, target, mask, 16).item() == pytest.approx(1.0)


# ---- gradient flow ----
@pytest.mark.parametrize("term,reaches,not_reaches", [
    ("cmpm", ("visual.", "textual."), ("tgmim.",)),
    ("is_gvfc", ("visual.",), ("textual.", "tgmim.")),
    ("tgmim", ("tgmim.", "visual.", "textual."), ()),
])
def test_gradient_flow_of_each_term(model, term, reaches, not_reaches):
    names = reached_by(model, term)
    assert_reaches(names, reaches, not_reaches)
    frozen = ("visual.net.conv1", "visual.net.class_embedding", "visual.net.positional_embedding")
    assert not any(n.startswith(frozen) for n in names)  # frozen_stages: 1


def test_ablation_weights_switch_terms_off():
    m = create_model(tiny_vfe_tps(tgmim=False, loss={"gvfc": 0.0}))
    assert set(m.training_losses(tiny_batch(m))) == {"cmpm"} and not hasattr(m, "tgmim")


# ---- export ----
def test_exported_inner_product_is_global_cosine_and_tgmim_is_not_used(model):
    model.eval()
    batch = tiny_batch(model)
    with torch.no_grad():
        _, img_g = model.visual(batch["images"])
        _, txt_g, _ = model.textual(batch["tokens"])
        expected = F.cosine_similarity(txt_g[:, None], img_g[None], dim=-1)  # (T, I)
        exported = model.text_features(batch["tokens"]) @ model.image_features(batch["images"]).T
        for p in model.tgmim.parameters():
            p.add_(1.0)  # the training-only decoder changes; exports must not
        again = model.text_features(batch["tokens"]) @ model.image_features(batch["images"]).T
    assert torch.allclose(exported, expected, atol=1e-5)
    assert torch.equal(exported, again)


def test_checkpoint_drops_tgmim_and_loads_alone(tmp_path, model):
    path = tmp_path / "vfe.pt"
    save_checkpoint(path, model)
    payload = read_checkpoint(path)
    assert payload["config"]["family"] == "vfe-tps"
    assert not any(k.startswith("tgmim.") for k in payload["state_dict"])
    loaded, _ = load_model(path)
    batch = tiny_batch(model)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.text_features(batch["tokens"]),
                              model.text_features(batch["tokens"]), atol=1e-6)
        assert torch.allclose(loaded.image_features(batch["images"]),
                              model.image_features(batch["images"]), atol=1e-6)


def test_indexed_and_served_through_unchanged_indexer_and_service(tmp_path, settings,
                                                                 image_folder, model):
    path = tmp_path / "vfe.pt"
    save_checkpoint(path, model)
    report, result, encoder = index_and_search(path, settings, image_folder, CAPTIONS[0])
    assert report.indexed == 6 and len(result.hits) == 3
    assert encoder.spec.dim == 16 and result.hits[0].score >= result.hits[-1].score
    assert set(result.hits[0].parts) == {"global"}
    np.testing.assert_allclose(result.hits[0].parts["global"], result.hits[0].score, atol=1e-5)


def test_generic_trainer_and_evaluator(tmp_path, capsys):
    payload, metrics = train_and_eval(tmp_path, tiny_vfe_tps(), capsys)
    assert payload["config"]["family"] == "vfe-tps" and payload["extra"]["step"] == 2
    assert metrics["queries"] == 12 and 0 <= metrics["rank1"] <= 100
