"""The ``tbps`` command: one entry point with a sub-command per job."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

# Each sub-command imports what it needs (the settings, the database, torch) when it runs:
# `tbps --help` and a mistyped command answer at once (tests/service/test_cli.py)
if TYPE_CHECKING:
    from service.config import Settings


def _settings() -> Settings:
    from service.config import get_settings

    settings = get_settings()
    settings.ensure_dirs()
    return settings


def cmd_migrate(_args: argparse.Namespace) -> int:
    from service.store.db import migrate

    settings = _settings()
    migrate(settings.resolved_database_url)
    print(f"database is at the latest schema: {settings.resolved_database_url}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from service.jobs.ingest import ingest_folder, read_person_ids
    from service.store.db import migrate, session_scope
    from service.store.storage import StorageError

    settings = _settings()
    migrate(settings.resolved_database_url)
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"error: {folder} is not a folder", file=sys.stderr)
        return 2
    persons = None
    if getattr(args, "persons", None):
        try:
            persons = read_person_ids(Path(args.persons))
        except (OSError, ValueError) as exc:
            print(f"error: cannot read person ids from {args.persons}: {exc}", file=sys.stderr)
            return 2
    try:
        with session_scope(settings.resolved_database_url) as session:
            report = ingest_folder(session, settings, folder, camera=args.camera,
                                   persons=persons, progress=_progress_printer("ingesting files"))
    except StorageError as exc:  # a full disk or a read-only crops folder: one line, no trace
        print(f"\nerror: {exc}; what was committed before stays, and running the same command "
              "again goes on where it stopped", file=sys.stderr)
        return 1
    for bad in report.rejected:
        print(f"skipped {bad.name}: {bad.reason}")
    print(f"ingested {report.added} new crops, {report.duplicates} duplicates skipped, "
          f"{len(report.rejected)} files rejected")
    return 0


def _progress_printer(label: str):
    started = time.perf_counter()

    def show(done: int, total: int) -> None:
        elapsed = max(time.perf_counter() - started, 1e-6)
        rate = done / elapsed
        eta = (total - done) / rate if rate else 0.0
        end = "\n" if done >= total else ""
        print(f"\r{label}: {done}/{total} ({rate:.0f}/s, ETA {eta:.0f}s)", end=end, flush=True)

    return show


def cmd_index(args: argparse.Namespace) -> int:
    """Incremental by default (add pending crops, drop deleted ones); --full rebuilds beside the
    live index and swaps; --rollback and --check need no encoding."""
    from indexer.pipeline import ReadOptions
    from models.factory import load_encoder
    from service.jobs import index_jobs as jobs
    from service.jobs.index_backend import backend_from_settings
    from service.jobs.index_check import check
    from service.store.db import migrate, session_scope

    if getattr(args, "address", None) and getattr(args, "engine", "local") != "ray":
        print("error: --address needs --engine ray", file=sys.stderr)
        return 2
    settings = _settings()
    migrate(settings.resolved_database_url)
    root, crops = backend_from_settings(settings), settings.resolved_crops_dir
    with session_scope(settings.resolved_database_url) as session:
        if getattr(args, "rollback", False):
            try:
                print(f"rolled back: index {jobs.rollback(session, root)} is live")
            except FileNotFoundError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            return 0
        encoder = load_encoder(**settings.encoder_options)
        options = ReadOptions(batch_size=getattr(args, "batch_size", None) or 64,
                              workers=getattr(args, "workers", None),
                              limits=settings.image_limits)
        if getattr(args, "check", False):
            return _print_check(check(session, root, encoder=encoder, crops_dir=crops,
                                      repair=not getattr(args, "dry_run", False),
                                      options=options))
        if getattr(args, "engine", "local") == "ray":
            return _index_on_ray(args, session, encoder, settings, root)
        run = jobs.build_full if getattr(args, "full", False) else jobs.sync
        try:
            report = run(session, encoder, crops, root, factory=getattr(args, "factory", None),
                         progress=_progress_printer("encoding crops"), options=options)
        except (jobs.BuildBusy, jobs.StaleIndex) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return _print_index_report(report)


def _index_on_ray(args: argparse.Namespace, session, encoder, settings: Settings, backend) -> int:
    """`tbps index --engine ray`: a full build on Ray Data (a local Ray without --address)."""
    from service.jobs import index_jobs as jobs

    try:
        report = jobs.build_full_on_ray(
            session, encoder, settings.encoder_options, settings.resolved_crops_dir, backend,
            address=args.address, factory=args.factory, batch_size=args.batch_size or 64,
            actors=args.workers, progress=_progress_printer("encoding crops on Ray"),
            limits=settings.image_limits)
    except (jobs.BuildBusy, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return _print_index_report(report)


def _print_index_report(report) -> int:
    for crop_id, reason in report.failed[:20]:
        print(f"crop {crop_id} failed: {reason}")
    if len(report.failed) > 20:
        print(f"... and {len(report.failed) - 20} more failed crops")
    kind = "full build" if report.full else "incremental update"
    resumed = f", {report.resumed} resumed from a killed run" if report.resumed else ""
    print(f"index {report.version} ({kind}): {report.indexed} crops indexed, "
          f"{len(report.failed)} failed, {report.removed} removed{resumed}, "
          f"{report.seconds:.1f}s ({report.rate:.0f} crops/s)")
    return 0


def _print_check(report) -> int:
    print(f"index {report.version}: {report.index_count} vectors")
    for problem in report.problems:
        print(f"problem: {problem}")
    for fix in report.repaired:
        print(f"repaired: {fix}")
    if report.ok:
        print("database and index agree")
    return 0 if report.ok or report.repaired else 1


def cmd_serve(args: argparse.Namespace) -> int:
    import threading

    import uvicorn

    from service.main import create_app

    settings = _settings()
    problem = prepare_database(settings)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    host, port = args.host or settings.host, args.port or settings.port
    if getattr(args, "with_worker", False):
        settings = settings.model_copy(update={"spawn_worker": True})
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port,
                                           log_level="info", **proxy_options(settings)))
    threading.Thread(target=_announce_when_serving, args=(server, f"http://{host}:{port}/"),
                     name="announce", daemon=True).start()
    server.run()
    return 0


def _announce_when_serving(server, url: str) -> None:
    """Says "serving" once the port answers (the model and the index are loaded by then)."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.1)
    print(f"serving tbps on {url} (API docs at /docs)", flush=True)


def prepare_database(settings: Settings) -> str | None:
    """The embedded default (SQLite in the data dir) is migrated at start, as `tbps demo`
    does; a configured database must be migrated apart: returns why not to start, or None."""
    from service.store.db import migrate, schema_problem

    if settings.database_url is None:
        migrate(settings.resolved_database_url)
        return None
    return schema_problem(settings.resolved_database_url)


def proxy_options(settings: Settings) -> dict:
    """X-Forwarded-For is believed only from TBPS_TRUSTED_PROXIES (never by default)."""
    trusted = settings.trusted_proxies.strip()
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or "127.0.0.1"}


def _search_args_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with `tbps search`'s arguments (the API's limits), or None."""
    from service.search.query_vector import MAX_EXAMPLES

    if not (args.description or "").strip() and not args.like:
        return "give a description, --like CROP_ID, or both"
    if args.like and len(args.like) > MAX_EXAMPLES:
        return f"{len(args.like)} --like examples; give at most {MAX_EXAMPLES}"
    if args.like and len(set(args.like)) != len(args.like):
        return "--like repeats a crop id: give each example once"
    if args.text_weight is not None and not 0 <= args.text_weight <= 1:
        return "--text-weight is between 0 and 1"
    return None


def _search_filters(args: argparse.Namespace) -> tuple[dict, str | None]:
    """The filter flags (``service.search.filters.FILTERS``) as the API's filter values, checked as
    the API checks them -> (values, None) or ({}, what is wrong)."""
    from pydantic import ValidationError

    from service.api.schemas import SearchOptions
    from service.search.filters import FILTERS

    given = {name: getattr(args, name) for spec in FILTERS for name in spec.cli
             if getattr(args, name, None) is not None}
    try:
        return SearchOptions.model_validate(given).filter_values(), None
    except ValidationError as exc:
        flags = {name: flag.flag for spec in FILTERS for name, flag in spec.cli.items()}
        return {}, "; ".join(f"{flags.get(str(e['loc'][0]), 'filter') if e['loc'] else 'filter'}"
                             f": {e['msg']}" for e in exc.errors())


def cmd_search(args: argparse.Namespace) -> int:
    from models.factory import load_encoder
    from service.config import get_settings
    from service.jobs.index_backend import backend_from_settings
    from service.search.confidence import calibration_path, load_confidence
    from service.search.engine import (
        IndexNotReady,
        SearchEngine,
        SearchQuery,
        UnknownExamples,
    )
    from service.search.filters import FilterRejected
    from service.search.urls import crop_url
    from service.store.db import session_scope

    filters, bad_filter = _search_filters(args)
    problem = _search_args_problem(args) or bad_filter
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    settings = get_settings()  # a read: creates no data dir
    if settings.database_url is None and not settings.data_dir.is_dir():
        print(f"error: no data dir at {settings.data_dir.resolve()}: run `make run` (or `tbps "
              "ingest` and `tbps index`) first, or set TBPS_DATA_DIR to the data dir of the "
              "gallery", file=sys.stderr)
        return 1
    encoder = load_encoder(**settings.encoder_options)
    confidence = load_confidence(calibration_path(settings.checkpoint, settings.calibration),
                                 encoder.spec)
    engine = SearchEngine(encoder, backend_from_settings(settings, for_search=True),
                          settings.data_dir, confidence=confidence)
    query = SearchQuery(description=args.description.strip() if args.description else None,
                        top_k=args.top_k, filters=filters,
                        like=tuple(args.like) if args.like else None,
                        text_weight=args.text_weight)
    try:
        with session_scope(settings.resolved_database_url) as session:
            result = engine.search(session, query)
    except IndexNotReady as exc:
        print(f"error: {exc} (data dir {settings.data_dir.resolve()}, TBPS_DATA_DIR)",
              file=sys.stderr)
        return 1
    except (FilterRejected, UnknownExamples) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([h.__dict__ for h in result.hits], default=str, indent=2))
        return 0
    base = f"http://{settings.host}:{settings.port}"
    print(f"score: sum of {len(engine.encoder.spec.parts) or 1} part similarities, at most "
          f"{engine.score_max:g}; image URLs need `tbps serve` (or `make run`) on {base}")
    print(f"{'rank':>4}  {'score':>7}  {'crop':>6}  {'camera':<14} {'person':<10} "
          f"{'captured_at':<25} file / URL")
    for rank, hit in enumerate(result.hits, 1):
        when = hit.captured_at.isoformat() if hit.captured_at else "-"
        print(f"{rank:>4}  {hit.score:7.4f}  {hit.crop_id:>6}  {hit.camera or '-':<14} "
              f"{hit.person_id or '-':<10} {when:<25} {hit.file_name or '-'}  "
              f"{base}{crop_url(settings, hit.crop_id, 'image')}")
    print(f"({len(result.hits)} hits from index {result.index_version} in {result.took_ms:.1f} ms)")
    if result.good_matches is not None:
        print(f"good matches (strong or possible): {result.good_matches}; best match: "
              f"{result.best_match or '-'}; per hit: "
              + ", ".join(f"{h.crop_id} {h.match} ({h.confidence:.3f})" for h in result.hits))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run queued jobs (reindex, add) until stopped; --once: run what is queued and exit."""
    import signal
    import threading

    from models.factory import load_encoder
    from service.jobs.worker import die_with_parent, run_pending, serve

    if args.parent_pid is not None:
        die_with_parent(args.parent_pid)
    settings = _settings()
    problem = prepare_database(settings)  # never migrates a database `serve` refuses
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    # queued jobs start at once, with torch until the ONNX graphs are exported
    encoder = load_encoder(**settings.encoder_options, background_export=not args.once)
    if args.once:
        print(f"ran {run_pending(settings, encoder)} job(s)")
        return 0
    logging.getLogger().setLevel(logging.INFO)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"worker waiting for jobs in {settings.resolved_database_url}", flush=True)
    serve(settings, encoder, stop=stop, recover_jobs=not args.no_recover)
    return 0


def cmd_create_key(args: argparse.Namespace) -> int:
    """Create an admin API key; only its sha256 is stored, the key is printed once."""
    import secrets

    from sqlalchemy.exc import IntegrityError

    from service.config import hash_key
    from service.store import crud
    from service.store.db import migrate, session_scope

    settings = _settings()
    migrate(settings.resolved_database_url)
    key = secrets.token_urlsafe(32)
    try:
        with session_scope(settings.resolved_database_url) as session:
            crud.add_api_key(session, name=args.name, key_sha256=hash_key(key))
            crud.add_audit(session, actor="cli", action="keys.create", target=f"key:{args.name}")
    except IntegrityError:
        print(f"error: a key named {args.name!r} exists", file=sys.stderr)
        return 1
    print(key)
    return 0


def cmd_revoke_key(args: argparse.Namespace) -> int:
    from service.store import crud
    from service.store.db import migrate, session_scope

    settings = _settings()
    migrate(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as session:
        found = crud.revoke_api_key(session, name=args.name)
        if found:
            crud.add_audit(session, actor="cli", action="keys.revoke", target=f"key:{args.name}")
    print(f"revoked {args.name}" if found else f"no active key named {args.name!r}")
    return 0 if found else 1


DEMO_CAMERA_NOTE = "CUHK-PEDES dataset folder, not a camera"


def cmd_demo(args: argparse.Namespace) -> int:
    """What `make run` does: migrate, serve at once, and ingest the demo gallery (when the
    gallery is empty) beside the server; the job worker indexes what is ingested as it comes,
    and the page searches what is indexed so far."""
    import threading

    from service.config import DEFAULT_DEMO_GALLERY
    from service.store import crud
    from service.store.db import migrate, session_scope

    settings = _settings()
    migrate(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as session:
        empty = crud.count_crops(session) == 0
    gallery = settings.demo_gallery or DEFAULT_DEMO_GALLERY
    if empty and gallery.is_dir():
        threading.Thread(target=_ingest_demo_gallery, args=(settings, gallery),
                         name="demo-ingest", daemon=True).start()
    else:
        if empty:
            print(f"no demo gallery: {gallery} does not exist. Set TBPS_DEMO_GALLERY to a "
                  "folder of person crops, or upload crops later through the API. Serving an "
                  "empty gallery.")
        _queue_index_job(settings)
    # a job worker beside the server, so that indexing, uploads and reindexing need no setup
    return cmd_serve(argparse.Namespace(host=args.host, port=args.port, with_worker=True))


def _queue_index_job(settings: Settings) -> None:
    from service.jobs.indexing import queue_index_job
    from service.store.db import session_scope

    with session_scope(settings.resolved_database_url) as session:
        job = queue_index_job(session, settings, created_by="demo")
        if job is not None and job.status.value == "queued":
            print(f"index job {job.id} ({job.kind}) queued: search answers from what is "
                  "indexed so far; progress on the page, at /status and in this log", flush=True)


def _ingest_demo_gallery(settings: Settings, gallery: Path) -> None:
    """The CUHK-PEDES demo images, with each crop's person id from reid_raw.json beside them;
    their sub-folders become cameras, described as dataset folders. One add job indexes the
    whole gallery once it is ingested (storing files is far quicker than encoding them), so
    the page shows one job, one ETA and one percentage; its first chunks are searchable within
    seconds of its start."""

    from service.jobs.ingest import ingest_folder, read_person_ids
    from service.store import crud
    from service.store.db import session_scope

    labels = gallery.parent / "reid_raw.json"
    persons = read_person_ids(labels) if labels.is_file() else None

    def committed() -> None:
        with session_scope(settings.resolved_database_url) as session:
            for camera, _ in crud.cameras_with_counts(session):
                camera.description = camera.description or DEMO_CAMERA_NOTE

    print(f"gallery is empty: ingesting the demo gallery {gallery} while serving", flush=True)
    with session_scope(settings.resolved_database_url) as session:
        # short transactions: SQLite has one writer, and the worker's job claim and index
        # updates wait for each commit of this ingest
        report = ingest_folder(session, settings, gallery, persons=persons,
                               progress=_progress_printer("ingesting files"),
                               on_commit=committed, commit_every=100)
    print(f"ingested {report.added} crops, {len(report.rejected)} files rejected, person ids "
          f"from {labels if persons else 'nowhere'}", flush=True)
    _queue_index_job(settings)


def build_parser() -> argparse.ArgumentParser:
    from models.commands import register_all as register_model_commands

    parser = argparse.ArgumentParser(
        prog="tbps", description="Text-based person search. Settings come from TBPS_* "
        "environment variables (TBPS_DATA_DIR, TBPS_DATABASE_URL, TBPS_CHECKPOINT, ...).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply database migrations")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("ingest", help="add a folder of person crops to the gallery",
                       description="Store every image below FOLDER content-addressed in the "
                       "data dir. Duplicates are skipped; unreadable or non-image files are "
                       "reported by name and not stored. Without --camera, the first "
                       "sub-folder of each file names its camera.")
    p.add_argument("folder", help="folder of JPEG/PNG/BMP/WebP crops (searched recursively)")
    p.add_argument("--camera", help="camera name for every crop in this folder")
    p.add_argument("--persons", metavar="JSON", help="person ids: a CUHK-PEDES style list of "
                   "{id, file_path} (reid_raw.json), paths relative to FOLDER")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("index", help="bring the search index up to date with the gallery",
                       description="Without options: add crops uploaded since the last build "
                       "and drop deleted ones, without a rebuild (a full build when there is no "
                       "index or the checkpoint changed). --full encodes everything into a new "
                       "version beside the live one and swaps atomically; a killed build "
                       "resumes from its last finished shard. Searches keep using the old "
                       "version until the swap.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="re-encode every crop, swap atomically")
    mode.add_argument("--rollback", action="store_true",
                      help="make the previous version live again")
    mode.add_argument("--check", action="store_true",
                      help="verify that the database and the index agree; repair what it can")
    p.add_argument("--dry-run", action="store_true", help="with --check: report, repair nothing")
    p.add_argument("--factory", default=None,
                   help="index spec: 'Flat' (exact) or a FAISS factory string for the first "
                   "stage over the global part, e.g. 'IVF4096_HNSW32,SQ8' (default: chosen by "
                   "gallery size)")
    p.add_argument("--workers", type=int, default=None,
                   help="image decoding processes (default: one per spare core); with "
                   "--engine ray: encoder actors (default: one per GPU, else one per CPU)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: encode in this process (default); ray: a full build on Ray "
                   "Data, decoding and encoding in actors (needs the scale extra)")
    p.add_argument("--address", default=None, help="with --engine ray: the Ray cluster "
                   "(e.g. ray://head:10001 or auto; default: start a local Ray)")
    p.add_argument("--batch-size", type=int, default=64, help="crops per encoder batch")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("serve", help="serve the HTTP API and the web page")
    p.add_argument("--host", help="bind address (default TBPS_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default TBPS_PORT or 8000)")
    p.add_argument("--with-worker", action="store_true",
                   help="also start a `tbps worker` subprocess (as TBPS_SPAWN_WORKER=true does)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("search", help="search the gallery from the command line",
                       description='Example: tbps search "a man in a red jacket" --top-k 5; '
                       'more like crop 42: tbps search --like 42 ["with a backpack"]')
    p.add_argument("description", nargs="?", help="what the person looks like (optional "
                   "with --like)")
    p.add_argument("--like", type=int, action="append", metavar="CROP_ID",
                   help="find crops like this one (repeatable, at most 10; the examples are "
                   "left out of the hits)")
    p.add_argument("--text-weight", type=float,
                   help="with a description and --like: the description's weight, 0-1 (default "
                   "as the API's text_weight: 0.5, not yet tuned)")
    p.add_argument("--top-k", type=int, default=10, help="number of hits (default 10)")
    from service.search.filters import FILTERS

    for spec in FILTERS:  # the filters' flags: --camera, --min-height ...
        for name, flag in spec.cli.items():
            p.add_argument(flag.flag, dest=name, **flag.options)
    p.add_argument("--json", action="store_true", help="print hits as JSON")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("worker", help="run queued jobs (reindex, add uploaded crops)",
                       description="Polls the jobs table and runs each job in this process; "
                       "searches keep serving from the live index meanwhile. Run one worker "
                       "per deployment (docker-compose does); `tbps demo` starts one itself.")
    p.add_argument("--once", action="store_true", help="run the queued jobs, then exit")
    p.add_argument("--no-recover", action="store_true", help="at start, leave jobs of a "
                   "dead worker of this host until their lease runs out (default: requeue them "
                   "at once, or fail them after TBPS_JOB_MAX_ATTEMPTS runs)")
    p.add_argument("--parent-pid", type=int, default=None, metavar="PID",
                   help="exit as soon as process PID ends (`tbps serve --with-worker` passes "
                   "its own, so that its worker never outlives it)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("create-key", help="create an admin API key (printed once)")
    p.add_argument("name", help="who the key is for; shown in the audit log")
    p.set_defaults(func=cmd_create_key)

    p = sub.add_parser("revoke-key", help="revoke an admin API key by name")
    p.add_argument("name")
    p.set_defaults(func=cmd_revoke_key)

    p = sub.add_parser("demo", help="what `make run` does: migrate, ingest the demo gallery "
                       "if the gallery is empty, serve at once with a job worker beside it that "
                       "indexes (the page searches what is indexed so far)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_demo)

    register_model_commands(sub)  # train, eval, calibrate
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = args.verbose or getattr(args, "progress_log", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
