"""The loop's benchmark commands run end to end on tiny configs and write their reports."""

import json

from lmrec.config import SyntheticConfig
from lmrec.loop.bench import bench_ope, bench_policies, bench_simulator, compare_agents
from lmrec.loop.simulator import SimConfig

TINY = SimConfig(
    world=SyntheticConfig(n_items=60, n_users=40, n_topics=6, events_per_user=8, seed=1),
    days=2,
    k=4,
    sessions_per_day=1.5,
    new_items_per_day=3,
    seed=3,
)


def test_bench_policies_and_simulator(tmp_path):
    report = bench_policies(tmp_path, n=20, k=5, repeats=5)
    assert set(report["select"]) >= {"greedy", "softmax_0.05", "epsilon_0.1+new_items"}
    assert report["plackett_luce_max_column_sum_error"] < 1e-9
    sim = bench_simulator(tmp_path, TINY)
    assert sim["steps"] > 0 and sim["steps_per_second"] > 0
    saved = json.loads((tmp_path / "simulator.json").read_text())
    assert saved["steps"] == sim["steps"] and saved["machine"]["cpus"] >= 1


def test_compare_agents_side_by_side(tmp_path):
    report = compare_agents(tmp_path, TINY, n_bootstrap=100)
    agents = report["agents"]
    assert set(agents) == {"oracle", "popularity", "popularity+epsilon", "popularity+new_items"}
    assert [d["day"] for d in agents["oracle"]["days"]] == [0, 1]
    assert all(d["regret"] < 1e-12 for d in agents["oracle"]["days"])
    assert agents["oracle"]["ctr"] > agents["popularity"]["ctr"]
    ratio = report["ctr_ratio"]["oracle / popularity"]
    assert ratio["lower"] <= ratio["ratio"] <= ratio["upper"] and ratio["ratio"] > 1
    assert (tmp_path / "loop_days.png").stat().st_size > 1000


def test_bench_ope_reports_estimates_beside_the_online_truth(tmp_path):
    candidates = {"greedy": {"kind": "greedy"}, "epsilon": {"kind": "epsilon", "epsilon": 0.1}}
    candidates["new_items"] = {"kind": "greedy", "new_items": {"weight": 0.2}}
    report = bench_ope(tmp_path, TINY, {"kind": "epsilon", "epsilon": 0.3}, candidates, n_bootstrap=50)
    assert len(report["candidates"]) == 3
    for row in report["candidates"].values():
        assert 0 < row["online_ctr"] < 1
        assert {"ips", "snips", "dr"} <= set(row["estimates"]) | set(row["refused"])
        assert isinstance(row["snips_or_dr_within_10pct"], bool)
    assert (tmp_path / "ope.png").stat().st_size > 1000


def test_the_loop_core_imports_neither_ray_nor_torch():
    import subprocess
    import sys

    modules = ", ".join(f"lmrec.loop.{m}" for m in ("policies", "estimators", "logs", "ope", "simulator", "metrics"))
    code = f"import sys, {modules}, lmrec.loop.bench, lmrec.loop.distributed; print(sorted({{'ray', 'torch'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
