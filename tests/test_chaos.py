"""`lmrec bench chaos` briefly, on the demo's graph with a tiny model (`serve run` in a local Ray of its own):
every drill with load on — the event writer and the scorer killed with SIGKILL, Redis down (when a
redis-server is installed: killed, then frozen), the whole service stopped and started again — and what each must show: no
acknowledged event lost, errors counted and only ever 503 + Retry-After while Redis is down, the service
back by itself, everything written before a restart still there after it. Recovery *times* are the
benchmark's report, not asserted here."""

import json
import shutil
import socket

import pytest

from service_helpers import demo_yaml, free_port

pytestmark = pytest.mark.ray


def test_the_chaos_drills_lose_nothing_acknowledged(tiny_artifact, tmp_path):
    from lmrec.benchmarks.chaos import run_chaos_bench

    art, data_file, _, _ = tiny_artifact
    port = free_port()
    config = demo_yaml(tmp_path, art, data_file, port)
    redis = shutil.which("redis-server") is not None
    drills = ["writer", "scorer", "redis", "redis_freeze", "restart"] if redis else ["writer", "scorer", "restart"]
    report = run_chaos_bench(tmp_path / "out", config, drills, events=400, concurrency=8, store="redis" if redis else "sqlite",
                             outage_s=3.0, before_s=2.0, after_s=2.0,
                             restart_sizes={"users": 4, "events": 3, "posted": 4, "removed": 2}, port=port)
    d = report["drills"]

    w = d["writer"]
    assert w["killed_pids"] >= 1 and w["acknowledged"] + w["failed"] == 400
    assert w["lost"] == 0, w  # every event answered 202 is in the store
    assert w["first_success_after_kill_s"] is not None and w["replica_replaced_after_s"] is not None

    s = d["scorer"]
    assert s["killed_pids"] >= 1 and s["recommend_rps_before"] > 0
    assert s["replica_replaced_after_s"] is not None and s["recovery_s"] is not None, s

    for name in ("redis", "redis_freeze") if redis else ():  # Redis killed, then frozen
        r = d[name]
        # the outage was seen: refused (a killed server), or requests held through it (a frozen one, shorter
        # than the store's socket timeout and retries)
        assert r["statuses"].get("503", 0) > 0 or r["max_latency_s"] >= 0.5 * r["outage_s"], r
        assert r["failures_not_503"] == 0 and r["503_without_retry_after"] == 0, r
        assert r["max_latency_s"] <= r["request_timeout_s"]
        assert r["lost"] == 0 and r["items_lost"] == 0 and r["acknowledged"] > 0, r
        assert r["first_success_after_restart_s"] is not None

    x = d["restart"]
    assert x["histories_intact"] and x["events"] == 12
    assert x["posted_items_intact"] and x["posted_items_recommendable"] and x["removals_intact"], x
    assert x["impressions"] == 4 and x["impressions_intact"], x  # one answer per user, logged before the stop

    assert json.loads((tmp_path / "out" / "chaos.json").read_text())["checks"] == report["checks"]
    assert (tmp_path / "out" / "chaos.png").stat().st_size > 0
    with socket.socket() as sock:  # the service is gone
        assert sock.connect_ex(("127.0.0.1", port)) != 0
