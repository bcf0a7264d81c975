"""The closed loop on a real Ray Serve service (both layouts): an experiment configured without a restart,
answers drawn with logged propensities, clicks attributed to what was shown, `lmrec collect` writing the
logged-bandit data, `lmrec ope` estimating a candidate from it and `lmrec experiment report` reading it."""

import json

import pytest
import yaml

pytestmark = pytest.mark.ray


def test_an_experiment_logged_collected_estimated_and_reported(service, tmp_path):
    from ray import serve

    from lmrec.cli import main

    experiment = {"name": "loop-test", "variants": [{"name": "control", "share": 1.0},
                                                      {"name": "explore", "share": 1.0,
                                                       "policy": {"kind": "softmax", "temperature": 2.0}}]}
    ranking = {"policy": {"kind": "softmax", "temperature": 1.0}, "pool": 20, "experiment": experiment}
    stage, key = ("Ingress", "ranking") if service.colocated else ("Retrieval", None)
    handle = serve.get_deployment_handle(stage, "lmrec-test")
    handle.reconfigure.remote({key: ranking} if key else ranking).result()
    try:
        seen_variants, answers = set(), 0
        for round_ in range(3):
            for user in service.known[:20]:
                answer = service.recommend(user, k=5)
                assert answer["policy"] == "softmax" and answer["variant"] in ("control", "explore")
                seen_variants.add(answer["variant"])
                answers += 1
                if (hash(user) + round_) % 3 == 0:  # some users click what they were shown
                    slot = round_ % 5
                    event = {"user_id": user, "item_id": answer["items"][slot]["item_id"], "event_type": "click",
                             "recommendation_id": answer["recommendation_id"], "position": slot}
                    assert service.post("/v1/events", event).status_code == 202
            # a related-items list is logged too, but it is not the experiment's surface
            assert service.post("/v1/related", {"item_id": answer["items"][0]["item_id"], "k": 5}, auth=False).status_code == 200
        assert seen_variants == {"control", "explore"}
    finally:
        handle.reconfigure.remote({key: {}} if key else {}).result()

    data = tmp_path / "collected"
    assert main(["collect", "--store", service.store_path, "--artifact", service.artifact_dir, "--out", str(data)]) == 0
    impressions = list((data / "logs" / "impressions").glob("*.parquet"))
    assert impressions
    import pandas as pd

    logged = pd.concat(pd.read_parquet(f) for f in impressions)
    mine = logged[logged["policy"] == "softmax"]
    assert mine["recommendation_id"].nunique() >= answers and (mine["propensity"] > 0).all() and (mine["propensity"] <= 1).all()

    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(yaml.safe_dump({"kind": "softmax", "temperature": 1.5}))
    out = tmp_path / "ope.json"
    assert main(["ope", "--data", str(data), "--policy", str(candidate), "--artifact", service.artifact_dir,
                 "--bootstrap", "100", "--out", str(out)]) == 0
    report = json.loads(out.read_text())["report"]
    assert report["recommendations"] >= answers and (report["estimates"] or report["refused"])
    for estimate in report["estimates"].values():
        assert estimate["estimate"] >= 0 and estimate["lower"] <= estimate["estimate"] <= estimate["upper"]

    exp = tmp_path / "experiment.json"
    assert main(["experiment", "report", "--data", str(data), "--ope", f"explore={out}", "--out", str(exp)]) == 0
    result = json.loads(exp.read_text())
    assert set(result["variants"]) >= {"control", "explore"} and "vs_control" in result["variants"]["explore"]
    assert 0 < result["variants"]["explore"]["vs_control"]["p_value"] <= 1
    shown = logged[logged["variant"].notna() & (logged["surface"] == "recommend")]
    assert result["surface"] == "recommend" and (logged["surface"] == "related").any()
    assert sum(v["recommendations"] for v in result["variants"].values()) == shown["recommendation_id"].nunique()
    assert main(["ope", "--data", str(tmp_path), "--policy", str(candidate), "--artifact", service.artifact_dir]) == 2


def test_simulated_users_drive_the_running_service_over_http(service, tmp_path, monkeypatch):
    """`lmrec simulate --url`: the simulated world's users ask the service, click with position bias, citing the
    recommendation they answer; new items are posted by their text; the service logs every slate."""
    from lmrec.cli import main

    monkeypatch.setenv("LMREC_TEST_API_TOKEN", service.auth["Authorization"].split()[1])
    before = service.get("/healthz").json()["store"]["impressions"]
    out = tmp_path / "sim"
    assert main(["simulate", "--url", service.base, "--token-env", "LMREC_TEST_API_TOKEN", "--world", service.seed_config,
                 "--days", "1", "--users", "6", "--out", str(out)]) == 0
    summary = json.loads((out / "simulate.json").read_text())
    assert summary["steps"] > 0 and summary["slots"] == summary["steps"] * 10
    assert service.get("/healthz").json()["store"]["impressions"] >= before + summary["steps"]
    import pandas as pd

    events = pd.concat(pd.read_parquet(f) for f in (out / "logs" / "events").glob("*.parquet"))
    clicks = events[events["event_type"] == "click"]
    assert clicks["recommendation_id"].notna().all() and clicks["position"].notna().all()


def test_an_experiment_between_two_models(service, tmp_path, tiny_lm):
    """Co-located: a challenger artifact in the app's models: args and an experiment whose variant names it:
    each user is ranked by their variant's model, an item posted now is recommendable in both arms on the next
    request, the logs and `lmrec experiment report` name the model of each variant. Separated, a variant with a
    model is refused (the challengers live in the co-located ingress)."""
    from ray import serve

    from helpers import export_tiny
    from lmrec.cli import main

    experiment = {"name": "models-test", "variants": [{"name": "served", "share": 1.0},
                                                        {"name": "challenger", "share": 1.0, "model": "next"}]}
    if not service.colocated:
        handle = serve.get_deployment_handle("Retrieval", "lmrec-test")
        with pytest.raises(Exception, match="co-located layout"):
            handle.reconfigure.remote({"experiment": experiment}).result()
        assert service.get("/v1/policy").json()["models"] == {}
        return

    data = yaml.safe_load(open(service.seed_config))["data"]
    export_tiny(tmp_path, tiny_lm, data, seed=1)  # the same data, other heads: another model
    served = service.get("/healthz").json()["model_version"]
    service.roll_out(models={"next": str(tmp_path / "art")})
    try:
        handle = serve.get_deployment_handle("Ingress", "lmrec-test")
        with pytest.raises(Exception, match="no challenger model named other"):
            handle.reconfigure.remote({"ranking": {"experiment": {"name": "x", "variants": [
                {"name": "a", "share": 1.0, "model": "other"}]}}}).result()
        handle.reconfigure.remote({"ranking": {"experiment": experiment}}).result()
        challenger = service.get("/v1/policy").json()["models"]["next"]
        assert challenger != served
        answers = {u: service.recommend(u, k=5) for u in service.known[:16]}
        assert {a["variant"]: a["model_version"] for a in answers.values()} == {"served": served, "challenger": challenger}
        # the challenger's answers are its own ranking, not the served model's
        mine = [u for u, a in answers.items() if a["variant"] == "challenger"]
        handle.reconfigure.remote({"ranking": {}}).result()
        assert any([i["item_id"] for i in service.recommend(u, k=5)["items"]] != [i["item_id"] for i in answers[u]["items"]]
                   for u in mine)
        handle.reconfigure.remote({"ranking": {"experiment": experiment}}).result()
        # a new item, by its text: recommendable to both arms' users from the next request
        assert service.put("/v1/items/exp-item", {"text": "a trail lamp posted during the experiment"}).status_code == 200
        for user in (mine[0], next(u for u, a in answers.items() if a["variant"] == "served")):
            answer = service.recommend(user, k=100, exclude_seen=False)
            assert "exp-item" in [i["item_id"] for i in answer["items"]], answer["variant"]
        out = tmp_path / "collected"
        assert main(["collect", "--store", service.store_path, "--artifact", service.artifact_dir, "--out", str(out)]) == 0
        assert main(["experiment", "report", "--data", str(out), "--control", "served", "--out", str(tmp_path / "r.json")]) == 0
        report = json.loads((tmp_path / "r.json").read_text())["variants"]
        assert report["served"]["models"] == [served] and report["challenger"]["models"] == [challenger]
    finally:
        service.restart()
