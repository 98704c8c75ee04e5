"""Batch-hard triplet loss (Hermans, Beyer and Leibe, "In Defense of the Triplet Loss for Person
Re-Identification", 2017, Eq. 5), as the strong re-ID baseline uses it (Luo et al., "Bag of
Tricks and a Strong Baseline for Deep Person Re-Identification", 2019, Sec. 3).

For each anchor ``a`` of a P x K batch: its farthest positive and its nearest negative,
``L = 1/B sum_a max(0, m + max_p d(a, p) - min_n d(a, n))`` with Euclidean ``d``, or the soft
margin ``log(1 + exp(max_p d - min_n d))`` when ``margin`` is None.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_distances(features: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances (clamped before the root for a finite gradient)."""
    x = features.float()
    squared = x.pow(2).sum(dim=1)
    d2 = squared[:, None] + squared[None, :] - 2.0 * x @ x.T
    return d2.clamp(min=1e-12).sqrt()


def batch_hard_triplet_loss(features: torch.Tensor, labels: torch.Tensor,
                            margin: float | None = 0.3) -> torch.Tensor:
    """features (B, D), labels (B,) -> the mean batch-hard triplet loss over anchors that have
    both a positive (another item of their id) and a negative in the batch."""
    dist = pairwise_distances(features)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive, negative = same & ~eye, ~same
    valid = positive.any(dim=1) & negative.any(dim=1)
    if not valid.any():
        return features.sum() * 0.0
    hardest_pos = dist.masked_fill(~positive, float("-inf")).amax(dim=1)
    hardest_neg = dist.masked_fill(~negative, float("inf")).amin(dim=1)
    gap = (hardest_pos - hardest_neg)[valid]
    if margin is None:
        return F.softplus(gap).mean()
    return F.relu(gap + margin).mean()
