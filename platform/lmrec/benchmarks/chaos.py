"""``lmrec bench chaos``: crash and outage drills against the service as users run it (``serve run`` of a YAML),
each with load on. What a drill must show: nothing acknowledged is lost, errors are 4xx/503 (never a 500 or a
hang past the request timeout), and the service comes back by itself.

- ``writer``: ``kill -9`` of the replica that writes events (``UserState``; the ``Ingress`` when the stages are
  co-located) during an ingest of ``events`` single-event requests at ``concurrency``: Serve replaces it;
  every event answered 202 is in the store afterwards (each event carries its sequence number as its value,
  so the histories read back say which arrived); failed requests counted; time from the kill to the first
  202, and to the new replica's process.
- ``scorer``: ``kill -9`` of every ``Scorer`` replica under recommendation load that needs it (each client
  posts an event, then asks for its user's recommendations: a fresh user vector each time): errors (split
  into requests in flight at the kill and requests sent after it), time back to full throughput (every 1 s bin
  from then on at >= ``FULL`` of the throughput before the kill, without errors; target <= 10 s).
- ``redis``: the service on a Redis store (a ``redis-server`` of this benchmark's own, append-only file
  fsynced on every write, as production runs it); the server killed for ``outage_s`` under mixed load (events,
  recommendations, item posts) and started again on the same files: every error a 503 with ``Retry-After``,
  no request longer than the service's ``request_timeout_s``, recovery time, 0 acknowledged events or items lost.
- ``redis_freeze``: the same with the server frozen (SIGSTOP, then SIGCONT): connections stay open and nothing
  answers, so what bounds a request is the store's socket timeout, not a refused connection.
- ``restart``: items posted, items removed, events posted, one recommendation answered per user; the whole
  ``serve run`` (and its Ray) stopped and started again on the same store: histories, posted items, removals
  intact, and every answer's impression in the store as it was shown.

Replica processes are found by walking the process tree of this benchmark's own ``serve run`` (Ray names each
replica's process ``ray::ServeReplica:<app>:<deployment>``): on a machine shared with other Ray clusters,
Ray's state API at ``address="auto"`` may answer for someone else's. Writes ``chaos.json`` and ``chaos.png``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform as _platform
import random
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lmrec.benchmarks.harness import (
    RedisServer,
    catalog_ids,
    kill_replicas,
    replicas,
    service_config,
    wait_port_free,
)
from lmrec.errors import LmrecError

DRILLS = ("writer", "scorer", "redis", "redis_freeze", "restart")
REDIS_DRILLS = ("redis", "redis_freeze")
FULL = 0.8  # "full throughput": a 1 s bin at >= 80% of the rate before the kill (1 s bins vary by ~15% on 2 cores)
TARGET_RECOVERY_S = 10.0


# ------------------------------------------------------------------------------------------ processes
async def _replaced(root: int, deployment: str, killed: list[int], started: float, timeout: float = 120, app: str = "lmrec") -> float | None:
    """Seconds from ``started`` until a replica of ``deployment`` that was not killed runs (None: not in time)."""
    while time.perf_counter() - started < timeout:
        if set(replicas(root, app).get(deployment, [])) - set(killed):
            return time.perf_counter() - started
        await asyncio.sleep(0.2)
    return None


# ------------------------------------------------------------------------------------------ requests
@dataclass
class Sample:
    start: float  # seconds since the drill's clock started
    end: float
    kind: str  # event / recommend / item
    status: int  # 0: no HTTP answer (connection reset, timeout)
    retry_after: bool = False
    error: str | None = None


@dataclass
class Recorder:
    t0: float = field(default_factory=time.perf_counter)
    samples: list[Sample] = field(default_factory=list)
    first_errors: list[dict] = field(default_factory=list)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def send(self, session, method: str, url: str, kind: str, **kw) -> tuple[int, dict | None]:
        import aiohttp

        start = self.now()
        status, body, retry, error = 0, None, False, None
        try:
            async with session.request(method, url, **kw) as r:
                status, retry = r.status, "Retry-After" in r.headers
                text = await r.text()
                with contextlib.suppress(ValueError):
                    body = json.loads(text)
                if status >= 400:
                    error = text[:300]
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        self.samples.append(Sample(start, self.now(), kind, status, retry, error))
        if error and len(self.first_errors) < 5:
            self.first_errors.append({"at_s": round(start, 2), "kind": kind, "status": status, "error": error})
        return status, body

    def timeline(self, bin_s: float = 1.0, kind: str | None = None) -> list[dict]:
        """Per bin (by when a request ended): successes and failures."""
        chosen = [s for s in self.samples if kind is None or s.kind == kind]
        if not chosen:
            return []
        n = int(max(s.end for s in chosen) // bin_s) + 1
        bins = [{"t": round(i * bin_s, 2), "ok": 0, "failed": 0} for i in range(n)]
        for s in chosen:
            bins[int(s.end // bin_s)]["ok" if _ok(s) else "failed"] += 1
        return bins


def _ok(s: Sample) -> bool:
    return 200 <= s.status < 300


def _statuses(samples: list[Sample]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in samples:
        out[str(s.status or "no answer")] = out.get(str(s.status or "no answer"), 0) + 1
    return dict(sorted(out.items()))


def _client(connections: int):
    import aiohttp

    # longer than any request timeout of the service: a request that hangs past the service's is seen as such
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections), timeout=aiohttp.ClientTimeout(total=120))


async def _histories(base: str, session, users: list[str], auth: dict) -> dict[str, list[dict]]:
    """Every user's stored history (retried while the service is still coming back)."""
    import aiohttp

    out = {}
    for user in users:
        for _ in range(60):
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(f"{base}/v1/users/{user}/history", params={"limit": "1000"}, headers=auth) as r:
                    if r.status == 200:
                        out[user] = (await r.json())["events"]
                        break
            await asyncio.sleep(1)
        else:
            raise LmrecError(f"could not read the history of {user} after the drill (the service did not come back)")
    return out


def _lost(acked: dict[int, str], failed: dict[int, str], histories: dict[str, list[dict]]) -> dict:
    tags = [(user, int(e["value"])) for user, events in histories.items() for e in events if e.get("value") is not None]
    stored = set(tags)
    lost = sorted(seq for seq, user in acked.items() if (user, seq) not in stored)
    return {"acknowledged": len(acked), "lost": len(lost), "lost_examples": lost[:10],
            # answered with an error but written all the same (the answer was lost, not the write): a client
            # that retries sends it twice
            "failed_but_stored": sum(1 for seq, user in failed.items() if (user, seq) in stored),
            "stored_twice": len(tags) - len(stored)}  # one request written twice (a retry inside the service)


# ------------------------------------------------------------------------------------------ drills
async def writer_drill(base: str, root: int, deployment: str, auth: dict, items: list[str], events: int = 10_000,
                       concurrency: int = 16, kill_after: float = 0.3, per_user: int = 50, seed: int = 0) -> tuple[dict, Recorder]:
    """``kill -9`` of ``deployment`` once ``kill_after`` of the ``events`` were sent."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:6]
    todo = [(seq, f"chaos-w-{run}-{seq // per_user}", rng.choice(items)) for seq in range(events)]
    todo.reverse()
    acked, failed = {}, {}
    rec = Recorder()
    kill: dict = {}
    kill_at = int(events * kill_after)
    sent = 0

    async def worker(session):
        nonlocal sent
        while todo:
            seq, user, item = todo.pop()
            sent += 1
            if sent == kill_at:
                kill["at"] = rec.now()
                kill["pids"] = kill_replicas(root, deployment)
                kill["replaced"] = asyncio.ensure_future(_replaced(root, deployment, kill["pids"], time.perf_counter()))
            body = {"user_id": user, "item_id": item, "event_type": "click", "value": float(seq)}
            status, _ = await rec.send(session, "POST", base + "/v1/events", "event", json=body, headers=auth)
            (acked if status == 202 else failed)[seq] = user

    async with _client(concurrency) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        replaced = await kill["replaced"] if "replaced" in kill else None
        histories = await _histories(base, session, sorted({u for u in {**acked, **failed}.values()}), auth)
    after = [s for s in rec.samples if s.start >= kill.get("at", 0) and _ok(s)]
    out = {
        "deployment": deployment, "events": events, "concurrency": concurrency, "killed_pids": len(kill.get("pids", [])),
        "killed_at_s": round(kill.get("at", 0), 2), "statuses": _statuses(rec.samples), "failed": len(failed),
        "first_success_after_kill_s": round(min(s.end for s in after) - kill["at"], 2) if after and kill else None,
        "replica_replaced_after_s": None if replaced is None else round(replaced, 2),
        **_lost(acked, failed, histories), "first_errors": rec.first_errors,
    }
    return out, rec


async def scorer_drill(base: str, root: int, auth: dict, items: list[str], concurrency: int = 16, before_s: float = 5.0,
                       after_s: float = 5.0, max_s: float = 60.0, seed: int = 0) -> tuple[dict, Recorder]:
    """``kill -9`` of every Scorer replica after ``before_s`` of load; the load goes on until full throughput
    has held for ``after_s`` (at most ``max_s`` after the kill)."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:6]
    rec = Recorder()
    stop = asyncio.Event()
    kill: dict = {}

    async def worker(session, w: int):
        user = f"chaos-s-{run}-{w}"
        while not stop.is_set():
            body = {"user_id": user, "item_id": rng.choice(items), "event_type": "view"}
            await rec.send(session, "POST", base + "/v1/events", "event", json=body, headers=auth)
            await rec.send(session, "POST", base + "/v1/recommend", "recommend", json={"user_id": user, "k": 10}, headers=auth)

    async with _client(concurrency) as session:
        tasks = [asyncio.create_task(worker(session, w)) for w in range(concurrency)]
        await asyncio.sleep(before_s)
        kill["at"] = rec.now()
        kill["pids"] = kill_replicas(root, "Scorer")
        replaced_task = asyncio.ensure_future(_replaced(root, "Scorer", kill["pids"], time.perf_counter()))
        while rec.now() - kill["at"] < max_s:
            await asyncio.sleep(0.5)
            if _recovered(rec, kill["at"], before_s, "recommend", hold_s=after_s) is not None:
                break
        stop.set()
        await asyncio.gather(*tasks)
        replaced = await replaced_task
    recs = [s for s in rec.samples if s.kind == "recommend"]
    baseline = sum(1 for s in recs if _ok(s) and 1.0 <= s.end < kill["at"]) / max(kill["at"] - 1.0, 1e-9)
    recovered = _recovered(rec, kill["at"], before_s, "recommend", hold_s=min(after_s, rec.now() - kill["at"] - 1))
    failed = [s for s in rec.samples if not _ok(s)]
    back = [s.end for s in recs if _ok(s) and s.start >= kill["at"]]
    out = {
        "concurrency": concurrency, "killed_pids": len(kill["pids"]), "killed_at_s": round(kill["at"], 2),
        "first_success_after_kill_s": round(min(back) - kill["at"], 2) if back else None,
        "recommend_rps_before": round(baseline, 1), "statuses": _statuses(rec.samples),
        "failed": len(failed), "failed_in_flight_at_kill": sum(1 for s in failed if s.start < kill["at"] <= s.end),
        "failed_sent_after_kill": sum(1 for s in failed if s.start >= kill["at"]),
        "recovery_s": None if recovered is None else round(recovered - kill["at"], 2),
        "replica_replaced_after_s": None if replaced is None else round(replaced, 2),
        "first_errors": rec.first_errors,
    }
    return out, rec


def _recovered(rec: Recorder, kill_at: float, before_s: float, kind: str, hold_s: float) -> float | None:
    """The start of the first 1 s bin after the kill from which every bin holds >= FULL of the throughput
    before the kill (from 1 s in: warm) with no failure, for at least ``hold_s`` seconds; None if none yet."""
    chosen = [s for s in rec.samples if s.kind == kind]
    baseline = sum(1 for s in chosen if _ok(s) and 1.0 <= s.end < kill_at) / max(kill_at - 1.0, 1e-9)
    end = rec.now()
    bins = []
    t = kill_at
    while t + 1.0 <= end:
        inside = [s for s in chosen if t <= s.end < t + 1.0]
        bins.append((t, sum(map(_ok, inside)) >= FULL * baseline and all(map(_ok, inside))))
        t += 1.0
    for i, (t, _) in enumerate(bins):
        if all(good for _, good in bins[i:]) and len(bins) - i >= max(1, int(hold_s)):
            return t
    return None


async def redis_drill(base: str, redis: RedisServer, auth: dict, items: list[str], request_timeout_s: float,
                      concurrency: int = 16, before_s: float = 3.0, outage_s: float = 10.0, after_s: float = 5.0,
                      max_s: float = 60.0, seed: int = 0, freeze: bool = False) -> tuple[dict, Recorder]:
    """Mixed load; Redis killed (``freeze``: stopped with SIGSTOP) after ``before_s``, back ``outage_s`` later."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:6]
    rec = Recorder()
    stop = asyncio.Event()
    acked, failed, posted, refused = {}, {}, [], []
    seq = 0
    marks: dict = {}

    async def worker(session, w: int):
        nonlocal seq
        user = f"chaos-r-{run}-{w}"
        while not stop.is_set():
            roll = rng.random()
            if roll < 0.5:
                seq += 1
                mine = seq
                body = {"user_id": user, "item_id": rng.choice(items), "event_type": "click", "value": float(mine)}
                status, _ = await rec.send(session, "POST", base + "/v1/events", "event", json=body, headers=auth)
                (acked if status == 202 else failed)[mine] = user
            elif roll < 0.9:
                await rec.send(session, "POST", base + "/v1/recommend", "recommend", json={"user_id": user, "k": 10}, headers=auth)
            else:
                item = f"chaos-item-{run}-{uuid.uuid4().hex[:8]}"
                body = {"text": f"{rng.choice(WORDS)} {rng.choice(WORDS)} {rng.choice(WORDS)}", "attributes": {"shelf": run}}
                status, _ = await rec.send(session, "PUT", f"{base}/v1/items/{item}", "item", json=body, headers=auth)
                (posted if status == 200 else refused).append(item)

    async with _client(concurrency) as session:
        tasks = [asyncio.create_task(worker(session, w)) for w in range(concurrency)]
        await asyncio.sleep(before_s)
        marks["down"] = rec.now()
        await asyncio.to_thread(redis.freeze if freeze else redis.kill)
        await asyncio.sleep(outage_s)
        await asyncio.to_thread(redis.thaw if freeze else redis.start)
        marks["up"] = rec.now()
        while rec.now() - marks["up"] < max_s:
            await asyncio.sleep(0.5)
            tail = [s for s in rec.samples if s.start >= marks["up"]]
            if tail and all(_ok(s) for s in tail if s.start >= rec.now() - after_s) and rec.now() - marks["up"] >= after_s:
                break
        stop.set()
        await asyncio.gather(*tasks)
        histories = await _histories(base, session, sorted(set(acked.values()) | set(failed.values())), auth)
        missing_items = 0
        for item in posted:
            async with session.get(f"{base}/v1/items/{item}", headers=auth) as r:
                missing_items += r.status != 200
    bad = [s for s in rec.samples if not _ok(s)]
    after = [s for s in rec.samples if s.start >= marks["up"]]
    first_ok = min((s.end for s in after if _ok(s)), default=None)
    last_bad = max((s.end for s in bad), default=None)
    out = {
        "outage": "frozen (SIGSTOP)" if freeze else "killed (SIGKILL), restarted on its files",
        "concurrency": concurrency, "outage_s": outage_s, "down_at_s": round(marks["down"], 2), "up_at_s": round(marks["up"], 2),
        "statuses": _statuses(rec.samples), "by_kind": {k: _statuses([s for s in rec.samples if s.kind == k]) for k in ("event", "recommend", "item")},
        "server_errors_not_503": sum(1 for s in bad if s.status >= 500 and s.status != 503),
        # anything but a 503 (e.g. 408: the request outlived Serve's request_timeout_s)
        "failures_not_503": sum(1 for s in bad if s.status != 503),
        "timed_out": sum(1 for s in bad if s.status in (408, 504)),
        "no_answer": sum(1 for s in bad if s.status == 0),
        "503_without_retry_after": sum(1 for s in bad if s.status == 503 and not s.retry_after),
        "max_latency_s": round(max((s.end - s.start for s in rec.samples), default=0.0), 2),
        "request_timeout_s": request_timeout_s,
        "first_success_after_restart_s": None if first_ok is None else round(first_ok - marks["up"], 2),
        "last_failure_after_restart_s": None if last_bad is None or last_bad < marks["up"] else round(last_bad - marks["up"], 2),
        **_lost(acked, failed, histories), "items_acknowledged": len(posted), "items_lost": missing_items,
        "first_errors": rec.first_errors,
    }
    return out, rec


async def _snapshot(base: str, auth: dict, users: list[str], posted: list[str], removed: list[str], shelf: str) -> dict:
    async with _client(4) as session:
        histories = await _histories(base, session, users, auth)
        items, gone = {}, {}
        for item in posted:
            async with session.get(f"{base}/v1/items/{item}", headers=auth) as r:
                items[item] = await r.json() if r.status == 200 else r.status
        for item in removed:
            async with session.get(f"{base}/v1/items/{item}", headers=auth) as r:
                gone[item] = r.status
        body = {"user_id": "chaos-restart-reader", "k": 100, "filters": {"shelf": shelf}}
        async with session.post(f"{base}/v1/recommend", json=body, headers=auth) as r:
            shelf_items = sorted(i["item_id"] for i in (await r.json())["items"]) if r.status == 200 else r.status
        body = {"user_id": "chaos-restart-reader", "k": 100, "allow": removed}
        async with session.post(f"{base}/v1/recommend", json=body, headers=auth) as r:
            removed_served = sorted(i["item_id"] for i in (await r.json())["items"]) if r.status == 200 else r.status
    return {"histories": histories, "items": items, "removed_status": gone, "shelf": shelf_items, "removed_served": removed_served}


async def restart_prepare(base: str, auth: dict, items: list[str], users: int = 20, events: int = 10, posted: int = 10,
                          removed: int = 5, seed: int = 0) -> tuple[list[str], list[str], list[str], str, dict]:
    """Write what a restart must keep: events, posted items (some then removed), removed catalog items, and
    one answered recommendation per user (its impression: {recommendation_id: the items shown})."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:6]
    who = [f"chaos-x-{run}-{u}" for u in range(users)]
    new = [f"chaos-x-{run}-item-{i}" for i in range(posted)]
    gone = rng.sample(items, removed) + new[:2]
    async with _client(4) as session:
        for item in new:
            body = {"text": f"{rng.choice(WORDS)} {rng.choice(WORDS)} {rng.choice(WORDS)}", "attributes": {"shelf": run}}
            async with session.put(f"{base}/v1/items/{item}", json=body, headers=auth) as r:
                if r.status != 200:
                    raise LmrecError(f"item refused before the restart: {r.status} {await r.text()}")
        for item in gone:
            async with session.delete(f"{base}/v1/items/{item}", headers=auth) as r:
                if r.status != 200:
                    raise LmrecError(f"removal refused before the restart: {r.status} {await r.text()}")
        batch = [{"user_id": u, "item_id": rng.choice(items), "event_type": rng.choice(["view", "click", "purchase"]),
                  "timestamp": 1.7e9 + n} for n, u in enumerate(u for u in who for _ in range(events))]
        async with session.post(f"{base}/v1/events", json={"events": batch}, headers=auth) as r:
            if r.status != 202:
                raise LmrecError(f"events refused before the restart: {r.status} {await r.text()}")
        shown = {}
        for u in who:
            async with session.post(f"{base}/v1/recommend", json={"user_id": u, "k": 5}, headers=auth) as r:
                if r.status != 200:
                    raise LmrecError(f"recommendation refused before the restart: {r.status} {await r.text()}")
                doc = await r.json()
            shown[doc["recommendation_id"]] = [i["item_id"] for i in doc["items"]]
    return who, new, gone, run, shown


def logged_impressions(store_ref: str, recommendation_ids) -> dict:
    """{recommendation_id: the items its logged impression holds} for those of ``recommendation_ids`` the
    service's store (a SQLite path or a Redis URL) holds, read as `lmrec collect` reads it."""
    from lmrec.store import open_store

    wanted = set(recommendation_ids)
    store = open_store(store_ref)
    try:
        return {i.recommendation_id: list(i.item_ids) for i in store.impressions() if i.recommendation_id in wanted}
    finally:
        store.close()


def restart_compare(before: dict, after: dict, posted: list[str], removed: list[str], shown: dict | None = None,
                    logged: dict | None = None) -> dict:
    """``shown``: the answers given before the stop; ``logged``: their impressions in the store after the restart."""
    live = sorted(set(posted) - set(removed))
    return {
        "histories_intact": before["histories"] == after["histories"],
        "events": sum(len(v) for v in after["histories"].values()),
        "posted_items_intact": before["items"] == after["items"] and all(isinstance(v, dict) for k, v in after["items"].items() if k in live),
        "posted_items_recommendable": after["shelf"] == live,
        "removals_intact": all(s == 404 for s in after["removed_status"].values()) and after["removed_served"] == [],
        "impressions": len(shown or {}),
        "impressions_intact": (logged or {}) == (shown or {}),
    }


WORDS = ("trail road running vest jacket shoe lamp tent stove bottle filter rope glove helmet pack sock cap "
         "light warm dry fast quiet compact").split()


# ------------------------------------------------------------------------------------------ the benchmark
def _request_timeout(path: Path) -> float:
    return float((yaml.safe_load(path.read_text()).get("http_options") or {}).get("request_timeout_s") or 0) or float("inf")


def run_chaos_bench(out: str | Path, config: str | Path = "deployments/demo.yaml", drills: list[str] | None = None,
                    events: int = 10_000, concurrency: int = 16, store: str = "sqlite", outage_s: float = 10.0,
                    before_s: float = 5.0, after_s: float = 5.0, mode: str = "default", seed: int = 0,
                    restart_sizes: dict | None = None, port: int | None = None) -> dict:
    """The drills in ``drills`` (default: all) on ``config``. ``store``: what the writer, scorer and restart
    drills run on (``sqlite``: the YAML's; ``redis``: the benchmark's own Redis, shared with the redis drill,
    one service for all). ``port``: the HTTP port (default: a free one)."""
    from lmrec.benchmarks.serve import MODES, TOKEN, Service, _stopped_on_sigterm

    drills = list(drills or DRILLS)
    unknown = sorted(set(drills) - set(DRILLS))
    if unknown or store not in ("sqlite", "redis"):
        raise LmrecError(f"unknown drill(s) {unknown}: choose from {list(DRILLS)}" if unknown else f"store: sqlite or redis, not {store!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = Path(config)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    report: dict = {
        "config": str(config), "store": store, "mode": mode, "drills": {}, "recorded": {},
        "machine": {"cpus": os.cpu_count(), "platform": _platform.platform(), "python": _platform.python_version(),
                    "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
    }
    groups = [drills] if store == "redis" else \
        [[d for d in drills if d not in REDIS_DRILLS], [d for d in drills if d in REDIS_DRILLS]]
    with tempfile.TemporaryDirectory(prefix="lmrec-chaos-") as tmp, _stopped_on_sigterm():
        for n, group in enumerate(g for g in groups if g):
            on_redis = store == "redis" or group[0] in REDIS_DRILLS
            state = Path(tmp) / f"service-{n}"
            state.mkdir()
            redis = RedisServer(state / "redis") if on_redis else None
            try:
                path, port, args = service_config(config, state, redis.url if redis else None, port)
                items = catalog_ids(args)
                base = f"http://127.0.0.1:{port}"
                colocated = bool(args.get("colocate"))
                service = Service(path, port, MODES[mode], out / f"serve-{n}.log")
                try:
                    report.setdefault("ready_s", []).append(round(service.wait_ready(), 1))
                    for drill in group:
                        print(f"drill {drill} ...", flush=True)
                        if drill == "writer":
                            r, rec = asyncio.run(writer_drill(base, service.proc.pid, "Ingress" if colocated else "UserState", auth,
                                                              items, events, concurrency, seed=seed))
                        elif drill == "scorer":
                            r, rec = asyncio.run(scorer_drill(base, service.proc.pid, auth, items, concurrency, before_s, after_s, seed=seed))
                        elif drill in REDIS_DRILLS:
                            r, rec = asyncio.run(redis_drill(base, redis, auth, items, _request_timeout(path), concurrency,
                                                             min(before_s, 3.0), outage_s, after_s, seed=seed, freeze=drill == "redis_freeze"))
                        else:
                            sizes = restart_sizes or {}
                            who, posted, removed, shelf, shown = asyncio.run(restart_prepare(base, auth, items, seed=seed, **sizes))
                            before = asyncio.run(_snapshot(base, auth, who, posted, removed, shelf))
                            t = time.perf_counter()
                            service.stop()
                            wait_port_free(port)  # the proxy's process exits a moment after `serve run`
                            service = Service(path, port, MODES[mode], out / f"serve-{n}-restarted.log")
                            ready = service.wait_ready()
                            after = asyncio.run(_snapshot(base, auth, who, posted, removed, shelf))
                            logged = logged_impressions(args.get("store_url") or args["store_path"], shown)
                            r, rec = {"stop_to_ready_s": round(time.perf_counter() - t, 1), "ready_s": round(ready, 1),
                                      **restart_compare(before, after, posted, removed, shown, logged)}, None
                        report["drills"][drill] = r
                        if rec is not None:
                            report["recorded"][drill] = {"timeline": rec.timeline(0.5), "marks": _marks(r)}
                        print(f"drill {drill}: " + json.dumps({k: v for k, v in r.items() if k != "first_errors"}), flush=True)
                finally:
                    service.stop()
            finally:
                if redis is not None:
                    redis.stop()
    report["checks"] = checks(report)
    tmp_json = out / ".chaos.json.tmp"
    tmp_json.write_text(json.dumps(report, indent=2))
    tmp_json.replace(out / "chaos.json")
    _plot(report, out / "chaos.png")
    return report


def _marks(r: dict) -> dict:
    return {k: r[k] for k in ("killed_at_s", "down_at_s", "up_at_s") if r.get(k) is not None}


def checks(report: dict) -> dict:
    """The targets: 0 acknowledged events lost in every drill; the service back by itself; scorer back to full
    throughput in <= 10 s; during the Redis outage only 503s with Retry-After, none past the request timeout."""
    d, out = report["drills"], {}
    if "writer" in d:
        w = d["writer"]
        out["writer_0_lost"] = w["lost"] == 0
        out["writer_recovered"] = w["first_success_after_kill_s"] is not None
    if "scorer" in d:
        s = d["scorer"]
        out["scorer_recovered_le_10s"] = s["recovery_s"] is not None and s["recovery_s"] <= TARGET_RECOVERY_S
    for name in REDIS_DRILLS:
        if name in d:
            r = d[name]
            out[f"{name}_0_lost"] = r["lost"] == 0 and r["items_lost"] == 0
            out[f"{name}_only_503_with_retry_after"] = r["failures_not_503"] == 0 and r["503_without_retry_after"] == 0
            out[f"{name}_no_hang_past_timeout"] = r["max_latency_s"] <= r["request_timeout_s"]
            out[f"{name}_recovered"] = r["first_success_after_restart_s"] is not None
    if "restart" in d:
        x = d["restart"]
        out["restart_intact"] = all(x[k] for k in ("histories_intact", "posted_items_intact", "posted_items_recommendable", "removals_intact",
                                                    "impressions_intact"))
    return out


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(report["recorded"])
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(5 * max(1, len(shown)), 3.6), squeeze=False)
    for ax, drill in zip(axes[0], shown):
        rec = report["recorded"][drill]
        t = [b["t"] for b in rec["timeline"]]
        ax.plot(t, [b["ok"] * 2 for b in rec["timeline"]], label="answered 2xx / s")
        ax.plot(t, [b["failed"] * 2 for b in rec["timeline"]], label="failed / s", color="tab:red")
        for name, at in rec["marks"].items():
            ax.axvline(at, color="grey", linestyle="--")
            ax.annotate(name.replace("_at_s", ""), (at, ax.get_ylim()[1] * 0.95), fontsize=8, ha="right")
        ax.set(title=drill, xlabel="s", ylabel="requests / s")
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"lmrec chaos drills: {report['config']} ({report['store']} store) on {report['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(report: dict) -> str:
    lines = []
    for drill, r in report["drills"].items():
        lines.append(f"{drill}: " + ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("first_errors", "lost_examples")))
    lines.append("checks: " + json.dumps(report["checks"]))
    return "\n".join(lines)


def add_parser(bench, command) -> None:
    """``lmrec bench chaos`` (registered by lmrec.benchmarks.cli)."""
    r = command(bench, "chaos", "crash and outage drills under load against `serve run`: a killed event writer, a killed "
                                "scorer, Redis down, a full restart; 0 acknowledged events lost", _cli)
    r.add_argument("--serve-config", default="deployments/demo.yaml", metavar="FILE", help="the Serve YAML to run (its artifact must exist)")
    r.add_argument("--drill", action="append", choices=DRILLS, help="a drill to run (repeatable; default: every one)")
    r.add_argument("--store", default="sqlite", choices=["sqlite", "redis"],
                   help="the store of the writer, scorer and restart drills (the redis drill always runs on Redis)")
    r.add_argument("--events", type=int, default=10_000, help="events ingested in the writer drill")
    r.add_argument("--concurrency", type=int, default=16, help="concurrent clients in each drill")
    r.add_argument("--outage", type=float, default=10.0, help="seconds Redis stays down")
    r.add_argument("--out", default="reports/chaos", help="the report folder")


def _cli(args) -> int:
    drills = args.drill or list(DRILLS)
    report = run_chaos_bench(args.out, args.serve_config, drills, args.events, args.concurrency, args.store, args.outage)
    print(summary(report))
    print(f"wrote {args.out}/chaos.json, chaos.png")
    return 0 if all(report["checks"].values()) else 1
