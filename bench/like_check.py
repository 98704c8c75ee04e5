"""Search by example over HTTP: is the example's person found elsewhere in the gallery?

Issue 26's bar, checked on any CUHK-PEDES-style root and split: ``--n`` persons of ``--split``
are ingested with their person ids (``tbps ingest --persons``), indexed (``tbps index``) and
served (``tbps serve``) from a fresh data dir, each a subprocess as a user runs it. Then, over
HTTP, for ``--examples`` crops (at most one per person, persons with >= 2 crops only):

- ``POST /search {"like": [id]}``, ``--pages`` pages of ``--page-size`` hits (``next_cursor``):
  is the first hit the example's person (rank-1), one of the first five (rank-5), and is the
  example itself ever among the hits (it must never be);
- ``POST /search {"description": <one of the image's captions>, "like": [id]}``: rank-1;
- once: an unknown crop id and a deleted one (``DELETE /admin/crops/{id}``) in ``like``: each
  must be a 404 naming the id.

    python -m bench.like_check --root ../shared/data/cuhk-pedes --split dev \
        --checkpoint models/checkpoints/default.pt

Prints a table, writes bench/results/like_check_<split>_<n>.json (machine, checkpoint sha256,
command, every example's outcome), and exits 1 when the bar fails: rank-1 below
``--min-rank1`` (60 %), an example returned, a description + like request refused, or an
unknown or deleted id not a 404 naming it. The gallery (symlinks to the dataset's images), the
persons JSON and the data dir live in a temporary folder, removed after a passing run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.envinfo import environment, format_table, machine_line
from bench.http_bench import start_server

ROOT = Path(__file__).resolve().parent.parent
TBPS = [sys.executable, "-m", "service.cli"]
KEY_NAME = "like-check"


# -- the pure parts (tests/test_like_check.py) ------------------------------------------------

def pick_persons(pids: Iterable[int], n: int, seed: int) -> list[int]:
    """``n`` distinct person ids drawn with ``seed`` from ``pids``, in ascending order."""
    pool = sorted(set(pids))
    if n > len(pool):
        raise ValueError(f"asked for {n} persons; the split has {len(pool)}")
    return sorted(random.Random(seed).sample(pool, n))


def persons_entries(records: Sequence[Any], imgs: Path, pids: Iterable[int]) -> list[dict]:
    """The ``tbps ingest --persons`` file (reid_raw.json's shape): ``{id, file_path}`` for
    every record of ``pids``, ``file_path`` relative to the dataset's image folder ``imgs``."""
    keep = set(pids)
    return [{"id": r.pid, "file_path": Path(r.image_path).relative_to(imgs).as_posix()}
            for r in records if r.pid in keep]


def pick_examples(crops: Sequence[dict], n: int, seed: int) -> list[dict]:
    """``n`` example crops (``{crop_id, person_id, ...}`` as GET /admin/crops lists them), one
    per person, drawn only from persons with at least two crops (so another crop of the same
    person exists to be found); fewer when fewer persons qualify."""
    by_person: dict[str, list[dict]] = defaultdict(list)
    for crop in crops:
        if crop.get("person_id") is not None:
            by_person[str(crop["person_id"])].append(crop)
    eligible = sorted(p for p, cs in by_person.items() if len(cs) >= 2)
    rng = random.Random(seed)
    chosen = rng.sample(eligible, min(n, len(eligible)))
    return [rng.choice(sorted(by_person[p], key=lambda c: c["crop_id"])) for p in chosen]


def first_same_person_rank(hits: Sequence[dict], person_id: str) -> int | None:
    """1-based rank of the first hit whose ``person_id`` is ``person_id``; None if none."""
    for rank, hit in enumerate(hits, 1):
        if hit.get("person_id") is not None and str(hit["person_id"]) == str(person_id):
            return rank
    return None


def summarize(outcomes: Sequence[dict]) -> dict[str, Any]:
    """Rank-1/rank-5 (percent of examples), how many examples came back among their own hits,
    and the description + like rank-1 and refusals."""
    n = len(outcomes)

    def pct(flags: Iterable[bool]) -> float | None:
        return round(100 * sum(flags) / n, 2) if n else None

    return {"examples": n,
            "rank1_pct": pct(o["rank"] == 1 for o in outcomes),
            "rank5_pct": pct(o["rank"] is not None and o["rank"] <= 5 for o in outcomes),
            "example_returned": sum(o["example_returned"] for o in outcomes),
            "desc_like_rank1_pct": pct(o["desc_like_rank"] == 1 for o in outcomes),
            "desc_like_refused": sum(o["desc_like_status"] != 200 for o in outcomes)}


def bar_failures(summary: dict, refusals: dict[str, dict], min_rank1: float) -> list[str]:
    """Why issue 26's bar fails (empty: it holds)."""
    failed = []
    if not summary["examples"]:
        failed.append("no example crops (no person with two crops)")
    elif summary["rank1_pct"] < min_rank1:
        failed.append(f"rank-1 {summary['rank1_pct']} % < {min_rank1} %")
    if summary["example_returned"]:
        failed.append(f"{summary['example_returned']} examples among their own hits")
    if summary["desc_like_refused"]:
        failed.append(f"{summary['desc_like_refused']} description + like requests refused")
    for kind, r in refusals.items():
        if not r["ok"]:
            failed.append(f"{kind} id {r['crop_id']}: HTTP {r['status']} {r['detail']!r}, "
                          "not a 404 naming it")
    return failed


# -- the product path, as a user runs it ------------------------------------------------------

def write_gallery(records: Sequence[Any], imgs: Path, pids: Sequence[int], work: Path
                  ) -> tuple[Path, Path]:
    """``work/gallery/<file_path>`` symlinks to the dataset's images of ``pids`` and
    ``work/persons.json``: the folder and file ``tbps ingest --persons`` reads."""
    entries = persons_entries(records, imgs, pids)
    gallery = work / "gallery"
    for entry in entries:
        link = gallery / entry["file_path"]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((imgs / entry["file_path"]).resolve())
    persons = work / "persons.json"
    persons.write_text(json.dumps(entries))
    return gallery, persons


def tbps(args: list[str], env: dict[str, str], log: Path) -> str:
    """One ``tbps`` command; its output is appended to ``log`` and returned."""
    proc = subprocess.run(TBPS + args, env=env, cwd=ROOT, capture_output=True, text=True)
    with log.open("a") as fh:
        fh.write(f"$ tbps {' '.join(args)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise RuntimeError(f"tbps {args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def wait_ready(base: str, limit_s: float = 600) -> dict:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        r = httpx.get(f"{base}/readyz", timeout=10)
        if r.status_code == 200:
            return r.json()
        time.sleep(0.5)
    raise RuntimeError(f"not ready after {limit_s:.0f}s: {r.text}")


def list_crops(http: httpx.Client, key: str) -> list[dict]:
    """Every indexed crop, through GET /admin/crops (200 a page)."""
    crops: list[dict] = []
    while True:
        r = http.get("/admin/crops", params={"status": "indexed", "limit": 200,
                                             "offset": len(crops)}, headers={"X-API-Key": key})
        r.raise_for_status()
        page = r.json()
        crops += page["crops"]
        if not page["crops"] or len(crops) >= page["total"]:
            return crops


def like_hits(http: httpx.Client, crop_id: int, page_size: int, pages: int) -> list[dict]:
    """The hits of ``{"like": [crop_id]}``, ``pages`` pages following ``next_cursor``."""
    hits: list[dict] = []
    cursor = None
    for _ in range(pages):
        body = {"like": [crop_id], "top_k": page_size, **({"cursor": cursor} if cursor else {})}
        r = http.post("/search", json=body)
        r.raise_for_status()
        hits += r.json()["hits"]
        cursor = r.json()["next_cursor"]
        if not cursor:
            break
    return hits


def run_example(http: httpx.Client, example: dict, caption: str, args) -> dict:
    crop_id, person = example["crop_id"], str(example["person_id"])
    hits = like_hits(http, crop_id, args.page_size, args.pages)
    both = http.post("/search", json={"description": caption, "like": [crop_id], "top_k": 5})
    both_hits = both.json()["hits"] if both.status_code == 200 else []
    return {"crop_id": crop_id, "person_id": person, "file_name": example.get("file_name"),
            "rank": first_same_person_rank(hits, person), "hits_fetched": len(hits),
            "example_returned": any(h["crop_id"] == crop_id for h in hits + both_hits),
            "top5": [[h["crop_id"], h["person_id"]] for h in hits[:5]],
            "caption": caption, "desc_like_status": both.status_code,
            "desc_like_rank": first_same_person_rank(both_hits, person)}


def refusal(http: httpx.Client, crop_id: int) -> dict:
    """``like`` with a crop id that must be refused: a 404 whose message names the id."""
    r = http.post("/search", json={"like": [crop_id], "top_k": 5})
    detail = r.json().get("detail") if r.headers.get("content-type", "").startswith(
        "application/json") else r.text
    return {"crop_id": crop_id, "status": r.status_code, "detail": detail,
            "ok": r.status_code == 404 and str(crop_id) in str(detail)}


def deleted_refusal(http: httpx.Client, key: str, crops: Sequence[dict],
                    examples: Sequence[dict]) -> dict | None:
    """Delete one crop of a person no example belongs to (after the like runs), then use it."""
    used = {str(e["person_id"]) for e in examples}
    spare = [c for c in crops if str(c.get("person_id")) not in used]
    if not spare:
        return None
    victim = min(spare, key=lambda c: c["crop_id"])["crop_id"]
    r = http.delete(f"/admin/crops/{victim}", headers={"X-API-Key": key})
    r.raise_for_status()
    return refusal(http, victim)


def check_over_http(base: str, key: str, captions: dict[str, tuple[str, ...]], args
                    ) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with httpx.Client(base_url=base, timeout=120) as http:
        crops = list_crops(http, key)
        examples = pick_examples(crops, args.examples, args.seed)
        outcomes = []
        for example in examples:
            options = captions.get(example.get("file_name") or "", ())
            caption = rng.choice(options) if options else "a person"
            outcomes.append(run_example(http, example, caption, args))
        refusals = {"unknown": refusal(http, max(c["crop_id"] for c in crops) + 1000)}
        deleted = deleted_refusal(http, key, crops, examples)
        if deleted is not None:
            refusals["deleted"] = deleted
    return {"crops": len(crops), "outcomes": outcomes, "refusals": refusals}


def build_and_serve(args, records: Sequence[Any], imgs: Path, pids: list[int], work: Path,
                    env: dict[str, str]) -> dict[str, Any]:
    """Ingest, index and serve the picked persons, then run the HTTP checks."""
    log = work / "tbps.log"
    timings = {}
    gallery, persons = write_gallery(records, imgs, pids, work)
    mark = time.perf_counter()
    tbps(["migrate"], env, log)
    ingested = tbps(["ingest", str(gallery), "--persons", str(persons)], env, log)
    timings["ingest_s"] = round(time.perf_counter() - mark, 1)
    mark = time.perf_counter()
    indexed = tbps(["index"], env, log)
    timings["index_s"] = round(time.perf_counter() - mark, 1)
    key = tbps(["create-key", KEY_NAME], env, log).strip().splitlines()[-1]
    mark = time.perf_counter()
    server, base = start_server(env, work / "server.log")
    try:
        ready = wait_ready(base)
        timings["ready_s"] = round(time.perf_counter() - mark, 1)
        captions = {Path(r.image_path).relative_to(imgs).as_posix(): r.captions
                    for r in records if r.pid in set(pids)}
        checked = check_over_http(base, key, captions, args)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {"ingest_report": ingested.strip().splitlines()[-1],
            "index_report": indexed.strip().splitlines()[-1],
            "index_version": ready.get("index_version"), "timings": timings, **checked}


def parse_setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("TBPS_"):
        raise argparse.ArgumentTypeError(f"--set {text!r}: TBPS_NAME=value")
    return name, value


def server_env(data: Path, checkpoint: Path, settings: Sequence[tuple[str, str]]
               ) -> dict[str, str]:
    """This environment without its TBPS_* variables (never the user's database), plus a fresh
    data dir, the checkpoint and ``--set`` values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TBPS_")}
    env.update(TBPS_DATA_DIR=str(data), TBPS_CHECKPOINT=str(checkpoint.resolve()),
               TBPS_ENVIRONMENT="development", **dict(settings))
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT.parent / "shared/data/cuhk-pedes",
                        help="a CUHK-PEDES-style root (reid_raw.json + imgs/)")
    parser.add_argument("--dataset", default="cuhk-pedes", help="its reader (models.data)")
    parser.add_argument("--split", default="dev", help="dev (default), val, test, ...")
    parser.add_argument("--n", type=int, default=150, help="persons in the gallery")
    parser.add_argument("--examples", type=int, default=40, help="example crops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path,
                        default=ROOT / "models" / "checkpoints" / "default.pt")
    parser.add_argument("--page-size", type=int, default=25, help="top_k of each like page")
    parser.add_argument("--pages", type=int, default=2, help="like pages fetched per example")
    parser.add_argument("--min-rank1", type=float, default=60.0, help="the bar, in percent")
    parser.add_argument("--set", type=parse_setting, action="append", default=[],
                        metavar="TBPS_X=v", help="a setting for every tbps command")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--out", type=Path,
                        help="default bench/results/like_check_<split>_<n>.json")
    args = parser.parse_args(argv)

    from models.data.datasets import read_dataset, select_split
    from models.factory import file_sha256

    records = select_split(read_dataset(args.dataset, args.root), args.split)
    pids = pick_persons((r.pid for r in records), args.n, args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="tbps-like-check-"))
    work.mkdir(parents=True, exist_ok=True)
    env = server_env(work / "data", args.checkpoint, args.set)
    before = environment()
    run = build_and_serve(args, records, args.root / "imgs", pids, work, env)
    summary = summarize(run["outcomes"])
    failures = bar_failures(summary, run["refusals"], args.min_rank1)
    result = {"benchmark": "like_check", "command": " ".join(["python -m bench.like_check",
                                                              *(argv or sys.argv[1:])]),
              "machine": before, "root": str(args.root), "dataset": args.dataset,
              "split": args.split, "persons": args.n, "seed": args.seed,
              "checkpoint": str(args.checkpoint), "checkpoint_sha256": file_sha256(args.checkpoint),
              "settings": dict(args.set), "summary": summary, "passed": not failures,
              "failures": failures, **run}
    out = args.out or ROOT / "bench" / "results" / f"like_check_{args.split}_{args.n}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table([{**summary, **run, "crops": run["crops"]}], [
        ("persons", lambda r: args.n), ("crops", lambda r: r["crops"]),
        ("examples", lambda r: r["examples"]), ("rank-1 %", lambda r: r["rank1_pct"]),
        ("rank-5 %", lambda r: r["rank5_pct"]),
        ("example returned", lambda r: r["example_returned"]),
        ("desc+like rank-1 %", lambda r: r["desc_like_rank1_pct"]),
        ("unknown id", lambda r: r["refusals"]["unknown"]["status"]),
        ("deleted id", lambda r: r["refusals"].get("deleted", {}).get("status"))]))
    print(f"{machine_line(before)}; wrote {out}")
    print("PASS: issue 26's bar holds" if not failures else "FAIL: " + "; ".join(failures))
    if failures:
        print(f"work folder kept: {work}")
    elif not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
