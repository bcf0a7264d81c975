"""Items over the HTTP API (both layouts): a posted item is recommendable at once, by its text alone; bulk
posts and removals; a removed item is gone from the next request on and comes back with a PUT."""

import pytest

pytestmark = pytest.mark.ray


def _ids(resp: dict) -> list[str]:
    return [i["item_id"] for i in resp["items"]]


def test_a_new_item_is_recommendable_at_once(service):
    # the same text as a catalog item -> the same vector through the LM: it must score exactly like it
    twin_of, text = next(iter(service.catalog.items()))
    r = service.put("/v1/items/brand-new-item", {"text": text, "attributes": {"shelf": "new-arrivals"}})
    assert r.status_code == 200 and r.json()["item_id"] == "brand-new-item"
    out = service.recommend(service.known[0], k=100, exclude_seen=False)
    scores = {i["item_id"]: i["score"] for i in out["items"]}
    assert "brand-new-item" in scores and scores["brand-new-item"] == pytest.approx(scores[twin_of], abs=1e-5)
    # and it is filterable by the attributes it was posted with
    only = service.recommend(service.known[0], k=5, filters={"shelf": "new-arrivals"})
    assert _ids(only) == ["brand-new-item"]
    # users without history (popularity) can reach it too
    cold = service.recommend("nobody-yet", k=5, filters={"shelf": "new-arrivals"})
    assert cold["cold_start"] and _ids(cold) == ["brand-new-item"]


def test_items_posted_in_bulk_are_recommendable_at_once(service):
    twins = list(service.catalog.items())[10:13]
    body = {"items": [{"item_id": f"bulk-{i}", "text": text, "attributes": {"shelf": "bulk"}} for i, (_, text) in enumerate(twins)]}
    assert service.post("/v1/items", body, auth=False).status_code == 401
    r = service.post("/v1/items", body)
    assert r.status_code == 200 and r.json()["accepted"] == 3
    out = service.recommend(service.known[0], k=100, exclude_seen=False)
    scores = {i["item_id"]: i["score"] for i in out["items"]}
    for i, (twin, _) in enumerate(twins):  # encoded in one call, each exactly as its catalog twin
        assert scores[f"bulk-{i}"] == pytest.approx(scores[twin], abs=1e-5)
    assert sorted(_ids(service.recommend("nobody-yet", k=5, filters={"shelf": "bulk"}))) == ["bulk-0", "bulk-1", "bulk-2"]
    assert service.get("/v1/items/bulk-1").json() == {"item_id": "bulk-1", "text": twins[1][1], "attributes": {"shelf": "bulk"},
                                                      "source": "posted"}
    # and removed in bulk: unknown ids are accepted (a tombstone each), the next request no longer has them
    gone = {"item_ids": ["bulk-0", "bulk-1", "never-posted", "bulk-0"]}
    assert service.post("/v1/items/remove", gone, auth=False).status_code == 401
    r = service.post("/v1/items/remove", gone)
    assert r.status_code == 200 and r.json()["accepted"] == 3
    assert _ids(service.recommend("nobody-yet", k=5, filters={"shelf": "bulk"})) == ["bulk-2"]


def test_a_removed_item_is_not_recommended_from_the_next_request_on(service):
    user = service.known[2]
    top = _ids(service.recommend(user, k=10, exclude_seen=False))[0]  # a catalog item, the user's best
    r = service.get(f"/v1/items/{top}")
    assert r.status_code == 200 and r.json()["item_id"] == top and r.json()["source"] == "catalog"
    assert service.delete(f"/v1/items/{top}", auth=False).status_code == 401
    r = service.delete(f"/v1/items/{top}")
    assert r.status_code == 200 and r.json()["item_id"] == top and r.json()["item_version"] > 0
    assert top not in _ids(service.recommend(user, k=100, exclude_seen=False))
    assert service.recommend("nobody-yet", k=5, allow=[top])["items"] == []  # not even when asked for by name
    r = service.get(f"/v1/items/{top}")
    assert r.status_code == 404 and r.json()["error"]["fields"][0]["field"] == "item_id"
    assert service.delete(f"/v1/items/{top}").status_code == 404
    assert service.get("/v1/items/" + "x" * 300).status_code == 422
    # PUT brings it back (here with its catalog text: the same vector, so the same place)
    assert service.put(f"/v1/items/{top}", {"text": service.catalog[top]}).status_code == 200
    assert _ids(service.recommend(user, k=10, exclude_seen=False))[0] == top
    assert service.get(f"/v1/items/{top}").json()["source"] == "catalog"
