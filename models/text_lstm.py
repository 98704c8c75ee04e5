"""SSAN's text side: a word vocabulary built from training captions and a BiLSTM over word
embeddings whose per-word feature is the mean of the two directions' hidden states."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.backbones.text import normalize_caption

PAD, UNK = "<pad>", "<unk>"


def build_vocabulary(captions: Iterable[str], min_count: int = 1) -> list[str]:
    """Words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
    counts = Counter(w for c in captions for w in normalize_caption(c).split())
    kept = [w for w, n in counts.items() if n >= min_count]
    return sorted(kept, key=lambda w: (-counts[w], w))


class WordTokenizer:
    """Caption -> word ids: 0 is padding, 1 an unknown word, then the vocabulary in order."""

    def __init__(self, words: Sequence[str], max_length: int) -> None:
        self.index = {w: i + 2 for i, w in enumerate(words)}
        self.size = len(words) + 2
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        rows = [[self.index.get(w, 1) for w in normalize_caption(t).split()][: self.max_length]
                or [1] for t in texts]  # an empty caption is one unknown word
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)  # (N,)
        ids = torch.zeros(len(rows), int(lengths.max()) if rows else 1, dtype=torch.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return {"input_ids": ids, "lengths": lengths}  # (N, L), (N,)


class BiLSTMText(nn.Module):
    """Word embeddings -> BiLSTM -> (B, L, H) word features, (B, L) mask of real words."""

    def __init__(self, vocab_size: int, word_dim: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.lstm = nn.LSTM(word_dim, hidden, batch_first=True, bidirectional=True)

    def forward(self, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, lengths = tokens["input_ids"], tokens["lengths"]  # (B, L), (B,)
        b, length = ids.shape
        packed = pack_padded_sequence(self.embed(ids), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=length)
        words = out.view(b, length, 2, -1).mean(dim=2)  # (B, L, H) mean of both directions
        mask = torch.arange(length, device=ids.device)[None, :] < lengths.to(ids.device)[:, None]
        return words, mask
