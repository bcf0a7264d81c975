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
