"""Search logic: one text encoding, one index search (exactly filtered), one metadata query for
the hits. No FastAPI imports here.

Filters are exact: the in-memory catalog (``service.search.catalog``) turns the request's filters
(``service.search.filters``: camera, time range, height ...) into the set of allowed crop ids. When
few crops are excluded the search fetches ``k + excluded`` and drops them (the top k of the
rest are inside); otherwise it passes the allowed ids to the
index's id selector; a backend that filters inside its engine (Milvus) gets the filter itself
(a Milvus expression) when its version stores every attribute the filter reads, and the
catalog checks its answer.
Either way a filtered search returns ``top_k`` hits whenever that many match.

A search by example (``like``: crop ids) builds its query from the examples' vectors read from
the live index, blended with the description's when one is given
(``service.search.query_vector``), and leaves the examples out of the hits (as it leaves out the
crops the operator dismissed, ``exclude``: the same mask); a search by photo
(``image``) encodes the photo with the image tower and stores nothing. Everything after the
query vector is the same as for text.

Pagination is keyset-based on (score, id) within one index build: pages after the first leave
out crops added since it, and deleted crops simply vanish, so no hit repeats or is skipped.
Incremental generations of the same build keep cursors valid; a cursor from before a full
rebuild (new scores) is refused with a clear message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from indexer.backends import CorruptIndex, IndexBackend, IndexView, SearchFilter, create_backend
from models.encoder import Encoder, part_scores
from service.search.batching import MicroBatcher
from service.search.catalog import Catalog, extend_catalog, load_catalog, read_stamp
from service.search.confidence import Confidence
from service.search.filters import search_filter
from service.search.query_batch import Probe, Probed, run_probes
from service.search.query_vector import DEFAULT_TEXT_WEIGHT, example_query
from service.store import crud
from service.store.orm import as_utc

log = logging.getLogger(__name__)

GROUP_BY = ("crop", "person")
BEST_CROPS_PER_PERSON = 3
OVERFETCH_LIMIT = 2048  # at most this many excluded ids are dropped after the search
PERSON_FANOUT = 8  # crops fetched per wanted person before falling back to all matches
CATALOG_MARGIN_S = 600.0  # rows created this long before a load are read again at the next
PERSON_MIN_CANDIDATES = 512  # a person's best crops are taken among at least this many
MAX_CURSOR_SEEN = 1_000_000  # hits a cursor may claim were shown before it
MAX_CROP_ID = 2**63 - 1  # crop ids are 64-bit integers
MAX_SCORE = 1_000_000  # far beyond any model's score_max; a bound a float always holds
MAX_CURSOR_KEY = 256  # a person group key: "p:" + a person id of at most 128 characters
GOOD_MATCH_LIMIT = 1000  # good matches are counted among at most this many best crops


class IndexNotReady(RuntimeError):
    """No index is published yet, or it was built by another model."""


class BadCursor(ValueError):
    """The cursor was not issued by this service for this query."""


class CursorExpired(BadCursor):
    """The index changed since the cursor was issued."""


class UnknownExamples(LookupError):
    """Example crop ids that are not searchable: unknown, deleted, or not indexed (yet)."""

    def __init__(self, message: str, crop_ids: list[int]) -> None:
        super().__init__(message)
        self.crop_ids = crop_ids


@dataclass(frozen=True)
class SearchQuery:
    """What to rank by: a description, example crops (``like``), a photo (``image``: checked
    bytes, never stored), or a description with either; then filters and paging."""

    description: str | None
    top_k: int = 10
    filters: Mapping[str, Any] = field(default_factory=dict)  # request field -> value (set ones)
    group_by: str = "crop"
    cursor: str | None = None
    like: tuple[int, ...] | None = None
    text_weight: float | None = None  # with a description and examples; None: the default
    image: bytes | None = None
    exclude: tuple[int, ...] = ()  # dismissed crops: never among the hits

    def fingerprint(self) -> str:
        """Identifies the result set a cursor pages through (everything but top_k/cursor)."""
        key = [self.description, {k: _plain(v) for k, v in sorted(self.filters.items())},
               self.group_by]
        if self.like is not None or self.image is not None:  # text-only cursors stay valid
            image = hashlib.sha256(self.image).hexdigest() if self.image is not None else None
            key += [sorted(self.like or ()), self.text_weight, image]
        if self.exclude:  # a cursor pages through one set of dismissals
            key += [{"exclude": sorted(set(self.exclude))}]
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


@dataclass
class Hit:
    crop_id: int
    score: float
    camera: str | None
    captured_at: datetime | None
    person_id: str | None
    width: int
    height: int
    parts: dict[str, float]
    file_name: str | None = None  # the name the crop was ingested or uploaded under
    confidence: float | None = None  # P(same person), calibrated on dev; None: no sidecar
    match: str | None = None  # strong / possible / weak


@dataclass
class PersonHit:
    person_id: str | None  # None: a crop with no person/track id, its own group
    score: float  # the best crop's score
    crops: list[Hit]  # best crops first
    first_seen: datetime | None  # time span over this person's matching crops
    last_seen: datetime | None
    crop_count: int  # matching crops of this person
    confidence: float | None = None  # of the best crop
    match: str | None = None


@dataclass
class SearchResult:
    index_version: str
    took_ms: float
    matching: int  # searchable crops that pass the filters
    hits: list[Hit] = field(default_factory=list)
    persons: list[PersonHit] = field(default_factory=list)
    next_cursor: str | None = None
    good_matches: int | None = None  # crops at strong or possible (None: no calibration)
    best_match: str | None = None  # the level of the best matching crop


def _plain(value: Any) -> Any:
    """A filter value as JSON: times as UTC ISO strings, lists sorted (their order is moot)."""
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    return sorted(value) if isinstance(value, list | tuple) else value


def encode_cursor(*, version: str, fingerprint: str, seen: int, key: list, max_id: int) -> str:
    raw = json.dumps({"v": version, "f": fingerprint, "n": seen, "k": key, "m": max_id},
                     separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, fingerprint: str, version: str) -> tuple[int, list, int]:
    """-> (hits already returned, keyset key of the last one, largest crop id then)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw, parse_constant=_no_constant)  # NaN, Infinity: not ours
    except (binascii.Error, ValueError, UnicodeDecodeError):
        data = None
    if not _issued_shape(data):
        raise BadCursor("cursor is not one this service issued; pass next_cursor unchanged")
    if data["f"] != fingerprint:
        raise BadCursor("cursor belongs to another query: keep description, filters "
                        "and group_by unchanged between pages")
    if data["v"] != version:
        raise CursorExpired(f"the index changed since this cursor was issued (now {version}); "
                            "search again from the first page")
    return data["n"], list(data["k"]), data["m"]


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _is_int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _issued_shape(data: object) -> bool:
    """What ``encode_cursor`` writes, with every number in range: a forged cursor (a count of
    1e400, a key of 10**400) is refused here, not met as an OverflowError further on."""
    if not isinstance(data, dict) or not all(k in data for k in "vfnkm"):
        return False
    key = data["k"]
    return (isinstance(data["v"], str) and isinstance(data["f"], str)
            and _is_int(data["n"], 0, MAX_CURSOR_SEEN) and _is_int(data["m"], 0, MAX_CROP_ID)
            and isinstance(key, list) and len(key) == 2
            and (_is_int(key[0], -MAX_SCORE, MAX_SCORE)
                 or (type(key[0]) is float and abs(key[0]) <= MAX_SCORE))
            and (_is_int(key[1], 0, MAX_CROP_ID)
                 or (type(key[1]) is str and len(key[1]) <= MAX_CURSOR_KEY)))


def base_version(pointer: str) -> str:
    """Generations of one base ("<base>+<gen>") only add or hide crops: scores stay the same."""
    return pointer.split("+", 1)[0]


def _after(score: float, key, cursor_key: list | None) -> bool:
    """Strictly after the cursor in (score descending, key ascending) order."""
    if cursor_key is None:
        return True
    s0, k0 = float(cursor_key[0]), cursor_key[1]
    return score < s0 or (score == s0 and type(key) is type(k0) and key > k0)


def _rebased(cursor_key: list | None, ranked: list[tuple[float, Any]]) -> list | None:
    """The cursor's key with its entry's score in this ranking, when the entry is in it.

    A query's vector can differ in the last bits between pages (encoded alone or in a batch
    of another size), and so can the scores; compared with the score it has now, the last
    entry shown and entries tied with it keep their place."""
    if cursor_key is None:
        return None
    for score, key in ranked:
        if key == cursor_key[1] and type(key) is type(cursor_key[1]):
            return [score, key]
    return cursor_key


class SearchEngine:
    """Holds the encoder, the live index and the catalog; reloads each when it changes."""

    def __init__(self, encoder: Encoder, index: IndexBackend | Path,
                 data_dir: Path | None = None, *, batch_max: int = 1,
                 batch_window_ms: float = 3.0, confidence: Confidence | None = None) -> None:
        """``index``: a backend, or a folder holding a FAISS index. ``batch_max`` > 1:
        concurrent searches share one text-tower call and one index search
        (``service.search.batching``), waiting at most ``batch_window_ms`` for each other.
        ``confidence``: the checkpoint's calibration (None: hits carry no confidence)."""
        self.encoder = encoder
        self.confidence = confidence
        self.batcher: MicroBatcher[Probe, Probed] | None = None  # None: each on its own
        if batch_max > 1:
            self.batcher = MicroBatcher(self._probe, max_batch=batch_max,
                                        window_s=batch_window_ms / 1000, name="search-batcher")
        self.backend = (create_backend("faiss", root=Path(index)) if isinstance(index, (str, Path))
                        else index)
        self.data_dir = Path(data_dir) if data_dir is not None else self.backend.work_dir
        self._catalog: Catalog | None = None
        self._catalog_stamp: tuple[str, str] | None = None
        self._catalog_loaded_at = self._catalog_full_at = 0.0
        self._membership: tuple[tuple[str, int], np.ndarray] | None = None
        self._lock = threading.Lock()

    def live_index(self) -> IndexView | None:
        """The version searches use (the backend reopens it when its pointer changes): the
        live one, or the previous one while the live one is unusable; None when neither."""
        return self.serving()[0]

    def serving(self) -> tuple[IndexView | None, str | None]:
        """-> (the version to search, why the live version is refused or None).

        A live version that is corrupt or whose files are gone (``CorruptIndex``) is never
        searched: the previous version stands in when it is sound, else nothing does."""
        try:
            return self.backend.open(), None
        except CorruptIndex as exc:
            refused = str(exc)
        previous = self.backend.previous_version()
        try:
            fallback = self.backend.open(previous) if previous else None
        except CorruptIndex:
            fallback = None
        if fallback is not None and fallback.manifest.built_by(self.encoder):
            return fallback, f"{refused}; serving the previous version {previous}"
        return None, refused

    def check_ready(self) -> IndexView:
        live = self.live_index()
        refused = self.serving()[1] if live is None else None
        if refused is not None:
            raise IndexNotReady(f"{refused}, and there is no sound previous version: run "
                                "`tbps index --check` (it rebuilds) or POST /admin/reindex")
        if live is None:
            raise IndexNotReady("no index has been built yet: run `tbps index` or "
                                "POST /admin/reindex")
        if not live.manifest.built_by(self.encoder):
            raise IndexNotReady(f"the live index {live.version} was built with another model; "
                                "run `tbps index` (or POST /admin/reindex) with the current "
                                "checkpoint")
        return live

    def catalog(self, session: Session) -> Catalog:
        stamp = read_stamp(self.data_dir)
        if self._catalog is None or stamp != self._catalog_stamp:
            with self._lock:
                if self._catalog is None or stamp != self._catalog_stamp:
                    self._reload_catalog(session, stamp)
        return self._catalog

    def _reload_catalog(self, session: Session, stamp: tuple[str, str]) -> None:
        """Only new rows after uploads; everything after deletions or every 10 minutes."""
        now = time.time()
        old = self._catalog
        if (old is None or self._catalog_stamp is None or stamp[1] != self._catalog_stamp[1]
                or now - self._catalog_full_at > CATALOG_MARGIN_S):
            catalog, self._catalog_full_at = load_catalog(session), now
        else:
            since = datetime.fromtimestamp(self._catalog_loaded_at - CATALOG_MARGIN_S, UTC)
            catalog = extend_catalog(session, old, since=since)
        catalog.generation = old.generation + 1 if old else 1
        self._catalog, self._catalog_stamp, self._catalog_loaded_at = catalog, stamp, now
        log.info("catalog: %d crops", catalog.size)

    def _in_index(self, live: IndexView, catalog: Catalog) -> np.ndarray:
        """(N,) bool: which catalog crops the live index holds (cached per index/catalog)."""
        key = (live.version, catalog.generation)
        if self._membership is None or self._membership[0] != key:
            self._membership = (key, np.isin(catalog.ids, live.live_ids()))
        return self._membership[1]

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    def _probe(self, probes: list[Probe]) -> list[Probed]:
        return run_probes(self.encoder, probes)

    def search(self, session: Session, query: SearchQuery) -> SearchResult:
        if self.batcher is None:
            return self._search(session, query, lambda probe: self._probe([probe])[0])
        with self.batcher.coming() as slot:  # the batch waits for this query's probe
            return self._search(session, query, slot.submit)

    def _search(self, session: Session, query: SearchQuery,
                probe: Callable[[Probe], Probed]) -> SearchResult:
        started = time.perf_counter()
        if query.text_weight is None:
            query = replace(query, text_weight=self.text_weight)
        live = self.check_ready()
        catalog = self.catalog(session)
        flt = search_filter(query.filters, catalog)  # FilterRejected: an unknown camera
        fmask = catalog.filter_mask(flt)
        in_index = self._in_index(live, catalog)
        mask = in_index if fmask is None else in_index & fmask  # (N,) searchable and matching
        examples = self._examples(live, catalog, in_index, query)  # (1, D) or None
        left_out = (*(query.like or ()), *query.exclude)
        if left_out:  # the examples and the dismissed crops are never among the hits
            mask = mask & ~np.isin(catalog.ids, np.asarray(left_out, np.int64))
        fingerprint, version = query.fingerprint(), base_version(live.version)
        max_id = int(catalog.ids[-1]) if catalog.size else 0
        seen, key = 0, None
        if query.cursor:  # the result set of the first page: crops added since are left out
            seen, key, max_id = decode_cursor(query.cursor, fingerprint=fingerprint,
                                              version=version)
            mask = mask & (catalog.ids <= max_id)
        pushed = (_engine_filter(flt, live.count, in_index, fmask, mask)
                  if flt is not None and fmask is not None and self.backend.filters_in_engine
                  and flt.attributes <= set(live.manifest.attributes) else None)
        ranker = _Ranker(live, catalog, mask, pushed)
        first_k = (_person_pool(seen, query.top_k) if query.group_by == "person"
                   else seen + query.top_k)
        qvec = ranker.attach(probe(ranker.probe(query.description, first_k, examples,
                                                query.text_weight)))  # (1, D)
        result = SearchResult(live.version, 0.0, ranker.allowed)
        mode = Confidence.mode(text=query.description is not None,
                               examples=examples is not None)
        if query.group_by == "person":
            groups, more = _person_page(ranker, catalog, seen, key, query.top_k)
            hits = self._hits(session, live, qvec[0], [c for g in groups for c in g[2]], mode)
            result.persons = [self._rated(_person_hit(g, hits, catalog, mask), mode)
                              for g in groups]
            last = (groups[-1][1], groups[-1][0]) if groups else None
        else:
            pairs, more = _crop_page(ranker, seen, key, query.top_k)
            hits = self._hits(session, live, qvec[0], pairs, mode)
            result.hits = [hits[i] for _, i in pairs if i in hits]
            last = (pairs[-1][0], pairs[-1][1]) if pairs else None
        if more and last is not None:
            result.next_cursor = encode_cursor(version=version, fingerprint=fingerprint,
                                               seen=seen + query.top_k, key=list(last),
                                               max_id=max_id)
        if self.confidence is not None:
            result.good_matches, result.best_match = self._good_matches(ranker, first_k, mode)
        result.took_ms = (time.perf_counter() - started) * 1000
        return result

    @property
    def text_weight(self) -> float:
        """The default weight of a description against examples: chosen on dev when the
        calibration sidecar is loaded, else ``DEFAULT_TEXT_WEIGHT``."""
        return self.confidence.text_weight if self.confidence else DEFAULT_TEXT_WEIGHT

    def _rated(self, item: Any, mode: str) -> Any:
        """A hit or person group with its confidence and level (unchanged without a sidecar)."""
        if self.confidence is not None:
            item.confidence = float(self.confidence.probability(mode, np.float64(item.score)))
            item.match = self.confidence.level(item.confidence)
        return item

    def _good_matches(self, ranker: _Ranker, fetched: int, mode: str) -> tuple[int, str | None]:
        """Crops at strong or possible among those the search fetched; when all of them are,
        among the best ``GOOD_MATCH_LIMIT`` (one more index search): a count of
        ``GOOD_MATCH_LIMIT`` means at least that many. -> (count, level of the best crop)."""
        assert self.confidence is not None
        good = self.confidence.good_score(mode)
        scores, _ = ranker.top(fetched)
        count = int((scores >= good).sum())
        if count == len(scores) and len(scores) < min(ranker.allowed, GOOD_MATCH_LIMIT):
            scores, _ = ranker.top(GOOD_MATCH_LIMIT)
            count = int((scores >= good).sum())
        if not len(scores):
            return 0, None
        best = float(self.confidence.probability(mode, np.float64(scores[0])))
        return count, self.confidence.level(best)

    def _examples(self, live: IndexView, catalog: Catalog, in_index: np.ndarray,
                  query: SearchQuery) -> np.ndarray | None:
        """(1, D) the query's example part: the examples' stored vectors (read from the live
        index, not re-encoded) averaged, or the photo encoded; None for a text search."""
        if query.image is not None:
            with Image.open(io.BytesIO(query.image)) as im:
                return example_query(self.encoder.spec,
                                     self.encoder.encode_image([im.convert("RGB")]))
        if not query.like:
            return None
        ids = np.asarray(query.like, dtype=np.int64)
        pos = catalog.positions(ids)
        gone = [int(i) for i in ids[pos < 0]]
        pending = [int(i) for i, p in zip(ids, pos, strict=True) if p >= 0 and not in_index[p]]
        try:
            vectors = live.vectors(ids) if not gone and not pending else None  # (E, D)
        except KeyError:  # removed from the index since the catalog was read
            live_ids = set(live.live_ids().tolist())
            vectors, gone = None, ([int(i) for i in ids if int(i) not in live_ids]
                                   or [int(i) for i in ids])
        if vectors is None:
            raise UnknownExamples(_unknown_message(gone, pending), gone + pending)
        return example_query(self.encoder.spec, vectors)

    def _hits(self, session: Session, live: IndexView, query: np.ndarray,
              ranked: list[tuple[float, int]], mode: str = "text") -> dict[int, Hit]:
        """One metadata query for all shown crops; per-part scores from their vectors."""
        rows = crud.crops_by_ids(session, ids=[i for _, i in ranked])
        shown = [(s, i) for s, i in ranked if i in rows]
        if not shown:
            return {}
        vectors = live.vectors(np.asarray([i for _, i in shown], dtype=np.int64))  # (n, D)
        parts = part_scores(self.encoder.spec, query, vectors)
        out = {}
        for (score, crop_id), part in zip(shown, parts, strict=False):
            crop = rows[crop_id]
            out[crop_id] = self._rated(Hit(crop_id, score,
                                           crop.camera.name if crop.camera else None,
                                           as_utc(crop.captured_at), crop.person_id,
                                           crop.width, crop.height, part, crop.original_name),
                                       mode)
        return out

    @property
    def score_max(self) -> float:
        """The best possible score: each unit block (global, stripes) adds a cosine <= 1."""
        return round(self.encoder.spec.norm ** 2, 6)


def _unknown_message(gone: list[int], pending: list[int]) -> str:
    said = []
    if gone:
        said.append(f"no crop with id {', '.join(map(str, gone))} (unknown or deleted)")
    if pending:
        said.append(f"crop {', '.join(map(str, pending))} not in the live index yet (indexing "
                    "pending or failed: GET /status)")
    return "like: " + "; ".join(said) + "; pick examples from search results"


def _engine_filter(flt: SearchFilter, count: int, in_index: np.ndarray, fmask: np.ndarray,
                   mask: np.ndarray) -> tuple[SearchFilter, int]:
    """The filter for the engine, and how many index rows that pass it may still fall outside
    ``mask`` (rows the catalog no longer holds, rows after a cursor's snapshot): fetched
    beyond k, so the answer stays exact."""
    extra = (count - int(in_index.sum())) + int((in_index & fmask).sum()) - int(mask.sum())
    return flt, extra


class _Ranker:
    """The index search for one request: top k among the allowed crops, exactly.

    Cheapest first: no exclusions: a plain search; the filters pushed into an engine that
    stores the attributes it reads (``pushed``: the filter and its overfetch); few
    exclusions: fetch k + excluded and drop them; else the allowed ids as an id filter. The
    first search comes with the query's encoding (``probe``/``attach``: batched with other
    requests); a later one with another k (persons: every match) is made here."""

    def __init__(self, live: IndexView, catalog: Catalog, mask: np.ndarray,
                 pushed: tuple[SearchFilter, int] | None = None) -> None:
        self.live, self.catalog, self.mask = live, catalog, mask
        self.pushed = pushed if pushed is not None and pushed[1] <= OVERFETCH_LIMIT else None
        self.allowed = int(mask.sum())
        self.excluded = live.count - self.allowed  # filtered out, deleted, or unknown
        self.qvec: np.ndarray | None = None  # (1, D)
        self._fetched: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # fetch k -> (1, k) each

    def _plan(self, k: int) -> tuple[int, np.ndarray | None, SearchFilter | None]:
        """-> how many hits to ask the index for, the allowed ids to pass (or None) and the
        filter to push into the engine (or None)."""
        if self.excluded == 0:
            return k, None, None
        if self.pushed is not None:
            flt, extra = self.pushed
            return k + extra, None, flt
        if self.excluded <= OVERFETCH_LIMIT:
            return k + self.excluded, None, None
        return k, self.catalog.ids[self.mask], None

    def probe(self, text: str | None, k: int, examples: np.ndarray | None = None,
              text_weight: float = DEFAULT_TEXT_WEIGHT) -> Probe:
        fetch, allowed_ids, flt = self._plan(max(1, min(k, self.allowed)))
        return Probe(self.live, text, fetch, allowed_ids, flt, examples, text_weight)

    def attach(self, probed: Probed) -> np.ndarray:
        """Keep the probe's search for ``top``; -> the encoded query (1, D)."""
        self.qvec = probed.qvec
        self._fetched[probed.scores.shape[1]] = (probed.scores, probed.ids)
        return probed.qvec

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """-> scores (n,), crop ids (n,), n = min(k, allowed), by score then id."""
        k = min(k, self.allowed)
        if k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        fetch, allowed_ids, flt = self._plan(k)
        if fetch not in self._fetched:
            self._fetched[fetch] = tuple(self.live.search(self.qvec, fetch, filter=flt,
                                                          allowed_ids=allowed_ids))
        scores, ids = self._fetched[fetch]
        # (filters stay in the catalog: exact for every backend, and the catalog also answers
        # how many crops match and groups crops by person)
        scores, ids = scores[0], ids[0]
        pos = self.catalog.positions(ids)
        keep = (ids >= 0) & (pos >= 0)
        keep[keep] = self.mask[pos[keep]]
        scores, ids = scores[keep], ids[keep]
        order = np.lexsort((ids, -scores))[:k]
        return scores[order], ids[order]


def _crop_page(ranker: _Ranker, seen: int, key: list | None,
               top_k: int) -> tuple[list[tuple[float, int]], bool]:
    scores, ids = ranker.top(seen + top_k)  # at most `seen` hits precede the cursor
    ranked = list(zip(scores.tolist(), ids.tolist(), strict=True))
    key = _rebased(key, ranked)
    after = [(s, i) for s, i in ranked if _after(s, i, key)]
    page = after[:top_k]
    more = len(page) == top_k and (len(after) > top_k or len(ids) < ranker.allowed)
    return page, more


Group = tuple[str, float, list[tuple[float, int]], int]  # key, best score, crops, person code


def _group(catalog: Catalog, scores: np.ndarray, ids: np.ndarray) -> list[Group]:
    """Crops ranked -> persons ranked by their best crop; crops without a person stand alone."""
    codes = catalog.persons[catalog.positions(ids)]
    groups: dict[str, Group] = {}
    for s, i, code in zip(scores.tolist(), ids.tolist(), codes.tolist(), strict=False):
        gkey = f"p:{catalog.person_names[code]}" if code >= 0 else f"c:{i:020d}"
        if gkey not in groups:
            groups[gkey] = (gkey, s, [], code)
        if len(groups[gkey][2]) < BEST_CROPS_PER_PERSON:
            groups[gkey][2].append((s, i))
    return sorted(groups.values(), key=lambda g: (-g[1], g[0]))


def _person_pool(seen: int, top_k: int) -> int:
    """Crops ranked to find a page of persons (more only if they hold too few people)."""
    return max((seen + top_k) * PERSON_FANOUT, PERSON_MIN_CANDIDATES)


def _person_page(ranker: _Ranker, catalog: Catalog, seen: int, key: list | None,
                 top_k: int) -> tuple[list[Group], bool]:
    """One search usually; a second over every match only when the first found too few people."""
    scores, ids = ranker.top(_person_pool(seen, top_k))
    groups = _group(catalog, scores, ids)
    complete = len(ids) >= ranker.allowed
    if len(groups) < seen + top_k and not complete:
        scores, ids = ranker.top(ranker.allowed)
        groups, complete = _group(catalog, scores, ids), True
    key = _rebased(key, [(g[1], g[0]) for g in groups])
    after = [g for g in groups if _after(g[1], g[0], key)]
    page = after[:top_k]
    return page, len(page) == top_k and (len(after) > top_k or not complete)


def _person_hit(group: Group, hits: dict[int, Hit], catalog: Catalog,
                mask: np.ndarray) -> PersonHit:
    gkey, score, crops, code = group
    shown = [hits[i] for _, i in crops if i in hits]
    if code < 0:
        when = shown[0].captured_at if shown else None
        return PersonHit(None, score, shown, when, when, 1)
    times = catalog.times[mask & (catalog.persons == code)]
    known = times[~np.isnan(times)]
    first, last = ((datetime.fromtimestamp(known.min(), UTC),
                    datetime.fromtimestamp(known.max(), UTC)) if len(known)
                   else (None, None))
    return PersonHit(catalog.person_names[code], score, shown, first, last, len(times))
