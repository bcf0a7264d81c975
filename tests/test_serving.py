"""The ranking graph on a real Ray Serve HTTP server: a tiny BERT checkpoint exported to int8 ONNX behind
the parity gate, a SQLite store seeded from a small synthetic catalog, requests over HTTP.

Checks what users rely on: recommendations for known and unknown users, an event that changes the very
next recommendation, a new item that is recommendable at once, deletion, auth, 4xx errors naming the
field, and acknowledged events surviving a restart of the application."""

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TOKEN_ENV = "LMREC_TEST_API_TOKEN"  # set in conftest before Ray starts, so replicas inherit it
APP = "lmrec-test"

pytestmark = pytest.mark.ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifact(tiny_artifact):
    """(root: the checkpoint as ckpt/ and its int8 export as art/, the seed's data config, item texts by id,
    users): the session's tiny artifact (conftest)."""
    art, data_file, users, items = tiny_artifact
    return art.parent, data_file, items, users


@pytest.fixture(scope="module", params=[False, True], ids=["graph", "colocated"])
def service(request, ray_session, artifact):
    """Deploy the application (each stage its own deployment, or the light stages co-located in the
    ingress, there fused with the artifact's item-kNN); yields a small HTTP client and a restart function."""
    requests = pytest.importorskip("requests")
    from ray import serve

    from lmrec.serving.app import AppArgs, build_app

    root, data_file, items, users = artifact
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for app in list(serve.status().applications):  # the other mode's application, if it is still up
        serve.delete(app)
    colocate = request.param
    args = AppArgs(artifact=str(root / "art"), store_path=str(root / f"state-{colocate}.sqlite"), seed_config=str(data_file),
                   api_token_env=TOKEN_ENV, retrieval_backend="exact", colocate=colocate, knn_weight=1.0 if colocate else None,
                   knn_refresh_s=0)  # a refit mid-module would change scores tests compare (refits: tested on the stage)

    def deploy(**changes):
        serve.run(build_app(args.model_copy(update=changes)), name=APP, route_prefix="/", blocking=False)

    deploy()

    class Client:
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {os.environ[TOKEN_ENV]}"}
        catalog = items
        known = users
        colocated = colocate
        seed_config = str(data_file)
        store_path = args.store_path
        artifact_dir = args.artifact

        def post(self, path, body, auth=True, headers=None):
            return requests.post(self.base + path, json=body, headers=headers or (self.auth if auth else {}), timeout=60)

        def put(self, path, body, auth=True):
            return requests.put(self.base + path, json=body, headers=self.auth if auth else {}, timeout=60)

        def get(self, path):
            return requests.get(self.base + path, timeout=60)

        def delete(self, path, auth=True):
            return requests.delete(self.base + path, headers=self.auth if auth else {}, timeout=60)

        def recommend(self, user, **body):
            r = self.post("/v1/recommend", {"user_id": user, **body}, auth=False)
            assert r.status_code == 200, r.text
            return r.json()

        def restart(self):
            serve.delete(APP)
            deploy()

        def roll_out(self, **changes):
            """Update the running application in place (Serve replaces its replicas), as a new artifact rolls out."""
            deploy(**changes)

    yield Client()
    serve.delete(APP)
    serve.shutdown()


def _demo_yaml(artifact, tmp_path) -> tuple[Path, int]:
    """deployments/demo.yaml on the module's artifact and a free port, every replica at 0 CPUs (whatever the
    test machine has): what the benchmarks run with `serve run`."""
    root, data_file, _, _ = artifact
    port = _free_port()
    spec = yaml.safe_load((REPO / "deployments" / "demo.yaml").read_text())
    spec["http_options"]["port"] = port
    spec["applications"][0]["args"].update(artifact=str(root / "art"), seed_config=str(data_file))
    for d in spec["applications"][0]["deployments"]:
        d["ray_actor_options"] = {"num_cpus": 0}
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(spec))
    return config, port


def _tiny_training(tiny_lm, tmp_path) -> Path:
    """A training config for the module's tiny model, one epoch (what `lmrec retrain` trains)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": {
        "item_tower": {"pretrained": tiny_lm, "kind": "text", "dim": 16, "max_text_length": 24},
        "user_tower": {"kind": "transformer", "max_history": 8, "dropout": 0.0}}, "train": {"epochs": 1}}))
    return config


def _ids(resp: dict) -> list[str]:
    return [i["item_id"] for i in resp["items"]]


def test_known_and_unknown_users_get_k_items(service):
    health = service.get("/healthz").json()
    assert health["status"] == "ok" and health["model_version"].startswith("onnx-int8:")
    assert health["store"]["events"] > 0  # seeded from the dataset

    user = service.known[0]
    known = service.recommend(user, k=5)
    assert len(known["items"]) == 5 and known["cold_start"] is False and known["user_id"] == user
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
    assert set(timing) == {"queue", "state", "retrieval", "rerank"} and all(v >= 0 for v in timing.values())
    assert server_timing(r.headers["Server-Timing"], "desc")["batch"] >= 1  # the size of the batch it went in


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(service):
    """Requests arriving together go through the stages as one batch; each answer is the one it gets
    alone, and a request that fails (an empty filter list: refused by the schema) fails alone."""
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
    assert service.get("/v1/items/bulk-1").json() == {"item_id": "bulk-1", "attributes": {"shelf": "bulk"}, "source": "posted"}
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
    hist = {e["item_id"] for e in service.get(f"/v1/users/{user}/history?limit=1000").json()["events"]}
    for item in out["items"]:
        assert item["explanation"]["events"] and {e["item_id"] for e in item["explanation"]["events"]} <= hist


def test_the_ingress_follows_a_reranker_whose_rules_change(service):
    """A separate Reranker: the ingress asks retrieval for what the rules it knows need (plain top-k: k ids
    and scores); when the Reranker's rules change behind its back (a new user_config), the very next
    recommendation still follows them — the Reranker refuses candidates fetched for other rules, the
    ingress learns the new ones and fetches again."""
    if service.colocated:
        pytest.skip("co-located, the ingress holds the rules itself")
    from ray import serve

    from lmrec.serving.retrieval import catalog_attributes

    category = dict(zip(service.catalog, (a.get("category") for a in catalog_attributes(list(service.catalog), None, service.seed_config, ["category"]))))
    user = service.known[1]
    service.recommend(user, k=5)  # the ingress learns the default rules
    reranker = serve.get_deployment_handle("Reranker", APP)
    try:
        reranker.reconfigure.remote({"max_per_attribute": {"category": 1}, "candidates_per_item": 12}).result()
        capped = service.recommend(user, k=5)
        assert len(capped["items"]) == 5
        assert len({category[i] for i in _ids(capped)}) == 5  # one item per category: the new cap applied
    finally:
        reranker.reconfigure.remote({}).result()
    assert len(service.recommend(user, k=5)["items"]) == 5


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
    assert service.delete(f"/v1/users/{user}").json()["deleted"] is False


def test_acknowledged_events_and_items_survive_a_restart(service):
    user = "durable-user"
    items = list(service.catalog)[:3]
    body = {"events": [{"user_id": user, "item_id": i, "event_type": "view"} for i in items]}
    assert service.post("/v1/events", body).json() == {"accepted": 3}
    assert service.put("/v1/items/durable-item", {"text": "a durable new thing"}).status_code == 200
    removed = list(service.catalog)[5]
    assert service.delete(f"/v1/items/{removed}").status_code == 200
    before = service.recommend(user, k=5)
    events = service.get("/healthz").json()["store"]["events"]
    service.restart()
    hist = [e["item_id"] for e in service.get(f"/v1/users/{user}/history").json()["events"]]
    assert hist == items
    after = service.recommend(user, k=5)
    assert _ids(after) == _ids(before) and np.allclose([i["score"] for i in after["items"]], [i["score"] for i in before["items"]], atol=1e-5)
    everything = _ids(service.recommend(user, k=100, exclude_seen=False))
    assert "durable-item" in everything and removed not in everything
    assert service.get(f"/v1/items/{removed}").status_code == 404
    assert service.get("/healthz").json()["store"]["events"] == events  # the seed is not loaded again


def test_a_new_artifact_rolled_out_on_the_store_re_encodes_the_posted_items(service):
    """The application updated to another model (the checkpoint through torch) on the same store: items posted
    through the old model become recommendable with the new model's vectors (its scorer re-encodes them in the
    background), events and users carry over, and no response mixes the two models."""
    import time

    text = "a rollout gadget that only the old model has encoded"
    assert service.put("/v1/items/rolled-item", {"text": text, "attributes": {"shelf": "r"}}).status_code == 200
    user = "rollout-user"
    body = {"events": [{"user_id": user, "item_id": i, "event_type": "click"} for i in [*list(service.catalog)[:2], "rolled-item"]]}
    assert service.post("/v1/events", body).status_code == 202
    old_version = service.recommend(user, k=3)["model_version"]
    service.roll_out(artifact=str(Path(service.artifact_dir).parent / "ckpt"), backend="torch", knn_weight=None)
    try:
        health = service.get("/healthz").json()
        assert health["model_version"].startswith("torch:") and health["model_version"] != old_version
        deadline = time.monotonic() + 60
        while service.get("/v1/items/rolled-item").status_code != 200:  # its vector of the new model on the way
            assert time.monotonic() < deadline, "the posted item never got the new model's vector"
            time.sleep(0.2)
        assert service.get("/v1/items/rolled-item").json() == {"item_id": "rolled-item", "attributes": {"shelf": "r"}, "source": "posted"}
        answer = service.recommend(user, k=100, exclude_seen=False)
        assert answer["model_version"] == health["model_version"] and not answer["cold_start"]
        assert "rolled-item" in _ids(answer)
        hist = [e["item_id"] for e in service.get(f"/v1/users/{user}/history").json()["events"]]
        assert hist[-1] == "rolled-item" and len(hist) == 3
    finally:
        service.restart()  # the module's artifact again, for the tests after this one
    assert service.recommend(user, k=3)["model_version"] == old_version


def test_a_request_that_keeps_meeting_two_models_gets_the_non_personal_answer(service):
    """Stages of two models in one graph (as for a moment of a rollout: here a retrieval stage of another
    model, for good): a user vector of one model is never ranked in the other's index; after its retries the
    request gets the answer for a user without history (cold_start), never an error."""
    if service.colocated:
        pytest.skip("co-located, user state and retrieval are one replica: one model")
    import requests
    from ray import serve

    from lmrec.serving.ingress import Ingress
    from lmrec.serving.rerank import Reranker
    from lmrec.serving.retrieval import Retrieval
    from lmrec.serving.scorer import Scorer, read_model_version
    from lmrec.serving.user_state import UserState

    art = service.artifact_dir
    version = read_model_version(art)
    store = {"store_path": service.store_path, "store_url": None, "store_url_env": None, "model": version}
    scorer = Scorer.bind(art, "auto", store)
    other = Retrieval.bind(str(Path(art).parent / "ckpt"), "torch", store, "exact")  # another model's index
    app = Ingress.bind(UserState.bind(scorer, store, 200, None, None), scorer, other, Reranker.bind(), TOKEN_ENV, False, version)
    serve.run(app, name="mixed", route_prefix="/mixed", blocking=False)
    try:
        user = service.known[0]
        assert not service.recommend(user, k=5)["cold_start"]  # the service itself: personalised
        r = requests.post(service.base + "/mixed/v1/recommend", json={"user_id": user, "k": 5}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["cold_start"] is True and len(r.json()["items"]) == 5
        item = list(service.catalog)[0]
        r = requests.post(service.base + "/mixed/v1/related", json={"item_id": item, "k": 3}, timeout=60)
        assert r.status_code == 200 and item not in _ids(r.json()) and len(r.json()["items"]) == 3
    finally:
        serve.delete("mixed")


def test_collect_turns_what_the_service_saw_into_a_training_dataset(service, tmp_path):
    """`lmrec collect` on the live store: every acknowledged event (seed + posted), the catalog with the
    posted and removed items, loadable by the data loaders as the next training set."""
    from lmrec.cli import main
    from lmrec.config import load_config
    from lmrec.data.loaders import load_dataset

    user, item = "collected-user", list(service.catalog)[7]
    assert service.post("/v1/events", {"user_id": user, "item_id": item, "event_type": "purchase", "value": 12.5}).status_code == 202
    assert service.put("/v1/items/collected-item", {"text": "a thing to collect", "attributes": {"shelf": "x"}}).status_code == 200
    gone = list(service.catalog)[8]
    assert service.delete(f"/v1/items/{gone}").status_code == 200
    assert service.post("/v1/events", {"user_id": "forgotten", "item_id": item, "event_type": "view"}).status_code == 202
    assert service.delete("/v1/users/forgotten").status_code == 200
    stored = service.get("/healthz").json()["store"]["events"]

    assert main(["collect", "--store", service.store_path, "--artifact", service.artifact_dir, "--out", str(tmp_path)]) == 0
    ds = load_dataset(load_config([tmp_path / "data.yaml"]).data)
    inter, items = ds.interactions, ds.items.set_index("item_id")
    assert len(inter) == stored and "forgotten" not in set(inter["user_id"])  # a deleted user's events are not in it
    mine = inter[inter["user_id"] == user]
    assert mine[["item_id", "event", "value"]].values.tolist() == [[item, "purchase", 12.5]]
    assert set(service.catalog) <= set(items.index)
    assert items.loc["collected-item", "text"] == "a thing to collect"
    assert items.loc[item, "text"] == service.catalog[item]
    assert bool(items.loc[gone, "removed"]) and not bool(items.loc[item, "removed"])
    assert main(["collect", "--store", str(tmp_path / "nothing.sqlite"), "--out", str(tmp_path / "x")]) == 2


def test_batch_recommendations_are_what_the_service_answers(service, tmp_path):
    """`lmrec recommend` runs the stages in one process on the live store: each user gets the service's answer."""
    import pandas as pd

    from lmrec.cli import main

    users = [*service.known[:6], "never-seen-before"]
    (tmp_path / "users.txt").write_text("\n".join(users) + "\n")
    knn = ["--knn-weight", "1.0"] if service.colocated else []  # as the module's service was deployed
    out = tmp_path / "recs.parquet"
    assert main(["recommend", "--artifact", service.artifact_dir, "--store", service.store_path, "--users",
                 str(tmp_path / "users.txt"), "--k", "5", "--out", str(out), *knn]) == 0
    recs = pd.read_parquet(out)
    for user in users:
        live = service.recommend(user, k=5)
        mine = recs[recs["user_id"] == user].sort_values("rank")
        assert mine["item_id"].tolist() == _ids(live) and mine["rank"].tolist() == [1, 2, 3, 4, 5]
        np.testing.assert_allclose(mine["score"], [i["score"] for i in live["items"]], rtol=1e-4, atol=1e-5)
        assert mine["cold_start"].unique().tolist() == [live["cold_start"]]
    assert main(["recommend", "--artifact", service.artifact_dir, "--store", service.store_path, "--all",
                 "--filters", "{not json", "--out", str(out)]) == 2


def test_retrain_collects_trains_and_exports_behind_the_gate(artifact, tiny_lm, tmp_path):
    """`lmrec retrain`: a store's events -> a dataset -> a trained checkpoint -> a gated artifact."""
    import json

    from lmrec.cli import main
    from lmrec.serving.user_state import Event, SQLiteStore, seed_store

    root, data_file, items, users = artifact
    with SQLiteStore(tmp_path / "state.sqlite") as store:
        seeded = seed_store(store, None, str(data_file))
        store.append_events([Event("late-user", i, "click") for i in list(items)[:3]])
    config = _tiny_training(tiny_lm, tmp_path)
    assert main(["retrain", str(config), "--store", str(tmp_path / "state.sqlite"), "--artifact", str(root / "art"),
                 "--out", str(tmp_path / "loop"), "--local"]) == 0
    [run] = list((tmp_path / "loop").iterdir())
    manifest = json.loads((run / "artifact" / "manifest.json").read_text())
    assert manifest["gate"]["passed"] and manifest["source"]["dataset"] == "events"
    assert manifest["knn"]["interactions"] == seeded + 3  # trained on everything the store held


def test_the_serve_benchmark_runs_a_yaml_end_to_end(artifact, tmp_path):
    """`lmrec bench serve` as users run it, briefly: `serve run` of a YAML in a local Ray of its own (HAProxy
    mode), priming, load on the graph, the echo app and the floor, the one-process pipeline, freshness and
    new items; then the JSON and PNG it writes, and the service gone."""
    import json

    from lmrec.benchmarks.serve import run_serve_bench

    config, port = _demo_yaml(artifact, tmp_path)
    report = run_serve_bench(tmp_path / "out", config, ["haproxy"], [1, 4], duration=1.0, warmup=0.5, trials=3)
    mode = report["modes"]["haproxy"]
    assert mode["primed"]["users"] == len(artifact[3])
    for kind in ("load", "echo", "floor"):
        assert [x["concurrency"] for x in mode[kind]] == [1, 4]
        assert all(x["requests"] > 0 and x["errors"] == 0 for x in mode[kind]), (kind, mode[kind])
    assert mode["load"][1]["stages"].keys() == {"queue", "state", "retrieval", "rerank"}
    assert mode["freshness"]["changed_fraction"] == 1.0 and mode["new_item"]["found_fraction"] == 1.0
    assert mode["new_item"]["removed_fraction"] == 1.0 and mode["new_item"]["remove_to_gone"]["p50_ms"] > 0
    assert report["in_process"]["requests"] > 0
    assert json.loads((tmp_path / "out" / "serve.json").read_text())["checks"] == report["checks"]
    assert (tmp_path / "out" / "serve.png").stat().st_size > 0
    with socket.socket() as s:  # stopped: its port is free again
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_the_rollout_benchmark_rolls_a_retrained_model_out_under_load(artifact, tiny_lm, tmp_path):
    """`lmrec bench rollout` briefly: `serve run`, items and events posted, `lmrec retrain` on the live store,
    more items, `serve deploy` of the new artifact in place under load: no request fails, the new model
    answers, every posted item is served by it; the JSON and PNG it writes, and the service gone."""
    import json

    from lmrec.benchmarks.rollout import run_rollout_bench

    config, port = _demo_yaml(artifact, tmp_path)
    report = run_rollout_bench(tmp_path / "out", config, retrain=_tiny_training(tiny_lm, tmp_path), items_before=20, items_after=5, concurrency=2)
    assert report["checks"] == {"no_failed_request": True, "new_model_answers": True, "posted_items_served_by_new_model": True}
    switch = report["switch"]
    assert switch["requests"] > 0 and switch["answered_by"][switch["new_model"]] > 0 and switch["old_model"] != switch["new_model"]
    assert json.loads((tmp_path / "out" / "rollout.json").read_text())["checks"] == report["checks"]
    assert (tmp_path / "out" / "rollout.png").stat().st_size > 0
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_retrieval_stage_fuses_the_artifacts_item_knn(artifact, tmp_path):
    """knn_weight > 0: the retrieval stage ranks by model score + weight * item-kNN (as evaluated); 0 or a
    model trained without fusion: the model alone. A weight the model cannot serve is refused by name."""
    import asyncio

    from lmrec.errors import LmrecError
    from lmrec.export import load_artifact
    from lmrec.serving.app import AppArgs, build_app
    from lmrec.serving.retrieval import RetrievalStage
    from lmrec.serving.scorer import load_serving_model

    root, data_file, items, users = artifact
    store = {"store_path": str(tmp_path / "s.sqlite"), "store_url": None, "store_url_env": None}
    alone = RetrievalStage(str(root / "art"), "auto", store, "exact")
    weight = 3.0
    fused = RetrievalStage(str(root / "art"), "auto", store, "exact", knn_weight=weight)
    assert alone.fusion is None and fused.fusion.weight == weight  # the config trained without: alone by default
    assert asyncio.run(fused.ready())["knn_weight"] == weight

    a = load_artifact(root / "art")
    ids = a.catalog["item_id"].astype(str).tolist()
    unit = a.items / np.linalg.norm(a.items, axis=1, keepdims=True)
    hist = ids[:4]
    user = unit[[10, 11]].sum(0)  # a user vector that is not a history item's
    ctx = {"vector": user, "history": [(i, "view") for i in hist]}
    knn = a.knn.sparse_scores([np.arange(4)]).toarray()[0]
    want = unit @ (user / np.linalg.norm(user)) + weight * a.engine.info.temperature * knn / knn.max()
    want[:4] = -np.inf  # exclude_seen
    order = np.argsort(-want, kind="stable")[:5]

    def top5(stage):
        (out,) = asyncio.run(stage.search_many([(ctx, 5, True, None, None, None, None)]))
        return out["ids"][:5], out["scores"][:5]

    got, scores = top5(fused)
    assert got == [ids[i] for i in order]
    from lmrec.errors import RolloutError

    (mixed,) = asyncio.run(fused.search_many([({**ctx, "model": "another-model"}, 5, True, None, None, None, None)]))
    assert isinstance(mixed, RolloutError)  # one model's user vector is never ranked in another's index
    (same,) = asyncio.run(fused.search_many([({**ctx, "model": a.manifest["model_version"]}, 5, True, None, None, None, None)]))
    assert same["ids"][:5] == got
    np.testing.assert_allclose(scores, want[order], rtol=1e-4, atol=1e-5)
    assert top5(alone)[0] != got  # the fusion changed the ranking

    # explanations: each history event's exact part of each candidate's kNN boost travels to re-ranking,
    # which shares the model's part of the score by similarity and adds it
    from lmrec.serving.rerank import Plan, RerankerStage

    plan = Plan.conservative(5, explain=True)
    (cands,) = asyncio.run(fused.search_many([(ctx, 5, True, None, None, None, plan)]))
    knn_part = weight * a.engine.info.temperature * knn / knn.max()
    boost = np.array([knn_part[ids.index(i)] for i in cands["ids"]])
    np.testing.assert_allclose(cands["history"]["knn"].sum(1), boost, rtol=1e-4, atol=1e-6)
    (ranked,) = asyncio.run(RerankerStage().rerank_many([(cands, ctx, 5, 0.0, True, plan)]))
    for item in ranked["items"]:
        events = item["explanation"]["events"]
        assert events and {e["item_id"] for e in events} <= set(hist)
        assert sum(e["contribution"] for e in events) <= 1.0 + 1e-3

    # the kNN refitted on the store's events: a new co-occurrence (five users take items 0 and 50 together)
    from lmrec.serving.user_state import Event, connect_store, seed_store

    pair = (ids[0], ids[50])
    before = fused.fusion.boosts([[pair[0]]])[0]
    assert "skipped" in fused.refit_knn()  # an empty store knows less than the artifact's kNN: it stays
    with connect_store(store) as s:
        seed_store(s, None, str(data_file))  # the training data, as a seeded deployment holds it
        s.append_events([Event(f"pair-{u}", i, "purchase") for u in range(5) for i in pair])
    stats = fused.refit_knn()
    assert stats["count"] == 1 and stats["interactions"] >= 10 and asyncio.run(fused.ready())["knn_refit"] == stats
    assert "no event appended or deleted" in fused.refit_knn()["skipped"]  # nothing new: no second scan
    with connect_store(store) as s:
        s.delete_user("pair-0")
    assert fused.refit_knn()["count"] == 2  # a deletion is news
    after = fused.fusion.boosts([[pair[0]]])[0]
    assert 50 in after[0].tolist() and (before is None or 50 not in before[0].tolist() or not np.allclose(before[1], after[1]))

    model = load_serving_model(root / "ckpt", "torch")
    assert model.knn is None
    with pytest.raises(LmrecError, match="knn_weight=1.0: the model has no item-kNN"):
        RetrievalStage(str(root / "ckpt"), "torch", store, "exact", knn_weight=1.0)
    with pytest.raises(LmrecError, match="args.knn_weight: .* has no item-kNN"):
        build_app(AppArgs(artifact=str(root / "ckpt"), backend="torch", store_path=str(tmp_path / "x.sqlite"), knn_weight=1.0))


def test_a_new_model_on_the_store_never_mixes_in_the_old_models_vectors(artifact, tmp_path):
    """A rollout: a second model (here the checkpoint through torch) serves the store the exported one
    filled. The old model's cached user vectors are misses for it, and the items posted through the old
    scorer get the new model's vectors (the catalog's when the text is the catalog's) before it uses them;
    a user vector computed meanwhile is not cached."""
    import asyncio

    from lmrec.serving.batch import LocalPipeline
    from lmrec.serving.scorer import ScorerCore, load_serving_model
    from lmrec.serving.user_state import Event, SQLiteStore

    root, data_file, items, users = artifact
    path = tmp_path / "s.sqlite"
    text = "a brand new gadget nobody has seen"
    catalog_id = list(items)[5]
    history = [(i, "view") for i in [*list(items)[:3], "fresh"]]
    old = load_serving_model(root / "art")
    with SQLiteStore(path, model=old.model_version) as s:
        core = ScorerCore(old, s)
        s.upsert_items([("fresh", text, {"shelf": "new"}, core.encode_items([text])[0]),
                        (catalog_id, items[catalog_id], {"shelf": "old"}, core.encode_items([items[catalog_id]])[0])])
        s.append_events([Event("u", i, e, timestamp=float(t)) for t, (i, e) in enumerate(history)])
        vectors, cacheable, model = core.user_vectors([history])
        assert cacheable == [True] and model == old.model_version and s.put_vector("u", s.version("u"), vectors[0])

    new = load_serving_model(root / "ckpt", "torch")
    assert new.model_version != old.model_version
    with SQLiteStore(path, model=new.model_version) as s:
        assert s.get_vector("u", s.version("u")) is None  # the old model's vector is a miss
        core = ScorerCore(new, s)
        core.sync()
        assert sorted(core.pending) == sorted(["fresh", catalog_id])
        assert core.user_vectors([history])[1] == [False]  # "fresh" has no vector of this model yet: not cached
        assert core.reencode() == 2 and not core.pending
        got = {r.item_id: r.vector for r in s.items_since(0)}
        np.testing.assert_allclose(got["fresh"], new.encode_items([text])[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got[catalog_id], new.item_vectors[new.item_ids.index(catalog_id)])  # the catalog's
        assert core.user_vectors([history])[1] == [True]

    # the one-process pipeline on a store an older model filled re-encodes first, then ranks with its own vectors
    store = {"store_path": str(tmp_path / "p.sqlite"), "store_url": None, "store_url_env": None}
    with SQLiteStore(store["store_path"], model=old.model_version) as s:
        s.upsert_item("fresh", text, {}, ScorerCore(old, s).encode_items([text])[0])
        s.append_events([Event("u", i, e, timestamp=float(t)) for t, (i, e) in enumerate(history)])
    pipeline = LocalPipeline(root / "ckpt", store, backend="torch")
    index = pipeline.retrieval._stage.index
    want = new.encode_items([text])[0]
    np.testing.assert_allclose(index.vector("fresh"), want / np.linalg.norm(want) if new.normalize else want, rtol=1e-5, atol=1e-6)
    (ranked,) = asyncio.run(pipeline.rank(["u"], 5, exclude_seen=False))
    assert len(ranked["items"]) == 5 and not ranked["cold_start"]
    with SQLiteStore(store["store_path"], model=new.model_version) as s:
        vectors, cacheable, _ = ScorerCore(new, s).user_vectors([history])  # from this model's vectors of the history
        assert cacheable == [True]
        np.testing.assert_allclose(s.get_vector("u", s.version("u")), vectors[0], rtol=1e-4, atol=1e-5)
