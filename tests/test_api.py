"""The HTTP API on a real Ray Serve server (both layouts): recommendations and related items for known and
unknown users, batching, an event changing the very next answer, explanations, item metadata on request,
the users list, auth, and 4xx errors naming the field."""

import numpy as np
import pytest

pytestmark = pytest.mark.ray


def _ids(resp: dict) -> list[str]:
    return [i["item_id"] for i in resp["items"]]


def test_known_and_unknown_users_get_k_items(service):
    health = service.get("/healthz").json()
    assert health["status"] == "ok" and health["model_version"].startswith("onnx-int8:")
    assert health["store"]["events"] > 0  # seeded from the dataset
    assert health["stages"] == {"state": "ok", "scorer": "ok", "retrieval": "ok"} and health["items_served"] > 0

    user = service.known[0]
    known = service.recommend(user, k=5)
    assert len(known["items"]) == 5 and known["cold_start"] is False and known["user_id"] == user
    assert known["history_version"] > 0
    assert all(i in service.catalog for i in _ids(known))
    seen = {e["item_id"] for e in service.get(f"/v1/users/{user}/history?limit=1000").json()["events"]}
    assert seen and not seen & set(_ids(known))  # exclude_seen by default
    scores = [i["score"] for i in known["items"]]
    assert scores == sorted(scores, reverse=True)

    new = service.recommend("someone-new", k=5)
    assert len(new["items"]) == 5 and new["cold_start"] is True  # popularity until the first event

    # each stage's time as the ingress waited for it, in a standard Server-Timing header
    from lmrec.benchmarks.serve import server_timing

    r = service.post("/v1/recommend", {"user_id": user, "k": 5}, auth=False)
    timing = server_timing(r.headers["Server-Timing"])
    assert set(timing) == {"queue", "state", "retrieval"} and all(v >= 0 for v in timing.values())
    assert server_timing(r.headers["Server-Timing"], "desc")["batch"] >= 1  # the size of the batch it went in


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(service):
    """Requests arriving together go through the stages as one batch; each answer is the one it gets
    alone, and a request that fails in a stage (an empty filter list, refused by retrieval) fails alone."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [{"user_id": u, "k": 3 + i % 4, "explain": i % 3 == 0} for i, u in enumerate(service.known[:24])]
    bodies += [{"user_id": "nobody-yet", "k": 4}, {"user_id": service.known[0], "k": 3, "filters": {"shelf": []}}]
    alone = [service.post("/v1/recommend", b, auth=False) for b in bodies]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: service.post("/v1/recommend", b, auth=False), bodies * 3))
    for i, r in enumerate(together):
        ref = alone[i % len(bodies)]
        assert r.status_code == ref.status_code, (bodies[i % len(bodies)], r.text)
        got, want = r.json(), ref.json()
        if r.status_code != 200:
            assert got == want
            continue
        assert _ids(got) == _ids(want) and got["cold_start"] == want["cold_start"]  # scores: float rounding of a batched product
        np.testing.assert_allclose([i["score"] for i in got["items"]], [i["score"] for i in want["items"]], rtol=1e-5, atol=1e-6)
        assert [i.get("explanation") for i in got["items"]] == [i.get("explanation") for i in want["items"]]
    assert alone[-1].status_code == 422 and "shelf" in alone[-1].json()["error"]["message"]
    sizes = [int(r.headers["Server-Timing"].rpartition("batch;desc=")[2]) for r in together if r.status_code == 200]
    assert max(sizes) > 1  # some of them did share a batch


def test_an_event_changes_the_very_next_recommendation(service):
    user = "fresh-user"
    first = service.recommend(user, k=10)
    assert first["cold_start"]
    item = _ids(first)[0]
    r = service.post("/v1/events", {"user_id": user, "item_id": item, "event_type": "click"})
    assert r.status_code == 202 and r.json() == {"accepted": 1}
    after = service.recommend(user, k=10)
    assert not after["cold_start"] and item not in _ids(after)  # personalised now, the clicked item excluded
    assert _ids(after) != _ids(first)
    # a second, different event changes it again (no stale cached user vector)
    other = _ids(after)[-1]
    assert service.post("/v1/events", {"events": [{"user_id": user, "item_id": other, "event_type": "purchase"}]}).status_code == 202
    again = service.recommend(user, k=10, exclude_seen=False)
    assert [i["score"] for i in again["items"]] != [i["score"] for i in after["items"]]
    hist = service.get(f"/v1/users/{user}/history").json()["events"]
    assert [(e["item_id"], e["event_type"]) for e in hist] == [(item, "click"), (other, "purchase")]


def test_related_items_are_what_users_choose_after_the_item(service):
    """/v1/related ranks like a recommendation for someone whose one event is the item (the same tower, kNN
    fusion, filters and rules), never returns the item itself, and works for an item posted a moment ago
    and for a removed one."""
    item = list(service.catalog)[3]
    r = service.post("/v1/related", {"item_id": item, "k": 5}, auth=False)
    assert r.status_code == 200, r.text
    related = r.json()
    assert related["item_id"] == item and related["model_version"] and item not in _ids(related) and len(related["items"]) == 5
    user = "related-probe"
    assert service.post("/v1/events", {"user_id": user, "item_id": item, "event_type": "view"}).status_code == 202
    rec = service.recommend(user, k=5)
    assert _ids(rec) == _ids(related)
    np.testing.assert_allclose([i["score"] for i in rec["items"]], [i["score"] for i in related["items"]], rtol=1e-4, atol=1e-5)
    first = _ids(related)[0]
    assert first not in _ids(service.post("/v1/related", {"item_id": item, "k": 5, "deny": [first]}, auth=False).json())

    text = "a gadget posted a moment ago, " + service.catalog[item]
    assert service.put("/v1/items/related-new", {"text": text}).status_code == 200
    r = service.post("/v1/related", {"item_id": "related-new", "k": 3}, auth=False)
    assert r.status_code == 200 and len(r.json()["items"]) == 3 and "related-new" not in _ids(r.json())
    assert service.delete("/v1/items/related-new").status_code == 200  # the tests after rank the catalog alone
    gone = list(service.catalog)[9]
    assert service.delete(f"/v1/items/{gone}").status_code == 200
    r = service.post("/v1/related", {"item_id": gone, "k": 3}, auth=False)  # alternatives to what is gone
    assert r.status_code == 200 and gone not in _ids(r.json()) and len(r.json()["items"]) == 3


def test_explanations_name_history_events(service):
    user = service.known[1]
    out = service.recommend(user, k=3, explain=True)
    assert len(out["items"]) == 3
    hist = {e["item_id"] for e in service.get(f"/v1/users/{user}/history?limit=1000").json()["events"]}
    for item in out["items"]:
        assert item["explanation"]["events"] and {e["item_id"] for e in item["explanation"]["events"]} <= hist


def test_writes_need_the_token(service):
    event = {"user_id": "x", "item_id": next(iter(service.catalog)), "event_type": "view"}
    r = service.post("/v1/events", event, auth=False)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = service.post("/v1/events", event, auth=False, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert service.put("/v1/items/x", {"text": "a thing"}, auth=False).status_code == 401
    assert service.delete("/v1/users/x", auth=False).status_code == 401
    assert service.get("/v1/users/x/history").json()["events"] == []  # nothing was written


@pytest.mark.parametrize(("method", "path", "body", "status", "field"), [
    ("post", "/v1/recommend", {"user_id": "u1", "k": 0}, 422, "k"),
    ("post", "/v1/recommend", {"user_id": "u1", "k": 10_000}, 422, "k"),
    ("post", "/v1/recommend", {"user_id": "u1", "colour": "red"}, 422, "colour"),
    ("post", "/v1/recommend", {"k": 3}, 422, "user_id"),
    ("post", "/v1/events", {"user_id": "0", "item_id": "1", "event_type": "teleport"}, 422, "event_type"),
    ("post", "/v1/events", {"user_id": "0", "item_id": "1", "event_type": "view", "timestamp": -5}, 422, "timestamp"),
    ("put", "/v1/items/x", {"text": "   "}, 422, "text"),
    ("put", "/v1/items/x", {"text": "ok", "attributes": {"tags": ["a", "b"]}}, 422, "attributes"),
    ("post", "/v1/items", {"items": []}, 422, "items"),
    ("post", "/v1/items", {"items": [{"item_id": "a", "text": "ok"}, {"item_id": "b", "text": " "}]}, 422, "items.1.text"),
    ("post", "/v1/items", {"items": [{"text": "ok"}]}, 422, "items.0.item_id"),
    ("post", "/v1/items/remove", {"item_ids": []}, 422, "item_ids"),
    ("post", "/v1/items/remove", {"item_ids": ["ok", ""]}, 422, "item_ids.1"),
    ("post", "/v1/related", {"item_id": "x", "explain": True}, 422, "explain"),
    ("post", "/v1/related", {"item_id": "", "k": 3}, 422, "item_id"),
    ("post", "/v1/related", {"item_id": "never-seen-anywhere"}, 404, "item_id"),
])  # fmt: skip
def test_bad_input_gets_a_4xx_naming_the_field(service, method, path, body, status, field):
    r = getattr(service, method)(path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert any(f["field"].startswith(field) for f in err["fields"]), err


def test_malformed_json_and_unknown_routes(service):
    import requests

    r = requests.post(service.base + "/v1/recommend", data=b"{not json", headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert service.get("/v1/nothing-here").status_code == 404
    r = requests.post(service.base + "/v1/events", data=b"x" * ((1 << 20) + 1), headers={**service.auth, "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413


def test_delete_forgets_the_user(service):
    user = "to-forget"
    item = next(iter(service.catalog))
    assert service.post("/v1/events", {"user_id": user, "item_id": item, "event_type": "view"}).status_code == 202
    assert not service.recommend(user, k=3)["cold_start"]
    r = service.delete(f"/v1/users/{user}")
    assert r.status_code == 200 and r.json() == {"user_id": user, "deleted": True}
    assert service.get(f"/v1/users/{user}/history").json()["events"] == []
    assert service.recommend(user, k=3)["cold_start"]
    # that answer was logged as an impression of the user's: a second delete removes it, a third finds nothing
    assert service.delete(f"/v1/users/{user}").json()["deleted"] is True
    assert service.delete(f"/v1/users/{user}").json()["deleted"] is False


def test_answers_are_named_and_events_can_cite_them(service):
    """Every answer carries a recommendation_id; an event citing it (and the slot) is accepted; the policy in
    force is readable, and changes without a restart (user_config of the stage that ranks)."""
    from ray import serve

    user = service.known[3]
    first = service.recommend(user, k=4)
    rec = first["recommendation_id"]
    assert len(rec) == 32 and first["policy"] == "greedy" and all(i["propensity"] == 1.0 for i in first["items"])
    assert service.recommend(user, k=4)["recommendation_id"] != rec
    clicked = first["items"][2]["item_id"]
    event = {"user_id": user, "item_id": clicked, "event_type": "click", "recommendation_id": rec, "position": 2}
    assert service.post("/v1/events", event).status_code == 202
    bad = service.post("/v1/events", {**event, "position": -1})
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"].endswith("position")
    assert service.get("/v1/policy").json()["ranking"]["policy"]["kind"] == "greedy"

    stage, name = ("Ingress", "ranking") if service.colocated else ("Retrieval", None)
    handle = serve.get_deployment_handle(stage, "lmrec-test")
    exploring = {"policy": {"kind": "epsilon", "epsilon": 1.0}, "pool": 20}
    try:
        handle.reconfigure.remote({name: exploring} if name else exploring).result()
        answer = service.recommend(user, k=4)
        assert answer["policy"] == "epsilon" and all(i["explored"] for i in answer["items"])
        assert all(0 < i["propensity"] < 1 for i in answer["items"])
        assert service.get("/v1/policy").json()["ranking"]["policy"]["kind"] == "epsilon"
    finally:
        handle.reconfigure.remote({name: {}} if name else {}).result()
    assert service.recommend(user, k=4)["policy"] == "greedy"
