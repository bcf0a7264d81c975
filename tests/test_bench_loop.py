"""`lmrec bench loop`, tiny: the real ranking core in the simulator beside popularity and the oracle, the
static and real-time models, each exploration policy, and OPE of candidate policies against their online CTR;
the JSON and PNG it writes. (Its figures are measurements: see the docs; here only that they are there.)"""

import json

import numpy as np


def test_bench_loop_runs_every_agent_and_checks_ope(artifact, tmp_path):
    from lmrec.benchmarks.loop import bench_loop

    root, data_file, _, _ = artifact
    report = bench_loop(tmp_path, root / "art", data_file, days=2, users=8, pool=15)
    agents = report["days"]["agents"]
    assert set(agents) == {"oracle", "popularity", "static", "realtime", "realtime+epsilon", "realtime+softmax", "realtime+new_items"}
    for name, a in agents.items():
        assert len(a["days"]) == 2 and 0 <= a["ctr"] <= 1, name
    assert agents["oracle"]["ctr"] >= max(a["ctr"] for n, a in agents.items() if n != "oracle") - 0.05
    assert "realtime / static" in report["days"]["ctr_ratio"]
    ope = report["ope"]["candidates"]
    assert set(ope) == {"greedy", "softmax_0.05", "epsilon_0.2"}
    for c in ope.values():
        assert c["estimates"] or c["refused"]
        assert all(np.isfinite(e["estimate"]) for e in c["estimates"].values())
    saved = json.loads((tmp_path / "loop.json").read_text())
    assert saved["checks"] == json.loads(json.dumps(report["checks"]))
    assert (tmp_path / "loop_days.png").stat().st_size > 0


def test_the_nightly_retrain_runs_once_a_night_though_sessions_cross_midnight(artifact, tmp_path):
    """Sessions keep their own clocks: one begun before midnight asks after it, the next to start may still
    begin before it. The retrain callback is called once per new day, with the day and the artifact ranking."""
    from lmrec.benchmarks.loop import DAY, EPOCH, RankerAgent

    root, data_file, _, _ = artifact
    calls = []

    def retrain(store, day, serving):
        calls.append((day, serving))
        return None  # keep ranking with the current artifact

    agent = RankerAgent(root / "art", tmp_path / "s.sqlite", str(data_file), retrain=retrain)
    user = "u0001"
    for t in (60.9, 61.01, 60.99, 61.5, 60.999, 62.2, 61.99, 62.5):  # days since EPOCH, sessions interleaved
        agent.recommend(user, 3, EPOCH + t * DAY)
    assert calls == [(61, root / "art"), (62, root / "art")]
