"""``lmrec bench serve``: the ranking graph as users run it — ``serve run deployments/<name>.yaml`` in a
fresh local Ray per proxy mode — under closed-loop HTTP load, plus real-time freshness.

Per proxy mode (Serve's default proxy; HAProxy with ``RAY_SERVE_ENABLE_HA_PROXY=1`` and
``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``), on the same machine, one after the other:

- ``load``: ``POST /v1/recommend`` for random seeded users at each concurrency level for ``duration``
  seconds: throughput, p50/p95/p99 latency, errors; the same load on apps deployed beside the graph:
  ``echo`` (one replica that parses and answers: the proxy's and HTTP's floor) and, beside a graph of
  separate stages, ``floor`` (its shape, a batching ingress and three hops, with stages that do nothing:
  what the hops alone leave of echo's throughput on this machine);
- ``freshness``: for ``trials`` users, an event posted, then the very next recommendation (``exclude_seen:
  false``): seen only when that answer's user vector was computed after the event (its ``history_version``)
  and the scores changed; how long from sending the event to holding such an answer (lmrec.benchmarks.freshness);
- ``new_item``: a new item posted with its text, then a recommendation filtered to it: found, and how long;
  then the item removed and the same recommendation: gone, and how long.

The load generator runs in this process (aiohttp) on the same cores as the service: absolute numbers
are for this machine; the ratio between modes is the point. Writes ``serve.json`` and ``serve.png``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform as _platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml

from lmrec.benchmarks.freshness import percentiles
from lmrec.errors import LmrecError

MODES = {
    "default": {},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}
TOKEN = "bench-" + uuid.uuid4().hex


ECHO_ROUTE = "/echo"


def echo_app(args: dict | None = None):
    """A Serve deployment that only parses and echoes the request: the floor the proxy and one replica
    hop cost, measured in the same cluster as the graph."""
    from fastapi import Body, FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Echo:
        @api.post("/v1/recommend")
        async def recommend(self, body: dict = Body(...)) -> dict:  # noqa: B008 (FastAPI's idiom)
            return {"user_id": body.get("user_id"), "items": [], "model_version": "echo", "cold_start": True}

    return Echo.bind()


FLOOR_ROUTE = "/floor"
APPS = {"load": "graph", "echo": "echo", "floor": "floor (3 no-op stages)"}
FLOOR_STAGES = ("FloorState", "FloorRetrieval")  # the separated graph's hops: user state, retrieve + re-rank


def floor_app(args: dict | None = None):
    """The separate-deployment graph's shape with stages that do nothing: an ingress that batches requests
    as lmrec's does (its ``Coalescer`` and default ``BatchConfig``) and sends each batch through the two
    deployments in turn, which return what they got. What the hops alone cost — the most a graph of
    separate stages can reach on this machine, whatever its stages do."""
    from fastapi import Body, FastAPI
    from ray import serve

    from lmrec.serving.coalesce import Coalescer

    api = FastAPI()

    # no CPU reserved: the baselines must not keep any of the graph's replicas from being scheduled
    @serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
    class Stage:
        async def many(self, items: list) -> list:
            return items

    @serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Floor:
        def __init__(self, *stages):
            self.stages = stages
            self.batches = Coalescer(self._through)

        async def _through(self, user_ids: list) -> list:
            for stage in self.stages:
                user_ids = await stage.many.remote(user_ids)
            return user_ids

        @api.post("/v1/recommend")
        async def recommend(self, body: dict = Body(...)) -> dict:  # noqa: B008 (FastAPI's idiom)
            user_id = await self.batches(body.get("user_id"))
            return {"user_id": user_id, "items": [], "model_version": "floor", "cold_start": True}

    return Floor.bind(*(Stage.options(name=name).bind() for name in FLOOR_STAGES))


def _baselines(args: dict) -> tuple[str, ...]:
    """The routes of the apps deployed beside the graph: the echo app, and the floor beside a graph of
    separate stages (it is that graph's shape: it has nothing to say of a co-located one)."""
    return (ECHO_ROUTE,) if args.get("colocate") else (ECHO_ROUTE, FLOOR_ROUTE)


def _service_config(config: Path, state_dir: Path, baselines: bool = True) -> tuple[Path, int, dict]:
    """The YAML as given, with a fresh store (the seed loads into it) so modes start alike, plus (``baselines``)
    the echo application beside it, and the floor beside a graph of separate stages."""
    spec = yaml.safe_load(config.read_text())
    apps = spec.get("applications") or []
    if len(apps) != 1:
        raise LmrecError(f"{config}: expected one application, found {len(apps)}")
    args = apps[0].setdefault("args", {})
    for key in ("artifact", "seed_config"):
        if args.get(key):
            args[key] = str(Path(args[key]).resolve())
    args["store_path"] = str(state_dir / "state.sqlite")
    args["store_url_env"] = None
    args["api_token_env"] = "LMREC_BENCH_TOKEN"
    args["auth_reads"] = False
    if not Path(args["artifact"]).is_dir():
        raise LmrecError(f"{config}: artifact {args['artifact']} not found: run `make demo` (or `lmrec export`) first")
    if baselines:
        apps.append({"name": "echo", "route_prefix": ECHO_ROUTE, "import_path": "lmrec.benchmarks.serve:echo_app"})
    if baselines and FLOOR_ROUTE in _baselines(args):
        apps.append({"name": "floor", "route_prefix": FLOOR_ROUTE, "import_path": "lmrec.benchmarks.serve:floor_app"})
    spec.setdefault("http_options", {})
    spec["http_options"]["host"] = "127.0.0.1"
    port = int(spec["http_options"].get("port", 8000))
    out = state_dir / "serve.yaml"
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out, port, args


def _seed_users(args: dict) -> list[str]:
    from lmrec.config import load_config
    from lmrec.data.loaders import load_dataset

    if not (args.get("seed_dataset") or args.get("seed_config")):
        raise LmrecError("the benchmark needs a seeded service (seed_dataset or seed_config in the YAML args)")
    cfg = load_config([args["seed_config"]] if args.get("seed_config") else [],
                      [f"data.dataset={args['seed_dataset']}"] if args.get("seed_dataset") else [])
    users = load_dataset(cfg.data).interactions["user_id"].astype(str).unique().tolist()
    return users


def _serve_cli() -> str:
    """The `serve` command of this environment (beside its python), else the one on PATH."""
    path = Path(sys.executable).with_name("serve")
    return str(path) if path.exists() else "serve"


def _local_env() -> dict:
    """This process's environment without RAY_ADDRESS: `serve run` starts, and `serve status` asks, a local Ray."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


class Service:
    """``serve run FILE`` in its own process group (it starts, and on SIGINT stops, its own local Ray)."""

    def __init__(self, config: Path, port: int, env: dict, log: Path):
        import socket

        self.port, self.log = port, log
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                raise LmrecError(f"port {port} is already in use: stop the service running there first")
        # an ingress replica stopping in HAProxy mode waits this long for load balancers to stop sending to
        # it (30 s by default): nothing is sending once a run is done, so the service stops in seconds
        full = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1", **_local_env(), **env, "LMREC_BENCH_TOKEN": TOKEN}
        # SIGINT back to its default in `serve run`: started from a background job (`cmd &`, nohup) it inherits
        # SIGINT ignored, never shuts down on stop() and is killed a minute later, leaving its Ray to the SIGKILL
        self.proc = subprocess.Popen([_serve_cli(), "run", str(config)], env=full, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def wait_ready(self, timeout: float = 600, routes: tuple[str, ...] = ()) -> float:
        """Seconds until the graph's ``/healthz`` is 200 and every app at ``routes`` answers a recommend."""
        import urllib.request

        started = time.monotonic()
        base = f"http://127.0.0.1:{self.port}"
        probes = [(f"{base}/healthz", None)] + [(f"{base}{route}/v1/recommend", b'{"user_id": "ready"}') for route in routes]
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise LmrecError(f"`serve run` exited with {self.proc.returncode}; its log: {self.log}")
            url, body = probes[0]
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}),
                                            timeout=5) as r:
                    if r.status == 200:
                        probes.pop(0)
                        if not probes:
                            return time.monotonic() - started
                        continue
            except OSError:
                pass
            time.sleep(1)
        raise LmrecError(f"the service was not ready after {timeout:.0f} s (waiting for {probes[0][0]}); "
                         f"{self.unhealthy() or 'no deployment reported a problem'}; its log: {self.log}")

    def unhealthy(self) -> str:
        """What `serve status` says of the deployments that are not healthy (e.g. a replica pending for lack of CPUs)."""
        try:
            # the local Ray that `serve run` started requires its token from clients
            out = subprocess.run([_serve_cli(), "status"], capture_output=True, text=True, timeout=30,
                                 env={"RAY_AUTH_MODE": "token", **_local_env()})
            if out.returncode != 0:
                return f"`serve status` failed: {(out.stderr.strip().splitlines() or ['?'])[-1][:300]}"
            return unhealthy_deployments(yaml.safe_load(out.stdout) or {})
        except (OSError, subprocess.TimeoutExpired, yaml.YAMLError) as exc:
            return f"`serve status` failed: {exc}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever of its local Ray is left in its process group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        time.sleep(2)


def unhealthy_deployments(status: dict) -> str:
    """The deployments of a `serve status` answer that are not healthy, with what Serve says of each."""
    problems = []
    for app, a in (status.get("applications") or {}).items():
        for name, d in (a.get("deployments") or {}).items():
            if d.get("status") != "HEALTHY":
                problems.append(f"{app}/{name} {d.get('status')}: {(d.get('message') or '').strip()[:300]}")
    return "; ".join(problems)


def ranking_of(spec: dict) -> dict | None:
    """The ranking config a Serve YAML's application ranks with: ``ranking:`` in the co-located Ingress's
    user_config, else the Retrieval deployment's whole user_config (None: the defaults)."""
    for d in (spec.get("applications") or [{}])[0].get("deployments") or []:
        if d.get("name") == "Ingress" and (d.get("user_config") or {}).get("ranking") is not None:
            return d["user_config"]["ranking"]
        if d.get("name") == "Retrieval" and d.get("user_config"):
            return d["user_config"]
    return None


def in_process_pipeline(args: dict, users: list[str], duration: float, k: int, seed: int, ranking: dict | None = None) -> dict:
    """The co-located service's ranking core (user state, retrieval, re-rank, every tower in this process)
    without Ray or HTTP, on a copy of the service's store, requests one after the other: what Serve and HTTP
    add on top of the model, store and index work. ``ranking``: the YAML's ranking config (:func:`ranking_of`)."""
    from lmrec.artifact import read_model_version
    from lmrec.ranking.local import build_local
    from lmrec.ranking.records import Query
    from lmrec.store import StoreConfig

    store = StoreConfig(args["store_path"], model=read_model_version(args["artifact"], args.get("backend", "auto")))
    # the benchmarked YAML's kNN weight (None there too: the training config's), as the service ranks
    local = build_local(args["artifact"], store, backend=args.get("backend", "auto"), index_backend=args.get("retrieval_backend", "auto"),
                        knn_weight=args.get("knn_weight"), max_history=int(args.get("max_history", 200)), config=ranking,
                        seed_dataset=args.get("seed_dataset"), seed_config=args.get("seed_config"))
    rng = random.Random(seed)

    async def run() -> list[float]:
        lat = []
        stop = time.perf_counter() + duration
        while time.perf_counter() < stop:
            t = time.perf_counter()
            await local.ranker.rank([Query(k, user_id=rng.choice(users))])
            lat.append((time.perf_counter() - t) * 1000)
        return lat

    try:
        lat = asyncio.run(run())
    finally:
        local.close()
    return {"concurrency": 1, "requests": len(lat), "rps": round(len(lat) / duration, 1), **percentiles(lat)}


def _client(connections: int = 1):
    """The load generator's HTTP client: at most ``connections`` open connections (one per concurrent
    worker, kept alive), a request that takes a minute counts as failed."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections), timeout=aiohttp.ClientTimeout(total=60))


async def _load(base: str, users: list[str], concurrency: int, duration: float, k: int, seed: int) -> dict:
    import aiohttp

    rng = random.Random(seed)
    lat: list[float] = []
    stages: dict[str, list[float]] = {}
    batches: list[float] = []  # the size of the batch each request went through the stages in
    errors = 0
    first_error = None
    stop = time.perf_counter() + duration

    async def worker(session):
        nonlocal errors, first_error
        while time.perf_counter() < stop:
            body = {"user_id": rng.choice(users), "k": k}
            t = time.perf_counter()
            try:
                async with session.post(base + "/v1/recommend", json=body) as r:
                    text = await r.text()
                    ok = r.status == 200
                    error = None if ok else f"{r.status} {text[:200]}"
                    timing = r.headers.get("Server-Timing")
            except aiohttp.ClientError as exc:
                ok, error = False, repr(exc)
            if ok:
                lat.append((time.perf_counter() - t) * 1000)
                for name, ms in server_timing(timing).items():
                    stages.setdefault(name, []).append(ms)
                size = server_timing(timing, "desc").get("batch")
                if size:
                    batches.append(size)
            else:
                errors += 1
                first_error = first_error or error

    started = time.perf_counter()
    async with _client(concurrency) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {"concurrency": concurrency, "seconds": round(wall, 2), "requests": len(lat), "errors": errors,
            "rps": round(len(lat) / wall, 1), **percentiles(lat), **({"first_error": first_error} if first_error else {}),
            **({"stages": {name: percentiles(ms) for name, ms in stages.items()}} if stages else {}),
            **({"batch_size": {"mean": round(sum(batches) / len(batches), 1), "max": max(batches)}} if batches else {})}


PRIME_MAX_USERS = 20_000  # a larger seed is sampled: priming it all would take minutes


async def _prime(base: str, users: list[str], concurrency: int, k: int) -> dict:
    """One recommendation for every user, so the timed runs measure the steady state (each user's vector
    cached, as for a returning user); the path after an event, which recomputes it, is what freshness times."""
    todo = list(users)
    errors = 0

    async def worker(session):
        nonlocal errors
        while todo:
            async with session.post(base + "/v1/recommend", json={"user_id": todo.pop(), "k": k}) as r:
                await r.read()
                errors += r.status != 200

    started = time.perf_counter()
    async with _client(concurrency) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    if errors:
        raise LmrecError(f"{errors} of {len(users)} priming requests failed; see the service log")
    return {"users": len(users), "seconds": round(time.perf_counter() - started, 2)}


def server_timing(header: str | None, param: str = "dur") -> dict[str, float]:
    """``Server-Timing: state;dur=0.41, retrieval;dur=0.22`` -> {"state": 0.41, "retrieval": 0.22} (ms);
    ``param="desc"`` reads numeric descriptions instead (``batch;desc=8`` -> {"batch": 8.0})."""
    out = {}
    for part in (header or "").split(","):
        name, _, params = part.strip().partition(";")
        for p in params.split(";"):
            key, _, value = p.strip().partition("=")
            if key == param and name:
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
    return out


async def _freshness(base: str, users: list[str], trials: int, k: int, seed: int) -> dict:
    """Strict read-your-writes (lmrec.benchmarks.freshness)."""
    from lmrec.benchmarks.freshness import measure_freshness

    return await measure_freshness(base, users, trials, k, seed, TOKEN)


async def _new_items(base: str, trials: int) -> dict:
    from lmrec.benchmarks.freshness import measure_new_items

    return await measure_new_items(base, trials, TOKEN)


def service_runs(configs: list[Path], against: str | Path | None = None) -> list[tuple[str, Path, str | None]]:
    """(label, Serve YAML, PYTHONPATH) per service to run: each config, and right after it the same-named YAML
    of the ``against`` checkout with that checkout's package first on the path."""
    runs = []
    for c in configs:
        runs.append((c.stem, c, None))
        if against is not None:
            other = Path(against) / "deployments" / c.name
            if not other.is_file():
                raise LmrecError(f"--against {against}: no deployments/{c.name} there (an lmrec checkout holds deployments/)")
            runs.append((f"before-{c.stem}", other, str((Path(against) / "platform").resolve())))
    return runs


def run_serve_bench(out: str | Path, config: str | Path | list = "deployments/demo.yaml", modes: list[str] | None = None,
                    concurrency: list[int] | None = None, duration: float = 15.0, warmup: float = 3.0, k: int = 10,
                    trials: int = 30, seed: int = 0, load: bool = True, echo: bool = True, against: str | Path | None = None) -> dict:
    """``config``: one Serve YAML or several (compared in the same run, each under every proxy mode);
    ``load=False``: freshness and new items only (``lmrec bench freshness``). ``against``: another lmrec
    checkout; each config also runs as that checkout has it (its ``deployments/`` file of the same name, its
    package first on ``PYTHONPATH``: ``serve run`` and its replicas import it), right after this one's, under
    the same load: labelled ``before-NAME``."""
    out = Path(out)
    configs = [Path(c) for c in (config if isinstance(config, (list, tuple)) else [config])]
    runs = service_runs(configs, against)
    modes = modes or list(MODES)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise LmrecError(f"unknown proxy mode(s) {unknown}: choose from {list(MODES)}")
    concurrency = concurrency or [1, 16, 64]
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "config": ", ".join(map(str, configs)), "k": k, "duration_s": duration,
        "machine": {"cpus": os.cpu_count(), "platform": _platform.platform(), "python": _platform.python_version()},
        "modes": {},
    }
    with _stopped_on_sigterm():
        _run_services(report, runs, modes, concurrency, duration, warmup, k, trials, seed, load, echo, out)
    report["checks"] = _checks(report, concurrency)
    report["at_16"] = _ratios_at_16(report)
    if load:
        for label, _, _ in runs:
            prefix = "" if len(runs) == 1 else f"{label}/"
            a, b = report["modes"].get(prefix + "default"), report["modes"].get(prefix + "haproxy")
            if a and b:
                report.setdefault("haproxy_over_default_rps", {})[label] = {
                    str(x["concurrency"]): round(y["rps"] / x["rps"], 2) if x["rps"] else None for x, y in zip(a["load"], b["load"])
                }
    name = "serve" if load else "freshness"
    tmp_json = out / f".{name}.json.tmp"
    tmp_json.write_text(json.dumps(report, indent=2))
    tmp_json.replace(out / f"{name}.json")
    _plot(report, out / f"{name}.png")
    return report


@contextlib.contextmanager
def _stopped_on_sigterm():
    """SIGTERM (a job's timeout, ``kill``) raises SystemExit while the services run, so each ``finally``
    stops its ``serve run`` with its Ray and HAProxy instead of leaving them holding the port."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_services(report: dict, runs: list[tuple[str, Path, str | None]], modes: list[str], concurrency: list[int], duration: float,
                  warmup: float, k: int, trials: int, seed: int, load: bool, echo: bool, out: Path) -> None:
    """Each (label, config, PYTHONPATH) under each proxy mode, one service at a time: its entry in
    ``report["modes"]``."""
    for label, config, pythonpath in runs:
        for mode in modes:
            key = mode if len(runs) == 1 else f"{label}/{mode}"
            with tempfile.TemporaryDirectory(prefix=f"lmrec-bench-serve-{mode}-") as tmp:
                cfg_file, port, args = _service_config(config, Path(tmp))
                users = _seed_users(args)
                baselines = _baselines(args)
                env = {**MODES[mode], **({"PYTHONPATH": pythonpath} if pythonpath else {})}
                svc = Service(cfg_file, port, env, out / f"serve-{key.replace('/', '-')}.log")
                try:
                    ready = svc.wait_ready(routes=baselines)
                    base = f"http://127.0.0.1:{port}"
                    entry: dict = {"config": str(config), "env": MODES[mode], "ready_s": round(ready, 1),
                                   **({"pythonpath": pythonpath} if pythonpath else {})}
                    if load:  # the load draws from the users it primed
                        if len(users) > PRIME_MAX_USERS:
                            users = random.Random(seed).sample(users, PRIME_MAX_USERS)
                        entry["primed"] = asyncio.run(_prime(base, users, 16, k))
                    asyncio.run(_load(base, users, max(concurrency), warmup, k, seed))  # warm-up: first calls, batches
                    if load:
                        entry["load"] = [asyncio.run(_load(base, users, c, duration, k, seed + c)) for c in concurrency]
                        if echo:
                            entry["echo"] = [asyncio.run(_load(base + ECHO_ROUTE, users, c, duration, k, seed + c)) for c in concurrency]
                        if echo and FLOOR_ROUTE in baselines:
                            asyncio.run(_load(base + FLOOR_ROUTE, users, max(concurrency), warmup, k, seed))
                            entry["floor"] = [asyncio.run(_load(base + FLOOR_ROUTE, users, c, duration, k, seed + c)) for c in concurrency]
                    entry["freshness"] = asyncio.run(_freshness(base, users, trials, k, seed))
                    entry["new_item"] = asyncio.run(_new_items(base, max(5, trials // 3)))
                finally:
                    svc.stop()
                if load and "in_process" not in report:
                    report["in_process"] = in_process_pipeline(args, users, duration, k, seed,
                                                               ranking_of(yaml.safe_load(config.read_text())))
            report["modes"][key] = entry
            print(f"{key}: " + ", ".join(f"c={r['concurrency']} {r['rps']} req/s p99 {r['p99_ms']} ms" for r in entry.get("load", [])), flush=True)


def _checks(report: dict, concurrency: list[int]) -> dict:
    """The targets, per mode: graph >= 0.5x echo qps at c=16, p99 <= 50 ms at c=16, qps at c=64 >= 0.9x
    c=16; freshness 100% read-your-writes (strict) with p99 <= 20 ms; every new item recommendable on the next
    request, every removed one gone from it."""
    out = {}
    for mode, r in report["modes"].items():
        c = {}
        f = r["freshness"]
        c["read_your_writes_100pct"] = f.get("seen_fraction") == 1.0  # False while answers carry no history_version
        c["freshness_p99_le_20ms"] = (f["event_to_updated_ranking"]["p99_ms"] or 1e9) <= 20
        c["new_items_recommendable_100pct"] = r["new_item"]["found_fraction"] == 1.0
        if "removed_fraction" in r["new_item"]:
            c["removed_items_gone_100pct"] = r["new_item"]["removed_fraction"] == 1.0
        by = {x["concurrency"]: x for x in r.get("load", [])}
        echo = {x["concurrency"]: x for x in r.get("echo", [])}
        if 16 in by:
            c["p99_le_50ms_at_16"] = by[16]["p99_ms"] is not None and by[16]["p99_ms"] <= 50
            if 16 in echo and echo[16]["rps"]:
                c["graph_ge_half_echo_at_16"] = by[16]["rps"] >= 0.5 * echo[16]["rps"]
            if 64 in by and by[16]["rps"]:
                c["qps64_ge_0.9x_qps16"] = by[64]["rps"] >= 0.9 * by[16]["rps"]
        out[mode] = c
    return out


def _ratios_at_16(report: dict) -> dict:
    """Per mode at c=16: graph / echo (the target), floor / echo (what three hops alone leave of the echo
    app's throughput here) and graph / floor (what the stages' own work costs on top of the hops)."""
    out = {}
    for mode, r in report["modes"].items():
        at = {kind: next((x["rps"] for x in r.get(kind, []) if x["concurrency"] == 16), None) for kind in ("load", "echo", "floor")}
        g, e, f = at["load"], at["echo"], at["floor"]
        ratios = {"graph_over_echo": g / e if g and e else None, "floor_over_echo": f / e if f and e else None,
                  "graph_over_floor": g / f if g and f else None}
        if any(v is not None for v in ratios.values()):
            out[mode] = {k: None if v is None else round(v, 3) for k, v in ratios.items()}
    return out


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if not any("load" in r for r in report["modes"].values()):  # freshness only
        names = list(report["modes"])
        a.bar(names, [report["modes"][m]["freshness"]["event_to_updated_ranking"]["p50_ms"] or 0 for m in names], label="p50")
        a.bar(names, [report["modes"][m]["freshness"]["event_to_updated_ranking"]["p99_ms"] or 0 for m in names], alpha=0.4, label="p99")
        a.set(ylabel="ms", title="event sent -> updated ranking held")
        b.bar(names, [report["modes"][m]["new_item"]["post_to_recommendable"]["p50_ms"] for m in names])
        b.set(ylabel="ms (p50)", title="new item posted -> recommended")
    for mode, r in report["modes"].items():
        for kind, style in (("load", "-"), ("echo", ":"), ("floor", "-.")):
            if kind not in r:
                continue
            c = [x["concurrency"] for x in r[kind]]
            a.plot(c, [x["rps"] for x in r[kind]], marker="o", linestyle=style, label=f"{mode} {APPS[kind]}")
            if kind == "load":
                b.plot(c, [x["p99_ms"] for x in r[kind]], marker="o", label=f"{mode} p99")
                b.plot(c, [x["p50_ms"] for x in r[kind]], marker=".", linestyle="--", label=f"{mode} p50")
            elif kind == "floor":
                b.plot(c, [x["p99_ms"] for x in r[kind]], marker="o", linestyle=style, label=f"{mode} floor p99")
    if "in_process" in report:
        a.axhline(report["in_process"]["rps"], color="grey", linestyle="--", label="one process, no Ray (c=1)")
    if any("load" in r for r in report["modes"].values()):
        a.set(xlabel="concurrent clients", ylabel="requests / s", title="throughput", xscale="log", yscale="log")
        b.set(xlabel="concurrent clients", ylabel="ms", title="latency", xscale="log", yscale="log")
    for ax in (a, b):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"lmrec serve: {report['config']} on {report['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(report: dict) -> str:
    lines = ["| mode | app | clients | req/s | p50 ms | p95 ms | p99 ms | errors | stage p50 ms as the ingress waited |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mode, r in report["modes"].items():
        for kind in ("load", "echo", "floor"):
            for x in r.get(kind, []):
                stages = ", ".join(f"{name} {v['p50_ms']}" for name, v in x.get("stages", {}).items())
                if "batch_size" in x:
                    stages += f"; batch mean {x['batch_size']['mean']}"
                lines.append(f"| {mode} | {APPS[kind]} | {x['concurrency']} | {x['rps']} | {x['p50_ms']} | "
                             f"{x['p95_ms']} | {x['p99_ms']} | {x['errors']} | {stages} |")
    if "in_process" in report:
        x = report["in_process"]
        lines.append(f"| - | one process, no Ray | 1 | {x['rps']} | {x['p50_ms']} | {x['p95_ms']} | {x['p99_ms']} | 0 | |")
    lines.append("")
    for mode, r in report["modes"].items():
        f, n = r["freshness"], r["new_item"]
        if f.get("seen_fraction") is None:
            seen = f"seen: unknown, the answers carry no history_version (scores changed {f['changed_fraction']:.0%})"
        else:
            seen = (f"seen {f['seen_fraction']:.0%} (scores changed {f['changed_fraction']:.0%}), event -> answer computed from it "
                    f"p50 {f['event_to_updated_ranking']['p50_ms']} ms / p99 {f['event_to_updated_ranking']['p99_ms']} ms")
        lines.append(f"{mode}: event -> next recommendation (exclude_seen false) of {f['trials']}: {seen}; "
                     f"new item recommendable {n['found_fraction']:.0%}, p50 {n['post_to_recommendable']['p50_ms']} ms; "
                     f"removed item gone {n.get('removed_fraction', 0):.0%}, p50 {n.get('remove_to_gone', {}).get('p50_ms')} ms")
    for mode, x in report.get("at_16", {}).items():
        lines.append(f"{mode} at c=16: " + ", ".join(f"{k.replace('_over_', ' / ')} {v}" for k, v in x.items() if v is not None))
    lines.append("checks: " + json.dumps(report.get("checks", {})))
    return "\n".join(lines)
