"""The Ray Data indexer on a local Ray started here (one for the module): its vectors are the
local indexer's, bad crops are reported (not indexed), and the build lands in a backend,
published; `tbps index --engine ray` records its build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.pipeline import ReadOptions, StageTimes, encoded_batches
from indexer.ray_index import CropItem, build_with_ray, encode_dataset, encoded_rows
from tests.conftest import make_image
from tests.local_ray import local_ray as start_local_ray

ray = pytest.importorskip("ray", reason="the scale extra")


@pytest.fixture(scope="module")
def local_ray():
    with start_local_ray():
        yield


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.factory import create_model, save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, create_model("tiny-clip"))
    return path


@pytest.fixture
def crops(tmp_path: Path) -> list[CropItem]:
    items = []
    for i in range(10):
        path = tmp_path / f"c{i}.png"
        path.write_bytes(make_image(i))
        items.append(CropItem(100 + i, path, {"camera_id": i % 3, "ts": 1.7e9 + i,
                                                     "height": 96}))
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(make_image(50, fmt="JPEG")[:200])
    return items + [CropItem(999, bad)]


def options(checkpoint: Path) -> dict:
    return {"checkpoint": checkpoint, "device": "cpu", "engine": "torch"}


def local_vectors(checkpoint: Path, crops: list[CropItem]) -> dict[int, np.ndarray]:
    from models.factory import load_encoder

    encoder = load_encoder(**options(checkpoint))
    items = [(c.id, c.path) for c in crops]
    out = {}
    for batch, vectors in encoded_batches(encoder, items, ReadOptions(workers=0), StageTimes()):
        out |= dict(zip(batch.ids, vectors, strict=True))
    return out


@pytest.mark.slow
def test_ray_vectors_equal_the_local_indexers(local_ray, tiny_checkpoint, crops) -> None:
    dataset = encode_dataset(crops, options(tiny_checkpoint), batch_size=4, actors=2)
    seen: dict[int, np.ndarray] = {}
    failures = []
    for rows, failed in encoded_rows(dataset.materialize(), total=len(crops)):
        seen |= dict(zip(rows.ids.tolist(), rows.vectors, strict=True))
        failures += failed
        assert set(rows.attributes["camera_id"].tolist()) <= {0, 1, 2}
        assert set(rows.attributes["height"].tolist()) == {96}
    local = local_vectors(tiny_checkpoint, crops)
    assert sorted(seen) == sorted(local) == list(range(100, 110))
    for crop_id, vector in local.items():
        np.testing.assert_allclose(seen[crop_id], vector, rtol=0, atol=1e-5)
    assert [f[0] for f in failures] == [999]


@pytest.mark.slow
def test_build_with_ray_publishes_a_searchable_version(local_ray, tiny_checkpoint, crops,
                                                       index_backend) -> None:
    from models.factory import load_encoder

    spec = load_encoder(**options(tiny_checkpoint)).spec.to_dict()
    seen = []
    report = build_with_ray(index_backend, crops, options(tiny_checkpoint), spec, batch_size=4,
                            actors=1, progress=lambda done, total: seen.append((done, total)))
    assert report.indexed == 10 and [f[0] for f in report.failed] == [999]
    assert seen[-1] == (11, 11)
    assert index_backend.current_version().startswith(report.version)
    assert index_backend.check() == []
    view = index_backend.open()
    probe = view.vectors(np.array([104]))
    assert index_backend.search(probe, 1).ids[0, 0] == 104


def test_the_actor_applies_the_image_limits_it_is_given(tiny_checkpoint, crops) -> None:
    """The actor's reader is the local one: the same ``ImageLimits`` refuse the same crops."""
    from indexer.limits import ImageLimits
    from indexer.ray_index import EncodeCrops

    good = crops[:3]
    batch = {"id": np.array([c.id for c in good]), "path": np.array([str(c.path) for c in good]),
             "camera_id": np.array([c.attributes["camera_id"] for c in good]),
             "ts": np.array([c.attributes["ts"] for c in good])}
    out = EncodeCrops(options(tiny_checkpoint), ImageLimits(max_pixels=48 * 96 - 1))(batch)
    assert sorted(out["id"].tolist()) == [100, 101, 102]
    assert all(str(e).startswith("oversized: 48x96 pixels") for e in out["error"])
    out = EncodeCrops(options(tiny_checkpoint))(batch)
    assert list(out["error"]) == ["", "", ""] and out["vector"].shape[0] == 3


@pytest.mark.slow
def test_index_on_ray_records_the_build_and_its_vectors_equal_the_local_indexers(
        local_ray, tbps, image_folder):
    """`tbps index --engine ray` on the module's local Ray (2 CPUs), then a local full build
    of the same gallery: the two versions hold the same vectors (both stored the same way)."""
    from service.config import get_settings
    from service.jobs.index_backend import backend_from_settings
    from service.store.db import session_scope
    from service.store.orm import Crop, CropStatus, IndexStatus, IndexVersion

    assert tbps("ingest", str(image_folder))[0] == 0
    assert tbps("index", "--address", "x")[0] == 2  # --address without --engine ray
    code, out = tbps("index", "--engine", "ray", "--workers", "1", "--batch-size", "4")
    assert code == 0 and "encoding crops on Ray: 6/6 (" in out, out
    assert "(full build): 6 crops indexed, 0 failed" in out
    settings = get_settings()
    backend = backend_from_settings(settings)
    on_ray = backend.current_version()
    with session_scope(settings.resolved_database_url) as session:
        statuses = sorted(c.status for c in session.query(Crop))
        live = session.query(IndexVersion).filter_by(status=IndexStatus.live).one()
        assert (live.version, live.count) == (on_ray, 6)
    assert statuses == [CropStatus.indexed] * 6
    assert tbps("index", "--full")[0] == 0
    ray_view, local_view = backend.open(on_ray), backend.open()
    assert local_view.version != on_ray
    ids = local_view.live_ids()
    np.testing.assert_array_equal(ray_view.live_ids(), ids)
    np.testing.assert_allclose(ray_view.vectors(ids), local_view.vectors(ids), rtol=0, atol=1e-3)
