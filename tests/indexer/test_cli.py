"""`tbps index`: progress with items/s and ETA, a summary, --check, --rollback.
(--full, incremental updates and rollback themselves are tested in test_jobs.)"""

import numpy as np
import pytest

from service.cli.main import main
from service.config import get_settings
from tests.conftest import make_image
from tests.local_ray import local_ray


@pytest.fixture
def tbps(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TBPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TBPS_DEVICE", "cpu")
    get_settings.cache_clear()

    def run(*args: str) -> tuple[int, str]:
        code = main(list(args))
        return code, capsys.readouterr().out

    yield run
    get_settings.cache_clear()


def test_index_commands_print_progress_and_summaries(tbps, image_folder):
    assert tbps("ingest", str(image_folder))[0] == 0
    code, out = tbps("index")
    assert code == 0 and "encoding crops: 6/6 (" in out and "/s, ETA" in out
    assert "(full build): 6 crops indexed, 0 failed" in out and "crops/s)" in out
    code, out = tbps("index", "--check")
    assert code == 0 and "database and index agree" in out


def test_rollback_without_a_previous_version_says_so(tbps):
    code, _ = tbps("index", "--rollback")
    assert code == 1


def test_index_applies_the_image_limit_settings(tbps, image_folder, monkeypatch):
    """Crops ingested under the default limits; TBPS_MAX_IMAGE_PIXELS lowered below one of
    them: `tbps index` reports that crop failed with the setting's limit, indexes the rest."""
    (image_folder / "cam-b" / "big.png").write_bytes(make_image(7, size=(96, 192)))
    assert tbps("ingest", str(image_folder))[0] == 0
    monkeypatch.setenv("TBPS_MAX_IMAGE_PIXELS", str(48 * 96))
    monkeypatch.setenv("TBPS_ENGINE", "torch")
    get_settings.cache_clear()
    code, out = tbps("index")
    assert code == 0 and "6 crops indexed, 1 failed" in out
    assert "failed: oversized: 96x192 pixels; the limit is 4608 pixels" in out


@pytest.mark.slow  # starts a Ray cluster
@pytest.mark.xdist_group("ray")  # one local Ray at a time (tests/parallel.py)
def test_index_on_ray_records_the_build_and_its_vectors_equal_the_local_indexers(
        tbps, image_folder):
    """`tbps index --engine ray` on a local Ray started here (2 CPUs), then a local full build
    of the same gallery: the two versions hold the same vectors (both stored the same way)."""
    pytest.importorskip("ray", reason="the scale extra")
    from service.jobs.index_backend import backend_from_settings
    from service.store.db import session_scope
    from service.store.orm import Crop, CropStatus, IndexStatus, IndexVersion

    assert tbps("ingest", str(image_folder))[0] == 0
    assert tbps("index", "--address", "x")[0] == 2  # --address without --engine ray
    with local_ray():
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
