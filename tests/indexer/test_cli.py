"""`tbps index`: progress with items/s and ETA, a summary, --check, --rollback.
(--full, incremental updates and rollback themselves are tested in test_jobs.)"""

from service.config import get_settings
from tests.conftest import make_image


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
