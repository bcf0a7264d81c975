"""`lmrec bench serve`'s report helpers, without a service: the `Server-Timing` parsing, the ratios at
c=16 and the summary, and what a service that never gets ready is reported with."""


def test_server_timing_header_parsing():
    from lmrec.benchmarks.serve import server_timing

    assert server_timing("state;dur=0.41, retrieval;desc=\"index\";dur=0.22, rerank") == {"state": 0.41, "retrieval": 0.22}
    assert server_timing("broken;dur=x") == {} and server_timing(None) == {}
    assert server_timing("queue;dur=0.1, batch;desc=8", "desc") == {"batch": 8.0}


def test_the_report_sets_the_graph_against_echo_and_the_floor():
    from lmrec.benchmarks.serve import _ratios_at_16, summary

    def level(c, rps):
        return {"concurrency": c, "rps": rps, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "errors": 0}

    fresh = {"changed_fraction": 1.0, "trials": 3, "event_to_updated_ranking": {"p50_ms": 5.0, "p99_ms": 9.0}}
    report = {"modes": {
        "haproxy": {"load": [level(1, 50.0), level(16, 300.0)], "echo": [level(16, 1000.0)], "floor": [level(16, 400.0)],
                    "freshness": fresh, "new_item": {"found_fraction": 1.0, "post_to_recommendable": {"p50_ms": 30.0}}},
        "default": {"load": [level(16, 100.0)], "freshness": fresh, "new_item": {"found_fraction": 1.0, "post_to_recommendable": {"p50_ms": 30.0}}},
    }}  # fmt: skip
    ratios = _ratios_at_16(report)
    assert ratios["haproxy"] == {"graph_over_echo": 0.3, "floor_over_echo": 0.4, "graph_over_floor": 0.75}
    assert "default" not in ratios  # no echo or floor measured beside it
    report["at_16"] = ratios
    text = summary(report)
    assert "| haproxy | floor (3 no-op stages) | 16 | 400.0 |" in text
    assert "haproxy at c=16: graph / echo 0.3, floor / echo 0.4, graph / floor 0.75" in text


def test_a_service_that_never_gets_ready_says_which_deployment_waits():
    import yaml

    from lmrec.benchmarks.serve import unhealthy_deployments

    status = yaml.safe_load("""
applications:
  lmrec:
    status: DEPLOYING
    deployments:
      Ingress: {status: HEALTHY, replica_states: {RUNNING: 1}, message: ''}
      Scorer:
        status: UPDATING
        replica_states: {PENDING_ALLOCATION: 1}
        message: "Deployment 'Scorer' in application 'lmrec' has 1 replicas that have taken more than 30s to be scheduled.
          Resources required for each replica: {\\"CPU\\": 4.0}, total resources available: {\\"CPU\\": 1.45}."
  echo:
    status: RUNNING
    deployments:
      Echo: {status: HEALTHY, replica_states: {RUNNING: 1}, message: ''}
""")
    text = unhealthy_deployments(status)
    assert text.startswith("lmrec/Scorer UPDATING: Deployment 'Scorer'") and '{"CPU": 4.0}' in text
    assert "Ingress" not in text and "Echo" not in text
    assert unhealthy_deployments({}) == ""


def test_sigterm_during_a_benchmark_still_stops_its_services():
    import os
    import signal
    import time

    import pytest

    from lmrec.benchmarks.serve import _stopped_on_sigterm

    before = signal.getsignal(signal.SIGTERM)
    stopped = []
    with pytest.raises(SystemExit) as exc:
        with _stopped_on_sigterm():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # interrupted by the handler
            finally:
                stopped.append("service")  # where run_serve_bench stops `serve run`
    assert exc.value.code == 128 + signal.SIGTERM and stopped == ["service"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_against_another_checkout_runs_its_yaml_with_its_package_right_after_ours(tmp_path):
    from pathlib import Path

    import pytest

    from lmrec.benchmarks.serve import service_runs
    from lmrec.errors import LmrecError

    other = tmp_path / "before"
    (other / "deployments").mkdir(parents=True)
    (other / "deployments" / "demo.yaml").write_text("applications: []\n")
    ours = [Path("deployments/demo.yaml"), Path("deployments/demo-colocated.yaml")]
    assert service_runs(ours) == [("demo", ours[0], None), ("demo-colocated", ours[1], None)]
    assert service_runs(ours[:1], other) == [("demo", ours[0], None),
                                             ("before-demo", other / "deployments" / "demo.yaml", str((other / "platform").resolve()))]
    with pytest.raises(LmrecError, match="no deployments/demo-colocated.yaml there"):
        service_runs(ours, other)
