"""The untrained open_clip stand-in and the checkpoint format every family shares."""

import numpy as np
import pytest
import torch
from PIL import Image

from models.factory import create_model, load_encoder, load_model, read_checkpoint, save_checkpoint


def _images(n):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (90, 40, 3), dtype=np.uint8)) for _ in range(n)]


def test_encoder_outputs_unit_float32_vectors(tiny_encoder):
    img = tiny_encoder.encode_image(_images(3))
    txt = tiny_encoder.encode_text(["a man in a red jacket", "a woman", "x"])
    for out in (img, txt):
        assert out.shape == (3, tiny_encoder.spec.dim) and out.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert tiny_encoder.encode_text([]).shape == (0, tiny_encoder.spec.dim)


def test_preprocessed_batch_equals_pil_path(tiny_encoder):
    ims = _images(2)
    batch = torch.stack([tiny_encoder.preprocess(im) for im in ims])
    assert batch.shape == (2, 3, *tiny_encoder.spec.image_size)
    np.testing.assert_allclose(tiny_encoder.encode_image(batch), tiny_encoder.encode_image(ims),
                               atol=1e-6)


def test_same_seed_same_model():
    a, b = create_model("tiny-clip"), create_model("tiny-clip")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_checkpoint_round_trip_describes_itself(tmp_path, tiny_encoder):
    path = tmp_path / "m.pt"
    sha = save_checkpoint(path, tiny_encoder.model, extra={"note": "test"})
    payload = read_checkpoint(path)
    assert payload["config"]["family"] == "clip" and payload["format_version"] == 1
    assert payload["tokenizer"]["kind"] == "openai-clip-bpe"
    assert payload["preprocess"]["image_size"] == [128, 64]
    enc = load_encoder(path, device="cpu")
    assert enc.spec.checkpoint_sha256 == sha
    texts = ["a man in a blue coat"]
    np.testing.assert_allclose(enc.encode_text(texts), tiny_encoder.encode_text(texts), atol=1e-5)


def test_bad_checkpoints_are_refused_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    torch.save({"weights": 1}, junk)
    with pytest.raises(ValueError, match="not a tbps checkpoint"):
        load_model(junk)


def test_unknown_config_keys_and_families_fail_loudly():
    from models.factory import parse_config

    with pytest.raises(ValueError, match="unknown keys"):
        parse_config({"family": "clip", "name": "x", "colour": "red"})
    with pytest.raises(ValueError, match="unknown model family"):
        parse_config({"family": "nope", "name": "x"})
