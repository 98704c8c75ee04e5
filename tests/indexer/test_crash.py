"""Kill a real indexing process part-way: the live index keeps serving, no crop is lost, and
the rerun resumes from the last finished shard."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from indexer.backends.faiss_store import IndexStore
from indexer.pipeline import ReadOptions
from service.jobs.index_jobs import build_full
from service.jobs.ingest import ingest_folder
from service.store import crud
from service.store.db import session_scope
from service.store.orm import CropStatus
from tests.conftest import make_image

# A full build in its own process with the tiny model, slowed to ~0.1 s per batch of 4.
DRIVER = """
import sys, time
from pathlib import Path
from service.jobs.index_jobs import build_full
from indexer.pipeline import ReadOptions
from models.factory import create_model
from models.torch_encoder import TorchEncoder
from service.store.db import session_scope

url, crops, index = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
encoder = TorchEncoder(create_model("tiny-clip"), "untrained-tiny-clip-seed0", device="cpu")
encode = encoder.encode_image
encoder.encode_image = lambda x: (time.sleep(0.1), encode(x))[1]
with session_scope(url) as session:
    build_full(session, encoder, crops, index, shard_size=4,
               options=ReadOptions(batch_size=4, workers=1))
"""


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_killed_full_build_keeps_the_live_index_and_resumes(migrated_settings, tmp_path,
                                                            tiny_encoder):
    s = migrated_settings
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for i in range(48):
        (gallery / f"p{i}.png").write_bytes(make_image(i))
    with session_scope(s.resolved_database_url) as session:
        ingest_folder(session, s, gallery)
        first = build_full(session, tiny_encoder, s.resolved_crops_dir, s.resolved_index_dir,
                           options=ReadOptions(workers=0))
    store = IndexStore(s.resolved_index_dir)
    live_before = store.current_version()
    query = store.load().vectors([5])

    proc = subprocess.Popen([sys.executable, "-c", DRIVER, s.resolved_database_url,
                             str(s.resolved_crops_dir), str(s.resolved_index_dir)],
                            env={**os.environ, "PYTHONPATH": os.getcwd()},
                            stderr=subprocess.PIPE)
    shards = s.resolved_index_dir / "versions"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob(".building-*/shard-*"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(shards.glob(".building-*/shard-*")))
    assert 3 <= finished < 12  # killed part-way

    # the live index still serves, unchanged, and the database lost nothing
    assert store.current_version() == live_before
    _, ids = store.load().search(query, 1)
    assert ids[0, 0] == 5
    with session_scope(s.resolved_database_url) as session:
        assert crud.count_crops(session, statuses=[CropStatus.indexed]) == 48

    # the rerun resumes from the finished shards and indexes every crop
    with session_scope(s.resolved_database_url) as session:
        report = build_full(session, tiny_encoder, s.resolved_crops_dir, s.resolved_index_dir,
                            options=ReadOptions(workers=0))
    assert report.resumed == finished * 4 and report.indexed == first.indexed == 48
    live = store.load()
    assert live.version != live_before and store.previous_version() == live_before
    np.testing.assert_array_equal(live.live_ids(), np.arange(1, 49))
    np.testing.assert_allclose(live.vectors([5]), query, atol=1e-6)  # same model, same vector
    assert not list(shards.glob(".building-*")) and not list(shards.glob(".staging-*"))
