"""VGSG Eq. 2 (InfoNCE, the paper's form), its identity-aware variant and SDM against hand
computations with explicit loops."""

import math

import torch

from models.losses.contrastive import contrastive_loss, infonce_loss
from models.losses.sdm import sdm_loss


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def _pairs(seed=0, b=4, d=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)


def test_infonce_is_the_symmetric_clip_loss_of_eq2():
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
             contrastive_loss(image, text, pids, 0.02, 0.1)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = [sdm_loss(image, text, pids, 50.0), infonce_loss(image, text, 0.02),
                 contrastive_loss(image, text, pids, 0.02, 0.1)]
    for a, b in zip(plain, mixed, strict=True):
        assert b.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-6), (a, b)
