"""POST /search: exact filters, grouping by person, cursor pages, per-part scores."""

from datetime import timedelta

import pytest

from tests.service.conftest import T0


def search(api, **body):
    r = api.post("/search", json={"description": "a person in a red shirt", **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_hits_carry_metadata_urls_and_parts(shared_api, tiny_encoder):
    body = search(shared_api, top_k=12)
    assert len(body["hits"]) == 12 and body["matching"] == 12 and body["next_cursor"] is None
    part_names = {p.name for p in tiny_encoder.spec.parts} or {"global"}
    for hit in body["hits"]:
        assert set(hit["parts"]) == part_names  # the layout from the checkpoint
        assert abs(sum(hit["parts"].values()) - hit["score"]) < 1e-4
        assert hit["thumbnail_url"] == f"/crops/{hit['crop_id']}/thumbnail"
        assert hit["person_id"].startswith("p") and hit["camera"].startswith("cam-")
        assert hit["file_name"] == f"c{hit['crop_id'] - 1}.png"
        assert -body["score_max"] <= hit["score"] <= body["score_max"]
    assert body["score_max"] == round(tiny_encoder.spec.norm ** 2, 6)
    thumb = shared_api.get(body["hits"][0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"


def test_camera_filter_is_exact(shared_api):
    everything = search(shared_api, top_k=100)["hits"]
    expected = [h["crop_id"] for h in everything if h["camera"] == "cam-1"]
    hits = search(shared_api, top_k=4, cameras=["cam-1"])["hits"]
    assert [h["crop_id"] for h in hits] == expected  # all 4 of cam-1, in the global order


def test_unknown_camera_and_empty_camera_list_are_refused_not_silently_empty(api):
    r = api.post("/search", json={"description": "someone", "cameras": ["cam-1", "nowhere"]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "cameras"]
    assert "'nowhere'" in r.json()["message"] and "cam-0, cam-1, cam-2" in r.json()["message"]
    r = api.post("/search", json={"description": "someone", "cameras": []})
    assert r.status_code == 422 and "omit it to search every camera" in r.json()["message"]
    assert api.post("/admin/cameras", json={"name": "empty-cam"}).status_code == 201
    assert search(api, cameras=["empty-cam"])["hits"] == []  # known, with no crops: no error


def test_time_filter_is_exact_and_inclusive(shared_api):
    start, end = T0 + timedelta(hours=2), T0 + timedelta(hours=5)
    hits = search(shared_api, top_k=10, time_from=start.isoformat(),
                  time_to=end.isoformat())["hits"]
    assert len(hits) == 4
    hits = search(shared_api, top_k=2, cameras=["cam-0", "cam-2"],
                  time_from=start.isoformat())["hits"]
    assert len(hits) == 2 and {h["camera"] for h in hits} <= {"cam-0", "cam-2"}


def test_reversed_time_range_is_422(shared_api):
    r = shared_api.post("/search", json={"description": "x", "time_from": "2026-05-02T00:00:00Z",
                                  "time_to": "2026-05-01T00:00:00Z"})
    assert r.status_code == 422 and "time_from is after time_to" in r.json()["message"]


def test_group_by_person(shared_api):
    body = search(shared_api, top_k=10, group_by="person")
    persons = body["persons"]
    assert body["hits"] == [] and [p["person_id"] for p in persons].count("p0") == 1
    assert len(persons) == 4
    for p in persons:
        assert p["crop_count"] == 3 and 1 <= len(p["crops"]) <= 3
        assert p["score"] == p["crops"][0]["score"]
        n = int(p["person_id"][1:])
        assert p["first_seen"].startswith((T0 + timedelta(hours=3 * n)).isoformat()[:19])
        assert p["last_seen"].startswith((T0 + timedelta(hours=3 * n + 2)).isoformat()[:19])
    scores = [p["score"] for p in persons]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("group_by, key", [("crop", "hits"), ("person", "persons")])
def test_cursor_pages_cover_the_result_set_once(shared_api, group_by, key):
    full = search(shared_api, top_k=100, group_by=group_by)[key]
    pages, cursor = [], None
    while True:
        body = search(shared_api, top_k=5 if group_by == "crop" else 1, group_by=group_by,
                      cursor=cursor)
        pages += body[key]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == full


def test_deleting_between_pages_neither_repeats_nor_skips(api):
    first = search(api, top_k=4)
    doomed = search(api, top_k=12)["hits"][1]["crop_id"]  # already shown on page 1
    assert api.delete(f"/admin/crops/{doomed}").status_code == 200
    rest = search(api, top_k=20, cursor=first["next_cursor"])["hits"]
    ids = [h["crop_id"] for h in first["hits"] + rest]
    assert len(ids) == len(set(ids)) == 12


def test_bad_cursor_is_400_and_a_cursor_for_another_query_too(shared_api):
    r = shared_api.post("/search", json={"description": "x", "cursor": "nonsense"})
    assert r.status_code == 400
    cursor = search(shared_api, top_k=2)["next_cursor"]
    r = shared_api.post("/search", json={"description": "someone else", "cursor": cursor})
    assert r.status_code == 400 and "another query" in r.json()["detail"]


def test_search_is_audited(api):
    search(api, top_k=1, cameras=["cam-0"])
    entries = api.get("/admin/audit", params={"action": "search"}).json()
    assert entries[0]["detail"]["cameras"] == ["cam-0"] and entries[0]["actor"].startswith("env")


def _audited_searches(api):
    key = api.headers.pop("X-API-Key")
    try:
        assert api.post("/search", json={"description": "anyone"}).status_code == 200
    finally:
        api.headers["X-API-Key"] = key
    search(api, top_k=1)  # with the admin key
    entries = api.get("/admin/audit", params={"action": "search"}).json()
    return sorted(e["actor"] == "anonymous" for e in entries)


@pytest.mark.parametrize("setting, expected", [("keyed", [False]), ("all", [False, True]),
                                               ("off", []), ("false", []), ("true", [False, True])])
def test_which_searches_are_audited_is_a_setting(api, setting, expected):
    from service.config import Settings

    api.app.state.settings = api.app.state.settings.model_copy(
        update={"audit_searches": Settings(audit_searches=setting).audit_searches})
    assert _audited_searches(api) == expected


class _Counting:
    """Counts calls to one method of a wrapped object, delegating everything."""

    def __init__(self, inner, method: str) -> None:
        self._inner, self._method, self.calls = inner, method, 0

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def counted(*args, **kwargs):
            self.calls += 1
            return attr(*args, **kwargs)

        return counted


@pytest.mark.parametrize("body", [{}, {"cameras": ["cam-1"]}, {"group_by": "person"},
                                  {"time_from": T0.isoformat(), "top_k": 3}])
def test_one_encoding_one_index_search_one_query_per_request(api, gallery, monkeypatch, body):
    from sqlalchemy import event

    from service.store.db import get_engine
    from service.store.keys import KeyRing

    # keys in the database are re-read every 10 s: not within this test, however slow
    api.app.state.keys = KeyRing(gallery.admin_key_digests, ttl=3600)
    search(api, **body)  # the catalog, the index and the keys are loaded once, not per request
    api.app.state.audit.close()  # its thread would write the audit entries at any moment
    engine = api.app.state.engine
    encoder = _Counting(engine.encoder, "encode_text")
    monkeypatch.setattr(engine, "encoder", encoder)
    live = _Counting(engine.live_index(), "search")
    monkeypatch.setattr(engine, "live_index", lambda: live)
    statements = []

    def record(_conn, _cursor, statement, *_args):
        statements.append(statement)

    db = get_engine(gallery.resolved_database_url)
    event.listen(db, "before_cursor_execute", record)
    try:
        assert search(api, **body)["matching"] > 0
    finally:
        event.remove(db, "before_cursor_execute", record)
    assert (encoder.calls, live.calls) == (1, 1)
    assert [s.split()[0] for s in statements] == ["SELECT"], statements


def test_person_sightings_are_in_time_order_and_unknown_persons_404(api, gallery):
    from service.jobs.ingest import ingest_bytes
    from service.store.db import session_scope
    from tests.conftest import make_image

    with session_scope(gallery.resolved_database_url) as session:  # p1, earlier, no camera
        ingest_bytes(session, gallery, name="early.png", data=make_image(999), camera=None,
                     captured_at=T0 - timedelta(days=1), person_id="p1")
        ingest_bytes(session, gallery, name="timeless.png", data=make_image(998), camera=None,
                     person_id="p1")
    body = api.get("/persons/p1/sightings").json()
    names = [s["file_name"] for s in body["sightings"]]
    assert names == ["early.png", "c3.png", "c4.png", "c5.png", "timeless.png"]
    assert body["sightings"][1]["camera"] == "cam-0" and body["sightings"][0]["camera"] is None
    assert body["sightings"][1]["thumbnail_url"].endswith("/thumbnail") and not body["truncated"]
    r = api.get("/persons/nobody/sightings")
    assert r.status_code == 404 and "nobody" in r.json()["detail"]


def test_camera_info_has_descriptions_and_counts(api):
    assert api.post("/admin/cameras", json={"name": "dock", "description": "a dataset folder"}
                    ).status_code == 201
    info = {c["name"]: c for c in api.get("/cameras/info").json()}
    assert info["cam-0"]["crop_count"] == 4 and info["cam-0"]["description"] is None
    assert info["dock"] == {"name": "dock", "description": "a dataset folder", "crop_count": 0}


def test_favicon_is_served(shared_api):
    r = shared_api.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in r.content


def test_an_engine_that_filters_holds_each_crops_camera_and_time(shared_api, shared_gallery):
    """Milvus stores camera and time with each row (the service's filters become its
    expressions): its own filter must select exactly the crops the database says."""
    from indexer.filters import InSet, Range, SearchFilter
    from service.jobs.index_backend import backend_from_settings
    from service.search.catalog import to_epoch
    from service.store.db import session_scope
    from service.store.orm import Crop

    backend = backend_from_settings(shared_gallery)
    if not backend.filters_in_engine:
        pytest.skip(f"the {backend.name} backend filters by the catalog's crop ids")
    with session_scope(shared_gallery.resolved_database_url) as session:
        crops = [(c.id, c.camera_id, to_epoch(c.captured_at)) for c in session.query(Crop)]
    camera = crops[1][1]
    since = to_epoch(T0 + timedelta(hours=6))
    live = backend.open()
    query = live.vectors(live.live_ids()[:1])
    for flt, want in [(SearchFilter((InSet("camera_id", frozenset({camera})),)),
                       {i for i, c, _ in crops if c == camera}),
                      (SearchFilter((Range("ts", since),)),
                       {i for i, _, t in crops if t >= since})]:
        hits = live.search(query, 20, filter=flt)
        assert set(hits.ids[0][hits.ids[0] >= 0].tolist()) == want


def _forged(cursor: str, text: str) -> str:
    """A real cursor with one field's JSON replaced by raw text (1e400, 10**400, NaN)."""
    import base64
    import json

    data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    field, _, value = text.partition("=")
    raw = json.dumps({**data, field: "@"}, separators=(",", ":")).replace('"@"', value)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize("text", [
    "n=1e400", "n=-1e400", "n=NaN", "n=true", "m=1e400", "m=" + "9" * 400,
    "k=[" + "1" * 401 + ",1]", "k=[1e400,1]", "k=[NaN,1]", "k=[0.5," + "7" * 400 + "]",
    "k=[0.5,true]", "f=null", "v=1", "k=null", "n=null"])
def test_a_crafted_cursor_is_400_with_a_message(shared_api, text):
    cursor = search(shared_api, top_k=2)["next_cursor"]
    r = shared_api.post("/search", json={"description": "a person in a red shirt", "top_k": 2,
                                  "cursor": _forged(cursor, text)})
    assert r.status_code == 400, r.text
    assert "next_cursor unchanged" in r.json()["detail"]
