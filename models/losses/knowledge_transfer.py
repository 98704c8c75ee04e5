"""Relational knowledge transfer of VGKT (VGSG Sec. III-D, Eq. 10-12).

The vision-guided textual features are the teacher: both losses detach them ("won't be
back-propagated through the vision-guided attention module"), so that only the semantic-group
(SGTL) text features learn from them.

Eq. 10's temperature: Sec. IV-B, "Temperature and the transformer layer are set to 4 and 2".
The symbols of Eq. 10 are lost in the text this follows; it reads ``r_ij = softmax_j(S_ij /
tau)`` with the convention of Hinton's distillation [23] that the paper cites. On cosines in
[-1, 1], tau 4 gives nearly flat relation distributions (logits within +-0.25), although the
text says tau "sharpens" them; ``loss.st_tau`` keeps the value open to tuning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def relation_matrix(image: torch.Tensor, text: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 10: ``r_ij = exp(cos(v_i, t_j) / tau) / sum_k exp(cos(v_i, t_k) / tau)``, the
    softmax over texts of each image's cosine relations; (B, B) log-probs."""
    sim = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()  # (B, B)
    return F.log_softmax(sim / tau, dim=1)


def similarity_transfer(image_local: torch.Tensor, vg_text: torch.Tensor,
                        sg_text: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """Eq. 11: ``L_st = KL(R^vg || R^sg)``, ``R^vg = R(v, t_vg)`` the teacher's relation matrix
    (Eq. 10), ``R^sg = R(v, t_sg)`` the student's; KL summed over a row, averaged over rows.

    The text names one relation matrix without the axis of its softmax; this takes the mean of
    image -> text rows and text -> image rows (both retrieval directions).
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
    """Eq. 12: ``L_cpt = KL(P^vg || P^sg)``, ``P = softmax(z)`` over person-id classes of the
    shared ID classifier's logits, KL summed over classes and averaged over the batch.

    The paper's softmax has no temperature (``tau`` 1, the default); another ``tau`` softens
    both sides as Hinton's distillation does, with its ``tau^2`` gradient scale.
    """
    teacher = F.log_softmax(vg_logits.detach() / tau, dim=1)
    student = F.log_softmax(sg_logits / tau, dim=1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * tau * tau
