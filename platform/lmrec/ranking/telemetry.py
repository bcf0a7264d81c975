"""What the ranking core measures, reported to a :class:`Telemetry` it is given: no-ops by default (tests,
batch jobs, the simulator); the serving shell passes one that exports Prometheus metrics
(:mod:`lmrec.serving.metrics`)."""

from __future__ import annotations


class Telemetry:
    """Measurement hooks of the ranking core. Subclass and override what you export."""

    def latency(self, stage: str, seconds: float) -> None:
        """A stage's time for one batch (state, retrieval, ...)."""

    def batch(self, method: str, size: int) -> None:
        """A batch's size (user_vectors, encode_items, recommend, ...)."""

    def cache(self, hit: bool, n: int) -> None:
        """``n`` lookups of cached user vectors that hit (or missed)."""

    def lag(self, seconds: float) -> None:
        """From an event (its timestamp) to the user vector that includes it."""

    def events(self, n: int) -> None:
        """Events acknowledged."""

    def items(self, n: int, removed: bool = False) -> None:
        """Items upserted (or removed)."""

    def reencoded(self, n: int) -> None:
        """Items another model encoded, given this model's vectors."""

    def impressions(self, policy: str, variant: str | None, slots: int) -> None:
        """A slate shown (and logged), by the policy that drew it and the experiment variant."""

    def attributed(self, event_type: str, n: int) -> None:
        """Events that name the recommendation they answer."""


NO_TELEMETRY = Telemetry()
