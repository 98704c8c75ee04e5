"""Plain open_clip CLIP behind the encoder interface, built from an architecture config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from models.base import DualEncoderModel, seeded_init
from models.config import ClipConfig
from models.factory import register_family


@register_family("clip", ClipConfig)
class ClipDualEncoder(DualEncoderModel):
    """CLIP with global features only: cos(image, text) is the similarity."""

    @seeded_init
    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        self.config = config
        self.clip = CLIP(
            embed_dim=config.embed_dim,
            vision_cfg=CLIPVisionCfg(**config.vision),
            text_cfg=CLIPTextCfg(**config.text),
            quick_gelu=config.quick_gelu,
        )
        self.context_length = int(config.text.get("context_length", 77))
        self._tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))  # (N, L) int64

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(images), dim=-1)  # (N, D)

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(tokens), dim=-1)  # (N, D)

    def tokenizer_spec(self) -> dict[str, Any]:
        return {"kind": "openai-clip-bpe", "context_length": self.context_length}
