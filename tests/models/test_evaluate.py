import numpy as np
import pytest

from models.evaluate import rank_metrics


def test_rank_metrics_match_hand_computation():
    # gallery pids: [1, 2, 1, 3]; two queries.
    gallery = np.array([1, 2, 1, 3])
    queries = np.array([1, 3])
    sim = np.array([
        [0.1, 0.9, 0.8, 0.2],  # ranking: g1(2) g2(1) g3(3) g0(1) -> positives at ranks 2, 4
        [0.0, 0.1, 0.2, 0.9],  # ranking: g3(3) first -> positive at rank 1
    ])
    m = rank_metrics(sim, queries, gallery)
    assert m["rank1"] == pytest.approx(50.0)
    assert m["rank5"] == pytest.approx(100.0)
    assert m["rank10"] == pytest.approx(100.0)
    # AP q0 = (1/2 + 2/4) / 2 = 0.5; AP q1 = 1 -> mAP 75
    assert m["mAP"] == pytest.approx(75.0)
    # INP q0 = 2 positives / last at rank 4 = 0.5; INP q1 = 1/1 -> mINP 75
    assert m["mINP"] == pytest.approx(75.0)


def test_rank_metrics_skips_queries_without_positives():
    m = rank_metrics(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1, 9]), np.array([1, 2]))
    assert m["rank1"] == 100.0


def test_contrastive_loss_matches_hand_computation():
    import math

    import torch

    from models.losses.contrastive import contrastive_loss

    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pids = torch.tensor([0, 1])
    tau, margin = 0.5, 0.1
    # each row: positive logit (1 - m) / tau, negative 0 / tau; same for both directions
    pos = (1 - margin) / tau
    expected = -(pos - math.log(math.exp(pos) + 1.0))
    got = contrastive_loss(image, text, pids, tau=tau, margin=margin)
    assert got.item() == pytest.approx(expected, rel=1e-6)
