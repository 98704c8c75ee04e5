"""Generic trainer over ``DualEncoderModel.training_losses``: any family trains here.

``tbps train --config FILE`` where FILE is a training config (YAML)::

    model: vgsg-effl0-minilm        # a model config name/path, or an inline mapping
    model_overrides: {vgkt: false}  # optional, merged into the model config
    data: {dataset: cuhk-pedes, root: ../shared/data/cuhk-pedes, split: trainval-dev,
           dev_split: dev}
    train: {epochs: 8, p: 8, k: 4, lr: 1.0e-4, head_lr: 5.0e-4, ...}   # see TrainSettings
    output: runs/vgsg

Writes ``OUTPUT/last.pt`` (resume state) and ``OUTPUT/model.pt`` / ``OUTPUT/best.pt``
(self-describing tbps checkpoints) and logs each loss term.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from models.cli_support import run_subcommand
from models.config import read_config_file
from models.data.datasets import read_dataset, select_split
from models.data.sampler import IdentityBalancedSampler
from models.data.training_set import CaptionedImages, collate
from models.data.transforms import build_train_transform
from models.factory import create_model, parse_config, save_checkpoint

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    epochs: int = 10
    max_steps: int = 0  # stop after this many optimizer steps (0 = epochs decide)
    p: int = 8  # person ids per batch
    k: int = 4  # images per id
    lr: float = 1e-4  # pretrained backbone parameters
    head_lr: float = 5e-4  # everything else
    weight_decay: float = 0.02
    warmup_steps: int = 100
    max_minutes: float = 0.0  # stop (and save) after this long; 0 = no limit
    eval_every: int = 1  # epochs between dev evaluations (0 = only at the end)
    log_every: int = 20
    threads: int = 2
    seed: int = 0
    cache_trunk: bool = False  # train on cached frozen-trunk outputs (models/cached_trunk.py)
    cache_dir: str = "runs/cache"
    feature_shift: int = 1  # cached trunk: random shift by up to this many grid cells
    feature_erase_p: float = 0.5  # cached trunk: random erasing of a grid rectangle


def load_train_config(path: Path) -> dict[str, Any]:
    with Path(path).open() as fh:
        data = yaml.safe_load(fh)
    for key in ("model", "data", "output"):
        if key not in data:
            raise ValueError(f"{path}: training config needs a {key!r} key")
    return data


def model_config(data: dict[str, Any], num_classes: int) -> dict[str, Any]:
    model = data["model"]
    config = dict(read_config_file(model) if isinstance(model, str) else model)
    for key, value in (data.get("model_overrides") or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    if "num_classes" in {f.name for f in dataclasses.fields(type(parse_config(config)))}:
        config["num_classes"] = num_classes
    return config


def parameter_groups(model: torch.nn.Module, settings: TrainSettings) -> list[dict[str, Any]]:
    """Backbone weights at ``lr``, new heads at ``head_lr``; no decay on norms and biases."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        backbone = name.startswith(("visual.net.", "textual.net."))
        decay = param.ndim >= 2 and "positional_embedding" not in name
        groups.setdefault((backbone, decay), []).append(param)
    return [{"params": params, "lr": settings.lr if backbone else settings.head_lr,
             "weight_decay": settings.weight_decay if decay else 0.0}
            for (backbone, decay), params in groups.items()]


def flushing_denormals() -> bool:
    """Whether this thread's FPU flushes subnormal floats to zero (FTZ/DAZ set)."""
    return sys.float_info.min / 4 == 0.0


@contextlib.contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Flush subnormals to zero inside the block only (cached-trunk training: the small head
    gradients make ~3x faster CPU steps). The FPU mode is process state that other code
    (hypothesis, numerics in the service) relies on, so the previous mode is always restored."""
    before = flushing_denormals()
    if enabled:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if enabled:
            torch.set_flush_denormal(before)


def cosine_with_warmup(step: int, progress: float, warmup: int) -> float:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine over ``progress`` in [0, 1]."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    def __init__(self, data: dict[str, Any], settings: TrainSettings, output: Path) -> None:
        self.settings, self.output = settings, Path(output)
        torch.manual_seed(settings.seed)
        torch.set_num_threads(settings.threads)
        d = data["data"]
        records = read_dataset(d.get("dataset", "cuhk-pedes"), Path(d["root"]))
        train_records = select_split(records, d.get("split", "trainval-dev"))
        self.dev_records = select_split(records, d["dev_split"]) if d.get("dev_split") else []
        classes = len({r.pid for r in train_records})
        self.model = create_model(model_config(data, classes))
        cfg = self.model.config
        self.dataset = CaptionedImages(train_records, cfg.image_size, build_train_transform(
            cfg.image_size, cfg.mean, cfg.std), seed=settings.seed)
        self.sampler = IdentityBalancedSampler(self.dataset.labels, settings.p, settings.k,
                                               seed=settings.seed)
        self.loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=0,
                                 collate_fn=lambda items: collate(items, self.model.tokenize))
        if settings.cache_trunk:
            from models.cached_trunk import cached_trunk_loader

            self.loader = cached_trunk_loader(  # type: ignore[assignment]
                self.model, self.dataset, self.sampler, d, Path(settings.cache_dir),
                settings.feature_shift, settings.feature_erase_p, settings.seed)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, settings))
        for group in self.optimizer.param_groups:
            group["base_lr"] = group["lr"]
        self.total_steps = settings.max_steps or settings.epochs * len(self.sampler)
        self.epoch, self.step, self.best, self.elapsed = 0, 0, -1.0, 0.0
        self.history: list[dict[str, Any]] = []
        log.info("training %s on %d images / %d ids; %d steps/epoch", cfg.name,
                 len(self.dataset), classes, len(self.sampler))

    def resume(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.elapsed = state["epoch"], state["step"], state["elapsed"]
        self.best, self.history = state.get("best", -1.0), state.get("history", [])
        log.info("resumed from %s at epoch %d step %d", path, self.epoch, self.step)

    @property
    def limit(self) -> float:
        return self.settings.max_minutes * 60 or float("inf")

    def progress(self) -> float:
        """Fraction of the budget spent: steps, or training seconds when a time limit is set,
        whichever is further along (so a time-limited run still completes its schedule)."""
        return max(self.step / max(1, self.total_steps), self.elapsed / self.limit)

    def done(self) -> bool:
        return (self.epoch >= self.settings.epochs or self.elapsed >= self.limit
                or self.step >= self.total_steps)

    def fit(self) -> dict[str, Any]:
        with flush_denormals(self.settings.cache_trunk):
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        while not self.done():
            self.train_epoch()
            self.epoch += 1
            every = self.settings.eval_every
            final = self.done()
            if self.dev_records and ((every and self.epoch % every == 0) or final):
                self.evaluate()
            self.save()
        save_checkpoint(self.output / "model.pt", self.model, extra=self.extra())
        return {"epochs": self.epoch, "steps": self.step, "train_minutes": self.elapsed / 60,
                "best_dev_rank1": self.best, "history": self.history}

    def train_epoch(self) -> None:
        self.model.train()
        self.sampler.set_epoch(self.epoch)
        tick = time.time()
        for batch in self.loader:
            started = time.time()
            factor = cosine_with_warmup(self.step, self.progress(), self.settings.warmup_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            terms = self.model.training_losses(batch)
            loss = sum(terms.values())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.elapsed += time.time() - started
            self.step += 1
            if self.step % self.settings.log_every == 0:
                rate = self.settings.log_every / (time.time() - tick)
                tick = time.time()
                log.info("epoch %d step %d/%d lr×%.3f loss %.3f %s (%.2f it/s)", self.epoch,
                         self.step, self.total_steps, factor, loss.item(),
                         " ".join(f"{k}={v.item():.3f}" for k, v in terms.items()), rate)
            if self.elapsed >= self.limit or self.step >= self.total_steps:
                log.info("budget reached")
                break

    def evaluate(self) -> None:
        from models.evaluate import evaluate_model

        metrics = evaluate_model(self.model, self.dev_records)
        metrics.update(epoch=self.epoch, step=self.step)
        self.history.append(metrics)
        log.info("dev after epoch %d: %s", self.epoch, json.dumps(metrics))
        if metrics["rank1"] > self.best:
            self.best = float(metrics["rank1"])
            save_checkpoint(self.output / "best.pt", self.model, extra=self.extra())

    def extra(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "history": self.history,
                "train_settings": dataclasses.asdict(self.settings)}

    def save(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "elapsed": self.elapsed, "epoch": self.epoch,
                 "step": self.step, "best": self.best, "history": self.history}
        tmp = self.output / "last.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.output / "last.pt")


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train a model from a training config",
        description="Train any model family on a text-based person search dataset. The "
                    "training config names the model config, the data and the schedule; "
                    "checkpoints carry config, tokenizer, preprocessing and format version.")
    parser.add_argument("--config", type=Path, required=True, help="training config (YAML)")
    parser.add_argument("--output", type=Path, default=None, help="overrides `output`")
    parser.add_argument("--resume", type=Path, default=None,
                        help="a last.pt written by an earlier run of the same config")
    parser.add_argument("--epochs", type=int, default=None, help="overrides train.epochs")
    parser.add_argument("--max-steps", type=int, default=None, help="overrides train.max_steps")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="overrides train.max_minutes (stop and save after this long)")
    parser.set_defaults(func=run_train)
    return parser


def run_train(args: argparse.Namespace) -> int:
    data = load_train_config(args.config)
    train = dict(data.get("train") or {})
    if args.epochs is not None:
        train["epochs"] = args.epochs
    if args.max_steps is not None:
        train["max_steps"] = args.max_steps
    if args.max_minutes is not None:
        train["max_minutes"] = args.max_minutes
    settings = TrainSettings(**train)
    trainer = Trainer(data, settings, args.output or Path(data["output"]))
    if args.resume:
        trainer.resume(args.resume)
    summary = trainer.fit()
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_subcommand("train", register_cli, argv)


if __name__ == "__main__":
    raise SystemExit(main())
