"""The losses selectable in the place of VGSG Eq. 2 (``loss.itc_form``) against hand
computations with explicit loops over the batch: Eq. 2 as the paper gives it (ViTAA's alignment
loss), CLIP's InfoNCE, the identity-aware multi-positive InfoNCE with a margin, and SDM."""

import math

import pytest
import torch

from models.config import VGSGLossConfig
from models.factory import create_model
from models.losses.alignment import alignment_loss
from models.losses.contrastive import contrastive_loss, infonce_loss
from models.losses.sdm import sdm_loss
from tests.models.conftest import tiny_vgsg


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def _pairs(seed=0, b=4, d=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)


def _softplus(x):
    return math.log(1.0 + math.exp(x))


def _align_by_loops(image, text, pids, tau_p, tau_n, alpha, beta):
    """VGSG Eq. 2 / ViTAA L_align: image -> text rows, then text -> image columns, over B."""
    b = image.shape[0]
    s = [[_cos(image[i], text[j]) for j in range(b)] for i in range(b)]
    total = 0.0
    for anchor in range(b):
        for direction in ("i2t", "t2i"):
            for other in range(b):
                sim = s[anchor][other] if direction == "i2t" else s[other][anchor]
                if pids[anchor] == pids[other]:
                    total += _softplus(-tau_p * (sim - alpha))
                else:
                    total += _softplus(tau_n * (sim - beta))
    return total / b


def test_eq2_defaults_are_the_papers_values():
    cfg = VGSGLossConfig()  # "We set tau_p/tau_n and alpha/beta to 10/40 and 0.6/0.4"
    assert (cfg.align_tau_pos, cfg.align_tau_neg, cfg.align_alpha, cfg.align_beta) == (
        10.0, 40.0, 0.6, 0.4)


@pytest.mark.parametrize("pids", [[0, 1, 2, 3], [3, 3, 5, 5, 5, 7]])
def test_eq2_is_vitaas_alignment_loss_by_hand(pids):
    image, text = _pairs(4, b=len(pids), d=3)
    text[1] = image[0] + 0.1  # one pair with a cosine near 1, so both bounds are exercised
    pids = torch.tensor(pids)
    expected = _align_by_loops(image, text, pids, 10.0, 40.0, 0.6, 0.4)
    got = alignment_loss(image, text, pids)  # the paper's values are the defaults
    assert math.isclose(float(got), expected, rel_tol=1e-5)
    other = _align_by_loops(image, text, pids, 5.0, 20.0, 0.7, 0.2)
    assert math.isclose(float(alignment_loss(image, text, pids, 5.0, 20.0, 0.7, 0.2)), other,
                        rel_tol=1e-5)


def test_vgsg_itc_form_vitaa_align_is_eq2_with_the_configured_values():
    model = create_model(tiny_vgsg(loss={"itc_form": "vitaa-align", "align_tau_pos": 8.0,
                                         "align_tau_neg": 30.0, "align_alpha": 0.5,
                                         "align_beta": 0.3}))
    image, text = _pairs(5, b=4, d=16)
    pids = torch.tensor([0, 0, 1, 2])
    expected = _align_by_loops(image, text, pids, 8.0, 30.0, 0.5, 0.3)
    assert math.isclose(float(model.itc(image, text, pids)), expected, rel_tol=1e-5)


def test_mp_margin_multi_positive_path_by_hand():
    """Several positives per row: each row's loss is -log of the summed softmax mass of its
    positives, every positive logit lowered by the margin; both directions, averaged."""
    image, text = _pairs(6, b=5, d=4)
    pids = [0, 0, 1, 1, 1]
    tau, m, b = 0.2, 0.15, 5
    s = [[_cos(image[i], text[j]) for j in range(b)] for i in range(b)]

    def direction(sim):
        total = 0.0
        for i in range(b):
            logits = [(sim[i][j] - (m if pids[i] == pids[j] else 0.0)) / tau for j in range(b)]
            z = sum(math.exp(v) for v in logits)
            mass = sum(math.exp(logits[j]) / z for j in range(b) if pids[i] == pids[j])
            total += -math.log(mass)
        return total / b

    expected = 0.5 * (direction(s) + direction([[s[j][i] for j in range(b)] for i in range(b)]))
    got = contrastive_loss(image, text, torch.tensor(pids), tau=tau, margin=m)
    assert math.isclose(float(got), expected, rel_tol=1e-5)


def test_infonce_is_clips_symmetric_loss():
    image, text = _pairs()
    tau, b = 0.07, image.shape[0]
    s = [[_cos(image[i], text[j]) for j in range(b)] for i in range(b)]
    i2t = -sum(math.log(math.exp(s[i][i] / tau) / sum(math.exp(s[i][j] / tau)
                                                      for j in range(b))) for i in range(b)) / b
    t2i = -sum(math.log(math.exp(s[i][i] / tau) / sum(math.exp(s[j][i] / tau)
                                                      for j in range(b))) for i in range(b)) / b
    assert math.isclose(float(infonce_loss(image, text, tau)), 0.5 * (i2t + t2i), rel_tol=1e-5)


def test_infonce_ignores_identity_labels_unlike_the_multi_positive_variant():
    image, text = _pairs(1)
    text[1] = image[0]  # caption 1 matches image 0 perfectly
    same = torch.tensor([0, 0, 1, 2])
    other = torch.tensor([0, 1, 2, 3])
    assert torch.isclose(contrastive_loss(image, text, same, 0.1, 0.0),
                         contrastive_loss(image, text, other, 0.1, 0.0)).item() is False
    assert infonce_loss(image, text, 0.1) > 0  # the form has no pids argument at all


def test_sdm_matches_a_hand_computed_kl_in_both_directions():
    image, text = _pairs(2)
    pids = torch.tensor([3, 3, 5, 7])
    scale, eps, b = 10.0, 1e-8, 4
    s = [[scale * _cos(image[i], text[j]) for j in range(b)] for i in range(b)]
    same = [[1.0 if pids[i] == pids[j] else 0.0 for j in range(b)] for i in range(b)]
    q = [[same[i][j] / sum(same[i]) for j in range(b)] for i in range(b)]

    def kl(rows):
        total = 0.0
        for i in range(b):
            z = sum(math.exp(v) for v in rows[i])
            p = [math.exp(v) / z for v in rows[i]]
            total += sum(p[j] * (math.log(p[j]) - math.log(q[i][j] + eps)) for j in range(b))
        return total / b

    expected = kl(s) + kl([[s[j][i] for j in range(b)] for i in range(b)])
    assert math.isclose(float(sdm_loss(image, text, pids, scale, eps)), expected, rel_tol=1e-4)


def test_sdm_is_smallest_when_similarities_follow_identities():
    pids = torch.tensor([0, 0, 1, 1])
    aligned = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    shuffled = aligned[[2, 0, 1, 3]]
    assert sdm_loss(aligned, aligned, pids, 20.0) < sdm_loss(aligned, shuffled, pids, 20.0)


def test_similarity_losses_run_in_float32_under_bfloat16_autocast():
    """Nearly collinear features (cosines ~0.99): bf16 matmuls would round the differences
    away; the losses must give the float32 value inside autocast too."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1, 64, generator=g)
    image = base + 0.05 * torch.randn(8, 64, generator=g)
    text = base + 0.05 * torch.randn(8, 64, generator=g)
    pids = torch.arange(8)
    plain = [sdm_loss(image, text, pids, 50.0), infonce_loss(image, text, 0.02),
             contrastive_loss(image, text, pids, 0.02, 0.1), alignment_loss(image, text, pids)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = [sdm_loss(image, text, pids, 50.0), infonce_loss(image, text, 0.02),
                 contrastive_loss(image, text, pids, 0.02, 0.1),
                 alignment_loss(image, text, pids)]
    for a, b in zip(plain, mixed, strict=True):
        assert b.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-6), (a, b)
