"""Person re-identification training of a model's image tower on person-labelled images without
captions (``../shared/data/cuhk-pedes-reid``), as the strong re-ID baseline does it (Luo et al.,
"Bag of Tricks and a Strong Baseline for Deep Person Re-Identification", CVPR-W 2019):

- P x K batches (``IdentityBalancedSampler``), flip / pad-and-crop / random erasing;
- for each image feature the tower exports (the global one and the concatenated stripes), an ID
  loss with label smoothing on its BNNeck copy (``IdentityClassifier``: batch norm, then a
  bias-free classifier) and a batch-hard triplet loss on the feature itself;
- linear warm-up, then cosine decay; bfloat16 autocast; resumable (``tbps train --resume``).

A training config with ``objective: reid`` selects it; the checkpoints it writes are ordinary
tbps checkpoints of the configured family (the text tower untouched), so the caption training
starts from one with ``train.init_from`` or ``train.init_backbones_from``. Dev metrics are
image-to-image: every dev image queries the other dev images.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from models.data.datasets import Record, read_dataset, remap_pids, select_split
from models.data.transforms import build_train_transform, load_resized
from models.losses.identity import IdentityClassifier
from models.losses.triplet import batch_hard_triplet_loss
from models.preprocess import Preprocess
from models.train import Trainer, parameter_groups, register_objective

log = logging.getLogger(__name__)


@dataclass
class ReidLossSettings:
    """``data.reid`` of a training config: the weights of the two terms and the triplet margin
    (0 or less: the soft margin)."""

    id: float = 1.0
    triplet: float = 1.0
    margin: float = 0.3
    label_smoothing: float = 0.1


class PersonImages(Dataset):
    """Every image decoded and resized once into one (N, 3, H, W) uint8 array, kept in
    ``cache_dir`` under a key of the file list and the preprocessing (so a resumed run does not
    decode again); ``transform`` augments each access. An item is ``(image, class index)``."""

    def __init__(self, records: Sequence[Record], preprocess: Preprocess,
                 transform: Callable[[torch.Tensor], torch.Tensor], cache_dir: Path | None,
                 seed: int = 0, workers: int = 2) -> None:
        self.records = list(records)
        self.classes = remap_pids(self.records)
        self.labels = [self.classes[r.pid] for r in self.records]
        self.transform = transform
        self.rng = random.Random(seed)  # part of the trainer's resume state
        self.pixels = decoded_pixels(self.records, preprocess, cache_dir, workers)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(torch.from_numpy(np.array(self.pixels[index]))), self.labels[index]


def decoded_pixels(records: Sequence[Record], preprocess: Preprocess, cache_dir: Path | None,
                   workers: int) -> np.ndarray:
    """(N, 3, H, W) uint8 of the records' images, from the cache when it holds them."""
    key = hashlib.sha256(json.dumps([preprocess.to_dict(), [str(r.image_path) for r in records]]
                                    ).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"pixels-{key}.npy" if cache_dir else None
    if path is not None and path.is_file():
        log.info("pixels of %d images from %s", len(records), path)
        return np.load(path, mmap_mode="r")
    log.info("decoding %d images at %s", len(records), preprocess.image_size)
    paths = [r.image_path for r in records]
    decode = functools.partial(_decode, preprocess=preprocess)
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            arrays = pool.map(decode, paths, chunksize=256)
    else:
        arrays = [decode(p) for p in paths]
    pixels = np.stack(arrays)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, pixels)
        tmp.replace(path)
    return pixels


def _decode(path: Path, preprocess: Preprocess) -> np.ndarray:
    return load_resized(path, preprocess).numpy()


def collate_images(items: list[tuple[torch.Tensor, int]]) -> dict[str, Any]:
    images, labels = zip(*items, strict=True)
    return {"images": torch.stack(images), "pids": torch.tensor(labels, dtype=torch.int64)}


class ReidHead(nn.Module):
    """One BNNeck classifier per exported image feature: ``global`` (D) and, for a model with
    stripes, ``local`` (the K stripes concatenated, K*D). Training only: never in a model's
    checkpoint, only in the resume state."""

    def __init__(self, dims: dict[str, int], num_classes: int, label_smoothing: float) -> None:
        super().__init__()
        self.classifiers = nn.ModuleDict({name: IdentityClassifier(dim, num_classes,
                                                                   label_smoothing)
                                          for name, dim in dims.items()})


def image_embeddings(model: Any, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The image tower's features before normalisation: ``global`` (B, D) and, when the model
    has stripes, ``local`` (B, K*D)."""
    pooled, local, *_ = model.encode_image_parts(images)
    out = {"global": pooled}
    if local is not None:
        out["local"] = local.flatten(1)
    return out


def reid_losses(features: dict[str, torch.Tensor], labels: torch.Tensor, head: ReidHead,
                cfg: ReidLossSettings) -> dict[str, torch.Tensor]:
    """``id_<name>``: cross-entropy with label smoothing of the BNNeck copy; ``triplet_<name>``:
    batch-hard triplet on the feature itself; each weighted."""
    terms: dict[str, torch.Tensor] = {}
    margin = cfg.margin if cfg.margin > 0 else None
    for name, feature in features.items():
        if cfg.id:
            terms[f"id_{name}"] = cfg.id * head.classifiers[name](feature, labels)
        if cfg.triplet:
            terms[f"triplet_{name}"] = cfg.triplet * batch_hard_triplet_loss(
                feature, labels, margin)
    return terms


@register_objective("reid")
class ReidTrainer(Trainer):
    """The generic trainer on person-labelled images: same schedule, precision, resume state,
    signals and checkpoints; its own data, head, loss and (image-to-image) dev metrics."""

    def build(self, data: dict[str, Any]) -> tuple[Any, Any, list[Any]]:
        settings, d = self.settings, data["data"]
        records = select_split(read_dataset(d.get("dataset", "cuhk-pedes-reid"),
                                            Path(d["root"])), d.get("split", "train"))
        dev_records: list[Record] = []
        if d.get("dev_split"):
            dev_records = select_split(read_dataset(d.get("dev_dataset", "cuhk-pedes"),
                                                    Path(d["dev_root"])), d["dev_split"])
        model = self.build_model(data, 0)  # no caption-training ID classifiers
        preprocess = Preprocess.of(model.config)
        dataset = PersonImages(records, preprocess, build_train_transform(
            preprocess, erase_p=settings.erase_p), Path(settings.cache_dir),
            seed=settings.seed, workers=max(1, settings.threads))
        self.loss_settings = ReidLossSettings(**(d.get("reid") or {}))
        with torch.no_grad():
            was = model.training
            model.eval()
            probe = image_embeddings(model, torch.zeros(2, 3, *model.config.image_size))
            model.train(was)
        self.head = ReidHead({k: v.shape[1] for k, v in probe.items()}, len(dataset.classes),
                             self.loss_settings.label_smoothing).to(self.device)
        return model, dataset, dev_records

    def parameter_groups(self) -> list[dict[str, Any]]:
        groups = parameter_groups(self.model, self.settings)
        s = self.settings
        decay = [p for p in self.head.parameters() if p.requires_grad and p.ndim >= 2]
        other = [p for p in self.head.parameters() if p.requires_grad and p.ndim < 2]
        return [*groups, {"params": decay, "lr": s.head_lr, "weight_decay": s.weight_decay},
                {"params": other, "lr": s.head_lr, "weight_decay": 0.0}]

    def _loader(self, d: dict[str, Any]) -> Any:
        return DataLoader(self.dataset, batch_sampler=self.batches,
                          num_workers=self.settings.num_workers, collate_fn=collate_images,
                          generator=torch.Generator().manual_seed(self.settings.seed))

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        self.head.train(self.model.training)
        return reid_losses(image_embeddings(self.model, batch["images"]), batch["pids"],
                           self.head, self.loss_settings)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "reid_head": self.head.state_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["reid_head"])

    def dev_metrics(self) -> dict[str, Any]:
        """Image-to-image metrics on the dev records (``rank1`` picks ``best.pt``)."""
        return evaluate_reid(self.model, self.dev_records, str(self.device))


def evaluate_reid(model: Any, records: Sequence[Record], device: str = "cpu",
                  batch_size: int = 64) -> dict[str, Any]:
    """Image-to-image metrics of an in-memory model on ``records``: the exported vector, and
    its global part alone (``global_*``)."""
    from models.evaluate import encode_images, image_to_image_metrics
    from models.torch_encoder import TorchEncoder

    was_training = model.training
    encoder = TorchEncoder(model, "in-training", device=device, batch_size=batch_size)
    try:
        features = encode_images(encoder, records, batch_size)
    finally:
        model.train(was_training)
    pids = np.asarray([r.pid for r in records])
    metrics: dict[str, Any] = dict(image_to_image_metrics(features, pids))
    width = model.parts()[0].stop
    glob = features[:, :width] / np.linalg.norm(features[:, :width], axis=1, keepdims=True)
    for key, value in image_to_image_metrics(glob, pids).items():
        if key.startswith(("rank", "mAP", "mINP")):
            metrics[f"global_{key}"] = value
    return metrics
