"""``lmrec bench soak``: the service as users run it (``serve run`` of a YAML) under a fixed mixed load for a long
time — events, recommendations and item posts at ``rate`` requests per second (open loop: requests go out on
schedule whether or not earlier ones have answered; at most ``max_in_flight`` wait at once, the rest are
counted as skipped) — sampling every replica's resident memory and the latency of each kind of request.

Users and posted items are drawn from fixed pools (``users``, ``item_pool``): after the warm-up the service
holds as much as it will, so memory that keeps growing is a leak, not data. Checked after the warm-up
(``warmup`` of the run): every replica's RSS grows by <= 5% (the median of its last three samples against
its first three; a replica that was replaced is reported, not compared), and p99 is stable (the last third's
p99 within 20% of the first third's, per kind). Writes ``soak.json`` and ``soak.png``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform as _platform
import random
import tempfile
import time
import uuid
from pathlib import Path

from lmrec.errors import LmrecError

RSS_GROWTH_MAX = 0.05
P99_DRIFT_MAX = 0.20
MIX = {"event": 0.5, "recommend": 0.45, "item": 0.05}
WORDS = ("trail road running vest jacket shoe lamp tent stove bottle filter rope glove helmet pack sock cap "
         "light warm dry fast quiet compact").split()


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(q / 100 * len(v)))], 2)


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2]


def analyse(samples: list[tuple[float, str, int, float]], memory: list[dict], duration_s: float, warmup: float,
            window_s: float) -> dict:
    """``samples``: (sent at s, kind, status, latency ms); ``memory``: {"t": s, "rss_mb": {"Deployment/pid": MB}}.
    Latency per window and kind, RSS growth per replica after the warm-up, and the checks."""
    start = duration_s * warmup
    windows = []
    t = 0.0
    while t < duration_s:
        inside = [s for s in samples if t <= s[0] < t + window_s]
        row = {"t": round(t, 1), "requests": len(inside), "errors": sum(1 for s in inside if not 200 <= s[2] < 300)}
        for kind in MIX:
            ms = [s[3] for s in inside if s[1] == kind and 200 <= s[2] < 300]
            row[kind] = {"p50_ms": _pct(ms, 50), "p99_ms": _pct(ms, 99), "n": len(ms)}
        windows.append(row)
        t += window_s
    after = [m for m in memory if m["t"] >= start]
    growth, replaced = {}, []
    for name in sorted({n for m in memory for n in m["rss_mb"]}):
        series = [m["rss_mb"][name] for m in after if name in m["rss_mb"]]
        if len(series) < len(after) or len(series) < 6:  # not there the whole time after the warm-up
            replaced.append(name)
            continue
        first, last = _median(series[:3]), _median(series[-3:])
        growth[name] = {"after_warmup_mb": round(first, 1), "end_mb": round(last, 1), "growth": round(last / first - 1, 4)}
    thirds = {}
    measured = [s for s in samples if s[0] >= start and 200 <= s[2] < 300]
    span = (duration_s - start) / 3
    for kind in MIX:
        first = [s[3] for s in measured if s[1] == kind and s[0] < start + span]
        last = [s[3] for s in measured if s[1] == kind and s[0] >= start + 2 * span]
        p_first, p_last = _pct(first, 99), _pct(last, 99)
        thirds[kind] = {"first_third_p99_ms": p_first, "last_third_p99_ms": p_last,
                        "drift": None if not p_first or p_last is None else round(p_last / p_first - 1, 3)}
    errors = sum(1 for s in samples if not 200 <= s[2] < 300)
    checks = {
        "rss_growth_le_5pct": bool(growth) and all(g["growth"] <= RSS_GROWTH_MAX for g in growth.values()),
        "p99_stable": all(x["drift"] is not None and x["drift"] <= P99_DRIFT_MAX for x in thirds.values() if x["first_third_p99_ms"]),
        "no_errors": errors == 0,
    }
    return {"windows": windows, "rss_growth": growth, "replicas_not_compared": replaced, "p99_by_third": thirds,
            "requests": len(samples), "errors": errors, "checks": checks}


async def _drive(base: str, auth: dict, duration_s: float, rate: float, users: list[str], items: list[str], item_pool: int,
                 max_in_flight: int, sample_s: float, root: int, seed: int) -> tuple[list, list, int, list]:
    import aiohttp

    from lmrec.benchmarks.harness import replicas, rss_mb

    rng = random.Random(seed)
    run = uuid.uuid4().hex[:6]
    pool = [f"soak-{run}-item-{i}" for i in range(item_pool)]
    samples: list[tuple[float, str, int, float]] = []
    memory: list[dict] = []
    first_errors: list[dict] = []
    skipped = 0
    in_flight = 0
    t0 = time.perf_counter()
    kinds, weights = zip(*MIX.items())

    async def one(session, kind: str) -> None:
        nonlocal in_flight
        sent = time.perf_counter()
        user = rng.choice(users)
        if kind == "event":
            req = ("POST", base + "/v1/events", {"user_id": user, "item_id": rng.choice(items), "event_type": rng.choice(["view", "click"])})
        elif kind == "recommend":
            req = ("POST", base + "/v1/recommend", {"user_id": user, "k": 10})
        else:
            req = ("PUT", f"{base}/v1/items/{rng.choice(pool)}", {"text": " ".join(rng.choices(WORDS, k=6)), "attributes": {"shelf": "soak"}})
        status = 0
        try:
            async with session.request(req[0], req[1], json=req[2], headers=auth) as r:
                status = r.status
                text = await r.text()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            text = f"{type(exc).__name__}: {exc}"
        samples.append((round(sent - t0, 3), kind, status, (time.perf_counter() - sent) * 1e3))
        if not 200 <= status < 300 and len(first_errors) < 5:
            first_errors.append({"at_s": round(sent - t0, 1), "kind": kind, "status": status, "error": text[:300]})
        in_flight -= 1

    async def sampler() -> None:
        while time.perf_counter() - t0 < duration_s:
            found = await asyncio.to_thread(replicas, root)
            rss = {f"{d}/{pid}": rss_mb(pid) for d, pids in found.items() for pid in pids}
            memory.append({"t": round(time.perf_counter() - t0, 1), "rss_mb": {k: round(v, 1) for k, v in rss.items() if v is not None}})
            await asyncio.sleep(sample_s)

    connector = aiohttp.TCPConnector(limit=max_in_flight)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        tasks: set = set()
        watch = asyncio.create_task(sampler())
        n = 0
        while True:
            due = t0 + n / rate
            now = time.perf_counter()
            if due - t0 >= duration_s:
                break
            if due > now:
                await asyncio.sleep(due - now)
            n += 1
            if in_flight >= max_in_flight:
                skipped += 1
                continue
            in_flight += 1
            task = asyncio.create_task(one(session, rng.choices(kinds, weights)[0]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        await watch
    return samples, memory, skipped, first_errors


def run_soak_bench(out: str | Path, config: str | Path = "deployments/demo.yaml", minutes: float = 30.0, rate: float = 40.0,
                   warmup: float = 0.2, window_s: float | None = None, sample_s: float | None = None, users: int = 1000,
                   item_pool: int = 200, max_in_flight: int = 64, mode: str = "default", seed: int = 0) -> dict:
    """``minutes`` of load at ``rate`` requests/s; the first ``warmup`` of the run is not judged."""
    from lmrec.benchmarks.harness import catalog_ids, service_config
    from lmrec.benchmarks.serve import MODES, TOKEN, Service, _stopped_on_sigterm

    if not 0 <= warmup < 0.9:
        raise LmrecError(f"warmup is a fraction of the run in [0, 0.9), got {warmup}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    duration = minutes * 60
    window_s = window_s or max(5.0, duration / 30)
    sample_s = sample_s or max(2.0, duration / 120)
    report: dict = {
        "config": str(config), "minutes": minutes, "rate": rate, "mix": MIX, "warmup": warmup, "window_s": window_s,
        "users": users, "item_pool": item_pool,
        "machine": {"cpus": os.cpu_count(), "platform": _platform.platform(), "python": _platform.python_version(),
                    "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
    }
    who = [f"soak-user-{u}" for u in range(users)]
    with tempfile.TemporaryDirectory(prefix="lmrec-soak-") as tmp, _stopped_on_sigterm():
        path, port, args = service_config(Path(config), Path(tmp))
        items = catalog_ids(args)
        service = Service(path, port, MODES[mode], out / "serve.log")
        try:
            report["ready_s"] = round(service.wait_ready(), 1)
            samples, memory, skipped, first_errors = asyncio.run(_drive(
                f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}, duration, rate, who, items, item_pool,
                max_in_flight, sample_s, service.proc.pid, seed))
        finally:
            service.stop()
    report.update(analyse(samples, memory, duration, warmup, window_s))
    report.update({"skipped": skipped, "achieved_rate": round(len(samples) / duration, 1), "first_errors": first_errors,
                   "memory": memory, "machine_load_avg_at_end": [round(x, 2) for x in os.getloadavg()]})
    tmp_json = out / ".soak.json.tmp"
    tmp_json.write_text(json.dumps(report, indent=2))
    tmp_json.replace(out / "soak.json")
    _plot(report, out / "soak.png")
    return report


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    names = sorted({n for m in report["memory"] for n in m["rss_mb"]})
    for name in names:
        pts = [(m["t"] / 60, m["rss_mb"][name]) for m in report["memory"] if name in m["rss_mb"]]
        a.plot([p[0] for p in pts], [p[1] for p in pts], label=name, linewidth=1)
    warm = report["minutes"] * report["warmup"]
    for ax in (a, b):
        ax.axvline(warm, color="grey", linestyle="--", linewidth=0.8)
    a.set(xlabel="minutes", ylabel="RSS (MB)", title="resident memory per replica (deployment/pid)")
    a.legend(fontsize=7)
    for kind in MIX:
        pts = [(w["t"] / 60, w[kind]["p99_ms"]) for w in report["windows"] if w[kind]["p99_ms"] is not None]
        b.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=f"{kind} p99")
    b.set(xlabel="minutes", ylabel="ms", title=f"p99 per {report['window_s']:.0f} s window", yscale="log")
    b.legend(fontsize=8)
    fig.suptitle(f"lmrec soak: {report['config']}, {report['rate']:g} req/s for {report['minutes']:g} min on {report['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(report: dict) -> str:
    lines = [f"{report['requests']} requests ({report['achieved_rate']}/s, {report['skipped']} skipped), {report['errors']} errors"]
    for name, g in report["rss_growth"].items():
        lines.append(f"  {name}: {g['after_warmup_mb']} -> {g['end_mb']} MB ({g['growth']:+.1%})")
    for kind, x in report["p99_by_third"].items():
        lines.append(f"  {kind}: p99 {x['first_third_p99_ms']} -> {x['last_third_p99_ms']} ms (drift {x['drift']})")
    lines.append("checks: " + json.dumps(report["checks"]))
    return "\n".join(lines)


def add_parser(bench, command) -> None:
    """``lmrec bench soak`` (registered by lmrec.benchmarks.cli)."""
    r = command(bench, "soak", "a long fixed-rate mixed load against `serve run`: per-replica RSS and p99 over time", _cli)
    r.add_argument("--serve-config", default="deployments/demo.yaml", metavar="FILE", help="the Serve YAML to run (its artifact must exist)")
    r.add_argument("--minutes", type=float, default=30.0, help="how long the load runs")
    r.add_argument("--rate", type=float, default=40.0, help="requests per second, all kinds together")
    r.add_argument("--warmup", type=float, default=0.2, help="the fraction of the run not judged")
    r.add_argument("--users", type=int, default=1000, help="the pool of users events and recommendations are for")
    r.add_argument("--item-pool", type=int, default=200, help="the pool of item ids posted (re-posted: updates)")
    r.add_argument("--out", default="reports/soak", help="the report folder")


def _cli(args) -> int:
    report = run_soak_bench(args.out, args.serve_config, args.minutes, args.rate, args.warmup, users=args.users, item_pool=args.item_pool)
    print(summary(report))
    print(f"wrote {args.out}/soak.json, soak.png")
    return 0 if all(report["checks"].values()) else 1
