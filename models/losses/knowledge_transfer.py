"""Vision-guided knowledge transfer losses (VGSG Sec. III-D, Eq. 10-12).

The vision-guided textual features are the teacher: both losses detach them, so that neither
sends gradient into the vision-guided attention; only the semantic-group (SGTL) text features
learn from them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def relation_matrix(image: torch.Tensor, text: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 10: softmax over texts of the cosine relations of each image, (B, B) log-probs."""
    sim = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()  # (B, B)
    return F.log_softmax(sim / tau, dim=1)


def similarity_transfer(image_local: torch.Tensor, vg_text: torch.Tensor,
                        sg_text: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Eq. 11: ``KL(R(v, t_vg) || R(v, t_sg))`` in both directions of retrieval.

    image_local, vg_text, sg_text: (B, D) concatenated local features. The image side is
    detached as well, so the transfer only moves the semantic-group text features.
    """
    image_local = image_local.detach()
    vg_text = vg_text.detach()
    loss = 0.0
    for transpose in (False, True):
        pair_t = (vg_text, image_local) if transpose else (image_local, vg_text)
        pair_s = (sg_text, image_local) if transpose else (image_local, sg_text)
        teacher = relation_matrix(*pair_t, tau)
        student = relation_matrix(*pair_s, tau)
        loss = loss + F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return 0.5 * loss


def class_probability_transfer(vg_logits: torch.Tensor, sg_logits: torch.Tensor,
                               tau: float = 1.0) -> torch.Tensor:
    """Eq. 12: ``KL(softmax(z_vg / tau) || softmax(z_sg / tau))`` over person-id classes."""
    teacher = F.log_softmax(vg_logits.detach() / tau, dim=1)
    student = F.log_softmax(sg_logits / tau, dim=1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * tau * tau
