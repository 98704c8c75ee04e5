"""Search by example over HTTP: POST /search with `like` (alone or with a description) and
POST /search/image (a photo, never stored), on the served 12-crop gallery."""

from __future__ import annotations

import numpy as np
import pytest

from service.search.query_vector import unit_blocks

TEXT = "a person in a red shirt"


def post(api, **body):
    r = api.post("/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def stored(api) -> tuple[np.ndarray, np.ndarray, object]:
    """Every live crop id (N,), their stored vectors (N, D) and the encoder spec."""
    engine = api.app.state.engine
    live = engine.live_index()
    ids = live.live_ids()
    return ids, live.vectors(ids), engine.encoder.spec


def expected(ids: np.ndarray, vectors: np.ndarray, query: np.ndarray, leave_out=()) -> list:
    """(crop id, score) of every crop but ``leave_out``, best first (ties by id)."""
    scores = vectors @ query[0]  # (N,)
    ranked = sorted(zip(ids.tolist(), scores.tolist(), strict=True), key=lambda p: (-p[1], p[0]))
    return [(i, s) for i, s in ranked if i not in leave_out]


def assert_ranked(hits: list[dict], want: list[tuple[int, float]]) -> None:
    got = [(h["crop_id"], h["score"]) for h in hits]
    assert len(got) == len(want)
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=2e-3)
    # equal up to near-ties: each hit's expected score matches its own
    score_of = dict(want)
    np.testing.assert_allclose([s for _, s in got], [score_of[i] for i, _ in got], atol=2e-3)


def test_like_alone_ranks_by_the_examples_stored_vectors_and_leaves_them_out(shared_api):
    ids, vectors, spec = stored(shared_api)
    a, b = int(ids[4]), int(ids[9])
    body = post(shared_api, like=[a], top_k=12)
    assert body["query"] is None and body["like"] == [a] and body["matching"] == 11
    assert a not in [h["crop_id"] for h in body["hits"]]
    assert_ranked(body["hits"], expected(ids, vectors, unit_blocks(spec, vectors[4:5]), {a}))
    for hit in body["hits"]:
        assert abs(sum(hit["parts"].values()) - hit["score"]) < 1e-4
    # two examples: their per-block mean, renormalised; neither comes back
    two = post(shared_api, like=[a, b], top_k=12)["hits"]
    mean = unit_blocks(spec, unit_blocks(spec, vectors[[4, 9]]).mean(0, keepdims=True))
    assert_ranked(two, expected(ids, vectors, mean, {a, b}))
    persons = post(shared_api, like=[a], group_by="person", top_k=10)["persons"]
    shown = [c["crop_id"] for p in persons for c in p["crops"]]
    assert shown and a not in shown


def test_like_with_a_description_blends_by_text_weight(shared_api, tiny_encoder):
    ids, vectors, spec = stored(shared_api)
    a = int(ids[2])
    text = tiny_encoder.encode_text([TEXT])  # (1, D)
    example = unit_blocks(spec, vectors[2:3])
    for weight in (0.0, 0.3, 1.0):
        body = post(shared_api, description=TEXT, like=[a], text_weight=weight, top_k=12)
        assert body["query"] == TEXT and body["like"] == [a]
        query = unit_blocks(spec, weight * unit_blocks(spec, text) + (1 - weight) * example)
        assert_ranked(body["hits"], expected(ids, vectors, query, {a}))
    default = post(shared_api, description=TEXT, like=[a], top_k=12)["hits"]
    assert default == post(shared_api, description=TEXT, like=[a], text_weight=0.5,
                           top_k=12)["hits"]


def test_unknown_deleted_and_too_many_examples_are_refused_naming_them(api):
    ids, _, _ = stored(api)
    r = api.post("/search", json={"like": [int(ids[0]), 999_999]})
    assert r.status_code == 404 and "999999" in r.json()["detail"]
    doomed = int(ids[3])
    assert api.delete(f"/admin/crops/{doomed}").status_code == 200
    r = api.post("/search", json={"description": TEXT, "like": [doomed]})
    assert r.status_code == 404 and str(doomed) in r.json()["detail"]
    r = api.post("/search", json={"like": list(range(1, 12))})
    assert r.status_code == 422 and "like" in r.text
    for bad in ({"like": []}, {"like": [1, 1]}, {"like": ["1"]}, {"top_k": 3},
                {"like": [1], "text_weight": 1.5}):
        assert api.post("/search", json=bad).status_code == 422, bad


def test_filters_paging_and_audit_work_with_like(shared_api):
    ids, _, _ = stored(shared_api)
    a = int(ids[0])  # camera cam-0
    hits = post(shared_api, like=[a], cameras=["cam-0"], top_k=10)["hits"]
    assert len(hits) == 3 and {h["camera"] for h in hits} == {"cam-0"}
    assert a not in [h["crop_id"] for h in hits]
    full = [h["crop_id"] for h in post(shared_api, like=[a], top_k=100)["hits"]]
    pages, cursor = [], None
    while True:
        body = post(shared_api, like=[a], top_k=4, **({"cursor": cursor} if cursor else {}))
        pages += [h["crop_id"] for h in body["hits"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == full and len(full) == 11
    first = post(shared_api, like=[a], top_k=4)["next_cursor"]
    r = shared_api.post("/search", json={"like": [int(ids[1])], "top_k": 4, "cursor": first})
    assert r.status_code == 400  # a cursor pages through its own examples only
    entries = shared_api.get("/admin/audit", params={"action": "search"}).json()
    assert entries[0]["detail"]["like"] == [a]  # the last search answered


def _state(api, gallery) -> tuple:
    status = api.get("/status").json()
    files = sorted(p.name for p in gallery.resolved_crops_dir.rglob("*") if p.is_file())
    return status["crops"], status["searchable"], files


def test_search_by_photo_encodes_it_and_stores_nothing(shared_api, shared_gallery, image_bytes,
                                                       tiny_encoder):
    before = _state(shared_api, shared_gallery)
    photo = image_bytes(104)  # the very image of crop 5 (c4.png)
    r = shared_api.post("/search/image", files={"image": ("me.png", photo, "image/png")},
                 data={"top_k": "3", "cameras": ["cam-1", "cam-2"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] is None and len(body["hits"]) == 3
    assert body["hits"][0]["crop_id"] == 5 and body["hits"][0]["score"] > body["score_max"] - 0.05
    assert {h["camera"] for h in body["hits"]} <= {"cam-1", "cam-2"}
    page2 = shared_api.post("/search/image", files={"image": ("me.png", photo, "image/png")},
                     data={"top_k": "3", "cameras": ["cam-1", "cam-2"],
                           "cursor": body["next_cursor"]}).json()["hits"]
    assert not {h["crop_id"] for h in page2} & {h["crop_id"] for h in body["hits"]}
    with_text = shared_api.post("/search/image", files={"image": ("me.png", photo, "image/png")},
                         data={"description": TEXT, "text_weight": "0.5"})
    assert with_text.status_code == 200 and with_text.json()["query"] == TEXT
    assert _state(shared_api, shared_gallery) == before  # no crop, no file, no index row
    entries = shared_api.get("/admin/audit", params={"action": "search"}).json()
    assert entries[0]["detail"]["image"]["bytes"] == len(photo)


def test_search_by_photo_refuses_what_is_not_an_image(api, gallery, image_bytes):
    before = _state(api, gallery)
    r = api.post("/search/image", files={"image": ("notes.txt", b"hello, not a picture",
                                                   "text/plain")})
    assert r.status_code == 422 and "not an image" in r.json()["detail"]
    r = api.post("/search/image", files={"image": ("x.png", b"\x89PNG\r\n\x1a\n", "image/png")})
    assert r.status_code == 422 and "image" in r.json()["detail"]
    assert api.post("/search/image", data={"top_k": "3"}).status_code == 422  # no file
    r = api.post("/search/image", files={"image": ("x.png", b"x", "image/png")},
                 data={"group_by": "camera"})
    assert r.status_code == 422 and "group_by" in r.text
    api.app.state.settings = api.app.state.settings.model_copy(update={"max_upload_bytes": 2000})
    big = image_bytes(7)
    assert len(big) > 2000
    r = api.post("/search/image", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "2000 bytes" in r.json()["detail"]
    assert _state(api, gallery) == before


@pytest.mark.parametrize("argv, problem", [
    ([], "give a description"),
    (["--like", "1"] * 11, "at most 10"),
    (["--like", "3", "--like", "3"], "repeats"),
    (["--like", "3", "--text-weight", "2"], "between 0 and 1"),
])
def test_cli_search_refuses_what_the_api_refuses(argv, problem, capsys):
    from service.cli.main import build_parser

    args = build_parser().parse_args(["search", *argv])
    assert args.func(args) == 2
    assert problem in capsys.readouterr().err
