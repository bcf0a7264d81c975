"""The serving benchmarks as users run them, briefly: `serve run` of a YAML in a Ray of its own, load, and the
JSON and PNG they write (their figures are not checked here: they are measurements, see the docs)."""

import socket

import pytest

from helpers import demo_yaml, tiny_training

pytestmark = pytest.mark.ray


def test_the_serve_benchmark_runs_a_yaml_end_to_end(artifact, tmp_path):
    """`lmrec bench serve` as users run it, briefly: `serve run` of a YAML in a local Ray of its own (HAProxy
    mode), priming, load on the graph, the echo app and the floor, the one-process pipeline, freshness and
    new items; then the JSON and PNG it writes, and the service gone."""
    import json

    from lmrec.benchmarks.serve import run_serve_bench

    config, port = demo_yaml(artifact, tmp_path)
    report = run_serve_bench(tmp_path / "out", config, ["haproxy"], [1, 4], duration=1.0, warmup=0.5, trials=3)
    mode = report["modes"]["haproxy"]
    assert mode["primed"]["users"] == len(artifact[3])
    for kind in ("load", "echo", "floor"):
        assert [x["concurrency"] for x in mode[kind]] == [1, 4]
        assert all(x["requests"] > 0 and x["errors"] == 0 for x in mode[kind]), (kind, mode[kind])
    assert mode["load"][1]["stages"].keys() == {"queue", "state", "retrieval"}
    assert mode["freshness"]["changed_fraction"] == 1.0 and mode["new_item"]["found_fraction"] == 1.0
    assert mode["new_item"]["removed_fraction"] == 1.0 and mode["new_item"]["remove_to_gone"]["p50_ms"] > 0
    assert report["in_process"]["requests"] > 0
    assert json.loads((tmp_path / "out" / "serve.json").read_text())["checks"] == report["checks"]
    assert (tmp_path / "out" / "serve.png").stat().st_size > 0
    with socket.socket() as s:  # stopped: its port is free again
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_the_rollout_benchmark_rolls_a_retrained_model_out_under_load(artifact, tiny_lm, tmp_path):
    """`lmrec bench rollout` briefly: `serve run`, items and events posted, `lmrec retrain` on the live store,
    more items, `serve deploy` of the new artifact in place under load: no request fails, the new model
    answers, every posted item is served by it; the JSON and PNG it writes, and the service gone."""
    import json

    from lmrec.benchmarks.rollout import run_rollout_bench

    config, port = demo_yaml(artifact, tmp_path)
    report = run_rollout_bench(tmp_path / "out", config, retrain=tiny_training(tiny_lm, tmp_path), items_before=20, items_after=5, concurrency=2)
    assert report["checks"] == {"no_failed_request": True, "new_model_answers": True, "posted_items_served_by_new_model": True}
    switch = report["switch"]
    assert switch["requests"] > 0 and switch["answered_by"][switch["new_model"]] > 0 and switch["old_model"] != switch["new_model"]
    assert json.loads((tmp_path / "out" / "rollout.json").read_text())["checks"] == report["checks"]
    assert (tmp_path / "out" / "rollout.png").stat().st_size > 0
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_the_startup_benchmark_measures_its_own_replicas(artifact, tmp_path):
    """`lmrec bench startup` briefly: one `serve run` of the separated graph, seconds to /healthz 200, each of its
    replicas' memory (only its own: the session's service runs beside it), none with torch loaded; JSON and PNG."""
    import json

    from lmrec.benchmarks.startup import run_startup

    config, port = demo_yaml(artifact, tmp_path)
    report = run_startup(tmp_path / "out", [("this:bench.yaml", config, None)], rounds=1)
    (run,) = report["runs"]["this:bench.yaml"]
    assert run["seconds_to_healthz_200"] > 0
    assert set(run["replicas"]) == {"Ingress", "UserState", "Retrieval", "Scorer"}
    assert all(r["peak_rss_mb"] >= r["rss_mb"] > 0 and not r["torch_loaded"] for r in run["replicas"].values()), run["replicas"]
    assert json.loads((tmp_path / "out" / "startup.json").read_text())["summary"] == report["summary"]
    assert (tmp_path / "out" / "startup.png").stat().st_size > 0
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
