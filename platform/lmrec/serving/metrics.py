"""Prometheus metrics through Ray's metrics API (exported by every Ray node's metrics agent).

- ``lmrec_stage_latency_seconds{stage}``: ingress (a whole recommendation), related (a whole related-items
  request), state, retrieval (with re-rank);
- ``lmrec_batch_size{method}``: sizes of batches (the ingress's recommend batches, the scorer's calls);
- ``lmrec_user_vector_cache_total{result}``: hit / miss of the user-vector cache;
- ``lmrec_event_to_effect_seconds``: from an event (its timestamp) to the user vector that includes it,
  computed right after the acknowledgement or by the next recommendation, whichever comes first;
- ``lmrec_events_total``, ``lmrec_items_upserted_total``, ``lmrec_items_removed_total``;
- ``lmrec_items_reencoded_total``: items another model had encoded, given this model's vectors (a rollout);
- ``lmrec_impressions_total{policy,variant}``, ``lmrec_impression_slots_total{policy,variant}``: slates shown and
  logged; ``lmrec_attributed_events_total{event_type}``: events that name the recommendation they answer.

Outside a Ray worker (unit tests, batch jobs) the calls are no-ops.
"""

from __future__ import annotations

from functools import lru_cache

from lmrec.ranking.telemetry import Telemetry

LATENCY_BOUNDARIES = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]


@lru_cache(maxsize=1)
def _metrics():
    try:
        import ray
        from ray.util import metrics
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    return {
        "latency": metrics.Histogram("lmrec_stage_latency_seconds", "latency per serving stage", LATENCY_BOUNDARIES, tag_keys=("stage",)),
        "batch": metrics.Histogram("lmrec_batch_size", "scorer batch sizes", [1, 2, 4, 8, 16, 32, 64, 128], tag_keys=("method",)),
        "cache": metrics.Counter("lmrec_user_vector_cache_total", "user-vector cache lookups", tag_keys=("result",)),
        "lag": metrics.Histogram("lmrec_event_to_effect_seconds", "event -> the user vector that includes it", LATENCY_BOUNDARIES),
        "events": metrics.Counter("lmrec_events_total", "events acknowledged"),
        "items": metrics.Counter("lmrec_items_upserted_total", "items created or replaced"),
        "removed": metrics.Counter("lmrec_items_removed_total", "items removed from the catalog"),
        "reencoded": metrics.Counter("lmrec_items_reencoded_total", "items another model had encoded, re-encoded by this one"),
        "impressions": metrics.Counter("lmrec_impressions_total", "slates shown and logged", tag_keys=("policy", "variant")),
        "slots": metrics.Counter("lmrec_impression_slots_total", "slots shown and logged", tag_keys=("policy", "variant")),
        "attributed": metrics.Counter("lmrec_attributed_events_total", "events naming the recommendation they answer",
                                      tag_keys=("event_type",)),
    }


class RayTelemetry(Telemetry):
    """The ranking core's measurements as the Prometheus metrics above (no-ops outside a Ray worker)."""

    def latency(self, stage: str, seconds: float) -> None:
        m = _metrics()
        if m:
            m["latency"].observe(seconds, tags={"stage": stage})

    def batch(self, method: str, size: int) -> None:
        m = _metrics()
        if m:
            m["batch"].observe(size, tags={"method": method})

    def cache(self, hit: bool, n: int) -> None:
        m = _metrics()
        if m and n:
            m["cache"].inc(n, tags={"result": "hit" if hit else "miss"})

    def lag(self, seconds: float) -> None:
        m = _metrics()
        if m:
            m["lag"].observe(seconds)

    def events(self, n: int) -> None:
        m = _metrics()
        if m:
            m["events"].inc(n)

    def items(self, n: int, removed: bool = False) -> None:
        m = _metrics()
        if m and n:
            m["removed" if removed else "items"].inc(n)

    def reencoded(self, n: int) -> None:
        m = _metrics()
        if m and n:
            m["reencoded"].inc(n)

    def impressions(self, policy: str, variant: str | None, slots: int) -> None:
        m = _metrics()
        if m:
            tags = {"policy": policy, "variant": variant or ""}
            m["impressions"].inc(1, tags=tags)
            m["slots"].inc(slots, tags=tags)

    def attributed(self, event_type: str, n: int) -> None:
        m = _metrics()
        if m and n:
            m["attributed"].inc(n, tags={"event_type": event_type})


TELEMETRY = RayTelemetry()
