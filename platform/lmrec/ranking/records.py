"""The typed records that cross the ranking path's stages (and, in the separated layout, Ray's hops):
a :class:`Query` in, a :class:`UserContext` from user state, a :class:`Ranked` out. Frozen dataclasses,
never positional tuples or dicts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lmrec.store.base import Scalar

FIELDS = ("text", "attributes")  # item metadata an answer may carry on request


@dataclass(frozen=True, slots=True)
class Query:
    """One ranking request: the top ``k`` items for a user (``user_id``), or related to an item (``item_id``:
    what users choose after it; the item itself is never among them)."""

    k: int
    user_id: str | None = None
    item_id: str | None = None
    exclude_seen: bool = True  # leave out items in the user's history
    filters: dict = field(default_factory=dict)  # attribute equality {"category": "Running"} or membership (a list)
    allow: tuple[str, ...] | None = None  # only these items
    deny: tuple[str, ...] | None = None  # never these items
    explain: bool = False  # name the history events behind each item
    diversity: float | None = None  # MMR trade-off; None: the service's
    fields: tuple[str, ...] = ()  # item metadata to return: "text", "attributes"
    # names the answer: seeds the exploration policy's draw and logs the impression (None: neither, e.g. a batch job)
    recommendation_id: str | None = None
    # when it is asked, seconds since the epoch (None: now): the impression's time and the items' ages; a simulated
    # clock gives its own
    time: float | None = None

    @property
    def related(self) -> bool:
        return self.item_id is not None


@dataclass(frozen=True, slots=True)
class UserContext:
    """What ranking reads about the user (or, for related items, the one-item history of the item)."""

    user_id: str | None
    version: int  # the store's version of the user's history (0: no history; related: 0)
    history: tuple[tuple[str, str], ...]  # (item_id, event_type), oldest first
    vector: np.ndarray | None  # the user tower's output for that history; None: cold start
    model: str | None = None  # the model that computed ``vector`` (a rollout may mix two)

    def without_vector(self) -> UserContext:
        return UserContext(self.user_id, self.version, self.history, None, None)


@dataclass(frozen=True, slots=True)
class UserVectors:
    """User vectors of a batch, whether each may be cached, and the model that computed them (during a rollout
    a stage may reach a replica of the other model: its vectors are never taken for this one's)."""

    vectors: tuple[np.ndarray, ...]
    cacheable: tuple[bool, ...]
    model: str


@dataclass(frozen=True, slots=True)
class ItemVectors:
    """Vectors of items (from text, or related-item queries; None where the model has none) and the model
    that computed them."""

    vectors: tuple[np.ndarray | None, ...]
    model: str


@dataclass(frozen=True, slots=True)
class ExplainedEvent:
    item_id: str
    event_type: str
    contribution: float  # share of the item's score, the positive parts summing to 1


@dataclass(frozen=True, slots=True)
class Explanation:
    reason: str
    events: tuple[ExplainedEvent, ...]

    def to_dict(self) -> dict:
        return {"reason": self.reason, "events": [{"item_id": e.item_id, "event_type": e.event_type,
                                                   "contribution": e.contribution} for e in self.events]}


@dataclass(frozen=True, slots=True)
class RankedItem:
    item_id: str
    score: float
    explanation: Explanation | None = None
    text: str | None = None  # fields=["text"]
    attributes: dict[str, Scalar] | None = None  # fields=["attributes"]
    propensity: float | None = None  # P(this item at this position) under the policy that drew the slate
    explored: bool | None = None  # exploration, not the ranking, filled this slot

    def to_dict(self) -> dict:
        out: dict = {"item_id": self.item_id, "score": self.score}
        if self.propensity is not None:
            out["propensity"], out["explored"] = self.propensity, self.explored
        if self.explanation is not None:
            out["explanation"] = self.explanation.to_dict()
        if self.text is not None:
            out["text"] = self.text
        if self.attributes is not None:
            out["attributes"] = self.attributes
        return out


@dataclass(frozen=True, slots=True)
class Ranked:
    """The answer to one :class:`Query`."""

    items: tuple[RankedItem, ...]
    cold_start: bool  # no user vector: the ranking is not personalised (popularity)
    history_version: int  # the UserContext.version the ranking was computed from
    model_version: str
    recommendation_id: str | None = None
    policy: str = "greedy"
    variant: str | None = None  # the experiment arm the user is in
