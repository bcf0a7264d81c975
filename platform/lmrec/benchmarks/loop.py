"""``lmrec bench loop``: what real-time personalization and exploration are worth, measured in the simulator
(:mod:`lmrec.loop.simulator`) on the demo world, with the real ranking core in process.

Agents, side by side on the same world and user seeds (JSON + PNG, reproducible by seed):

- ``popularity``: clicks so far (the floor);
- ``static``: the LM model with each user's vector frozen for the day (computed at their first request of a
  day; events recorded but not read until the next day): batch personalization;
- ``realtime``: the same model, the vector recomputed from the history at every request (lmrec as served);
- ``realtime+epsilon`` / ``+softmax`` / ``+new_items``: the real-time model with each exploration policy;
- ``realtime+retrained``: the real-time model retrained every night on what it collected (``lmrec retrain``'s
  collect -> train -> export, Ray Train), when a training config is given;
- ``oracle``: the best slate for the simulated user's current tastes (regret's reference).

Then off-policy evaluation's accuracy: a day logged by the exploring real-time agent, each candidate policy
estimated from those logs (over the logger's own pools), against the candidate's online CTR on the same day.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lmrec.errors import LmrecError
from lmrec.loop.bench import _write, compare_agents, machine
from lmrec.loop.logs import read_logs
from lmrec.loop.ope import CandidatePool, evaluate
from lmrec.loop.simulator import EPOCH, OracleAgent, Recommendation, SimConfig, Simulator, World, popularity_agent
from lmrec.ranking.local import LocalRanking, build_local
from lmrec.ranking.ranker import Ranker
from lmrec.ranking.records import Query, UserContext
from lmrec.store import StoreConfig
from lmrec.store.base import Event, ItemWrite

log = logging.getLogger(__name__)
DAY = 86_400.0


class FrozenDaily:
    """A context source whose user vectors are computed once a day (the static model): each user's vector is
    the one of their first request that day, whatever happens after; histories stay live (seen items stay
    excluded, as a batch system would filter them)."""

    def __init__(self, users, clock):
        self.users, self.clock = users, clock
        self._vectors: dict[str, tuple[int, np.ndarray | None, str | None]] = {}

    async def contexts(self, user_ids: Sequence[str]) -> list:
        day = int((self.clock() - EPOCH) // DAY)
        live = await self.users.contexts(user_ids)
        out = []
        for user, ctx in zip(user_ids, live):
            if isinstance(ctx, Exception):
                out.append(ctx)
                continue
            frozen = self._vectors.get(user)
            if frozen is None or day > frozen[0]:  # a new day (a session past midnight does not go back)
                frozen = self._vectors[user] = (day, ctx.vector, ctx.model)
            out.append(UserContext(user, ctx.version, ctx.history, frozen[1], frozen[2]))
        return out


class RankerAgent:
    """The ranking core as a simulator agent: recommend -> Ranker.rank (with the agent's exploration policy),
    events -> the store (attributed to their recommendation), new items -> encoded by the LM and posted.
    ``static``: user vectors frozen for the day. ``retrain``: called at the first request of each new day
    with the store, the day and the artifact ranking now; returns a new artifact to rank with (None: keep the
    current one). Keeps each recommendation's greedy pool in ``pools`` when ``keep_pools`` (off-policy
    evaluation)."""

    def __init__(self, artifact: str | Path, store_path: Path, seed_config: str | None, policy: dict | None = None,
                 pool: int = 50, static: bool = False, name: str = "realtime", retrain=None, keep_pools: bool = False,
                 template: Path | None = None):
        self.name, self.static, self.retrain, self.keep_pools = name, static, retrain, keep_pools
        self.policy = policy or {"kind": "greedy"}
        self.pool = pool
        self.store_path, self.seed_config = store_path, seed_config
        if template is not None and not store_path.exists():  # a store seeded once, copied: seeding costs seconds
            shutil.copyfile(template, store_path)
        self.pools: dict[str, CandidatePool] = {}
        self.now = EPOCH
        self._loop = asyncio.new_event_loop()  # one loop for the agent's life: asyncio.run per step costs more than a step
        self._n = 0
        self._day: int | None = None
        self._load(artifact)

    def _load(self, artifact: str | Path) -> None:
        from lmrec.artifact import read_model_version

        self.artifact = Path(artifact)
        config = {"policy": self.policy, "pool": self.pool}
        self.local: LocalRanking = build_local(artifact, StoreConfig(str(self.store_path), model=read_model_version(artifact)),
                                               config=config, seed_config=self.seed_config)
        self.local.reencode_all()  # items posted under an earlier model (a retrained one takes over)
        users = FrozenDaily(self.local.users, lambda: self.now) if self.static else self.local.users
        self.ranker = Ranker(users, self.local.retriever, self.local.ranker.tower)
        self.greedy = self.local.retriever  # pools for OPE: the same retriever, greedy order

    def recommend(self, user_id: str, k: int, now: float) -> Recommendation:
        self.now = now
        day = int((now - EPOCH) // DAY)
        # a night passes once: a session begun before midnight may go on past it, and the next one to start
        # may still begin before it (the clock of each request is its session's)
        if self.retrain is not None and self._day is not None and day > self._day:
            artifact = self.retrain(self.local.store, day, self.artifact)
            if artifact is not None:
                self.local.close()
                self._load(artifact)
        self._day = day if self._day is None else max(self._day, day)
        self._n += 1
        rid = f"{self.name}-{self._n}"
        (ranked,), _ = self._loop.run_until_complete(self.ranker.rank([Query(k, user_id=user_id, recommendation_id=rid, time=now)]))
        if isinstance(ranked, Exception):
            raise LmrecError(f"{self.name}: {ranked}")
        if self.keep_pools:
            self._keep_pool(rid, user_id)
        slate = None
        if ranked.items and ranked.items[0].propensity is not None:
            from lmrec.loop.policies import Slate

            slate = Slate(tuple(i.item_id for i in ranked.items), tuple(i.score for i in ranked.items),
                          tuple(i.propensity for i in ranked.items), tuple(np.cumprod([i.propensity for i in ranked.items])),
                          None, tuple(bool(i.explored) for i in ranked.items), ranked.policy)
        return Recommendation(rid, tuple(i.item_id for i in ranked.items), slate, ranked.model_version)

    def _keep_pool(self, rid: str, user_id: str) -> None:
        (ctx,) = self._loop.run_until_complete(self.local.users.contexts([user_id]))
        ages = self.local.retriever.created
        (ranked,) = self.greedy.rank([(Query(self.pool, user_id=user_id), ctx)])
        ids = [i.item_id for i in ranked.items]
        self.pools[rid] = CandidatePool(tuple(ids), np.array([i.score for i in ranked.items]),
                                        np.array([self.now - ages[i] if i in ages else np.inf for i in ids]),
                                        np.array([self.greedy.shown[i] for i in ids], dtype=np.float64))

    def events(self, events) -> None:
        self.local.store.append_events([Event(e.user_id, e.item_id, e.event_type, None, e.time, e.recommendation_id, e.position)
                                        for e in events])

    def post_items(self, items) -> None:
        if not items:
            return
        vectors = self.local.encoder.encode_items([it.text for it in items])
        self.local.store.upsert_items([ItemWrite(it.item_id, it.text, {k: v for k, v in it.attributes.items() if v is not None}, v,
                                                 created=it.time) for it, v in zip(items, vectors)])  # the simulated clock


def nightly_retrain(training_config: str | Path, workdir: Path, local: bool = False):
    """A ``retrain`` callback: collect the store with the serving artifact's catalog texts (items without text
    would give the LM nothing to read), train on it (the training config; Ray Train unless ``local``), export
    behind the gate."""
    from lmrec.collect import collect
    from lmrec.config import load_config
    from lmrec.export import export_checkpoint
    from lmrec.training import fit

    def retrain(store, day: int, serving: Path) -> Path:
        out = workdir / f"day-{day}"
        collect(store, out / "data", serving)
        cfg = load_config([training_config, out / "data" / "data.yaml"], [f"output_dir={out / 'run'}"])
        summary = fit(cfg, local=local)
        export_checkpoint(summary["checkpoint"], out / "artifact")
        return out / "artifact"

    return retrain


def bench_loop(out: str | Path, artifact: str | Path, seed_config: str | Path, days: int = 3, users: int | None = None,
               retrain_config: str | Path | None = None, seed: int = 0, k: int = 10, pool: int = 50) -> dict:
    """Every agent above for ``days`` simulated days (``users``: the first N of the demo's users, for a short
    run), then OPE accuracy on one logged day. Writes loop.json (the days, the OPE rows and the checks), and the
    per-day figures as loop_days.json and loop_days.png."""
    from lmrec.config import load_config

    cfg = load_config([seed_config])
    if cfg.data.dataset != "demo":
        raise LmrecError(f"{seed_config}: bench loop simulates the demo world: data.dataset must be demo")
    sim = SimConfig(world=cfg.data.synthetic, days=days, k=k, seed=seed)
    new = {"weight": 0.3, "age_cutoff_s": sim.new_item_age_s}
    policies = {"realtime": None, "realtime+epsilon": {"kind": "epsilon", "epsilon": 0.1},
                "realtime+softmax": {"kind": "softmax", "temperature": 0.05},
                "realtime+new_items": {"kind": "greedy", "new_items": new}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        template = seeded_store(tmp / "seeded.sqlite", seed_config)

        def ranker(name: str, policy: dict | None = None, static: bool = False, retrain=None):
            return lambda world, s: RankerAgent(artifact, tmp / f"{name}.sqlite", str(seed_config), policy, pool, static, name, retrain,
                                                template=template)

        agents = {"oracle": lambda world, s: OracleAgent(s), "popularity": lambda world, s: popularity_agent(world),
                  "static": ranker("static", static=True)}
        agents.update({name: ranker(name, policy) for name, policy in policies.items()})
        if retrain_config is not None:
            agents["realtime+retrained"] = ranker("realtime+retrained", retrain=nightly_retrain(retrain_config, tmp / "retrain"))
        days_report = compare_agents(out, sim, {name: _first_users(make, users) for name, make in agents.items()}, baseline="static")
        ope = bench_ranker_ope(sim.model_copy(update={"days": 1}), artifact, seed_config, tmp / "ope", pool, users=users, template=template)
    report = {"benchmark": "loop", "artifact": str(artifact), "days": days_report, "ope": ope, "checks": _checks(days_report, ope),
              "seconds": round(time.perf_counter() - started, 1), "machine": machine()}
    return _write(Path(out), "loop", report)


def _first_users(make, n: int | None):
    """An agent factory whose simulator drives only the world's first ``n`` users (all: None)."""
    def factory(world: World, simulator: Simulator):
        if n is not None:
            simulator.simulated[:] = False
            simulator.simulated[:n] = True
        return make(world, simulator)

    return factory


def seeded_store(path: Path, seed_config) -> Path:
    """A SQLite store holding the demo world's logged history (the users the simulator continues), once."""
    from lmrec.store.seed import seed_store
    from lmrec.store.sqlite import SQLiteStore

    with SQLiteStore(path) as store:
        seed_store(store, None, str(seed_config))
    return path


def bench_ranker_ope(sim: SimConfig, artifact, seed_config, workdir: Path, pool: int, candidates: dict | None = None,
                     users: int | None = None, template: Path | None = None) -> dict:
    """One day logged by the real-time model exploring with a softmax logger; each candidate policy estimated
    from those logs over the logger's greedy pools, beside its online CTR on the same day."""
    workdir.mkdir(parents=True, exist_ok=True)
    logger_policy = {"kind": "softmax", "temperature": 0.1, "new_items": {"weight": 0.1, "age_cutoff_s": sim.new_item_age_s}}
    candidates = candidates or {"greedy": {"kind": "greedy"}, "softmax_0.05": {"kind": "softmax", "temperature": 0.05},
                                "epsilon_0.2": {"kind": "epsilon", "epsilon": 0.2}}
    world = World.build(sim)
    subset = None if users is None else range(users)
    logger = RankerAgent(artifact, workdir / "logger.sqlite", str(seed_config), logger_policy, pool, name="logger", keep_pools=True,
                         template=template)
    logged = Simulator(world, logger, subset).run()
    logs = read_logs((logged.impressions, logged.events))
    rows = {}
    for name, cand in candidates.items():
        rep = evaluate(logs, logger.pools, cand, n_bootstrap=300)
        agent = RankerAgent(artifact, workdir / f"{name}.sqlite", str(seed_config), cand, pool, name=name, template=template)
        truth = float(Simulator(world, agent, subset).run().shown["clicked"].mean())
        est = {e: {"estimate": iv.estimate, "lower": iv.lower, "upper": iv.upper,
                   "relative_error": (iv.estimate / truth - 1) if truth else None}
               for e, iv in rep.estimates.items() if e in ("ips", "snips", "dm", "dr")}
        best = [abs(est[e]["relative_error"]) for e in ("snips", "dr") if e in est and est[e]["relative_error"] is not None]
        rows[name] = {"policy": cand, "online_ctr": truth, "estimates": est, "refused": rep.refused,
                      "effective_sample_size": rep.effective_sample_size, "snips_or_dr_within_10pct": bool(best) and min(best) <= 0.10}
    return {"logger": logger_policy, "logged_ctr": float(logged.shown["clicked"].mean()), "logged_slots": len(logs.impressions),
            "candidates": rows}


def _checks(days: dict, ope: dict) -> dict:
    """The issue's targets, each with the figure it is judged on."""
    agents, ratios = days["agents"], days["ctr_ratio"]
    out: dict = {}
    rt = ratios.get("realtime / static")
    if rt:
        out["realtime_over_static"] = {**rt, "better": rt["lower"] > 1.0}
    base = agents.get("realtime", {})
    for name in ("realtime+epsilon", "realtime+softmax", "realtime+new_items"):
        a = agents.get(name)
        if a and base:
            cost = 1 - a["ctr"] / base["ctr"] if base["ctr"] else None
            ttfc = _median_ttfc(a), _median_ttfc(base)
            out[name] = {"ctr_cost": cost, "new_item_ttfc_median_s": ttfc[0], "baseline_ttfc_median_s": ttfc[1],
                         "halves_ttfc_at_most_5pct_cost": bool(cost is not None and cost <= 0.05 and ttfc[0] is not None
                                                               and ttfc[1] is not None and ttfc[0] <= ttfc[1] / 2)}
    out["ope_snips_or_dr_within_10pct"] = {n: c["snips_or_dr_within_10pct"] for n, c in ope["candidates"].items()}
    retrained = agents.get("realtime+retrained")
    if retrained:
        ctr = [d.get("ctr") for d in retrained["days"]]
        out["retrained_ctr_by_day"] = {"ctr": ctr, "rising": all(b >= a for a, b in zip(ctr, ctr[1:]) if a is not None and b is not None)}
    return out


def _median_ttfc(agent: dict) -> float | None:
    values = [d.get("new_item_median_s_to_first_click") for d in agent["days"]]
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.median(values)) if values else None


def summary(report: dict) -> str:
    lines = [f"{name:22s} CTR {a['ctr']:.4f}" for name, a in report["days"]["agents"].items()]
    lines += [f"{k}: {json.dumps(v)}" for k, v in report["checks"].items()]
    return "\n".join(lines)
