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
import functools
import importlib
import json
import logging
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from models.cli_support import run_subcommand
from models.commands import AUTO_RESUME
from models.commands import register_train as register_cli
from models.config import read_config_file
from models.data.datasets import read_dataset, select_split
from models.data.sampler import IdentityBalancedSampler, RandomBatchSampler, ResumableBatches
from models.data.training_set import CaptionedImages, collate
from models.data.transforms import build_train_transform
from models.factory import create_model, parse_config, save_checkpoint, upgrade_legacy_keys
from models.preprocess import Preprocess
from models.torch_encoder import resolve_device

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    epochs: int = 10
    max_steps: int = 0  # stop after this many optimizer steps (0 = epochs decide)
    batching: str = "pk"  # "pk": P ids x K images, a random caption each; "pairs": every caption
    p: int = 8  # person ids per batch (pk)
    k: int = 4  # images per id (pk)
    batch_size: int = 64  # (image, caption) pairs per batch (pairs)
    lr: float = 1e-4  # pretrained backbone parameters
    head_lr: float = 5e-4  # everything else
    weight_decay: float = 0.02
    warmup_steps: int = 100
    warmup_fraction: float = 0.0  # > 0: warm-up over this fraction of all steps instead
    precision: str = "fp32"  # fp32 | bf16 (autocast on CPU or CUDA) | fp16 (CUDA, loss scaling)
    # NHWC convolutions: 1.3-1.5x faster EfficientNet steps on a CPU without AVX-512 (fp32)
    channels_last: bool = False
    device: str = "cpu"  # cpu | cuda | auto
    num_workers: int = 0  # DataLoader worker processes (augmentation off the training thread)
    max_minutes: float = 0.0  # stop (and save) after this long; 0 = no limit
    save_every_minutes: float = 10.0  # resume state written at least this often (and each epoch)
    eval_every: int = 1  # epochs between dev evaluations (0 = only at the end)
    eval_every_steps: int = 0  # > 0: also a dev evaluation before the first step and every n
    log_every: int = 20
    threads: int = 2
    seed: int = 0
    init_from: str = ""  # a tbps checkpoint whose weights start this run (see warm_start)
    # a tbps checkpoint of any family whose image / text backbones start this run's backbones
    # (heads fresh; see transfer_backbones)
    init_backbones_from: str = ""
    erase_p: float = 0.5  # random erasing probability of the pixel augmentation
    cache_trunk: bool = False  # train on cached frozen-trunk outputs (models/cached_trunk.py)
    cache_dir: str = "runs/cache"
    feature_shift: int = 1  # cached trunk: random shift by up to this many grid cells
    feature_erase_p: float = 0.5  # cached trunk: random erasing of a grid rectangle


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
        if settings.precision not in PRECISIONS:
            raise ValueError(f"train.precision {settings.precision!r}; known: {list(PRECISIONS)}")
        torch.manual_seed(settings.seed)
        torch.set_num_threads(settings.threads)
        self.device = resolve_device(settings.device)
        d = data["data"]
        self.model, self.dataset, self.dev_records = self.build(data)
        self.model.to(self.device)
        if settings.channels_last:
            self.model.to(memory_format=torch.channels_last)
        cfg = self.model.config
        self.batches = ResumableBatches(self._sampler())
        self.loader = self._loader(d)
        self.optimizer = torch.optim.AdamW(self.parameter_groups())
        for group in self.optimizer.param_groups:
            group["base_lr"] = group["lr"]
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=settings.precision == "fp16")
        self.steps_per_epoch = len(self.batches.sampler)
        self.total_steps = settings.max_steps or settings.epochs * self.steps_per_epoch
        self.warmup = (round(settings.warmup_fraction * self.total_steps)
                       if settings.warmup_fraction else settings.warmup_steps)
        self.epoch, self.step, self.best, self.elapsed = 0, 0, -1.0, 0.0
        self.history: list[dict[str, Any]] = []
        self.stop_requested, self.last_save = False, time.time()
        log.info("training %s on %d images / %d ids / %d items on %s (%s); %d steps/epoch",
                 cfg.name, len(self.dataset.records), len(self.dataset.classes),
                 len(self.dataset), self.device, settings.precision, self.steps_per_epoch)

    def build(self, data: dict[str, Any]) -> tuple[Any, Any, list[Any]]:
        """The model, the training set and the dev records of a caption training."""
        settings, d = self.settings, data["data"]
        records = read_dataset(d.get("dataset", "cuhk-pedes"), Path(d["root"]))
        train_records = select_split(records, d.get("split", "trainval-dev"))
        dev_records = select_split(records, d["dev_split"]) if d.get("dev_split") else []
        model = self.build_model(data, len({r.pid for r in train_records}))
        preprocess = Preprocess.of(model.config)
        dataset = CaptionedImages(train_records, preprocess, build_train_transform(
            preprocess, erase_p=settings.erase_p), seed=settings.seed,
            pairs=settings.batching == "pairs")
        return model, dataset, dev_records

    def build_model(self, data: dict[str, Any], num_classes: int) -> Any:
        """The configured model, started from the checkpoints the settings name."""
        model = create_model(model_config(data, num_classes))
        if self.settings.init_from:
            warm_start(model, Path(self.settings.init_from))
        if self.settings.init_backbones_from:
            transfer_backbones(model, Path(self.settings.init_backbones_from))
        return model

    def parameter_groups(self) -> list[dict[str, Any]]:
        return parameter_groups(self.model, self.settings)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named, weighted loss terms of one batch (the model's own training objective)."""
        return self.model.training_losses(batch)

    def _sampler(self) -> IdentityBalancedSampler | RandomBatchSampler:
        s = self.settings
        if s.batching == "pairs":
            return RandomBatchSampler(len(self.dataset), s.batch_size, seed=s.seed)
        if s.batching == "pk":
            return IdentityBalancedSampler(self.dataset.labels, s.p, s.k, seed=s.seed)
        raise ValueError(f"train.batching {s.batching!r}; known: pk, pairs")

    def _loader(self, d: dict[str, Any]) -> Any:
        s = self.settings
        if s.cache_trunk:
            from models.cached_trunk import cached_trunk_loader

            return cached_trunk_loader(self.model, self.dataset, self.batches, d,
                                       Path(s.cache_dir), s.feature_shift, s.feature_erase_p,
                                       s.seed)
        # Its own generator: starting an epoch's iterator then draws nothing from the global
        # RNG, so a run resumed mid-epoch continues on exactly the augmentation stream.
        return DataLoader(self.dataset, batch_sampler=self.batches, num_workers=s.num_workers,
                          collate_fn=functools.partial(collate, tokenize=self.model.tokenize),
                          generator=torch.Generator().manual_seed(s.seed))

    # ---- resumable state ----
    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue as if never stopped."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "elapsed": self.elapsed,
                "epoch": self.epoch, "step": self.step, "best": self.best,
                "history": self.history, "settings": dataclasses.asdict(self.settings),
                "rng": rng_state(), "caption_rng": self.dataset.rng.getstate()}

    def resume(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(upgrade_legacy_keys(self.model, state["model"]))
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.elapsed = state["epoch"], state["step"], state["elapsed"]
        self.best, self.history = state.get("best", -1.0), state.get("history", [])
        if "rng" in state:
            set_rng_state(state["rng"])
            self.dataset.rng.setstate(state["caption_rng"])
        self.restore(state)
        self.batches.skip = self.step - self.epoch * self.steps_per_epoch
        log.info("resumed from %s at epoch %d step %d (batch %d of the epoch)", path,
                 self.epoch, self.step, self.batches.skip)

    def restore(self, state: dict[str, Any]) -> None:
        """What a subclass adds to ``state()``, read back from the same loaded state."""

    def save(self) -> None:
        """Write ``last.pt`` atomically (a crash mid-write leaves the previous one)."""
        self.output.mkdir(parents=True, exist_ok=True)
        tmp = self.output / "last.pt.tmp"
        torch.save(self.state(), tmp)
        tmp.replace(self.output / "last.pt")
        self.last_save = time.time()

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
        with flush_denormals(self.settings.cache_trunk), stop_on_signals(self):
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        if self.dev_records and self.settings.eval_every_steps and self.step == 0:
            self.evaluate()  # the starting point of the curve
        while not self.done() and not self.stop_requested:
            self.train_epoch()
            if self.stop_requested:
                break
            self.epoch += 1
            every = self.settings.eval_every
            final = self.done()
            fresh = not self.history or self.history[-1]["step"] != self.step
            if self.dev_records and fresh and ((every and self.epoch % every == 0) or final):
                self.evaluate()
            self.save()
        if self.stop_requested:
            self.save()
            log.info("stopped at step %d; `tbps train --resume` continues", self.step)
        else:
            save_checkpoint(self.output / "model.pt", self.model, extra=self.extra())
        return {"epochs": self.epoch, "steps": self.step, "train_minutes": self.elapsed / 60,
                "best_dev_rank1": self.best, "history": self.history,
                "stopped": self.stop_requested}

    def train_epoch(self) -> None:
        self.model.train()
        self.batches.set_epoch(self.epoch)
        tick = time.time()
        for batch in self.loader:
            started = time.time()
            loss, terms, factor = self.train_step(batch)
            self.elapsed += time.time() - started
            self.step += 1
            if self.step % self.settings.log_every == 0:
                rate = self.settings.log_every / (time.time() - tick)
                tick = time.time()
                log.info("epoch %d step %d/%d lr×%.3f loss %.3f %s (%.2f it/s)", self.epoch,
                         self.step, self.total_steps, factor, loss,
                         " ".join(f"{k}={v:.3f}" for k, v in terms.items()), rate)
            every = self.settings.eval_every_steps
            if self.dev_records and every and self.step % every == 0:
                self.evaluate()
            if self.elapsed >= self.limit or self.step >= self.total_steps:
                log.info("budget reached")
                break
            if self.stop_requested:
                break
            if time.time() - self.last_save >= self.settings.save_every_minutes * 60:
                self.save()

    def train_step(self, batch: dict[str, Any]) -> tuple[float, dict[str, float], float]:
        """One optimizer step under the configured precision -> loss, terms, lr factor."""
        factor = cosine_with_warmup(self.step, self.progress(), self.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        batch = batch_to(batch, self.device)
        if self.settings.channels_last and batch["images"].ndim == 4:
            batch["images"] = batch["images"].contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[self.settings.precision]
        with torch.autocast(self.device.type, dtype=dtype or torch.float32,
                            enabled=dtype is not None):
            terms = self.losses(batch)
        loss = sum(t.float() for t in terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.item(), {k: v.item() for k, v in terms.items()}, factor

    def dev_metrics(self) -> dict[str, Any]:
        """Text-to-image metrics on the dev records (``rank1`` picks ``best.pt``)."""
        from models.evaluate import evaluate_model

        return dict(evaluate_model(self.model, self.dev_records, device=str(self.device)))

    def evaluate(self) -> None:
        metrics = self.dev_metrics()
        metrics.update(epoch=self.epoch, step=self.step, train_minutes=self.elapsed / 60)
        self.history.append(metrics)
        log.info("dev after epoch %d step %d: %s", self.epoch, self.step, json.dumps(metrics))
        if metrics["rank1"] > self.best:
            self.best = float(metrics["rank1"])
            save_checkpoint(self.output / "best.pt", self.model, extra=self.extra())

    def extra(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "history": self.history,
                "train_settings": dataclasses.asdict(self.settings)}


def warm_start(model: torch.nn.Module, path: Path) -> None:
    """Start from the weights of a tbps checkpoint of the same architecture (e.g. continue the
    bundled model with more of its backbones unfrozen). The checkpoint may lack training-only
    heads and backbone weights it took from the pip packages (the model built them the same
    way); any other missing or unexpected key is an error."""
    from models.factory import read_checkpoint

    state = upgrade_legacy_keys(model, read_checkpoint(path)["state_dict"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    optional = getattr(model, "is_optional_weight", lambda key: False)
    missing = [k for k in missing if not k.startswith(("visual.net.", "textual.net."))
               and not optional(k)]
    if missing or unexpected:
        raise ValueError(f"train.init_from {path}: not this architecture (missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]})")
    log.info("weights initialised from %s (%d tensors)", path, len(state))


BACKBONE_PREFIXES = ("visual.net.", "textual.net.")


def transfer_backbones(model: torch.nn.Module, path: Path) -> None:
    """Start the image and text backbones (``visual.net`` / ``textual.net``) from those of a
    tbps checkpoint of any family built on the same backbones (e.g. VFE-TPS or an ablation of
    VGSG from the bundled VGSG model); heads and projections keep their fresh initialisation.
    A tower this model does not have is left out.

    Refused, naming the keys: a shape that differs (another backbone), and a trained source
    weight that this model keeps frozen at its package values (it would be dropped from this
    run's checkpoints, which store only what the package cannot rebuild: freeze no more than
    the source trained).
    """
    from models.factory import read_checkpoint

    target = model.state_dict()
    # a tower this model lacks (SSAN's text side is its own bi-LSTM) is not transferred
    towers = tuple(p for p in BACKBONE_PREFIXES if any(k.startswith(p) for k in target))
    source = read_checkpoint(path)["state_dict"]
    source = {k: v for k, v in upgrade_legacy_keys(model, source).items()
              if k.startswith(towers)}
    optional = getattr(model, "is_optional_weight", lambda key: False)
    absent = [k for k in source if k not in target]
    shapes = [k for k in source if k in target and target[k].shape != source[k].shape]
    frozen = [k for k in source if k in target and optional(k)]
    if absent or shapes or frozen or not source:
        raise ValueError(f"train.init_backbones_from {path}: backbones do not transfer "
                         f"(not in this model {absent[:3]}, other shapes {shapes[:3]}, frozen "
                         f"here {frozen[:3]}, backbone tensors in the checkpoint {len(source)})")
    model.load_state_dict(source, strict=False)
    log.info("backbones %s initialised from %s (%d tensors; heads fresh)", towers, path,
             len(source))


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    if device.type == "cpu":
        return batch
    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device, non_blocking=True)
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        return value
    return {k: move(v) for k, v in batch.items()}


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGTERM / SIGINT ask the trainer to stop after the current step and save its state
    (``tbps train --resume`` then continues); the previous handlers are restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    def request(signum: int, _frame: Any) -> None:
        log.warning("signal %d: stopping after this step", signum)
        trainer.stop_requested = True
    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """``a.b.c=VALUE``: set ``data["a"]["b"]["c"]`` (intermediate mappings created) to the YAML
    value of VALUE."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set {assignment!r}: expected KEY=VALUE")
    *parents, leaf = key.split(".")
    node = data
    for name in parents:
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            raise SystemExit(f"--set {assignment!r}: {name!r} is not a mapping")
        node = child
    node[leaf] = yaml.safe_load(raw)


# training objectives beside the family's own caption training: each module registers its
# trainer with ``register_objective`` when imported (as model families do in models.factory)
OBJECTIVE_MODULES = {"reid": "models.reid"}
TRAINERS: dict[str, type[Trainer]] = {"captions": Trainer}


def register_objective(name: str) -> Any:
    def register(cls: type[Trainer]) -> type[Trainer]:
        TRAINERS[name] = cls
        return cls
    return register


def trainer_class(objective: str) -> type[Trainer]:
    """``objective`` of a training config: "captions" (the family's own text-image training)
    or "reid" (the image tower on person-labelled images: ``models/reid.py``)."""
    # The registry of the imported module, also when this file runs as ``python -m
    # models.train`` (``__main__``): objective modules register into ``models.train``.
    trainers = importlib.import_module("models.train").TRAINERS
    if objective not in trainers and objective in OBJECTIVE_MODULES:
        importlib.import_module(OBJECTIVE_MODULES[objective])
    if objective not in trainers:
        known = ", ".join(sorted({*trainers, *OBJECTIVE_MODULES}))
        raise SystemExit(f"objective {objective!r}; known: {known}")
    return trainers[objective]


def run_train(args: argparse.Namespace) -> int:
    data = load_train_config(args.config)
    for assignment in args.overrides:
        apply_override(data, assignment)
    train = dict(data.get("train") or {})
    if args.epochs is not None:
        train["epochs"] = args.epochs
    if args.max_steps is not None:
        train["max_steps"] = args.max_steps
    if args.max_minutes is not None:
        train["max_minutes"] = args.max_minutes
    settings = TrainSettings(**train)
    output = args.output or Path(data["output"])
    trainer = trainer_class(data.get("objective", "captions"))(data, settings, output)
    if args.resume:
        path = output / "last.pt" if args.resume == AUTO_RESUME else args.resume
        if not path.is_file():
            raise SystemExit(f"--resume: no run state at {path} (nothing to resume)")
        trainer.resume(path)
    summary = trainer.fit()
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_subcommand("train", register_cli, argv)


if __name__ == "__main__":
    raise SystemExit(main())
