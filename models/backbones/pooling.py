"""Attention pooling over a feature-map grid (CLIP's AttentionPool2d), for any (h, w)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d


def make_attention_pool(grid: tuple[int, int], channels: int, heads: int,
                        output_dim: int) -> AttentionPool2d:
    """An ``AttentionPool2d`` whose positional embedding has ``h * w + 1`` rows."""
    pool = AttentionPool2d(1, channels, heads, output_dim)
    rows = grid[0] * grid[1] + 1
    pool.positional_embedding = torch.nn.Parameter(
        torch.randn(rows, channels) / channels ** 0.5)
    std = channels ** -0.5
    for proj in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
        torch.nn.init.normal_(proj.weight, std=std)
    return pool


def resize_grid_embedding(pos: torch.Tensor, old_grid: tuple[int, int],
                          new_grid: tuple[int, int]) -> torch.Tensor:
    """(1 + h*w, C) positional embedding with a leading class row -> (1 + h'*w', C), bicubic."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    cls, grid = pos[:1], pos[1:]
    c = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], c).permute(0, 3, 1, 2)  # (1, C, h, w)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], c).to(pos.dtype)
    return torch.cat([cls, grid], dim=0)


def stripe_pool_from(global_pool: AttentionPool2d, grid: tuple[int, int], stripe: int,
                     stripes: int) -> AttentionPool2d:
    """A new pool for one horizontal stripe, initialised as a copy of ``global_pool``.

    Its positional embedding is the class row plus the stripe's rows of the global grid; the
    copy owns its parameters (stripe pools are not shared with the global one).
    """
    channels = global_pool.k_proj.in_features
    pool = make_attention_pool((grid[0] // stripes, grid[1]), channels, global_pool.num_heads,
                               global_pool.c_proj.out_features)
    state = {k: v.detach().clone() for k, v in global_pool.state_dict().items()}
    rows_per = grid[0] // stripes * grid[1]
    pos = state["positional_embedding"]
    state["positional_embedding"] = torch.cat(
        [pos[:1], pos[1 + stripe * rows_per : 1 + (stripe + 1) * rows_per]])
    pool.load_state_dict(state)
    return pool
