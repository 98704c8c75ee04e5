"""ID loss: person-id classification of embeddings (VGSG Sec. III-E, "ID loss")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class IdentityClassifier(nn.Module):
    """A linear classifier over person ids shared by the image and text features.

    The loss is cross-entropy with label smoothing ``eps`` (Szegedy et al.):
    ``L_id = -sum_c q_c log p_c`` with ``q = (1 - eps) onehot(y) + eps / C``.
    """

    def __init__(self, dim: int, num_classes: int, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)  # BNNeck: classify a batch-normalised copy
        self.bn.bias.requires_grad_(False)
        self.fc = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.fc.weight, std=0.001)
        self.label_smoothing = label_smoothing

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(features))  # (B, C)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(features), labels,
                               label_smoothing=self.label_smoothing)


def part_identity_loss(heads: nn.ModuleList, image: torch.Tensor, text: torch.Tensor,
                       labels: torch.Tensor) -> torch.Tensor:
    """SSAN's ID loss on part features (Sec. IV): one classifier ``W_k`` per part, shared by
    the two modalities, ``L = 1/K sum_k CE(W_k v_k, y) + CE(W_k t_k, y)``.

    image, text: (B, K, D); labels: (B,); ``heads``: K ``IdentityClassifier``s.
    """
    k = image.shape[1]
    total = sum(heads[p](image[:, p], labels) + heads[p](text[:, p], labels) for p in range(k))
    return total / k  # type: ignore[return-value]
