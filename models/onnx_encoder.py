"""``Encoder`` over ONNX Runtime: the image and text towers of any ``DualEncoderModel``,
exported once with ``torch.onnx.export`` and cached by the checkpoint's sha256.

Preprocessing and tokenization are the torch model's own (``Preprocess.of(model.config)``
and ``model.tokenize``), so both engines see the same inputs; only the towers run in ONNX Runtime.
The cached graphs are derived files: written to a temporary name and renamed into place, so a
concurrent process sees either no file or a whole one.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.base import DualEncoderModel
from models.preprocess import Preprocess
from models.torch_encoder import TorchEncoder, model_spec

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnx")
EXPORT_VERSION = 1  # bump when the export itself changes, so old cached graphs are not reused
OPSET = 18
SAMPLE_TEXTS = ("a man in a red coat and blue jeans", "a woman carrying a black bag")


def resolve_engine(engine: str, device: torch.device) -> str:
    """``auto`` -> ONNX Runtime on CPU, torch on CUDA; ``torch`` and ``onnx`` pass through."""
    if engine not in ENGINES:
        raise ValueError(f"unknown inference engine {engine!r}; use one of {', '.join(ENGINES)}")
    if engine == "auto":
        return "onnx" if device.type == "cpu" else "torch"
    if engine == "onnx" and device.type != "cpu":
        raise ValueError(f"the onnx engine runs on the CPU only, not on {device}")
    return engine


class _ImageTower(torch.nn.Module):
    def __init__(self, model: DualEncoderModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.image_features(images)  # (N, 3, H, W) -> (N, D)


class _TextTower(torch.nn.Module):
    """Positional int64 tensors in ``keys`` order -> ``text_features`` of the token dict
    (``keys`` None: the tokenizer returns one tensor)."""

    def __init__(self, model: DualEncoderModel, keys: tuple[str, ...] | None) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tokens: torch.Tensor) -> torch.Tensor:
        if self.keys is None:
            return self.model.text_features(tokens[0])  # (N, L) -> (N, D)
        return self.model.text_features(dict(zip(self.keys, tokens, strict=True)))


def token_inputs(tokens) -> tuple[tuple[str, ...] | None, tuple[torch.Tensor, ...]]:
    """Tokenizer output -> (dict keys or None, the tensors in that order)."""
    if isinstance(tokens, torch.Tensor):
        return None, (tokens,)
    if isinstance(tokens, dict):
        keys = tuple(sorted(tokens))
        return keys, tuple(tokens[k] for k in keys)
    raise TypeError(f"cannot export a tokenizer that returns {type(tokens).__name__}")


def token_feed(tokens) -> dict[str, np.ndarray]:
    """Tokenizer output -> the text graph's inputs by name."""
    keys, tensors = token_inputs(tokens)
    return dict(zip(keys or ("tokens",), (t.numpy() for t in tensors), strict=True))


def graph_paths(cache_dir: Path, sha256: str) -> dict[str, Path]:
    stem = f"{sha256}.v{EXPORT_VERSION}"
    return {tower: Path(cache_dir) / f"{stem}.{tower}.onnx" for tower in ("image", "text")}


def _export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], names: list[str],
            path: Path, dynamic_axes: int) -> None:
    """Export to a temporary file beside ``path`` and rename it into place.

    The first ``dynamic_axes`` axes of every input may vary (batch; batch and sequence)."""
    auto = torch.export.Dim.AUTO
    shapes = tuple({i: auto for i in range(dynamic_axes)} for _ in args)
    if isinstance(module, _TextTower):
        shapes = (shapes,)  # one entry for ``*tokens``
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.onnx.export(module.eval(), args, tmp, input_names=names,
                          output_names=["features"], dynamic_shapes=shapes,
                          opset_version=OPSET, external_data=False, verbose=False)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def tower_paths(model: DualEncoderModel, sha256: str, cache_dir: Path) -> dict[str, Path]:
    """The cached graph of each tower in ``model.onnx_towers``."""
    return {k: v for k, v in graph_paths(cache_dir, sha256).items() if k in model.onnx_towers}


@contextlib.contextmanager
def export_lock(cache_dir: Path) -> Iterator[None]:
    """One export into ``cache_dir`` at a time, across processes (the API and its worker start
    together): the second waits, then finds the graphs cached."""
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with (Path(cache_dir) / ".export.lock").open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def export_towers(model: DualEncoderModel, sha256: str, cache_dir: Path) -> dict[str, Path]:
    """The graphs of ``model.onnx_towers``, exported unless already cached in ``cache_dir``."""
    paths = tower_paths(model, sha256, cache_dir)
    if all(p.is_file() for p in paths.values()):
        return paths
    with export_lock(cache_dir):
        _export_missing(model.eval(), paths)
    return paths


def _export_missing(model: DualEncoderModel, paths: dict[str, Path]) -> None:
    if "image" in paths and not paths["image"].is_file():
        log.info("exporting the image tower to %s", paths["image"])
        images = torch.zeros(2, 3, *model.config.image_size)  # (2, 3, H, W); batch 2 stays dynamic
        _export(_ImageTower(model), (images,), ["images"], paths["image"], 1)
    if "text" in paths and not paths["text"].is_file():
        log.info("exporting the text tower to %s", paths["text"])
        keys, tensors = token_inputs(model.tokenize(list(SAMPLE_TEXTS)))
        _export(_TextTower(model, keys), tensors, list(keys or ("tokens",)), paths["text"],
                2)


ONNX_PRECISIONS = ("auto", "fp32", "int8")


def check_onnx_precision(precision: str) -> None:
    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"precision {precision!r} is not an ONNX Runtime precision; known: "
                         f"{', '.join(ONNX_PRECISIONS)} (bf16 is a torch engine option)")


def int8_text_graph(text_graph: Path) -> Path:
    """The text graph with its weights dynamically quantised to int8 (activations quantised at
    run time), cached beside it; written to a temporary file and renamed into place."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = text_graph.with_name(text_graph.name.replace(".text.onnx", ".text.int8.onnx"))
    if not out.is_file():
        fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
        os.close(fd)
        try:
            quantize_dynamic(str(text_graph), tmp, weight_type=QuantType.QInt8)
            os.replace(tmp, out)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return out


def default_cache_dir(checkpoint: Path | None) -> Path:
    """Beside the checkpoint when that folder is writable, else a folder in the temp dir.

    No checkpoint (the untrained stand-in, whose name is no content hash): a fresh folder, so
    that a graph exported from older stand-in code is never reused."""
    if checkpoint is None:
        return Path(tempfile.mkdtemp(prefix="tbps-onnx-standin-"))
    if os.access(Path(checkpoint).parent, os.W_OK):
        return Path(checkpoint).parent
    return Path(tempfile.gettempdir()) / "tbps-onnx"


def open_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxEncoder:
    """Batches PIL images or texts through the model's towers in ONNX Runtime (CPU); a tower
    the model does not list in ``onnx_towers`` runs in torch (fp32, CPU)."""

    device = torch.device("cpu")

    def __init__(self, model: DualEncoderModel, checkpoint_sha256: str, cache_dir: Path,
                 threads: int | None = None, batch_size: int = 64,
                 precision: str = "auto") -> None:
        check_onnx_precision(precision)
        model = model.eval().cpu()
        self.paths = export_towers(model, checkpoint_sha256, cache_dir)
        if precision == "int8" and "text" in self.paths:  # the query path; images stay fp32
            self.paths["text"] = int8_text_graph(self.paths["text"])
        self.precision = precision
        self.threads = threads or torch.get_num_threads()
        self.model = model
        self._image, self._text = (open_session(self.paths[k], self.threads)
                                   if k in self.paths else None for k in ("image", "text"))
        self.batch_size = batch_size
        self.spec = model_spec(model, checkpoint_sha256)
        self.preprocess = Preprocess.of(model.config)

    def encode_image(self, images: Sequence[Image.Image] | torch.Tensor) -> np.ndarray:
        if not isinstance(images, torch.Tensor):
            if len(images) == 0:
                return np.zeros((0, self.spec.dim), np.float32)
            images = torch.stack([self.preprocess(im) for im in images])
        pixels = images.detach().cpu().to(torch.float32)  # (N, 3, H, W)
        chunks = [self._run_image(pixels[s : s + self.batch_size])
                  for s in range(0, len(pixels), self.batch_size)]
        return np.concatenate(chunks).astype(np.float32, copy=False)  # (N, D)

    def _run_image(self, pixels: torch.Tensor) -> np.ndarray:
        if self._image is None:
            with torch.inference_mode():
                return self.model.image_features(pixels).numpy()
        return self._image.run(None, {"images": pixels.numpy()})[0]

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.spec.dim), np.float32)
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            chunks.append(self._run_text(texts[start : start + self.batch_size]))
        return np.concatenate(chunks).astype(np.float32, copy=False)  # (N, D)

    def _run_text(self, texts: list[str]) -> np.ndarray:
        tokens = self.model.tokenize(texts)
        if self._text is None:
            with torch.inference_mode():
                return self.model.text_features(tokens).numpy()
        return self._text.run(None, token_feed(tokens))[0]


class SwitchingEncoder:
    """The onnx engine for a server that must answer at once: encodes with torch (fp32, CPU)
    while a background thread exports the graphs (about a minute for the default checkpoint),
    then with ONNX Runtime. Both engines give the same vectors within fp32 rounding
    (tests/models/test_onnx_encoder.py), so an index built with one is searched with the other.
    A failed export is logged and leaves the torch engine answering."""

    device = torch.device("cpu")

    def __init__(self, model: DualEncoderModel, checkpoint_sha256: str, cache_dir: Path,
                 threads: int | None = None, precision: str = "auto") -> None:
        check_onnx_precision(precision)
        self._active: TorchEncoder | OnnxEncoder = TorchEncoder(model.eval().cpu(),
                                                                checkpoint_sha256, device="cpu",
                                                                precision="fp32")
        self.spec, self.preprocess = self._active.spec, self._active.preprocess
        self.switched = threading.Event()  # set when ONNX Runtime answers
        self.export_error: BaseException | None = None
        # the export traces its own copy: the torch engine keeps encoding the original meanwhile
        args = (copy.deepcopy(model), checkpoint_sha256, Path(cache_dir), threads, precision)
        threading.Thread(target=self._switch, args=args, name="onnx-export", daemon=True).start()

    def _switch(self, model: DualEncoderModel, sha256: str, cache_dir: Path,
                threads: int | None, precision: str) -> None:
        log.info("encoding with torch while the ONNX graphs export to %s", cache_dir)
        try:
            onnx = OnnxEncoder(model, sha256, cache_dir, threads=threads, precision=precision)
        except Exception as exc:  # noqa: BLE001 - the torch engine keeps answering
            log.exception("ONNX export failed: the torch engine keeps encoding")
            self.export_error = exc
            return
        self._active = onnx
        self.switched.set()
        log.info("the ONNX graphs are ready: encoding with ONNX Runtime from now on")

    @property
    def engine(self) -> str:
        """The engine encoding now: torch, then onnx."""
        return "onnx" if self.switched.is_set() else "torch"

    def encode_image(self, images: Sequence[Image.Image] | torch.Tensor) -> np.ndarray:
        return self._active.encode_image(images)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        return self._active.encode_text(texts)
