"""VGKT's relational knowledge transfer (VGSG Sec. III-D, Eq. 10-12) against hand computations
with plain loops over the batch."""

import math

import torch

from models.config import VGSGLossConfig
from models.losses.knowledge_transfer import (
    class_probability_transfer,
    relation_matrix,
    similarity_transfer,
)


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def _softmax(row):
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


def _relations(queries, keys, tau):
    """Eq. 10: r_ij = exp(cos(q_i, k_j) / tau) / sum_k exp(cos(q_i, k_k) / tau)."""
    return [_softmax([_cos(q, k) / tau for k in keys]) for q in queries]


def _kl_rows(p_rows, q_rows):
    """1/B sum_i sum_j p_ij log(p_ij / q_ij)."""
    total = 0.0
    for p, q in zip(p_rows, q_rows, strict=True):
        total += sum(pj * math.log(pj / qj) for pj, qj in zip(p, q, strict=True))
    return total / len(p_rows)


def _features(seed=0, b=5, d=6):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g) for _ in range(3)]


def test_vgkt_temperatures_are_the_papers():
    cfg = VGSGLossConfig()  # Sec. IV-B: "Temperature ... set to 4"; Eq. 12 has none
    assert cfg.st_tau == 4.0 and cfg.ct_tau == 1.0


def test_eq10_relation_matrix_by_hand():
    image, text, _ = _features(1)
    got = relation_matrix(image, text, 4.0).exp()
    expected = _relations(image, text, 4.0)
    for i in range(image.shape[0]):
        for j in range(text.shape[0]):
            assert math.isclose(float(got[i, j]), expected[i][j], rel_tol=1e-5)


def test_eq11_similarity_transfer_by_hand_at_the_default_temperature():
    image, vg, sg = _features(2)
    vg = 0.5 * vg + image  # a teacher closer to the images than the student, as after training
    tau = 4.0
    i2t = _kl_rows(_relations(image, vg, tau), _relations(image, sg, tau))
    t2i = _kl_rows(_relations(vg, image, tau), _relations(sg, image, tau))
    got = similarity_transfer(image, vg, sg)  # the default temperature is the paper's
    assert math.isclose(float(got), 0.5 * (i2t + t2i), rel_tol=1e-4)
    sharper = 0.1
    i2t = _kl_rows(_relations(image, vg, sharper), _relations(image, sg, sharper))
    t2i = _kl_rows(_relations(vg, image, sharper), _relations(sg, image, sharper))
    assert math.isclose(float(similarity_transfer(image, vg, sg, sharper)), 0.5 * (i2t + t2i),
                        rel_tol=1e-4)


def test_eq12_class_probability_transfer_by_hand():
    g = torch.Generator().manual_seed(3)
    teacher, student = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    p = [_softmax([float(v) for v in row]) for row in teacher]
    q = [_softmax([float(v) for v in row]) for row in student]
    assert math.isclose(float(class_probability_transfer(teacher, student)), _kl_rows(p, q),
                        rel_tol=1e-5)
    t = 2.0  # a softened variant: both sides at temperature t, times t^2
    p = [_softmax([float(v) / t for v in row]) for row in teacher]
    q = [_softmax([float(v) / t for v in row]) for row in student]
    assert math.isclose(float(class_probability_transfer(teacher, student, t)),
                        t * t * _kl_rows(p, q), rel_tol=1e-5)
