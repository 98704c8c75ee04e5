"""Similarity-distribution matching (SDM; Jiang & Ye, "Cross-Modal Implicit Relation Reasoning
and Aligning for Text-to-Image Person Retrieval", CVPR 2023, Eq. 1-4): the loss of the reference
recipe in the quality issue."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sdm_loss(image: torch.Tensor, text: torch.Tensor, pids: torch.Tensor,
             logit_scale: torch.Tensor | float, eps: float = 1e-8) -> torch.Tensor:
    """KL divergence between the softmax of scaled cosine similarities and the normalised
    same-identity distribution, image-to-text plus text-to-image (Eq. 4: L_i2t + L_t2i):

    ``p_ij = softmax_j(s * cos(v_i, t_j))``, ``q_ij = y_ij / sum_k y_ik`` with ``y_ij = 1`` when
    image i and text j show the same person, ``L_i2t = 1/B sum_i KL(p_i || q_i)
    = 1/B sum_ij p_ij (log p_ij - log(q_ij + eps))``.

    image, text: (B, D) unnormalised; pids: (B,); logit_scale: ``s``. Computed in float32 even
    under autocast: in bfloat16, cosines near 1 are resolved only to ~0.004, which erases the
    differences the loss is about (a first bf16 run with bf16 losses sat at the uniform loss
    value while its features collapsed to one direction).
    """
    with torch.autocast(image.device.type, enabled=False):  # similarities in fp32
        return _sdm_loss(image.float(), text.float(), pids, logit_scale, eps)


def _sdm_loss(image: torch.Tensor, text: torch.Tensor, pids: torch.Tensor,
              logit_scale: torch.Tensor | float, eps: float) -> torch.Tensor:
    image = F.normalize(image, dim=-1)
    text = F.normalize(text, dim=-1)
    same = (pids[:, None] == pids[None, :]).float()  # (B, B)
    target = same / same.sum(dim=1, keepdim=True)  # (B, B), rows sum to 1 (same is symmetric)
    logits = logit_scale * (image @ text.t())  # (B, B)
    return _kl_rows(logits, target, eps) + _kl_rows(logits.t(), target, eps)


def _kl_rows(logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """mean_i sum_j p_ij (log p_ij - log(q_ij + eps)), p = softmax(logits) per row."""
    log_p = F.log_softmax(logits, dim=1)  # (B, B)
    return (log_p.exp() * (log_p - torch.log(target + eps))).sum(dim=1).mean()
