"""The ONNX Runtime engine against the torch one, on tiny stand-ins of several families."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from models.factory import create_model, load_encoder, save_checkpoint
from models.onnx_encoder import OnnxEncoder, default_cache_dir, graph_paths, resolve_engine
from models.torch_encoder import TorchEncoder
from service.config import Settings
from tests.models.conftest import tiny_vgsg
from tests.models.test_ssan import tiny_ssan

TOLERANCE = 1e-4  # max abs difference of exported (unit-norm) vectors, fp32 both sides
FAMILIES = {"vgsg": tiny_vgsg, "clip": lambda: "tiny-clip", "ssan": tiny_ssan}
QUERIES = ["a man in a red coat and blue jeans", "a woman with a black bag",
           "a person in a white shirt", "someone wearing a green hat and grey trousers, "
           "carrying a large brown suitcase", "a child", "a man on a bicycle"]


def _checkpoint(folder: Path, family: str, seed: int = 0) -> Path:
    """A tiny checkpoint; each ``seed`` other than 0 perturbs the (seeded) initial weights."""
    model = create_model(FAMILIES[family]())
    if seed:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    path = folder / f"{family}-{seed}.pt"
    save_checkpoint(path, model, extra={"seed": seed})
    return path


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def engines(request, tmp_path_factory) -> tuple[OnnxEncoder, TorchEncoder, Path]:
    """(onnx encoder, torch encoder, checkpoint) of one family's tiny checkpoint."""
    path = _checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    onnx = load_encoder(path, device="cpu", engine="onnx")
    return onnx, load_encoder(path, device="cpu", engine="torch"), path


def _gallery(encoder, count: int = 40) -> torch.Tensor:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (48, 24, 3), dtype=np.uint8))
              for _ in range(count)]
    return torch.stack([encoder.preprocess(im) for im in images])  # (N, 3, H, W)


def test_vectors_match_torch(engines) -> None:
    onnx, torch_enc, _ = engines
    assert isinstance(onnx, OnnxEncoder) and isinstance(torch_enc, TorchEncoder)
    assert onnx.spec == torch_enc.spec
    images = _gallery(onnx, 5)
    assert np.abs(onnx.encode_image(images) - torch_enc.encode_image(images)).max() < TOLERANCE
    text = onnx.encode_text(QUERIES)
    assert text.shape == (len(QUERIES), onnx.spec.dim)
    assert np.abs(text - torch_enc.encode_text(QUERIES)).max() < TOLERANCE


def test_pil_images_and_batches_of_any_size(engines) -> None:
    """PIL input goes through the same preprocessing; batches larger and smaller than the
    export batch (2) and than ``batch_size`` run, and empty input gives (0, D)."""
    onnx, torch_enc, _ = engines
    images = [Image.new("RGB", (20, 50), (200, 10 * i, 30)) for i in range(3)]
    assert np.abs(onnx.encode_image(images) - torch_enc.encode_image(images)).max() < TOLERANCE
    onnx.batch_size = 4
    gallery = _gallery(onnx, 9)
    assert onnx.encode_image(gallery).shape == (9, onnx.spec.dim)
    assert onnx.encode_text(QUERIES[:1]).shape == (1, onnx.spec.dim)
    assert onnx.encode_image([]).shape == onnx.encode_text([]).shape == (0, onnx.spec.dim)


def test_same_top10_ranking(engines) -> None:
    onnx, torch_enc, _ = engines
    gallery = _gallery(onnx)
    for enc in (onnx, torch_enc):
        enc.batch_size = 16
    scores = [enc.encode_text(QUERIES) @ enc.encode_image(gallery).T for enc in engines[:2]]
    top = [np.argsort(-s, axis=1, kind="stable")[:, :10] for s in scores]  # (Q, 10)
    # the same ranking up to ties: ONNX's top 10, scored by torch, are torch's 10 best scores in
    # order (the random tiny model has near-equal pairs that swap within the 1e-6 vector diff)
    reference = scores[1]
    np.testing.assert_allclose(np.take_along_axis(reference, top[0], axis=1),
                               np.take_along_axis(reference, top[1], axis=1), atol=1e-5)
    assert (top[0] == top[1]).mean() > 0.9  # and nearly all ranks identical outright


def test_export_is_cached_per_checkpoint(engines) -> None:
    onnx, _, path = engines
    assert set(onnx.paths) == set(onnx.model.onnx_towers)
    before = {k: p.stat() for k, p in onnx.paths.items()}
    again = load_encoder(path, device="cpu", engine="onnx")
    assert again.paths == onnx.paths
    for tower, stat in before.items():  # the same file, not a fresh export renamed over it
        now = again.paths[tower].stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert not list(path.parent.glob("*.tmp"))
    expected = graph_paths(path.parent, onnx.spec.checkpoint_sha256)
    assert onnx.paths == {k: expected[k] for k in onnx.model.onnx_towers}


def test_another_checkpoint_gets_its_own_graphs(tmp_path: Path) -> None:
    first, second = _checkpoint(tmp_path, "clip", 0), _checkpoint(tmp_path, "clip", 1)
    cache = tmp_path / "cache"
    a = load_encoder(first, device="cpu", engine="onnx", cache_dir=cache)
    b = load_encoder(second, device="cpu", engine="onnx", cache_dir=cache)
    assert a.spec.checkpoint_sha256 != b.spec.checkpoint_sha256
    assert set(a.paths.values()).isdisjoint(b.paths.values())
    assert all(p.parent == cache and p.is_file() for p in [*a.paths.values(), *b.paths.values()])
    assert np.abs(a.encode_text(QUERIES) - b.encode_text(QUERIES)).max() > 1e-3


def test_auto_is_onnx_on_cpu_and_torch_on_cuda(engines) -> None:
    assert isinstance(load_encoder(engines[2], device="cpu", engine="auto"), OnnxEncoder)
    assert resolve_engine("auto", torch.device("cpu")) == "onnx"
    assert resolve_engine("auto", torch.device("cuda")) == "torch"
    assert resolve_engine("torch", torch.device("cpu")) == "torch"


def test_unknown_engine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown inference engine 'tensorrt'; use one of auto"):
        load_encoder(_checkpoint(tmp_path, "clip"), device="cpu", engine="tensorrt")
    with pytest.raises(ValueError, match="onnx engine runs on the CPU only"):
        resolve_engine("onnx", torch.device("cuda"))
    with pytest.raises(ValidationError, match="engine"):
        Settings(engine="tensorrt")


def test_settings_carry_the_engine(tmp_path: Path) -> None:
    settings = Settings(engine="torch", engine_cache_dir=tmp_path, checkpoint=tmp_path / "m.pt")
    assert settings.encoder_options == {"checkpoint": tmp_path / "m.pt", "device": "auto",
                                        "engine": "torch", "cache_dir": tmp_path,
                                        "precision": "auto"}
    assert Settings().engine == "auto"


def test_graphs_live_beside_the_checkpoint_but_the_stand_in_never_shares_them(tmp_path) -> None:
    assert default_cache_dir(tmp_path / "model.pt") == tmp_path
    first, second = default_cache_dir(None), default_cache_dir(None)
    assert first != second and not list(first.iterdir())


# ---- precision options (TBPS_ENGINE_PRECISION) ----
def _per_row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_int8_text_is_quantised_cached_and_close(tmp_path) -> None:
    path = _checkpoint(tmp_path, "vgsg", seed=3)
    fp32 = load_encoder(path, device="cpu", engine="onnx")
    int8 = load_encoder(path, device="cpu", engine="onnx", precision="int8")
    graph = int8.paths["text"]
    assert graph.name.endswith(".text.int8.onnx") and graph.is_file()
    assert graph.stat().st_size < fp32.paths["text"].stat().st_size  # int8 weights
    a, b = fp32.encode_text(QUERIES), int8.encode_text(QUERIES)
    assert not np.array_equal(a, b)  # really another graph
    assert _per_row_cosine(a, b).min() > 0.98
    images = _gallery(fp32, 4)  # the image tower stays float32
    assert np.array_equal(fp32.encode_image(images), int8.encode_image(images))
    stamp = graph.stat().st_mtime_ns
    load_encoder(path, device="cpu", engine="onnx", precision="int8")
    assert graph.stat().st_mtime_ns == stamp  # reused, not re-quantised


def test_torch_bf16_autocast_is_close_to_fp32(tmp_path) -> None:
    path = _checkpoint(tmp_path, "vgsg", seed=4)
    fp32 = load_encoder(path, device="cpu", engine="torch", precision="fp32")
    bf16 = load_encoder(path, device="cpu", engine="torch", precision="bf16")
    images = _gallery(fp32, 4)
    a, b = fp32.encode_image(images), bf16.encode_image(images)
    assert not np.array_equal(a, b) and _per_row_cosine(a, b).min() > 0.99
    assert _per_row_cosine(fp32.encode_text(QUERIES), bf16.encode_text(QUERIES)).min() > 0.99


@pytest.mark.parametrize(("engine", "precision", "message"), [
    ("onnx", "bf16", "torch engine option"), ("torch", "int8", "ONNX Runtime option"),
    ("torch", "fp16", "needs a CUDA device"), ("onnx", "fp64", "not an ONNX Runtime")])
def test_precisions_an_engine_does_not_have_are_refused(tmp_path, engine, precision,
                                                          message) -> None:
    path = _checkpoint(tmp_path, "vgsg")
    with pytest.raises(ValueError, match=message):
        load_encoder(path, device="cpu", engine=engine, precision=precision)


def test_settings_pass_the_precision_and_refuse_unknown_ones(monkeypatch) -> None:
    monkeypatch.setenv("TBPS_ENGINE_PRECISION", "int8")
    assert Settings().encoder_options["precision"] == "int8"
    monkeypatch.setenv("TBPS_ENGINE_PRECISION", "int4")
    with pytest.raises(ValidationError, match="engine_precision"):
        Settings()
