"""Helpers shared by the VFE-TPS and SSAN tests: a tiny batch, which parameters one loss term
reaches, and indexing + searching with a family's checkpoint through the unchanged indexer and
service layer."""

from __future__ import annotations

from pathlib import Path

import torch

from service.config import Settings

CAPTIONS = ["a man in a red coat and blue jeans", "a man in a red jacket",
            "a woman with a black bag", "a woman carrying a black handbag"]


def tiny_batch(model) -> dict:
    """Four images (two people, two images each) and their captions."""
    torch.manual_seed(1)
    return {"images": torch.randn(4, 3, *model.config.image_size),
            "tokens": model.tokenize(CAPTIONS), "pids": torch.tensor([0, 0, 1, 1])}


def reached_by(model, term: str) -> set[str]:
    """Names of the parameters that get a non-zero gradient from one named loss term."""
    model.zero_grad(set_to_none=True)
    model.train()
    model.training_losses(tiny_batch(model))[term].backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def assert_reaches(names: set[str], reaches, not_reaches) -> None:
    for prefix in reaches:
        assert any(n.startswith(prefix) for n in names), prefix
    for prefix in not_reaches:
        assert not any(n.startswith(prefix) for n in names), prefix


def index_and_search(checkpoint: Path, settings: Settings, folder: Path, description: str):
    """``load_encoder`` -> ``indexer.jobs.build_full`` -> ``service.search.engine.SearchEngine``.

    Returns (build report, search result, encoder) on a fresh SQLite database.
    """
    from models.factory import load_encoder
    from service.jobs.index_jobs import build_full
    from service.jobs.ingest import ingest_folder
    from service.search.engine import SearchEngine, SearchQuery
    from service.store.db import migrate, session_scope

    url = f"sqlite:///{settings.data_dir / 'roundtrip.sqlite3'}"
    migrate(url)
    encoder = load_encoder(checkpoint, device="cpu")
    with session_scope(url) as session:
        ingest_folder(session, settings, folder)
    with session_scope(url) as session:
        report = build_full(session, encoder, settings.resolved_crops_dir,
                            settings.resolved_index_dir)
    engine = SearchEngine(encoder, settings.resolved_index_dir, settings.data_dir)
    with session_scope(url) as session:
        result = engine.search(session, SearchQuery(description=description, top_k=3))
    return report, result, encoder


def train_and_eval(tmp_path: Path, model_config: dict, capsys) -> tuple[dict, dict]:
    """`tbps train` (the generic trainer, one epoch) then `tbps eval --json` on a tiny
    CUHK-PEDES-shaped fixture. Returns (checkpoint payload, eval metrics)."""
    import json

    import yaml

    from models import evaluate, train
    from models.factory import read_checkpoint
    from tests.models.conftest import write_cuhk_fixture

    root = write_cuhk_fixture(tmp_path / "data", {"train": [1, 2, 3, 4], "val": [7, 8, 9]})
    config = {"model": model_config, "data": {"dataset": "cuhk-pedes", "root": str(root),
                                              "split": "train", "dev_split": "val"},
              "train": {"epochs": 1, "p": 2, "k": 2, "warmup_steps": 1, "threads": 1},
              "output": str(tmp_path / "run")}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    assert train.main(["--config", str(path)]) == 0
    checkpoint = tmp_path / "run" / "model.pt"
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(checkpoint), "--root", str(root), "--split", "val",
                          "--json"]) == 0
    return read_checkpoint(checkpoint), json.loads(capsys.readouterr().out)
