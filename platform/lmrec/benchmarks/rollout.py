"""``lmrec bench rollout``: a new model rolled out onto the running service, under load, as in production.

``serve run CONFIG`` (a fresh store, seeded), then items posted through the API with events on them, then
the next model: ``lmrec retrain`` on the live store (``retrain``: a training config; the posted items are in
its catalog) or a given artifact (``to``); then more items posted (these only the old model has encoded),
then ``serve deploy`` of the same YAML with ``artifact:`` pointing at the new model, in place, while
``concurrency`` clients keep asking for recommendations. Measured:

- every request during the switch: its status and the model that answered (no request may fail; each
  answer comes from one model);
- from ``serve deploy`` to the new model answering every request;
- from then until every posted item is served by the new model (its scorer re-encodes the ones the old
  model encoded; catalog texts take the catalog's vectors).

Writes ``rollout.json`` and ``rollout.png``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform as _platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from lmrec.benchmarks.serve import (
    MODES,
    TOKEN,
    Service,
    _client,
    _local_env,
    _serve_cli,
    _service_config,
    _stopped_on_sigterm,
    server_timing,
)
from lmrec.errors import LmrecError

WORDS = ("trail road running vest jacket shoe lamp tent stove bottle filter rope glove helmet pack sock cap "
         "light warm dry fast quiet compact").split()


def run_rollout_bench(out: str | Path, config: str | Path = "deployments/demo.yaml", retrain: str | Path | None = None,
                      to: str | Path | None = None, items_before: int = 200, items_after: int = 50, concurrency: int = 4,
                      mode: str = "haproxy", overrides: list[str] | None = None, seed: int = 0, timeout: float = 600) -> dict:
    """``retrain``: a training config for ``lmrec retrain`` on the live store; or ``to``: an artifact."""
    if (retrain is None) == (to is None):
        raise LmrecError("give the next model: --retrain CONFIG.yaml (retrained on the live store) or --to ARTIFACT")
    if mode not in MODES:
        raise LmrecError(f"unknown proxy mode {mode!r}: choose from {list(MODES)}")
    if to is not None and not (Path(to) / "manifest.json").is_file():
        raise LmrecError(f"--to {to}: not an exported artifact (no manifest.json)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "config": str(config), "mode": mode, "concurrency": concurrency,
        "machine": {"cpus": os.cpu_count(), "platform": _platform.platform(), "python": _platform.python_version()},
    }
    with tempfile.TemporaryDirectory(prefix="lmrec-rollout-") as tmp, _stopped_on_sigterm():
        state = Path(tmp)
        path, port, args = _service_config(Path(config), state, baselines=False)
        service = Service(path, port, MODES[mode], out / "serve.log")
        try:
            report["ready_s"] = round(service.wait_ready(timeout), 1)
            base = f"http://127.0.0.1:{port}"
            asyncio.run(_run(report, base, path, args, state, retrain, to, items_before, items_after, concurrency,
                             overrides or [], seed, timeout))
        finally:
            service.stop()
    report["checks"] = {
        "no_failed_request": report["switch"]["failed"] == 0,
        "new_model_answers": report["switch"]["to_new_model_s"] is not None,
        "posted_items_served_by_new_model": report["items"]["missing"] == 0,
    }
    (out / "rollout.json").write_text(json.dumps(report, indent=2))
    _plot(report, out / "rollout.png")
    return report


async def _run(report: dict, base: str, path: Path, args: dict, state: Path, retrain, to, items_before: int, items_after: int,
               concurrency: int, overrides: list[str], seed: int, timeout: float) -> None:
    rng = random.Random(seed)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with _client(concurrency + 2) as http:

        async def post_items(prefix: str, n: int) -> list[str]:
            items = [{"item_id": f"{prefix}-{i}", "text": " ".join(rng.choice(WORDS) for _ in range(10)) + f" no. {i}",
                      "attributes": {"shelf": prefix}} for i in range(n)]
            for start in range(0, n, 100):
                async with http.post(f"{base}/v1/items", json={"items": items[start:start + 100]}, headers=auth) as r:
                    if r.status != 200:
                        raise LmrecError(f"posting items failed: {r.status} {await r.text()}")
            return [i["item_id"] for i in items]

        async with http.get(f"{base}/healthz") as r:
            old = (await r.json())["model_version"]
        posted = await post_items("before", items_before)
        users = [f"rollout-user-{u}" for u in range(100)]
        events = [{"user_id": u, "item_id": rng.choice(posted), "event_type": "click"} for u in users for _ in range(3)] if posted else []
        for start in range(0, len(events), 1000):
            async with http.post(f"{base}/v1/events", json={"events": events[start:start + 1000]}, headers=auth) as r:
                if r.status != 202:
                    raise LmrecError(f"posting events failed: {r.status} {await r.text()}")
        started = time.monotonic()
        artifact = Path(to).resolve() if to is not None else await asyncio.to_thread(_retrain, retrain, args, state, overrides)
        report["next_model"] = {"artifact": str(artifact), "seconds": round(time.monotonic() - started, 1),
                                "retrained": retrain is not None}
        new = json.loads((artifact / "manifest.json").read_text())["model_version"]
        if new == old:
            raise LmrecError(f"the next model is the one serving ({new}): nothing to roll out")
        posted += await post_items("after", items_after)

        spec = yaml.safe_load(path.read_text())
        spec["applications"] = [a for a in spec["applications"] if a["import_path"] == "lmrec.serving.app:build_app"]
        spec["applications"][0]["args"]["artifact"] = str(artifact)
        next_path = state / "next.yaml"
        next_path.write_text(yaml.safe_dump(spec, sort_keys=False))

        samples: list[tuple[float, float, int, str | None]] = []  # (since deploy s, latency ms, status, model)
        slow: list[dict] = []
        errors: list[dict] = []
        cold = [0]  # answers without the user vector (cold_start: every user here has history)
        stop = asyncio.Event()

        async def client(j: int) -> None:
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    async with http.post(f"{base}/v1/recommend", json={"user_id": users[(j * 7 + len(samples)) % len(users)], "k": 10}) as r:
                        body = await r.json(content_type=None)
                        status, timing = r.status, r.headers.get("Server-Timing")
                except Exception:  # noqa: BLE001 - a connection refused or reset counts as a failed request
                    body, status, timing = None, 0, None
                ms = (time.perf_counter() - t) * 1e3
                if status != 200 and len(errors) < 5:
                    errors.append({"status": status, "body": body if body else None})
                if body and body.get("cold_start"):
                    cold[0] += 1
                samples.append((time.perf_counter() - deployed, ms, status, body.get("model_version") if status == 200 else None))
                if ms > 1000:  # where a slow request spent its time (the stages as the ingress waited for them)
                    slow.append({"at_s": round(samples[-1][0], 2), "ms": round(ms, 1), "status": status,
                                 "stages_ms": server_timing(timing) if timing else None})

        deployed = time.perf_counter()
        clients = [asyncio.create_task(client(j)) for j in range(concurrency)]
        await asyncio.sleep(1.0)  # requests before the switch too
        deployed = time.perf_counter()
        samples.clear()
        done = await asyncio.to_thread(subprocess.run, [_serve_cli(), "deploy", str(next_path)], capture_output=True, text=True,
                                       timeout=120, env={"RAY_AUTH_MODE": "token", **_local_env()})
        if done.returncode != 0:
            stop.set()
            await asyncio.gather(*clients)
            raise LmrecError(f"`serve deploy` failed: {done.stderr.strip()[-500:]}")
        switched = None
        while time.perf_counter() - deployed < timeout:
            recent = [s for s in samples[-4 * concurrency:] if s[0] > 0]
            if len(recent) >= 2 * concurrency and all(m == new for *_, m in recent):
                switched = recent[0][0]
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # a little more load on the new model alone
        stop.set()
        await asyncio.gather(*clients)
        report["switch"] = {
            "requests": len(samples), "failed": sum(1 for s in samples if s[2] != 200),
            "answered_by": {m: sum(1 for s in samples if s[3] == m) for m in (old, new)},
            "to_new_model_s": round(switched, 1) if switched is not None else None,
            "latency_ms_max": round(max((s[1] for s in samples), default=0.0), 1),
            "old_model": old, "new_model": new, "slow_requests": slow[:20], "errors": errors,
            "not_personalised": cold[0],
        }
        report["samples"] = [[round(t, 3), round(ms, 2), status, m == new] for t, ms, status, m in samples]
        # every posted item served by the new model: 200 from GET /v1/items/{id} on the new replicas
        started = time.perf_counter()
        missing = list(posted)
        while missing and time.perf_counter() - started < timeout:
            still = []
            for item_id in missing:
                async with http.get(f"{base}/v1/items/{item_id}") as r:
                    if r.status != 200:
                        still.append(item_id)
            missing = still
            if missing:
                await asyncio.sleep(0.2)
        report["items"] = {"posted_before_next_model": items_before, "posted_after": items_after, "missing": len(missing),
                           "all_served_s_after_switch": round(time.perf_counter() - started, 1) if not missing else None}


def _retrain(config: str | Path, args: dict, state: Path, overrides: list[str]) -> Path:
    """``lmrec retrain`` on the live store (its own process, as the nightly job runs it): the new artifact."""
    cmd = [sys.executable, "-m", "lmrec", "retrain", str(config), "--store", args["store_path"], "--artifact", args["artifact"],
           "--out", str(state / "retrain"), "--local", *[a for o in overrides for a in ("--set", o)]]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_local_env())
    if done.returncode != 0:
        raise LmrecError(f"`lmrec retrain` failed: {(done.stderr or done.stdout).strip()[-800:]}")
    [run] = list((state / "retrain").iterdir())
    return run / "artifact"


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    samples = report.get("samples") or []
    for is_new, colour, label in ((False, "tab:blue", "old model"), (True, "tab:orange", "new model")):
        pts = [(t, ms) for t, ms, status, n in samples if status == 200 and n == is_new]
        if pts:
            ax.scatter(*zip(*pts), s=6, color=colour, label=label)
    failed = [(t, ms) for t, ms, status, _ in samples if status != 200]
    if failed:
        ax.scatter(*zip(*failed), s=20, color="red", marker="x", label="failed")
    ax.axvline(0, color="grey", linestyle="--", label="serve deploy")
    if report["switch"]["to_new_model_s"] is not None:
        ax.axvline(report["switch"]["to_new_model_s"], color="tab:orange", linestyle=":", label="new model answers all")
    ax.set(xlabel="seconds since `serve deploy`", ylabel="recommend latency, ms", yscale="log",
           title=f"lmrec rollout under load ({report['concurrency']} clients, {report['mode']} proxy, {report['machine']['cpus']} CPUs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(report: dict) -> str:
    s, i = report["switch"], report["items"]
    return (f"next model in {report['next_model']['seconds']} s ({'retrained on the live store' if report['next_model']['retrained'] else 'given'}); "
            f"`serve deploy` -> new model answering every request: {s['to_new_model_s']} s; {s['requests']} requests meanwhile, "
            f"{s['failed']} failed, {s['not_personalised']} answered without the user vector, max latency {s['latency_ms_max']} ms; all {i['posted_before_next_model'] + i['posted_after']} posted items "
            f"served by the new model {i['all_served_s_after_switch']} s later (missing {i['missing']}); checks {report['checks']}")
