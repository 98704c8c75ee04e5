"""The arguments of the ``tbps train`` and ``tbps eval`` sub-commands, apart from the modules
that run them: ``tbps --help`` (and every other sub-command) registers them without importing
torch; the running module is imported when the sub-command runs."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.data.datasets import READERS

AUTO_RESUME = Path("<output>/last.pt")
MODES = ("text", "image")


def _later(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """``module.function(args)``, the module imported on the first call."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), function)(args)

    return run


def register_all(subparsers: Any) -> None:
    register_train(subparsers)
    register_eval(subparsers)
    register_calibrate(subparsers)


def register_train(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train a model from a training config",
        description="Train any model family on a text-based person search dataset. The "
                    "training config names the model config, the data and the schedule; "
                    "checkpoints carry config, tokenizer, preprocessing and format version.")
    parser.add_argument("--config", type=Path, required=True, help="training config (YAML)")
    parser.add_argument("--output", type=Path, default=None, help="overrides `output`")
    parser.add_argument("--resume", type=Path, nargs="?", const=AUTO_RESUME, default=None,
                        help="continue an interrupted run from its state (model, optimiser, "
                             "schedule, data order, RNG): a last.pt, or with no value the "
                             "OUTPUT/last.pt of this config")
    parser.add_argument("--epochs", type=int, default=None, help="overrides train.epochs")
    parser.add_argument("--max-steps", type=int, default=None, help="overrides train.max_steps")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="overrides train.max_minutes (stop and save after this long)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override one value of the training config by its dotted path, "
                             "VALUE read as YAML (e.g. data.root=/data/cuhk-pedes or "
                             "model_overrides.text_backbone.weights=/models/minilm); repeatable")
    # a training of hours reports its steps and dev evaluations without -v
    parser.set_defaults(func=_later("models.train", "run_train"), progress_log=True)
    return parser


def register_eval(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval", help="retrieval metrics of a checkpoint on a dataset split",
        description="--mode text (the default): every caption of the split is a query, every "
                    "image of the split is in the gallery. --mode image: every image queries "
                    "all the other images of the split. A match is the same person id. Prints "
                    "Rank-1/5/10, mAP and mINP in percent.")
    parser.add_argument("--mode", choices=MODES, default="text",
                        help="text: caption queries (text-to-image); image: image queries "
                             "(image-to-image, each image's own copy left out)")
    _checkpoint_and_data(parser)
    parser.add_argument("--split", default="test",
                        help="the dataset's own split (train/val/test) or 'dev' (held-out val "
                             "ids, see docs/results.md)")
    _encoding(parser)
    parser.add_argument("--precision", default="auto",
                        help="auto, fp32, bf16 / fp16 (torch autocast) or int8 (ONNX Runtime, "
                             "text tower quantised)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_later("models.evaluate", "run_eval"))
    return parser


def register_calibrate(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "calibrate", help="fit the match confidence of a checkpoint on dev (its sidecar)",
        description="Calibrate served scores into P(same person) on a dataset split (per "
                    "query mode: text, image, blend, Platt's logistic or an isotonic map, "
                    "whichever predicts held-out persons better), choose the same-person threshold "
                    "of the image mode at a precision and text_weight on a grid; writes "
                    "<checkpoint stem>.calibration.json beside the checkpoint, which the "
                    "service loads when its sha256 matches (models/calibration.py).")
    _checkpoint_and_data(parser)
    parser.add_argument("--split", default="dev", help="the split to calibrate on (dev)")
    parser.add_argument("--precision", type=float, default=0.9,
                        help="same-person precision the threshold is chosen for (0-1)")
    parser.add_argument("--balanced", action="store_true",
                        help="weigh same- and other-person pairs equally (default: as they "
                             "come, so p is a frequency in a dev-like gallery); Platt only")
    parser.add_argument("--map", choices=("auto", "platt", "isotonic"), default="auto",
                        help="the map every mode serves (default auto: the lower Brier score "
                             "on held-out persons); both are fitted and compared either way")
    parser.add_argument("--output", type=Path, default=None,
                        help="sidecar path (default: beside the checkpoint)")
    _encoding(parser)
    parser.set_defaults(func=_later("models.calibration", "run_calibrate"))
    return parser


def _checkpoint_and_data(parser: argparse.ArgumentParser) -> None:
    """The checkpoint and dataset arguments eval and calibrate share."""
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="tbps checkpoint (default: models/checkpoints/default.pt)")
    parser.add_argument("--dataset", choices=sorted(READERS), default="cuhk-pedes")
    parser.add_argument("--root", type=Path, required=True,
                        help="dataset folder in its published layout")


def _encoding(parser: argparse.ArgumentParser) -> None:
    """How eval and calibrate run the encoder."""
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--engine", default="auto", choices=["auto", "torch", "onnx"],
                        help="inference engine (auto: ONNX Runtime on the CPU, torch on CUDA)")
