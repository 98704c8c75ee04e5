"""Dismissed crops over HTTP: `exclude` on POST /search and POST /search/image leaves the crops
the operator dismissed ("not this person") out of the hits and of every following page, on the
served 12-crop gallery; unknown ids are ignored, more than 200 are refused."""

from __future__ import annotations

from service.api.schemas import MAX_EXCLUDE
from service.search.query_vector import unit_blocks
from tests.service.test_search_like import TEXT, assert_ranked, expected, post, stored


def pages(api, **body) -> list[int]:
    """Every hit's crop id, following next_cursor with the same body."""
    got, cursor = [], None
    while True:
        page = post(api, **body, **({"cursor": cursor} if cursor else {}))
        got += [h["crop_id"] for h in page["hits"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return got


def test_exclude_leaves_dismissed_crops_out_of_every_page(shared_api, tiny_encoder):
    ids, vectors, _ = stored(shared_api)
    text = tiny_encoder.encode_text([TEXT])  # (1, D)
    everything = [i for i, _ in expected(ids, vectors, text)]
    dismissed = {everything[0], everything[5], everything[9]}
    body = post(shared_api, description=TEXT, exclude=sorted(dismissed), top_k=12)
    assert body["matching"] == 9
    assert_ranked(body["hits"], expected(ids, vectors, text, dismissed))
    paged = pages(shared_api, description=TEXT, exclude=sorted(dismissed), top_k=2)
    assert paged == [h["crop_id"] for h in body["hits"]]  # pages of 2 give the same 9
    assert not dismissed & set(paged) and len(paged) == 9
    persons = post(shared_api, description=TEXT, exclude=sorted(dismissed), group_by="person",
                   top_k=10)["persons"]
    shown = {c["crop_id"] for p in persons for c in p["crops"]}
    assert shown and not dismissed & shown


def test_exclude_with_like_leaves_out_both(shared_api):
    ids, vectors, spec = stored(shared_api)
    a, b = int(ids[4]), int(ids[7])
    body = post(shared_api, like=[a], exclude=[b], top_k=12)
    assert body["matching"] == 10
    assert_ranked(body["hits"], expected(ids, vectors, unit_blocks(spec, vectors[4:5]), {a, b}))


def test_a_cursor_pages_through_its_own_dismissals(shared_api):
    ids, _, _ = stored(shared_api)
    first = post(shared_api, description=TEXT, exclude=[int(ids[0])], top_k=3)
    r = shared_api.post("/search", json={"description": TEXT, "top_k": 3,
                                         "cursor": first["next_cursor"]})
    assert r.status_code == 400 and "another query" in r.json()["detail"]
    r = shared_api.post("/search", json={"description": TEXT, "top_k": 3,
                                         "exclude": [int(ids[0]), int(ids[1])],
                                         "cursor": first["next_cursor"]})
    assert r.status_code == 400
    # the same set in another order, repeated: the same query
    again = post(shared_api, description=TEXT, top_k=3, exclude=[int(ids[0])] * 2,
                 cursor=first["next_cursor"])
    assert again["hits"] and int(ids[0]) not in [h["crop_id"] for h in again["hits"]]
    # a text search's cursor without exclude stays what it was (no exclude in its key)
    plain = post(shared_api, description=TEXT, top_k=3)
    assert post(shared_api, description=TEXT, top_k=3, exclude=[],
                cursor=plain["next_cursor"])["hits"]


def test_unknown_ids_are_ignored_and_too_many_refused(shared_api):
    plain = post(shared_api, description=TEXT, top_k=12)
    unknown = post(shared_api, description=TEXT, top_k=12, exclude=[999_999, 2**53])
    assert [h["crop_id"] for h in unknown["hits"]] == [h["crop_id"] for h in plain["hits"]]
    assert unknown["matching"] == plain["matching"] == 12
    r = shared_api.post("/search", json={"description": TEXT,
                                         "exclude": list(range(1, MAX_EXCLUDE + 2))})
    assert r.status_code == 422
    assert "exclude" in r.text and str(MAX_EXCLUDE) in r.text, r.text
    for bad in ([0], ["3"], [2**53 + 1], None, 5):
        r = shared_api.post("/search", json={"description": TEXT, "exclude": bad})
        assert r.status_code == 422 and "exclude" in r.text, bad
    at_limit = post(shared_api, description=TEXT, top_k=12,
                    exclude=list(range(1000, 1000 + MAX_EXCLUDE)))
    assert at_limit["matching"] == 12


def test_search_by_photo_takes_exclude_as_repeated_form_fields(shared_api, image_bytes):
    photo = image_bytes(104)  # the very image of crop 5
    form = {"top_k": "12"}
    first = shared_api.post("/search/image", files={"image": ("me.png", photo, "image/png")},
                            data=form).json()["hits"]
    assert first[0]["crop_id"] == 5
    dismissed = [5, first[1]["crop_id"]]
    r = shared_api.post("/search/image", files={"image": ("me.png", photo, "image/png")},
                        data={**form, "exclude": [str(i) for i in dismissed]})
    assert r.status_code == 200, r.text
    got = [h["crop_id"] for h in r.json()["hits"]]
    assert got == [h["crop_id"] for h in first if h["crop_id"] not in dismissed]
    assert r.json()["matching"] == 10
    r = shared_api.post("/search/image", files={"image": ("me.png", photo, "image/png")},
                        data={"exclude": [str(i) for i in range(1, MAX_EXCLUDE + 2)]})
    assert r.status_code == 422 and "exclude" in r.text
    entries = shared_api.get("/admin/audit", params={"action": "search"}).json()
    assert sorted(entries[0]["detail"]["exclude"]) == sorted(dismissed)
