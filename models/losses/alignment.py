"""VGSG Eq. 2 as the paper gives it (Sec. III-B): the alignment loss of its reference [18],
ViTAA (Wang et al., ECCV 2020, Sec. 3.4, "L_align"), on cosine similarities.

The paper calls it "contrastive loss [18]": for each positive pair a softplus that pushes its
cosine above ``alpha``, for each negative pair one that pushes it below ``beta``, with their own
temperatures; "We set tau_p/tau_n and alpha/beta to 10/40 and 0.6/0.4". It is not InfoNCE: there
is no softmax over the batch, every pair is scored against an absolute bound.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def alignment_loss(image: torch.Tensor, text: torch.Tensor, pids: torch.Tensor,
                   tau_pos: float = 10.0, tau_neg: float = 40.0, alpha: float = 0.6,
                   beta: float = 0.4) -> torch.Tensor:
    """VGSG Eq. 2 (ViTAA's L_align):

    ``L = 1/B sum_i [ sum_{j: y_ij = 1} log(1 + exp(-tau_p (S_ij - alpha)))
                     + sum_{j: y_ij = 0} log(1 + exp( tau_n (S_ij - beta))) ] + the same over S^T``

    with ``S_ij = cos(v_i, t_j)`` and ``y_ij = 1`` when image i and caption j show the same
    person. The paper writes it per triplet (I, T+, T-) averaged over the batch; every pair of
    the batch taking both roles, image-to-text rows plus text-to-image columns, over B, is how
    ViTAA's published code (and TextReID's, the baseline VGSG builds on) computes it.

    image, text: (B, D) unnormalised; pids: (B,). Computed in float32 under autocast: the bounds
    are absolute cosines, which bfloat16 resolves only to ~0.004 near 1.
    """
    with torch.autocast(image.device.type, enabled=False):  # similarities in fp32
        return _alignment_loss(image.float(), text.float(), pids, tau_pos, tau_neg, alpha,
                               beta)


def _alignment_loss(image: torch.Tensor, text: torch.Tensor, pids: torch.Tensor,
                    tau_pos: float, tau_neg: float, alpha: float, beta: float) -> torch.Tensor:
    sim = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()  # (B, B)
    positive = pids[:, None] == pids[None, :]  # (B, B)
    per_pair = torch.where(positive, F.softplus(-tau_pos * (sim - alpha)),  # log(1 + e^x)
                           F.softplus(tau_neg * (sim - beta)))  # (B, B)
    # rows (image -> text) and columns (text -> image) visit every pair once each
    return 2.0 * per_pair.sum() / sim.shape[0]
