"""Benchmark commands for the loop, each writing a JSON report (and a PNG where a plot helps):

- :func:`bench_policies`: the cost of drawing one slate with its exact propensities, per policy.
- :func:`bench_simulator`: simulated recommendations per second with the in-process popularity agent.
- :func:`compare_agents`: simulated days side by side on the same user seeds (the rows of
  ``lmrec bench loop``): per-day CTR, regret against the oracle, new items' share and time to first click,
  coverage, and each agent's CTR over a baseline's with a paired-bootstrap interval.
- :func:`bench_ope`: off-policy estimates of candidate policies from a logger's logs against the candidates'
  own simulated online CTR on the same users.

Every report records the machine and its load average: figures from a busy machine are flagged and need a
quiet re-run before they are quoted.
"""

from __future__ import annotations

import json
import os
import platform as _platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lmrec.config import SyntheticConfig
from lmrec.loop.logs import read_logs
from lmrec.loop.metrics import ctr_ratio, daily_report
from lmrec.loop.ope import evaluate
from lmrec.loop.policies import ExplorationPolicy, plackett_luce_marginals
from lmrec.loop.simulator import Agent, OracleAgent, SimConfig, Simulator, World, popularity_agent

AgentFactory = Callable[[World, Simulator], Agent]


def machine() -> dict[str, Any]:
    load1, load5, _ = os.getloadavg()
    cpus = os.cpu_count() or 1
    return {
        "cpus": cpus,
        "load_average_1m": round(load1, 2),
        "load_average_5m": round(load5, 2),
        "busy": load1 > 0.5 * cpus,  # other work shares the cores: re-run quiet before quoting timings
        "python": _platform.python_version(),
        "numpy": np.__version__,
    }


def _write(out: Path, name: str, report: dict[str, Any]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, default=_jsonable))
    return report


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.integer | np.floating | np.bool_):
        return v.item()
    raise TypeError(f"not JSON: {type(v).__name__}")


# ------------------------------------------------------------------------------------------ policies
POLICIES: dict[str, dict] = {
    "greedy": {"kind": "greedy"},
    "epsilon_0.1": {"kind": "epsilon", "epsilon": 0.1},
    "softmax_0.05": {"kind": "softmax", "temperature": 0.05},
    "softmax_0.3": {"kind": "softmax", "temperature": 0.3},
    "epsilon_0.1+new_items": {"kind": "epsilon", "epsilon": 0.1, "new_items": {"weight": 0.3}},
    "softmax_0.05+new_items": {"kind": "softmax", "temperature": 0.05, "new_items": {"weight": 0.3}},
}


def bench_policies(out: str | Path, n: int = 50, k: int = 10, repeats: int = 200, seed: int = 0) -> dict[str, Any]:
    """Microseconds per ``select`` (one slate and its propensities) on pools of ``n`` scores of a cosine-like
    spread (sorted N(0.5, 0.1)), 5 of them new; and the Plackett-Luce quadrature's worst column-sum error."""
    rng = np.random.default_rng(seed)
    pools = [np.sort(rng.normal(0.5, 0.1, n))[::-1] for _ in range(repeats)]
    ages = np.full(n, 1e9)
    ages[rng.choice(n, 5, replace=False)] = 3600.0
    shown = rng.integers(0, 100, n).astype(float)  # impressions so far: new_items' default order
    ids = [f"i{i}" for i in range(n)]
    rows = {}
    for name, cfg in POLICIES.items():
        policy = ExplorationPolicy(cfg)
        policy.select(ids, pools[0], k, "warm-up", ages, shown)
        times = []
        for r, scores in enumerate(pools):
            t = time.perf_counter()
            policy.select(ids, scores, k, f"rec-{r}", ages, shown)
            times.append(time.perf_counter() - t)
        us = np.array(times) * 1e6
        rows[name] = {"median_us": round(float(np.median(us)), 1), "p90_us": round(float(np.quantile(us, 0.9)), 1)}
    err = max(
        float(np.abs(plackett_luce_marginals(s / t, k).sum(axis=0) - 1).max())
        for s in pools[:20]
        for t in (0.05, 0.3, 1.0)
    )
    report = {"benchmark": "policies", "pool": n, "k": k, "repeats": repeats, "select": rows}
    report["plackett_luce_max_column_sum_error"] = err
    report["machine"] = machine()
    return _write(Path(out), "policies", report)


# ----------------------------------------------------------------------------------------- simulator
def bench_simulator(out: str | Path, config: SimConfig | None = None, policy: dict | None = None) -> dict[str, Any]:
    """Simulated steps (recommendations) per second with the in-process popularity agent."""
    config = config or SimConfig(world=SyntheticConfig(n_users=200), days=2)
    t = time.perf_counter()
    world = World.build(config)
    world_s = time.perf_counter() - t
    policy = policy or {"kind": "epsilon", "epsilon": 0.1}
    result = Simulator(world, popularity_agent(world, policy=policy)).run()
    report = {
        "benchmark": "simulator",
        "agent": "popularity",
        "policy": ExplorationPolicy(policy).params,
        "config": config.model_dump(),
        "steps": len(result.steps),
        "slots": len(result.shown),
        "events": len(result.events),
        "seconds": round(result.seconds, 3),
        "steps_per_second": round(result.steps_per_second, 1),
        "world_build_seconds": round(world_s, 3),
        "ctr": float(result.shown["clicked"].mean()),
        "machine": machine(),
    }
    return _write(Path(out), "simulator", report)


# ------------------------------------------------------------------------------------ agents by day
def default_agents(new_item_age_s: float) -> dict[str, AgentFactory]:
    """Popularity with and without exploration, and the oracle."""
    new = {"weight": 0.3, "age_cutoff_s": new_item_age_s}
    return {
        "oracle": lambda world, sim: OracleAgent(sim),
        "popularity": lambda world, sim: popularity_agent(world),
        "popularity+epsilon": lambda world, sim: popularity_agent(world, policy={"kind": "epsilon", "epsilon": 0.1}),
        "popularity+new_items": lambda world, sim: popularity_agent(world, policy={"kind": "greedy", "new_items": new}),
    }


def compare_agents(
    out: str | Path,
    config: SimConfig,
    agents: Mapping[str, AgentFactory] | None = None,
    baseline: str = "popularity",
    n_bootstrap: int = 1000,
) -> dict[str, Any]:
    """Run every agent for ``config.days`` days on the same world and user seeds; per-day rows for each, and
    CTR over the baseline's with a paired-bootstrap 95% interval. Writes loop_days.json and loop_days.png."""
    agents = agents or default_agents(config.new_item_age_s)
    world = World.build(config)
    results, rows, ratios = {}, {}, {}
    for name, make in agents.items():
        sim = Simulator(world, None)
        sim.agent = make(world, sim)
        r = sim.run()
        results[name] = r
        day = daily_report(r.steps, r.shown, r.new_items, r.catalog_size)
        rows[name] = {
            "days": json.loads(day.reset_index().to_json(orient="records")),
            "ctr": float(r.shown["clicked"].mean()),
            "steps_per_second": round(r.steps_per_second, 1),
        }
    if baseline in results:
        for name, r in results.items():
            if name != baseline:
                iv = ctr_ratio(r.shown, results[baseline].shown, n_bootstrap=n_bootstrap)
                ratios[f"{name} / {baseline}"] = {"ratio": iv.estimate, "lower": iv.lower, "upper": iv.upper}
    report = {"benchmark": "loop_days", "config": config.model_dump(), "agents": rows, "ctr_ratio": ratios}
    report["machine"] = machine()
    _plot_days(rows, Path(out) / "loop_days.png")
    return _write(Path(out), "loop_days", report)


def _plot_days(rows: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("ctr", "CTR (clicks per slot)"),
        ("relative_regret", "regret / oracle"),
        ("new_item_share", "new items' share"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        for name, row in rows.items():
            days = pd.DataFrame(row["days"])
            ax.plot(days["day"], days[key], marker="o", label=name)
        ax.set_title(title)
        ax.set_xlabel("day")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- OPE
def bench_ope(
    out: str | Path,
    config: SimConfig,
    logger: dict | None = None,
    candidates: Mapping[str, dict] | None = None,
    n_bootstrap: int = 500,
) -> dict[str, Any]:
    """One day of logs from the popularity agent under ``logger``; each candidate policy estimated from them,
    and run online on the same world and users for its true CTR. Writes ope.json and ope.png."""
    config = config.model_copy(update={"days": 1})
    # the logger explores new items too: logs in which new items are (almost) never shown cannot evaluate a
    # new_items candidate (measured: its importance weights averaged 0.72, and every estimator but dm refused)
    logger = logger or {"kind": "softmax", "temperature": 1.0, "new_items": {"weight": 0.1}}
    candidates = candidates or {
        "softmax_0.5": {"kind": "softmax", "temperature": 0.5},
        "epsilon_0.3": {"kind": "epsilon", "epsilon": 0.3},
        "softmax_1.0+new_items": {"kind": "softmax", "temperature": 1.0, "new_items": {"weight": 0.3}},
    }
    world = World.build(config)
    agent = popularity_agent(world, policy=logger, keep_pools=True)
    logged = Simulator(world, agent).run()
    logs = read_logs((logged.impressions, logged.events))
    rows = {}
    for name, cand in candidates.items():
        t = time.perf_counter()
        rep = evaluate(logs, agent.pools, cand, n_bootstrap=n_bootstrap)
        seconds = time.perf_counter() - t
        truth = float(Simulator(world, popularity_agent(world, policy=cand)).run().shown["clicked"].mean())
        est = {}
        for e, iv in rep.estimates.items():
            scale = config.k if e in ("iips", "rips") else 1  # slate estimators: per recommendation
            est[e] = {
                "estimate": iv.estimate / scale,
                "lower": iv.lower / scale,
                "upper": iv.upper / scale,
                "relative_error": iv.estimate / scale / truth - 1 if truth else None,
            }
        best = [abs(est[e]["relative_error"]) for e in ("snips", "dr") if e in est and truth]
        rows[name] = {
            "policy": rep.params,
            "online_ctr": truth,
            "estimates": est,
            "refused": rep.refused,
            "effective_sample_size": rep.effective_sample_size,
            "mean_weight": rep.mean_weight,
            "snips_or_dr_within_10pct": bool(best) and min(best) <= 0.10,
            "ope_seconds": round(seconds, 2),
        }
    report = {
        "benchmark": "ope",
        "config": config.model_dump(),
        "logger": logger,
        "logged_ctr": float(logged.shown["clicked"].mean()),
        "logged_slots": len(logs.impressions),
        "candidates": rows,
        "machine": machine(),
    }
    _plot_ope(rows, Path(out) / "ope.png")
    return _write(Path(out), "ope", report)


def _plot_ope(rows: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.8 + 2.2 * len(rows), 3.6))
    names = ["ips", "snips", "dm", "dr", "iips", "rips"]
    for c, row in enumerate(rows.values()):
        ax.hlines(row["online_ctr"], c - 0.4, c + 0.4, colors="black", label="online CTR" if c == 0 else None)
        for e, name in enumerate(names):
            if name in row["estimates"]:
                v = row["estimates"][name]
                x = c - 0.3 + 0.12 * e
                ax.errorbar(x, v["estimate"], [[v["estimate"] - v["lower"]], [v["upper"] - v["estimate"]]], fmt="o",
                            color=f"C{e}", label=name if c == 0 else None, ms=4)  # fmt: skip
    ax.set_xticks(range(len(rows)), list(rows), fontsize=8)
    ax.set_ylabel("clicks per slot")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
