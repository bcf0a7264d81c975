"""`lmrec bench soak`'s judgement of a run (no service): RSS growth per replica after the warm-up, p99 per
third of the run, a replaced replica reported rather than compared."""

from lmrec.benchmarks.soak import analyse


def _run(rss, p99_last: float, duration: float = 100.0):
    """Samples every 0.1 s (each kind in turn), latency 10 ms (the last third: p99_last); memory every 5 s."""
    kinds = ("event", "recommend", "item")
    samples = []
    for n in range(int(duration * 10)):
        t = n / 10
        ms = p99_last if t >= duration * (0.2 + 0.8 * 2 / 3) and n % 50 == 0 else 10.0
        samples.append((t, kinds[n % 3], 202 if n % 3 == 0 else 200, ms))
    memory = [{"t": t, "rss_mb": {name: f(t) for name, f in rss.items() if f(t) is not None}} for t in range(0, int(duration), 5)]
    return analyse(samples, memory, duration, warmup=0.2, window_s=10)


def test_flat_memory_and_steady_latency_pass():
    r = _run({"Scorer/1": lambda t: 400.0 + (50.0 if t < 20 else 0.0), "Ingress/2": lambda t: 300.0}, p99_last=10.0)
    assert r["checks"] == {"rss_growth_le_5pct": True, "p99_stable": True, "no_errors": True}
    assert r["rss_growth"]["Scorer/1"]["growth"] == 0.0  # the warm-up's memory is not judged
    assert len(r["windows"]) == 10 and r["windows"][0]["recommend"]["p50_ms"] == 10.0


def test_a_leak_and_a_latency_drift_fail():
    r = _run({"UserState/3": lambda t: 300.0 * (1 + t / 500)}, p99_last=100.0)
    assert r["rss_growth"]["UserState/3"]["growth"] > 0.05 and not r["checks"]["rss_growth_le_5pct"]
    assert not r["checks"]["p99_stable"] and r["p99_by_third"]["event"]["drift"] > 0.2


def test_a_replica_replaced_after_the_warm_up_is_reported_not_compared():
    r = _run({"Scorer/1": lambda t: 400.0 if t < 60 else None, "Scorer/9": lambda t: 420.0 if t >= 60 else None,
              "Ingress/2": lambda t: 300.0}, p99_last=10.0)
    assert set(r["replicas_not_compared"]) == {"Scorer/1", "Scorer/9"} and set(r["rss_growth"]) == {"Ingress/2"}
