"""SSAN: shapes, hand-computed loss and MV-NLN values, gradient flow, exported
S_g + S_l + S_n, vocabulary in the checkpoint, pre-issue-16 configs, and the unchanged
indexer/service on an SSAN checkpoint."""

import math

import pytest
import torch
import torch.nn.functional as F

from models.config import CONFIG_DIR, read_config_file
from models.factory import (
    create_model,
    load_model,
    parse_config,
    read_checkpoint,
    save_checkpoint,
)
from models.losses.compound_ranking import compound_ranking_loss, weak_margins
from models.losses.identity import IdentityClassifier, part_identity_loss
from models.ssan import MultiViewNonLocal, PartRelation, WordAttention
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
              "lstm_hidden": 16, "relation_dim": 4, "relation_views": 2, "num_classes": 2,
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
    assert img.shape == txt.shape == (4, 8 + 3 * 8 + 3 * 4) == (4, model.export_dim)
    assert {k: tuple(v.shape) for k, v in branches.items()} == {
        "global": (4, 8), "local": (4, 3, 8), "relation": (4, 3, 4)}
    assert isinstance(model.relation, MultiViewNonLocal) and not hasattr(model, "image_norm")
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


def test_weak_margins_by_hand():
    sim = torch.tensor([[0.8, 0.2, -0.4], [0.95, 0.5, 0.0], [0.1, 0.3, 0.6]])
    paper = weak_margins(sim, 0.2, "paper")
    for i in range(3):
        for j in range(3):
            lam = min(abs(sim[i, j].item()) / abs(sim[i, i].item()), 1.0)  # Eq. 21
            assert paper[i, j].item() == pytest.approx((lam + 1) * 0.2 / 2)  # Eq. 20
    assert paper[1, 0].item() == pytest.approx(0.2)  # 0.95 / 0.5 > 1: capped at 1
    assert paper[0, 1].item() == pytest.approx(0.1 * (1 + 0.25))
    assert weak_margins(sim, 0.2, "similarity")[0, 2].item() == pytest.approx(0.2 * 0.6 / 2)
    assert torch.equal(weak_margins(sim, 0.2, "fixed"), torch.full((3, 3), 0.2))
    with pytest.raises(ValueError, match="margin"):
        weak_margins(sim, 0.2, "adaptive")


def _compound_ranking_by_loops(sim, pids, margin, beta, margins):
    """The CR loss written out pair by pair, with the margins of the weak pairs given."""
    b = len(pids)
    neg_row = [max(sim[i][j] for j in range(b) if pids[j] != pids[i]) for i in range(b)]
    neg_col = [max(sim[i][j] for i in range(b) if pids[i] != pids[j]) for j in range(b)]
    strong = sum(max(0, margin - sim[i][i] + neg_row[i]) + max(0, margin - sim[i][i]
                 + neg_col[i]) for i in range(b)) / b
    weak = [(i, j) for i in range(b) for j in range(b) if i != j and pids[i] == pids[j]]
    terms = [max(0, margins[i][j] - sim[i][j] + neg_row[i])
             + max(0, margins[i][j] - sim[i][j] + neg_col[j]) for i, j in weak]
    return strong + beta * sum(terms) / len(terms)


@pytest.mark.parametrize("form", ["paper", "similarity", "fixed"])
def test_compound_ranking_weak_terms_by_hand(form):
    pids = [0, 0, 1, 1]
    sim = [[0.9, 0.2, 0.1, 0.3], [0.0, 0.6, 0.1, 0.2], [0.1, 0.5, 0.4, 0.35],
           [0.2, 0.1, 0.3, 0.7]]
    if form == "paper":
        margins = [[0.2 * (min(abs(sim[i][j] / sim[i][i]), 1) + 1) / 2 for j in range(4)]
                   for i in range(4)]
    elif form == "similarity":
        margins = [[0.2 * (sim[i][j] + 1) / 2 for j in range(4)] for i in range(4)]
    else:
        margins = [[0.2] * 4 for _ in range(4)]
    expected = _compound_ranking_by_loops(sim, pids, 0.2, 0.1, margins)
    got = compound_ranking_loss(torch.tensor(sim), torch.tensor(pids), 0.2, 0.1, form)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert expected > _compound_ranking_by_loops(sim, pids, 0.2, 0.0, margins) > 0
    assert compound_ranking_loss(torch.tensor(sim), torch.tensor(pids), 0.2, 0.0).item() == \
        pytest.approx(_compound_ranking_by_loops(sim, pids, 0.2, 0.0, margins), rel=1e-5)


def test_mvnln_matches_a_loop_over_parts():
    """Eq. 13-16 with part-specific maps, cosine affinities over the other parts only."""
    torch.manual_seed(0)
    m = MultiViewNonLocal(3, 4, 2)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    parts = torch.randn(2, 3, 4)
    with torch.no_grad():
        out, abar = m(parts), m.affinities(parts)

    def lin(layer, k, x):
        return [sum(x[c] * layer.weight[k, c, d].item() for c in range(len(x)))
                + layer.bias[k, d].item() for d in range(layer.weight.shape[2])]

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    for b in range(2):
        rows = [parts[b, k].tolist() for k in range(3)]
        for k in range(3):
            query = unit(lin(m.theta, k, rows[k]))
            others = [i for i in range(3) if i != k]
            keys = {i: unit(lin(m.phi, i, rows[i])) for i in others}
            cos = {i: sum(q * c for q, c in zip(query, keys[i], strict=True))
                   for i in others}  # Eq. 13
            total = sum(math.exp(v) for v in cos.values())
            weights = {i: math.exp(cos[i]) / total for i in others}  # Eq. 14
            assert abar[b, k, k].item() == 0.0
            for i in others:
                assert abar[b, k, i].item() == pytest.approx(weights[i], rel=1e-5)
            context = [sum(weights[i] * keys[i][d] for i in others) for d in range(2)]
            update = lin(m.gamma, k, context)
            residual = [x + g for x, g in zip(rows[k], update, strict=True)]  # Eq. 15
            expected = lin(m.out, k, residual)  # Eq. 16
            assert out[b, k].tolist() == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_part_identity_loss_by_hand():
    heads = torch.nn.ModuleList(IdentityClassifier(2, 3, 0.0) for _ in range(2)).eval()
    image, text, labels = torch.randn(4, 2, 2), torch.randn(4, 2, 2), torch.tensor([0, 1, 2, 0])
    expected = 0.0
    for k in range(2):
        for feats in (image, text):
            logits = heads[k].logits(feats[:, k])
            expected += sum(-math.log(math.exp(logits[i, labels[i]].item())
                                      / sum(math.exp(v) for v in logits[i].tolist()))
                            for i in range(4)) / 4
    assert part_identity_loss(heads, image, text, labels).item() == pytest.approx(
        expected / 2, rel=1e-5)


def test_branch_weights_are_the_papers(model):
    """L = L_g + 0.5 L_l + 0.5 L_n for both the ranking and the ID terms."""
    model.eval()  # fixed batch norms: the same features in both computations
    batch = tiny_batch(model)
    with torch.no_grad():
        terms = model.training_losses(batch)
        img = model.encode_image_branches(batch["images"])
        txt = model.encode_text_branches(batch["tokens"])
    assert set(terms) == {f"{t}_{b}" for t in ("cr", "id") for b in ("global", "local",
                                                                        "relation")}
    for name, weight in (("global", 1.0), ("local", 0.5), ("relation", 0.5)):
        sim = F.normalize(img[name].flatten(1), dim=-1) @ F.normalize(
            txt[name].flatten(1), dim=-1).T
        cr = compound_ranking_loss(sim, batch["pids"], 0.2, 0.1, "paper")
        assert terms[f"cr_{name}"].item() == pytest.approx(weight * cr.item(), rel=1e-5)
    with torch.no_grad():
        id_relation = part_identity_loss(model.id_relation, img["relation"], txt["relation"],
                                         batch["pids"])
    assert terms["id_relation"].item() == pytest.approx(0.5 * id_relation.item(), rel=1e-5)


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
    ("id_relation", ("id_relation.", "relation.", "part_proj."), ("id_local.", "global_proj.")),
])
def test_gradient_flow_of_each_term(model, term, reaches, not_reaches):
    names = reached_by(model, term)
    assert_reaches(names, reaches, not_reaches)
    assert not any(n.startswith(("visual.net.conv1", "visual.net.bn1")) for n in names)  # frozen


def test_ablation_without_relation_branch():
    m = create_model(tiny_ssan(relation=False, num_classes=0))
    assert set(m.training_losses(tiny_batch(m))) == {"cr_global", "cr_local"}
    assert m.export_dim == 8 + 3 * 8 and not hasattr(m, "relation")


def test_earlier_variants_stay_options():
    m = create_model(tiny_ssan(mvnln="shared-mha", relation_dim=8, branch_norm=True,
                               loss={"cr_margin": "similarity", "id_form": "concat"}))
    assert isinstance(m.relation, PartRelation) and hasattr(m, "image_norm")
    assert m.export_dim == 8 + 3 * 8 + 3 * 8
    assert set(m.training_losses(tiny_batch(m))) == {
        "cr_global", "cr_local", "cr_relation", "id_global", "id_local"}
    with pytest.raises(ValueError, match="relation_dim must equal embed_dim"):
        create_model(tiny_ssan(mvnln="shared-mha"))
    with pytest.raises(ValueError, match="mvnln 'nln'"):
        create_model(tiny_ssan(mvnln="nln"))


PRE16_CONFIG = {  # what a checkpoint written before issue 16 stores (old to_dict())
    "family": "ssan", "name": "old-ssan", "embed_dim": 8, "image_size": [64, 32],
    "image_backbone": dict(TINY_RESNET), "num_parts": 3, "word_dim": 8, "lstm_hidden": 16,
    "max_words": 64, "vocab_from": {}, "relation": True, "relation_views": 2,
    "num_classes": 2, "seed": 0, "loss": {"ranking": 1.0, "margin": 0.2, "beta": 0.5,
                                          "adaptive_margin": True, "id": 1.0,
                                          "label_smoothing": 0.0}}


def test_pre16_checkpoint_config_loads_in_its_own_form(tmp_path):
    old = create_model({**PRE16_CONFIG, "vocab": build_vocabulary(CAPTIONS)})
    cfg = old.config
    assert (cfg.mvnln, cfg.branch_norm, cfg.relation_dim) == ("shared-mha", True, 8)
    assert (cfg.loss.cr_margin, cfg.loss.beta, cfg.loss.local_weight, cfg.loss.relation_weight,
            cfg.loss.id_form) == ("similarity", 0.5, 1.0, 1.0, "concat")
    path = tmp_path / "old.pt"
    save_checkpoint(path, old)
    payload = torch.load(path, weights_only=False)
    payload["config"] = {**PRE16_CONFIG, "vocab": cfg.vocab}  # exactly the old keys
    torch.save(payload, path)
    loaded, _ = load_model(path)
    assert isinstance(loaded.relation, PartRelation) and loaded.export_dim == 56
    payload["config"]["loss"] = {"ranking": 1.0}  # a paper-form config on old weights
    torch.save(payload, path)
    with pytest.raises(ValueError, match="weights do not match config"):
        load_model(path)


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
    assert report.indexed == 6 and len(result.hits) == 3 and encoder.spec.dim == 44
    hit = result.hits[0]
    assert set(hit.parts) == {p.name for p in model.parts()}
    assert sum(hit.parts.values()) == pytest.approx(hit.score, abs=1e-4)


def test_generic_trainer_and_evaluator(tmp_path, capsys):
    config = tiny_ssan(vocab=[], num_classes=0,
                       vocab_from={"root": str(tmp_path / "data"), "split": "train"})
    payload, metrics = train_and_eval(tmp_path, config, capsys)
    assert payload["config"]["num_classes"] == 4 and "coat" in payload["config"]["vocab"]
    assert metrics["queries"] == 12 and 0 <= metrics["rank1"] <= 100


def _train_model_config(name: str) -> dict:
    from models.train import load_train_config, model_config

    return model_config(load_train_config(CONFIG_DIR / "train" / f"{name}.yaml"), 10)


def test_shipped_configs_are_the_paper_form_and_variants_exist():
    paper = parse_config(read_config_file("ssan-resnet50"))
    assert (paper.embed_dim, paper.relation_dim, paper.lstm_hidden) == (1024, 512, 2048)
    assert paper.image_backbone.pool_width == 0 and not paper.branch_norm  # no neck: C = 2048
    for name in ("ssan-resnet50", "ssan-effl0"):
        cfg = parse_config(read_config_file(name))
        assert (cfg.mvnln, cfg.loss.cr_margin, cfg.loss.id_form, cfg.loss.beta) == (
            "paper", "paper", "paper", 0.1)
        assert (cfg.loss.global_weight, cfg.loss.local_weight, cfg.loss.relation_weight) == (
            1.0, 0.5, 0.5)
    variants = parse_config(_train_model_config("ssan-effl0-variants"))
    assert (variants.mvnln, variants.loss.cr_margin, variants.loss.id_form) == (
        "shared-mha", "similarity", "concat")
    assert not parse_config(_train_model_config("ssan-effl0-nobranchnorm")).branch_norm
    assert not parse_config(_train_model_config("ssan-effl0-norelation")).relation


def test_pre16_yaml_of_issue_6_reads_in_its_own_form():
    old_yaml = {**read_config_file("ssan-effl0"), "loss": {
        "ranking": 1.0, "margin": 0.2, "beta": 0.5, "adaptive_margin": True, "id": 1.0}}
    for key in ("mvnln", "relation_dim", "branch_norm"):
        old_yaml.pop(key)
    cfg = parse_config(old_yaml)
    assert (cfg.mvnln, cfg.relation_dim, cfg.branch_norm, cfg.loss.cr_margin) == (
        "shared-mha", 256, True, "similarity")
