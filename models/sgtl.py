"""Textual local features: Semantic-Group Textual Learning (VGSG Sec. III-C) and the plain
convolutional "Local" variant of the ablation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelProjection(nn.Module):
    """Linear + batch norm expanding token features into K channel groups (Sec. III-C)."""

    def __init__(self, dim: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.linear = nn.Linear(dim, groups * dim)
        self.bn = nn.BatchNorm1d(groups * dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (B, L, D), mask (B, L) -> (B, K, L, D); batch norm over real tokens only."""
        b, length, d = tokens.shape
        x = self.linear(tokens)  # (B, L, K*D)
        if self.training:  # batch statistics over the T real tokens only
            out = torch.zeros_like(x)
            out[mask] = self.bn(x[mask])  # (T, K*D)
        else:  # running statistics act per element: normalise all, zero the padding
            normed = self.bn(x.flatten(0, 1)).view_as(x)  # (B, L, K*D); exportable, no masking
            out = torch.where(mask.unsqueeze(-1), normed, torch.zeros_like(normed))
        return out.view(b, length, self.groups, d).permute(0, 2, 1, 3)  # (B, K, L, D)


class SGTLBlock(nn.Module):
    """Self-attention among the K queries, cross-attention from query k to channel group k's
    tokens, then an MLP; pre-norm with residuals."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm_q1, self.norm_q2, self.norm_kv, self.norm_mlp = (nn.LayerNorm(dim)
                                                                   for _ in range(4))
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, queries: torch.Tensor, groups: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """queries (B, K, D), groups (B, K, L, D), mask (B, L) -> (B, K, D)."""
        b, k, length, d = groups.shape
        q = self.norm_q1(queries)
        queries = queries + self.self_attn(q, q, q, need_weights=False)[0]
        q = self.norm_q2(queries).reshape(b * k, 1, d)  # (B*K, 1, D): one query per group
        kv = self.norm_kv(groups).reshape(b * k, length, d)  # (B*K, L, D)
        pad = (~mask).repeat_interleave(k, dim=0)  # (B*K, L)
        attended = self.cross_attn(q, kv, kv, key_padding_mask=pad, need_weights=False)[0]
        queries = queries + attended.view(b, k, d)
        return queries + self.mlp(self.norm_mlp(queries))


class SGTL(nn.Module):
    """Semantic-group text features: K learnable word queries plus the global text feature
    attend, layer by layer, to their own channel group of the token features."""

    def __init__(self, dim: int, groups: int, layers: int = 2, heads: int = 8) -> None:
        super().__init__()
        self.projection = ChannelProjection(dim, groups)
        self.queries = nn.Parameter(torch.randn(groups, dim) * dim ** -0.5)  # (K, D)
        self.blocks = nn.ModuleList(SGTLBlock(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, global_text: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """tokens (B, L, D), global_text (B, D), mask (B, L) -> (B, K, D)."""
        groups = self.projection(tokens, mask)  # (B, K, L, D)
        queries = self.queries.unsqueeze(0) + global_text.unsqueeze(1)  # (B, K, D)
        for block in self.blocks:
            queries = block(queries, groups, mask)
        return self.norm(queries)


class ConvLocal(nn.Module):
    """The ablation's "Local" text branch: a 1-D convolution over tokens into K groups of
    channels, each max-pooled over the real tokens."""

    def __init__(self, dim: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.conv = nn.Conv1d(dim, groups * dim, kernel_size=3, padding=1)

    def forward(self, tokens: torch.Tensor, global_text: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        b, _, d = tokens.shape
        x = self.conv(tokens.transpose(1, 2)).transpose(1, 2)  # (B, L, K*D)
        x = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)  # (B, K*D)
        return x.view(b, self.groups, d)


def masked_softmax_attention(queries: torch.Tensor, keys: torch.Tensor,
                             mask: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product weights of queries (B, N, D) over keys (B, L, D), padding masked:
    (B, N, L)."""
    logits = queries @ keys.transpose(1, 2) / keys.shape[-1] ** 0.5  # (B, N, L)
    return F.softmax(logits.masked_fill(~mask.unsqueeze(1), float("-inf")), dim=-1)
