"""The store interface every serving replica shares: interaction events, a per-user version, a user-vector
cache keyed by that version, the item catalog's live upserts and removals — and the records and validation
both implementations share.

Versions. ``version(user)`` changes on every append and delete, and a value is never reused, even after
``delete_user``: values come from one store-wide counter (a user without events reads 0). A vector cached under
``(user, version)`` therefore always describes exactly the events that version saw, and ``read_users`` returns
it only while that version is current. ``put_user_vectors`` refuses a version that is no longer current, so a
slow replica cannot overwrite a fresher vector.

Items. ``upsert_items`` and ``remove_items`` give every write the next value of a store-wide item counter; a row
keeps only its latest version, so ``items_since(v)`` returns each item changed after ``v`` once, in its latest
state, ordered by version — the cursor a replica keeps is the last version it applied. A removal is a row too
(a tombstone, ``ItemRecord.removed``): it takes a catalog item that came with the model, or a posted one, out of
every replica's index, durably; upserting the id again brings it back.

Models. Vectors belong to the model that computed them: a store handle is opened for one model (``model``: the
artifact's ``model_version``), writes its vectors under that name and reads only that model's. A cached user
vector of another model is a miss; an item posted through another model's scorer comes back from
``items_since`` with ``vector=None`` until this model's scorer has re-encoded its text
(:meth:`Store.put_item_vectors`, which bumps the item's version so every replica picks the vector up). So a new
artifact can serve a store an older one filled (a rollout, both serving at once while it lasts) without ever
mixing two models' embedding spaces.

Vectors are stored as little-endian float32 bytes and attributes as JSON: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from lmrec.errors import StoreError

EVENT_TYPES = ("view", "click", "purchase", "rating")
MAX_ID_LEN = 256
MAX_DIM = 65536
MAX_EVENTS_PER_CALL = 100_000
ITEMS_PAGE = 4096  # items per items_since round trip: ~2 MB of D=128 vectors
# re-encodings of an item kept beside its poster's vector: the latest models' (the store grows by no more than
# this as artifacts are rolled out; a fourth model re-encoding at the same time evicts the oldest, which re-encodes)
MODEL_VECTORS = 2
Scalar = str | int | float | bool | None
# an id: no control characters (C0, DEL, C1) and at least one character that is not whitespace
ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
_ID = re.compile(ID_PATTERN)


# ----------------------------------------------------------------------------------------- validation
def check_id(value: object, what: str = "id") -> str:
    """1 to MAX_ID_LEN characters, not all blank, no control characters (ids travel in URL paths, logs and
    Redis keys); the HTTP schema declares the same rule as ``ID_PATTERN``."""
    if not isinstance(value, str):
        raise StoreError(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > MAX_ID_LEN or not _ID.fullmatch(value):
        raise StoreError(f"{what} must be 1 to {MAX_ID_LEN} characters, not blank, without control characters, got {value[:64]!r}")
    return value


def check_vector(vec: object, what: str = "vector") -> np.ndarray:
    """A 1-D finite float32 array (a copy only when the input is not already one)."""
    try:
        arr = np.asarray(vec, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} must be a 1-D array of numbers: {exc}") from None
    if arr.ndim != 1 or not 0 < arr.shape[0] <= MAX_DIM:
        raise StoreError(f"{what} must be 1-D with 1..{MAX_DIM} values, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise StoreError(f"{what} has NaN or infinite values")
    return arr


def check_attributes(attributes: object, what: str = "attributes") -> dict[str, Scalar]:
    """A flat dict of scalar values (str, int, float, bool or None), so every value can be filtered on and
    stored as JSON. A multi-valued attribute (tags) belongs in the item text or in one attribute per value."""
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise StoreError(f"{what} must be a dict of scalar values, got {type(attributes).__name__}")
    for key, value in attributes.items():
        if not isinstance(key, str) or not key or len(key) > MAX_ID_LEN:
            raise StoreError(f"{what}: keys must be non-empty strings of at most {MAX_ID_LEN} characters, got {key!r}")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise StoreError(f"{what}[{key!r}] must be a str, int, float, bool or None, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise StoreError(f"{what}[{key!r}] must be finite, got {value!r}")
    return attributes


def check_count(value: int, what: str = "limit") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise StoreError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def vec_bytes(vec: np.ndarray) -> bytes:
    return vec.astype("<f4", copy=False).tobytes()


def vec_from(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)  # a writable copy in native order


# -------------------------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class Event:
    """One interaction. ``timestamp`` is seconds since the epoch (default: now); ``value`` is the rating for
    ``event_type="rating"`` (required there) and optional otherwise (e.g. a purchase amount).
    ``recommendation_id`` / ``position``: the recommendation (and slot, 0 = the top) the user acted on, when
    the event answers one: what attributes clicks to impressions for off-policy evaluation."""

    user_id: str
    item_id: str
    event_type: str
    value: float | None = None
    timestamp: float = field(default_factory=time.time)
    recommendation_id: str | None = None
    position: int | None = None

    def __post_init__(self) -> None:
        check_id(self.user_id, "user_id")
        check_id(self.item_id, "item_id")
        if self.event_type not in EVENT_TYPES:
            raise StoreError(f"event_type must be one of {', '.join(EVENT_TYPES)}, got {self.event_type!r}")
        if self.value is not None:
            if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
                raise StoreError(f"event value must be a finite number or None, got {self.value!r}")
            object.__setattr__(self, "value", float(self.value))
        elif self.event_type == "rating":
            raise StoreError(f"a rating event needs a value (user {self.user_id!r}, item {self.item_id!r})")
        ts = self.timestamp
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts < 0:
            raise StoreError(f"event timestamp must be finite seconds since the epoch, got {ts!r}")
        object.__setattr__(self, "timestamp", float(ts))
        if self.recommendation_id is not None:
            check_id(self.recommendation_id, "recommendation_id")
        if self.position is not None and (isinstance(self.position, bool) or not isinstance(self.position, int) or self.position < 0):
            raise StoreError(f"event position must be a non-negative integer (0 = the top slot), got {self.position!r}")


@dataclass(frozen=True, slots=True)
class Impression:
    """One answer as shown: the slate (item ids, their scores, per-position propensities, whether exploration
    filled each slot), the policy that drew it, the model that scored it, and who asked (a user, or for related
    items the context item). The logged-bandit record off-policy evaluation reads (see lmrec.loop.logs)."""

    recommendation_id: str
    time: float
    surface: str  # "recommend" or "related"
    user_id: str | None
    context_item_id: str | None
    item_ids: tuple[str, ...]
    scores: tuple[float, ...]
    propensities: tuple[float, ...]  # P(this item at this position) under the policy
    prefix_propensities: tuple[float, ...] | None  # P(the slate's first j + 1 items, in order)
    slate_probability: float | None
    explored: tuple[bool, ...]
    policy: str
    policy_params: str  # JSON
    model_version: str
    variant: str | None = None

    def __post_init__(self) -> None:
        check_id(self.recommendation_id, "recommendation_id")
        n = len(self.item_ids)
        lists = (self.scores, self.propensities, self.explored) + ((self.prefix_propensities,) if self.prefix_propensities else ())
        if any(len(x) != n for x in lists):
            raise StoreError(f"impression {self.recommendation_id}: item_ids, scores, propensities and explored need one entry per slot")
        if not all(0 < p <= 1 for p in self.propensities):
            raise StoreError(f"impression {self.recommendation_id}: propensities must lie in (0, 1]")

    def to_json(self) -> str:
        return json.dumps([self.recommendation_id, self.time, self.surface, self.user_id, self.context_item_id, self.item_ids,
                           self.scores, self.propensities, self.prefix_propensities, self.slate_probability, self.explored,
                           self.policy, self.policy_params, self.model_version, self.variant], separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Impression:
        v = json.loads(text)
        return cls(v[0], v[1], v[2], v[3], v[4], tuple(v[5]), tuple(v[6]), tuple(v[7]), None if v[8] is None else tuple(v[8]),
                   v[9], tuple(v[10]), v[11], v[12], v[13], v[14])


@dataclass(frozen=True, slots=True)
class ItemWrite:
    """An item to insert or replace: its text, filterable attributes and the vector a model computed of it."""

    item_id: str
    text: str
    attributes: dict[str, Scalar]
    vector: np.ndarray
    created: float | None = None  # when the item first existed (None: now); a later write keeps the first

    def __post_init__(self) -> None:
        check_id(self.item_id, "item_id")
        if not isinstance(self.text, str):
            raise StoreError(f"item {self.item_id!r}: text must be a string, got {type(self.text).__name__}")
        check_attributes(self.attributes, f"item {self.item_id!r} attributes")
        object.__setattr__(self, "vector", check_vector(self.vector, f"item {self.item_id!r} vector"))


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """One catalog item as ``items_since`` returns it. ``removed``: a tombstone (the item is no longer
    recommendable); it keeps the text, attributes and vector the item had when it was posted here (empty for a
    model's catalog item: the model has them). ``vector`` is None when the store holds no vector of the handle's
    model for the item's text yet (another model encoded it; see :meth:`Store.put_item_vectors`)."""

    version: int
    item_id: str
    text: str
    attributes: dict[str, Scalar]
    vector: np.ndarray | None
    removed: bool = False
    created: float | None = None  # when the item was first posted here (None: a model's catalog item)


@dataclass(frozen=True, slots=True)
class UserRecord:
    """What the store holds of a user, from one consistent read."""

    version: int  # 0: no events (never seen, or deleted)
    history: tuple[tuple[str, str], ...]  # the most recent (item_id, event_type), oldest first
    last_timestamp: float | None  # of the latest event
    vector: np.ndarray | None  # the cached user vector, only when computed for ``version`` by this handle's model


NO_USER = UserRecord(0, (), None, None)


def group_events(events: Sequence[Event]) -> dict[str, list[Event]]:
    """Events grouped by user, in call order. Validates the whole batch before anything is written."""
    if not isinstance(events, Sequence):
        raise StoreError(f"append_events takes a list of Event objects, got {type(events).__name__}")
    if len(events) > MAX_EVENTS_PER_CALL:
        raise StoreError(f"{len(events)} events in one call; send at most {MAX_EVENTS_PER_CALL} per append_events")
    by_user: dict[str, list[Event]] = {}
    for e in events:
        if not isinstance(e, Event):
            raise StoreError(f"append_events takes Event objects, got {type(e).__name__}")
        by_user.setdefault(e.user_id, []).append(e)
    return by_user


def item_rows(items: Iterable[ItemWrite]) -> list[tuple[str, str, str, np.ndarray, float]]:
    """(item_id, text, attributes JSON, vector, created) per item, all validated before anything is written."""
    rows = []
    now = time.time()
    for item in items:
        if not isinstance(item, ItemWrite):
            raise StoreError(f"upsert_items takes ItemWrite records, got {type(item).__name__}")
        rows.append((item.item_id, item.text, json.dumps(item.attributes or {}, sort_keys=True), item.vector,
                     now if item.created is None else float(item.created)))
    return rows


def vector_rows(vectors: Iterable[tuple], of: str = "user") -> list[tuple[str, int, bytes]]:
    """(id, version, vector bytes) per user (or item) vector, validated before anything is written."""
    rows = []
    for entry in vectors:
        try:
            key, version, vec = entry
        except (TypeError, ValueError):
            raise StoreError(f"each {of} vector must be ({of}_id, version, vector)") from None
        check_id(key, f"{of}_id")
        rows.append((key, check_count(version, "version"), vec_bytes(check_vector(vec, f"{of} {key!r} vector"))))
    return rows


# ------------------------------------------------------------------------------------------- interface
class Store(ABC):
    """What the serving graph needs from durable state. Every method is safe to call from several threads
    and processes at once, and a write is visible to every reader as soon as it returns. ``model``: the
    model whose vectors this handle reads and writes (see the module docstring)."""

    model: str = ""

    @abstractmethod
    def append_events(self, events: Sequence[Event]) -> int:
        """Store all of ``events`` or none, durably, and bump the version of each user they name. Returns the count."""

    @abstractmethod
    def history(self, user_id: str, limit: int = 50) -> list[Event]:
        """The user's ``limit`` most recent events (by timestamp, then arrival), oldest first."""

    @abstractmethod
    def read_users(self, user_ids: Sequence[str], limit: int) -> list[UserRecord]:
        """Version, ``limit`` most recent events and cached vector of each user, from one consistent read."""

    @abstractmethod
    def list_users(self, prefix: str = "", limit: int = 50, after: str = "") -> list[tuple[str, int]]:
        """(user_id, events) of users with events whose id starts with ``prefix``, in id order, the first
        ``limit`` after the id ``after`` (a cursor: the last id of the previous page)."""

    @abstractmethod
    def version(self, user_id: str) -> int:
        """The user's current version; 0 for a user with no events (never seen, or deleted)."""

    @abstractmethod
    def delete_user(self, user_id: str) -> bool:
        """Remove the user's events, version and cached vector. True when there was anything to remove."""

    @abstractmethod
    def put_user_vectors(self, vectors: Sequence[tuple[str, int, np.ndarray]]) -> list[bool]:
        """Cache each (user_id, version, vec) in one write; per entry False (nothing stored) when ``version``
        is no longer current. A cache, not a record: it need not survive a crash (it is recomputed)."""

    @abstractmethod
    def put_item_vectors(self, vectors: Sequence[tuple[str, int, np.ndarray]]) -> list[bool]:
        """This model's vector for each (item_id, version, vec) whose record ``items_since`` returned at
        ``version`` without one (another model encoded it), in one write; the item's version moves on so every
        replica syncs it again. Per entry False (nothing stored) when the item changed since ``version`` (its
        new record says what to encode) or already has a vector of this model."""

    @abstractmethod
    def upsert_items(self, items: Iterable[ItemWrite], model: str | None = None) -> int:
        """Insert or replace items atomically; returns the last item version. ``model``: the model that
        encoded the vectors, when not this handle's."""

    @abstractmethod
    def remove_items(self, item_ids: Iterable[str]) -> int:
        """Write a tombstone for each id (posted here or part of a model's catalog: the store cannot tell, so
        any valid id is accepted) atomically; returns the last item version."""

    @abstractmethod
    def items_page(self, after: int, limit: int) -> list[ItemRecord]:
        """At most ``limit`` items written after version ``after``, by increasing version."""

    @abstractmethod
    def item_version(self) -> int:
        """The catalog's current version (the version of the latest item write; 0 before any)."""

    @abstractmethod
    def stats(self) -> dict:
        """Cheap counters for health checks (no table scan): users, events, items (posted, live), and the
        item and user version counters (``user_version`` moves with every append)."""

    @abstractmethod
    def interactions(self) -> Iterator[tuple[str, str]]:
        """Every stored event as (user_id, item_id), page by page (a scan of the whole store: for periodic
        work such as refitting item-kNN, never per request). A deleted user's events are gone from it."""

    @abstractmethod
    def events(self) -> Iterator[Event]:
        """Every stored event, page by page (SQLite in arrival order, Redis user by user, each user's in
        order): what the service has collected, e.g. to train the next model on. A deleted user's are gone."""

    @abstractmethod
    def log_impressions(self, impressions: Sequence[Impression]) -> int:
        """Store the answers as shown, all or none, before they leave: a crash of any process loses none. (SQLite
        commits them without an fsync of their own: a power cut may lose the last ones, never an event.)"""

    @abstractmethod
    def impressions(self, since: float = 0.0) -> Iterator[Impression]:
        """Every stored impression served at or after ``since`` (seconds since the epoch), oldest first."""

    @abstractmethod
    def prune_impressions(self, before: float) -> int:
        """Forget the impressions served before ``before`` (retention); returns how many went."""

    @abstractmethod
    def claim(self, name: str) -> bool:
        """Set the flag ``name`` once: True for the one caller (across every process) that set it, False
        for everyone after. Guards one-time work such as seeding when several replicas start together."""

    @abstractmethod
    def close(self) -> None: ...

    def items_since(self, version: int, limit: int | None = None) -> list[ItemRecord]:
        """Items written after ``version``, each once in its latest state, by increasing version; at most
        ``limit`` of them (all when None). Page with ``items_since(records[-1].version, limit)``."""
        check_count(version, "version")
        if limit is not None:
            return self.items_page(version, check_count(limit))
        out: list[ItemRecord] = []
        while True:
            page = self.items_page(version, ITEMS_PAGE)
            out += page
            if len(page) < ITEMS_PAGE:
                return out
            version = page[-1].version

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
