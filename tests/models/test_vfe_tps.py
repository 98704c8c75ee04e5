"""VFE-TPS: shapes, hand-computed loss values, gradient flow, exported similarity, checkpoints,
TG-MIM's masked pass and MCA queries, pre-issue-16 configs, and the unchanged indexer/service
on a VFE-TPS checkpoint."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.factory import create_model, load_model, read_checkpoint, save_checkpoint
from models.losses.cmpm import cmpm_loss, matching_kl
from models.losses.gvfc import is_gvfc_loss, sample_pairs
from models.losses.tgmim import masked_l1_loss
from models.tgmim import apply_patch_mask, frozen_batchnorm_stats, random_patch_mask
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
        fmap, glob = m.visual(batch["images"])
        pixels = m.tgmim(fmap, words, mask, glob)
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
def _kl_rows_by_loops(logits, positive):
    """``1/N sum_i KL(softmax(logits_i) || q_i)`` written out, rows without a positive adding 0."""
    total = 0.0
    for row, pos in zip(logits, positive, strict=True):
        if not any(pos):
            continue
        exps = [math.exp(v) for v in row]
        p = [e / sum(exps) for e in exps]
        q = [y / sum(pos) for y in pos]
        total += sum(pj * math.log(pj / (qj + 1e-8)) for pj, qj in zip(p, q, strict=True))
    return total / len(logits)


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(
        y * y for y in b))


def test_cmpm_paper_form_is_cosine_over_tau_by_hand():
    image = [[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    text = [[3.0, 1.0], [1.0, 1.0], [0.5, -1.0]]
    pids = [0, 1, 0]
    tau = 0.5
    pos = [[float(a == b) for b in pids] for a in pids]
    i2t = [[_cos(v, t) / tau for t in text] for v in image]  # Eq. 6's logits
    t2i = [[_cos(t, v) / tau for v in image] for t in text]
    expected = _kl_rows_by_loops(i2t, pos) + _kl_rows_by_loops(t2i, pos)  # Eq. 7-9, 1/B
    got = cmpm_loss(torch.tensor(image), torch.tensor(text), torch.tensor(pids), tau=tau)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    scaled = cmpm_loss(10 * torch.tensor(image), torch.tensor(text), torch.tensor(pids), tau=tau)
    assert scaled.item() == pytest.approx(expected, rel=1e-5)  # cosine: scale-free
    with pytest.raises(ValueError, match="tau"):
        cmpm_loss(torch.tensor(image), torch.tensor(text), torch.tensor(pids), tau=0.0)


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
    assert cmpm_loss(image, text, pids, "projection").item() == pytest.approx(i2t + t2i,
                                                                             rel=1e-5)


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
    got = is_gvfc_loss(image, pids, 0, "projection", average="anchors")
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert sample_pairs(6, 2, torch.Generator().manual_seed(0)).shape == (6, 2)
    assert matching_kl(torch.zeros(2, 2), torch.tensor([[1, 1], [1, 1]])).item() == pytest.approx(
        0, abs=1e-6)


def test_is_gvfc_paper_form_by_hand():
    """Eq. 4-5: cos / tau over each anchor's sampled images, 1/B over all anchors."""
    image = [[1.0, 0.0], [2.0, 0.5], [0.0, 2.0], [1.0, 1.0]]
    pids = [0, 0, 1, 2]  # anchors 2 and 3 have no positive: they add 0 but count in 1/B
    tau = 0.1
    gen = torch.Generator().manual_seed(3)
    index = sample_pairs(4, 2, torch.Generator().manual_seed(3)).tolist()
    logits = [[_cos(image[i], image[j]) / tau for j in row] for i, row in enumerate(index)]
    pos = [[float(pids[i] == pids[j]) for j in row] for i, row in enumerate(index)]
    expected = _kl_rows_by_loops(logits, pos)
    got = is_gvfc_loss(torch.tensor(image), torch.tensor(pids), 2, tau=tau, generator=gen)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    with_positive = sum(any(row) for row in pos)
    assert 0 < with_positive < 4  # the seed gives both kinds of anchors
    anchors = is_gvfc_loss(torch.tensor(image), torch.tensor(pids), 2, tau=tau,
                           average="anchors", generator=torch.Generator().manual_seed(3))
    assert anchors.item() == pytest.approx(expected * 4 / with_positive, rel=1e-5)


def test_is_gvfc_samples_c_distinct_other_images():
    index = sample_pairs(32, 20, torch.Generator().manual_seed(0))
    assert index.shape == (32, 20)
    for i, row in enumerate(index.tolist()):
        assert len(set(row)) == 20 and i not in row


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


def _bn_stats(module):
    return {n: b.clone() for n, b in module.named_buffers() if "running" in n}


def test_masked_pass_leaves_batchnorm_statistics_alone():
    m = create_model(tiny_vfe_tps(image_backbone=dict(TINY_RN))).train()
    batch = tiny_batch(m)
    words, _, mask = m.textual(batch["tokens"])
    before = _bn_stats(m.visual)
    assert before, "the CNN stand-in has BatchNorms"
    m.tgmim_loss(batch["images"], words, mask).backward()
    assert all(torch.equal(before[n], b) for n, b in _bn_stats(m.visual).items())
    assert all(mod.training for mod in m.visual.modules())  # training mode restored
    assert any(p.grad is not None for n, p in m.visual.named_parameters() if "bn" in n)
    old = create_model(tiny_vfe_tps(image_backbone=dict(TINY_RN), masked_pass_bn="update"))
    old.train().tgmim_loss(batch["images"], words.detach(), mask)
    assert any(not torch.equal(before[n], b) for n, b in _bn_stats(old.visual).items())


def test_frozen_batchnorm_stats_restores_modes():
    net = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2).eval())
    with frozen_batchnorm_stats(net):
        assert not net[0].training
        net(torch.randn(4, 2))
    assert net[0].training and not net[1].training
    assert torch.equal(net[0].running_mean, torch.zeros(2))


def test_mca_queries_include_the_global_feature(model):
    batch = tiny_batch(model)
    model.eval()
    with torch.no_grad():
        words, _, mask = model.textual(batch["tokens"])
        fmap, glob = model.visual(batch["images"])
        a = model.tgmim(fmap, words, mask, glob)
        b = model.tgmim(fmap, words, mask, glob + 1.0)
    assert not torch.allclose(a, b)  # f^v is a query: the pixels depend on it
    assert "tgmim.global_proj.weight" in reached_by(model, "tgmim")
    patches = create_model(tiny_vfe_tps(mca_queries="patches"))
    assert not hasattr(patches.tgmim, "global_proj")
    assert set(patches.training_losses(tiny_batch(patches))) == {"cmpm", "is_gvfc", "tgmim"}


PRE16_LOSS = {"cmpm": 1.0, "cmpm_tau": 0.0, "tgmim": 1.0, "mask_ratio": 0.5, "gvfc": 1.0,
              "gvfc_pairs": 0, "gvfc_tau": 0.0}  # a pre-issue-16 checkpoint's stored loss


def test_pre16_checkpoint_config_loads_in_its_own_form(tmp_path, model):
    path = tmp_path / "old.pt"
    save_checkpoint(path, model)
    payload = torch.load(path, weights_only=False)
    config = {k: v for k, v in payload["config"].items()
              if k not in ("mca_queries", "masked_pass_bn")}
    payload["config"] = {**config, "loss": PRE16_LOSS}
    torch.save(payload, path)
    loaded, _ = load_model(path)
    cfg = loaded.config
    assert (cfg.loss.cmpm_logits, cfg.loss.gvfc_logits, cfg.loss.gvfc_pairs,
            cfg.loss.gvfc_average) == ("projection", "projection", 0, "anchors")
    assert (cfg.mca_queries, cfg.masked_pass_bn) == ("patches", "update")
    with pytest.raises(ValueError, match="cmpm_tau > 0"):
        create_model(tiny_vfe_tps(loss={"cmpm_tau": 0.0}))


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


def test_shipped_configs_are_the_paper_form_and_a_variant_exists():
    from models.config import CONFIG_DIR, read_config_file
    from models.factory import parse_config
    from models.train import load_train_config, model_config

    for name in ("vfe-tps-effl0-minilm", "vfe-tps-vitb16-clip"):
        cfg = parse_config(read_config_file(name))
        loss = cfg.loss
        assert (loss.cmpm_logits, loss.gvfc_logits, loss.gvfc_pairs, loss.gvfc_average) == (
            "cosine", "cosine", 20, "batch")
        assert loss.cmpm_tau == loss.gvfc_tau == 0.02
        assert (cfg.mca_queries, cfg.masked_pass_bn) == ("global+patches", "frozen")
    train = load_train_config(CONFIG_DIR / "train" / "vfe-tps-effl0-minilm-variants.yaml")
    cfg = parse_config(model_config(train, 10))
    assert (cfg.loss.cmpm_logits, cfg.loss.gvfc_pairs, cfg.mca_queries, cfg.masked_pass_bn) == (
        "projection", 0, "patches", "update")
