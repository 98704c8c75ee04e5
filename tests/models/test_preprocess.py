"""The encoder's one preprocessing: checkpoint entry, halves that compose, any image mode."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from models.factory import create_model, load_encoder, read_checkpoint, save_checkpoint
from models.preprocess import Preprocess

PRE = Preprocess((32, 16), (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))


def _photo(seed: int, size: tuple[int, int] = (23, 61)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_the_checkpoint_carries_the_preprocess_its_encoders_use(tmp_path):
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, create_model("tiny-clip"))
    entry = read_checkpoint(path)["preprocess"]
    assert entry["resize"] == "bicubic"
    for engine in ("torch", "onnx"):
        encoder = load_encoder(path, device="cpu", engine=engine, cache_dir=tmp_path)
        assert encoder.preprocess == Preprocess.from_dict(entry)
        assert encoder.preprocess.image_size == encoder.spec.image_size
    assert Preprocess.from_dict(PRE.to_dict()) == PRE


def test_an_old_checkpoint_entry_without_resize_means_bicubic():
    old = {"image_size": [32, 16], "mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]}
    assert Preprocess.from_dict(old) == PRE


def test_it_matches_the_torchvision_pipeline_it_replaced():
    """PILToTensor, antialiased bicubic resize of the uint8 tensor, scale, normalise."""
    reference = T.Compose([T.PILToTensor(), T.Resize((32, 16), antialias=True,
                                                     interpolation=T.InterpolationMode.BICUBIC),
                           T.ToDtype(torch.float32, scale=True),
                           T.Normalize(list(PRE.mean), list(PRE.std))])
    image = _photo(0)
    got = PRE(image)
    assert got.shape == (3, 32, 16) and got.dtype == torch.float32
    torch.testing.assert_close(got, reference(image), atol=1e-6, rtol=0)


def test_the_halves_compose_per_image_and_per_batch_bit_for_bit():
    images = [_photo(i) for i in range(4)]
    pixels = torch.stack([PRE.pixels(im) for im in images])  # (4, 3, H, W) uint8
    assert pixels.dtype == torch.uint8
    assert torch.equal(PRE.normalise(pixels), torch.stack([PRE(im) for im in images]))
    assert torch.equal(PRE.pixels(T.functional.pil_to_tensor(images[0])), pixels[0])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_image_mode_is_read_as_rgb(mode):
    image = _photo(1).convert(mode)
    assert torch.equal(PRE(image), PRE(image.convert("RGB")))


def test_it_pickles_into_worker_processes():
    again = pickle.loads(pickle.dumps(PRE))
    assert again == PRE and torch.equal(again(_photo(2)), PRE(_photo(2)))


def test_bad_specs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown resize method 'lanczos'"):
        Preprocess((32, 16), (0.5,) * 3, (0.5,) * 3, resize="lanczos")
    with pytest.raises(ValueError, match="3 means"):
        Preprocess((32, 16), (0.5,) * 2, (0.5,) * 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8 pixels"):
        PRE.normalise(torch.zeros(3, 32, 16))
    with pytest.raises(ValueError, match="uint8 image"):
        PRE.pixels(torch.zeros(1, 40, 20, dtype=torch.uint8))
