"""The service's life (both layouts): acknowledged writes survive a restart, a new artifact rolls out on
the live store, a graph whose stages serve two models answers without mixing them, and what the store
collected becomes the next training set and batch recommendations."""

from pathlib import Path

import numpy as np
import pytest

from helpers import tiny_training

pytestmark = pytest.mark.ray


def _ids(resp: dict) -> list[str]:
    return [i["item_id"] for i in resp["items"]]


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
        assert service.get("/v1/items/rolled-item").json() == {"item_id": "rolled-item", "text": text, "attributes": {"shelf": "r"},
                                                               "source": "posted"}
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

    from lmrec.artifact import read_model_version
    from lmrec.serving.args import AppArgs
    from lmrec.serving.ingress import Ingress
    from lmrec.serving.retrieval import Retrieval
    from lmrec.serving.scorer import Scorer
    from lmrec.serving.user_state import UserState

    art = service.artifact_dir
    version = read_model_version(art)
    args = AppArgs(artifact=art, store_path=service.store_path, api_token_env="LMREC_TEST_API_TOKEN").resolved()
    store = args.store(version)
    scorer = Scorer.bind(art, "auto", store)
    other = Retrieval.bind(str(Path(art).parent / "ckpt"), "torch", store, "exact")  # another model's index
    app = Ingress.bind(args, version, scorer, UserState.bind(scorer, store, 200, None, None), other)
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


def _reference_top(artifact_dir: str, store_path, user: str, k: int, knn_weight: float) -> list[str] | None:
    """What the ranking should be, computed apart from the ranking code: the user's history from the store,
    the user vector through the artifact's ONNX user tower, cosine scores against the item matrix, plus the
    artifact's item-kNN as evaluation fuses it (at ``knn_weight``); seen items out. None without history."""
    from lmrec.artifact import load_artifact
    from lmrec.data.encode import EVENT_CODE
    from lmrec.store.sqlite import SQLiteStore

    a = load_artifact(artifact_dir)
    ids = a.catalog["item_id"].astype(str).tolist()
    with SQLiteStore(store_path) as store:
        history = [e for e in store.history(user, a.engine.info.max_history) if e.item_id in ids]
    if not history:
        return None
    rows = np.array([ids.index(e.item_id) for e in history])
    user_vec = a.engine.user_vectors([rows], [np.array([EVENT_CODE[e.event_type] for e in history])])[0]
    unit = a.items / np.linalg.norm(a.items, axis=1, keepdims=True)
    scores = unit @ (user_vec / np.linalg.norm(user_vec))
    if knn_weight:
        knn = a.knn.sparse_scores([rows]).toarray()[0]
        if knn.max() > 0:
            scores = scores + knn_weight * a.engine.info.temperature * knn / knn.max()
    scores[rows] = -np.inf
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


def test_batch_recommendations_equal_a_reference_and_the_live_service(service, tmp_path):
    """`lmrec recommend` on a freshly seeded store answers what the reference computed here from the artifact
    and the store alone gives; on the live store (posted and removed items, cached vectors) it answers what
    the live service answers."""
    import pandas as pd

    from lmrec.cli import main
    from lmrec.store.seed import seed_store
    from lmrec.store.sqlite import SQLiteStore

    users = [*service.known[:6], "never-seen-before"]
    (tmp_path / "users.txt").write_text("\n".join(users) + "\n")
    weight = 1.0 if service.colocated else 0.0  # as the session's service was deployed

    def recommend(store_path) -> pd.DataFrame:
        out = tmp_path / "recs.parquet"
        assert main(["recommend", "--artifact", service.artifact_dir, "--store", str(store_path), "--users",
                     str(tmp_path / "users.txt"), "--k", "5", "--out", str(out), "--knn-weight", str(weight)]) == 0
        return pd.read_parquet(out)

    fresh = tmp_path / "fresh.sqlite"
    with SQLiteStore(fresh) as store:
        seed_store(store, None, service.seed_config)
    recs = recommend(fresh)
    for user in users[:-1]:
        mine = recs[recs["user_id"] == user].sort_values("rank")
        assert mine["item_id"].tolist() == _reference_top(service.artifact_dir, fresh, user, 5, weight)

    recs = recommend(service.store_path)
    for user in users:
        live = service.recommend(user, k=5)
        mine = recs[recs["user_id"] == user].sort_values("rank")
        assert mine["item_id"].tolist() == _ids(live) and mine["rank"].tolist() == [1, 2, 3, 4, 5]
        np.testing.assert_allclose(mine["score"], [i["score"] for i in live["items"]], rtol=1e-4, atol=1e-5)
        assert mine["cold_start"].unique().tolist() == [live["cold_start"]]
    assert main(["recommend", "--artifact", service.artifact_dir, "--store", service.store_path, "--all",
                 "--filters", "{not json", "--out", str(tmp_path / "x.parquet")]) == 2


def test_retrain_collects_trains_and_exports_behind_the_gate(artifact, tiny_lm, tmp_path):
    """`lmrec retrain`: a store's events -> a dataset -> a trained checkpoint -> a gated artifact."""
    import json

    from lmrec.cli import main
    from lmrec.store.base import Event
    from lmrec.store.seed import seed_store
    from lmrec.store.sqlite import SQLiteStore

    root, data_file, items, users = artifact
    with SQLiteStore(tmp_path / "state.sqlite") as store:
        seeded = seed_store(store, None, str(data_file))
        store.append_events([Event("late-user", i, "click") for i in list(items)[:3]])
    config = tiny_training(tiny_lm, tmp_path)
    assert main(["retrain", str(config), "--store", str(tmp_path / "state.sqlite"), "--artifact", str(root / "art"),
                 "--out", str(tmp_path / "loop"), "--local"]) == 0
    [run] = list((tmp_path / "loop").iterdir())
    manifest = json.loads((run / "artifact" / "manifest.json").read_text())
    assert manifest["gate"]["passed"] and manifest["source"]["dataset"] == "events"
    assert manifest["knn"]["interactions"] == seeded + 3  # trained on everything the store held
