"""The live index's vectors against the local indexer's, on a sample of its crops: after
`tbps index --engine ray`, encode a sample with the local pipeline (``indexer.pipeline``) and
compare with what the index stores (FAISS keeps float16: compared both raw and after the same
cast). Settings from the TBPS_* environment, as the CLI:

    TBPS_DATA_DIR=bench/.work/demo .venv/bin/python -m bench.ray_vs_local --sample 200
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from indexer.pipeline import ReadOptions, StageTimes, encoded_batches
from models.factory import load_encoder
from service.config import get_settings
from service.jobs.index_backend import backend_from_settings
from service.jobs.index_records import indexable_items
from service.store.db import session_scope


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=int, default=200)
    args = ap.parse_args()
    settings = get_settings()
    live = backend_from_settings(settings).open()
    with session_scope(settings.resolved_database_url) as session:
        items = dict(indexable_items(session, settings.resolved_crops_dir))
    ids = np.random.default_rng(0).choice(live.live_ids(), args.sample, replace=False)
    encoder = load_encoder(**settings.encoder_options)
    local = {}
    for batch, vectors in encoded_batches(encoder, [(int(i), items[int(i)]) for i in ids],
                                          ReadOptions(workers=0), StageTimes()):
        local |= dict(zip(batch.ids, vectors, strict=True))
    mine = np.stack([local[int(i)] for i in ids])  # (S, D) float32
    stored = live.vectors(ids)  # (S, D) as the index keeps them
    cast = mine.astype(live.manifest.vectors_dtype).astype(np.float32)
    print(json.dumps({"version": live.version, "count": live.count, "sample": len(ids),
                      "stored_dtype": live.manifest.vectors_dtype,
                      "max_abs_diff": float(np.abs(stored - mine).max()),
                      "max_abs_diff_same_dtype": float(np.abs(stored - cast).max())}))


if __name__ == "__main__":
    main()
