"""The online simulator: deterministic by seed, the oracle has no regret, clicks follow the click model,
new items arrive with text and are posted when they arrive, the logs it writes read back, and the HTTP
agent speaks the service's API."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from lmrec.config import SyntheticConfig
from lmrec.loop.logs import read_logs, write_logs
from lmrec.loop.simulator import (
    HttpAgent,
    OracleAgent,
    PopularityAgent,
    Recommendation,
    SimConfig,
    Simulator,
    SimulatorError,
    World,
    oracle_agent,
    popularity_agent,
)

SMALL = SimConfig(
    world=SyntheticConfig(n_items=60, n_users=30, n_topics=6, events_per_user=8, seed=3),
    days=2,
    k=5,
    sessions_per_day=1.5,
    new_items_per_day=4,
    seed=11,
)


@pytest.fixture(scope="module")
def world():
    return World.build(SMALL)


def run(world, **policy):
    agent = popularity_agent(world, policy=policy or {"kind": "epsilon", "epsilon": 0.3}, keep_pools=True)
    return Simulator(world, agent).run(), agent


def test_deterministic_by_seed(world):
    a, _ = run(world)
    b, _ = run(world)  # the world is reused: a run never changes it
    for name in ("steps", "shown", "events", "impressions", "new_items"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    c, _ = run(World.build(SMALL.model_copy(update={"seed": 12})))
    assert not a.steps[["user_id", "time"]].equals(c.steps[["user_id", "time"]])
    assert len(a.steps) > 50 and a.shown["clicked"].sum() > 0


def test_oracle_has_no_regret_and_beats_popularity(world):
    sim = Simulator(world, None)
    sim.agent = OracleAgent(sim)
    oracle = sim.run()
    np.testing.assert_allclose(oracle.steps["expected_clicks"], oracle.steps["oracle_expected_clicks"], atol=1e-12)
    pop, _ = run(world, kind="greedy")
    regret = pop.steps["oracle_expected_clicks"] - pop.steps["expected_clicks"]
    assert (regret >= -1e-12).all() and regret.mean() > 0.05
    # the same users arrive at the same times whatever the agent shows
    assert oracle.steps.groupby("day")["user_id"].first().equals(pop.steps.groupby("day")["user_id"].first())


def test_clicks_follow_the_click_model(world):
    # pbm by hand: examination 1, 1/2, 1/3
    assert world.expected_clicks(np.array([0.4, 0.2, 0.3])) == pytest.approx(0.4 + 0.1 + 0.1)
    cascade = World.build(SMALL.model_copy(update={"click_model": "cascade"}))
    assert cascade.expected_clicks(np.array([0.5, 0.5])) == pytest.approx(0.75)
    # over many steps the clicks drawn average to the expected clicks
    big = World.build(SMALL.model_copy(update={"days": 3, "sessions_per_day": 6.0}))
    result, _ = run(big)
    clicks, expected = result.steps["clicks"], result.steps["expected_clicks"]
    se = clicks.std() / np.sqrt(len(clicks))
    assert abs(clicks.mean() - expected.mean()) < 4 * se
    # cascade: at most one click per slate
    cascaded, _ = run(cascade)
    assert cascaded.steps["clicks"].max() == 1


def test_new_items_arrive_with_text_and_are_posted_on_arrival(world):
    result, agent = run(world)
    new = result.new_items
    assert len(new) == SMALL.days * SMALL.new_items_per_day
    assert new["item_id"].is_unique and not new["item_id"].isin(world.items["item_id"][:60]).any()
    assert (new.groupby("day").size() == SMALL.new_items_per_day).all()
    texts = world.items.set_index("item_id").loc[new["item_id"], "text"]
    assert texts.str.len().min() > 40  # written like the demo catalog: title, category, brand, description
    assert {agent.arrival(i) for i in new["item_id"]} == set(new["arrival"])
    # nothing is shown before it arrives (the simulator refuses an agent that tries)
    shown = result.shown.merge(new, on="item_id")
    assert (shown["time"] >= shown["arrival"]).all()
    assert result.catalog_size.tolist() == [64, 68]


def test_an_item_the_world_does_not_hold_is_shown_but_never_clicked(world):
    """A service may hold items of its own (posted before this run): the simulated users never click them, and
    each step counts them."""
    class Foreign(PopularityAgent):
        def recommend(self, user_id, k, now):
            return Recommendation(f"r{now}", ("i9999", "i0001"))

    result = Simulator(world, Foreign()).run()
    foreign = result.shown[result.shown["item_id"] == "i9999"]
    assert len(foreign) and not foreign["clicked"].any() and (result.steps["foreign"] == 1).all()


def test_tastes_drift_day_by_day(world):
    sim = Simulator(world, popularity_agent(world))
    sim.run()
    before = np.stack([u.preference for u in world.users])
    after = np.stack([u.preference for u in sim.users])
    np.testing.assert_allclose(after.sum(axis=1), 1.0)
    assert 0.01 < np.abs(after - before).sum(axis=1).mean() < 1.0


def test_the_logs_it_writes_read_back_with_the_same_clicks(world, tmp_path):
    result, agent = run(world)
    write_logs(tmp_path, result.impressions, result.events)
    logs = read_logs(tmp_path)
    assert sum(logs.unattributed.values()) == 0
    got = logs.impressions.set_index(["recommendation_id", "position"])["reward"]
    want = result.shown.set_index(["recommendation_id", "position"])["clicked"].astype(float)
    pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_names=False, check_index_type=False)
    # every logged propensity is recomputable from the pool the agent kept
    from lmrec.loop.policies import ExplorationPolicy

    policy = ExplorationPolicy({"kind": "epsilon", "epsilon": 0.3})
    for rid, rows in list(logs.impressions.groupby("recommendation_id"))[:20]:
        pool = agent.pools[rid]
        pos = [pool.item_ids.index(i) for i in rows.sort_values("position")["item_id"]]
        np.testing.assert_allclose(rows.sort_values("position")["propensity"], policy.propensities(pool.scores, pos))


# -------------------------------------------------------------------------------------- over HTTP
class Recorder(BaseHTTPRequestHandler):
    """Records what the agent sends and answers in the API's documented shapes."""

    calls: list = []
    item_ids: list = []
    refuse = False
    busy = 0  # answer this many requests with 503 first

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append((self.path, self.headers.get("Authorization"), body))
        if self.refuse:
            return self._send(422, {"error": {"code": "invalid_request", "message": "k: too large"}})
        if Recorder.busy:
            Recorder.busy -= 1
            return self._send(503, {"error": {"code": "rollout", "message": "retry"}})
        if self.path == "/v1/recommend":
            n = sum(c[0] == "/v1/recommend" for c in self.calls)
            items = [{"item_id": i, "score": 1.0} for i in self.item_ids[: body["k"]]]
            rid = {"recommendation_id": f"svc-{n}"} if n % 2 else {}  # half the answers attribute
            return self._send(200, {"user_id": body["user_id"], "items": items, "model_version": "m7", **rid})
        if self.path == "/v1/events":
            return self._send(202, {"accepted": len(body["events"])})
        return self._send(200, {"accepted": len(body["items"]), "item_version": 1})

    def _send(self, status, doc):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def recorder(world):
    Recorder.item_ids = world.items["item_id"][:10].tolist()
    Recorder.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_http_agent_speaks_the_service_api(recorder):
    agent = HttpAgent(recorder, token="t0k")
    Simulator(World.build(SMALL.model_copy(update={"days": 1})), agent).run()
    calls = Recorder.calls
    recs = [c for c in calls if c[0] == "/v1/recommend"]
    assert recs and all(c[1] is None and c[2]["k"] == 5 for c in recs)  # reads send no token
    writes = [c for c in calls if c[0] != "/v1/recommend"]
    assert writes and all(c[1] == "Bearer t0k" for c in writes)
    items = [it for c in calls if c[0] == "/v1/items" for it in c[2]["items"]]
    assert items and all(it["text"] and it["item_id"].startswith("i") for it in items)
    events = [e for c in calls if c[0] == "/v1/events" for e in c[2]["events"]]
    attributed = [e for e in events if "recommendation_id" in e]
    assert attributed and all(e["recommendation_id"].startswith("svc-") for e in attributed)
    assert all(isinstance(e["position"], int) for e in attributed)
    assert all("recommendation_id" not in e or e["event_type"] in ("click", "purchase") for e in events)


def test_http_agent_retries_a_busy_service(recorder, monkeypatch):
    monkeypatch.setattr(Recorder, "busy", 2)
    rec = HttpAgent(recorder).recommend("u0001", 3, 0.0)
    assert len(rec.item_ids) == 3 and len(Recorder.calls) == 3
    monkeypatch.setattr(Recorder, "busy", 10)
    with pytest.raises(SimulatorError, match="answered 503: retry"):
        HttpAgent(recorder).recommend("u0001", 3, 0.0)


def test_http_agent_errors_name_the_cause(recorder, monkeypatch):
    monkeypatch.setattr(Recorder, "refuse", True)
    with pytest.raises(SimulatorError, match=r"POST /v1/recommend: the service answered 422: k: too large"):
        HttpAgent(recorder).recommend("u0001", 5, 0.0)
    with pytest.raises(SimulatorError, match="must look like http"):
        HttpAgent("localhost:8000")
    with pytest.raises(SimulatorError, match="cannot reach the service"):
        HttpAgent("http://127.0.0.1:9", timeout_s=2).recommend("u0001", 5, 0.0)


# ---------------------------------------------------------------------------------------- shards
def _comparable(frame):
    cols = [c for c in frame.columns if c != "recommendation_id"]  # ids are numbered per agent
    return frame[cols].sort_values(["time", "user_id"], kind="stable").reset_index(drop=True)


def test_user_shards_add_up_to_the_full_run(world):
    full = Simulator(world, None)
    full.agent = OracleAgent(full)
    whole = full.run()
    parts = []
    for users in (range(0, 30, 2), range(1, 30, 2)):
        sim = Simulator(world, None, users=list(users))
        sim.agent = OracleAgent(sim)
        parts.append(sim.run().steps)
    pd.testing.assert_frame_equal(_comparable(pd.concat(parts)), _comparable(whole.steps))


@pytest.mark.ray
def test_run_sharded_over_ray_actors(ray_session, world):
    from lmrec.loop.distributed import run_sharded

    config = SMALL.model_copy(update={"days": 1})
    sharded = run_sharded(config, oracle_agent, shards=2, num_cpus=0.5)
    full = Simulator(World.build(config), None)
    full.agent = OracleAgent(full)
    pd.testing.assert_frame_equal(_comparable(sharded.steps), _comparable(full.run().steps))
    assert sharded.seconds > 0 and len(sharded.new_items) == SMALL.new_items_per_day


def test_simulate_against_an_artifact_runs_the_world_it_was_trained_on(artifact, tmp_path):
    """`lmrec simulate --artifact` without --world: the world and the seeded store are the data the artifact was
    trained on (its manifest's data:), so its users are known, not cold starts."""
    from lmrec.cli import main

    root, _, _, _ = artifact
    out = tmp_path / "sim"
    assert main(["simulate", "--artifact", str(root / "art"), "--days", "1", "--users", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "simulate.json").read_text())
    assert summary["config"]["world"]["n_items"] == 60 and summary["config"]["world"]["n_users"] == 40
    assert summary["steps"] > 0 and (out / "seed.yaml").is_file()
    impressions = read_logs(out / "logs").impressions
    assert impressions["user_id"].nunique() <= 4 and (impressions["policy"] == "greedy").all()
    # run again into the same folder: the same run (its store starts fresh, not from the last run's events)
    assert main(["simulate", "--artifact", str(root / "art"), "--days", "1", "--users", "4", "--out", str(out)]) == 0
    again = json.loads((out / "simulate.json").read_text())
    assert (again["steps"], again["ctr"]) == (summary["steps"], summary["ctr"])


@pytest.mark.ray
def test_simulate_against_an_artifact_sharded_over_ray_actors(ray_session, artifact, tmp_path):
    """`lmrec simulate --artifact --shards 2`: two actors rank for their halves of the users into one store;
    every recommendation keeps an id of its own, so the merged logs hold each slate once."""
    from lmrec.cli import main

    root, _, _, _ = artifact
    out = tmp_path / "sim"
    assert main(["simulate", "--artifact", str(root / "art"), "--days", "1", "--shards", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "simulate.json").read_text())
    impressions = read_logs(out / "logs").impressions
    assert summary["steps"] == impressions["recommendation_id"].nunique() > 0
    assert {rid.split("-")[1] for rid in impressions["recommendation_id"]} == {"s0", "s1"}
