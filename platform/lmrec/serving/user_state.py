"""Durable user state shared by every serving replica: interaction events, a per-user version, a user-vector
cache keyed by that version, and the item catalog's live upserts.

Two stores with one interface:

- ``SQLiteStore(path)`` (the default): one file per node, on a local disk (WAL needs memory shared between
  the processes: not NFS). WAL journal with ``synchronous=FULL``, so an append that returned survives a
  process or OS crash (the user-vector cache, recomputable, is written without its own fsync; the next
  durable commit syncs it along). Several processes (Serve replicas) may share the file: each process and thread opens
  its own connection, writers take the lock up front (``BEGIN IMMEDIATE``) and retry on SQLITE_BUSY for up
  to ``busy_timeout_s``.
- ``RedisStore(url)``: for several nodes. Every write is one Lua script, so it is atomic and every replica
  sees it as soon as it returns. Crash durability is the server's: run it with ``appendonly yes`` and
  ``appendfsync always`` (``stats()["durable"]`` says whether it does). Needs one primary, not Redis Cluster
  (the scripts name keys they build).

Versions. ``version(user)`` changes on every append and delete, and a value is never reused, even after
``delete_user``: values come from one store-wide counter (a user without events reads 0). A vector cached under
``(user, version)`` therefore always describes exactly the events that version saw, and ``get_vector`` returns
it only while that version is current. ``put_vectors`` refuses a version that is no longer current, so a slow
replica cannot overwrite a fresher vector.

Items. ``upsert_items`` and ``remove_items`` give every write the next value of a store-wide item counter; a row
keeps only its latest version, so ``items_since(v)`` returns each item changed after ``v`` once, in its latest
state, ordered by version — the cursor a retrieval replica keeps is the last version it applied. A removal is a
row too (a tombstone, ``ItemRecord.removed``): it takes a catalog item that came with the model, or a posted
one, out of every replica's index, durably; upserting the id again brings it back.

Models. Vectors belong to the model that computed them: a store handle is opened for one model
(``model``: the artifact's ``model_version``), writes its vectors under that name and reads only that
model's. A cached user vector of another model is a miss; an item posted through another model's scorer
comes back from ``items_since`` with ``vector=None`` until this model's scorer has re-encoded its text
(:meth:`Store.put_item_vectors`, which bumps the item's version so every replica picks the vector up). So
a new artifact can serve a store an older one filled (a rollout, both serving at once while it lasts)
without ever mixing two models' embedding spaces.

Vectors are stored as little-endian float32 bytes and attributes as JSON: nothing is ever unpickled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lmrec.errors import LmrecError, StoreError, StoreUnavailableError

log = logging.getLogger(__name__)

EVENT_TYPES = ("view", "click", "purchase", "rating")
MAX_ID_LEN = 256
MAX_DIM = 65536
MAX_EVENTS_PER_CALL = 100_000
ITEMS_PAGE = 4096  # items per items_since round trip: ~2 MB of D=128 vectors
# re-encodings of an item kept beside its poster's vector: the latest models' (the store grows by no more than
# this as artifacts are rolled out; a fourth model re-encoding at the same time evicts the oldest, which re-encodes)
MODEL_VECTORS = 2
Scalar = str | int | float | bool | None


# ----------------------------------------------------------------------------------------- validation
def check_id(value: object, what: str = "id") -> str:
    if not isinstance(value, str):
        raise StoreError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    if not value.strip() or len(value) > MAX_ID_LEN or "\x00" in value:
        raise StoreError(f"{what} must be a non-empty string of at most {MAX_ID_LEN} characters without NUL, got {value[:300]!r}")
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


def _vec_bytes(vec: np.ndarray) -> bytes:
    return vec.astype("<f4", copy=False).tobytes()


def _vec_from(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)  # a writable copy in native order


@dataclass(frozen=True, slots=True)
class Event:
    """One interaction. ``timestamp`` is seconds since the epoch (default: now); ``value`` is the rating for
    ``event_type="rating"`` (required there) and optional otherwise (e.g. a purchase amount)."""

    user_id: str
    item_id: str
    event_type: str
    value: float | None = None
    timestamp: float = field(default_factory=time.time)

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


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """One catalog item as ``items_since`` returns it; unpacks as (version, item_id, text, attributes, vector).
    ``removed``: a tombstone (the item is no longer recommendable); it keeps the text, attributes and vector
    the item had when it was posted here (empty for a model's catalog item: the model has them).
    ``vector`` is None when the store holds no vector of the handle's model for the item's text yet (it was
    encoded by another model; that model's scorer re-encodes it, see :meth:`Store.put_item_vectors`)."""

    version: int
    item_id: str
    text: str
    attributes: dict[str, Scalar]
    vector: np.ndarray | None
    removed: bool = False

    def __iter__(self):
        return iter((self.version, self.item_id, self.text, self.attributes, self.vector))


def _check_events(events: Sequence[Event]) -> dict[str, list[Event]]:
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


def _check_items(items: Iterable[tuple]) -> list[tuple[str, str, str, np.ndarray]]:
    """(item_id, text, attributes JSON, vector) per item, validated before anything is written."""
    rows = []
    for item in items:
        try:
            item_id, text, attributes, vector = item
        except (TypeError, ValueError):
            raise StoreError("each item must be (item_id, text, attributes, vector)") from None
        check_id(item_id, "item_id")
        if not isinstance(text, str):
            raise StoreError(f"item {item_id!r}: text must be a string, got {type(text).__name__}")
        attrs = check_attributes(attributes, f"item {item_id!r} attributes")
        rows.append((item_id, text, json.dumps(attrs, sort_keys=True), check_vector(vector, f"item {item_id!r} vector")))
    return rows


def _check_vectors(vectors: Iterable[tuple], of: str = "user") -> list[tuple[str, int, bytes]]:
    """(id, version, vector bytes) per user (or item) vector, validated before anything is written."""
    rows = []
    for entry in vectors:
        try:
            key, version, vec = entry
        except (TypeError, ValueError):
            raise StoreError(f"each {of} vector must be ({of}_id, version, vector)") from None
        check_id(key, f"{of}_id")
        rows.append((key, _check_count(version, "version"), _vec_bytes(check_vector(vec, f"{of} {key!r} vector"))))
    return rows


def _check_count(value: int, what: str = "limit") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise StoreError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


class UserContext(NamedTuple):
    """What a recommendation reads about a user, from one consistent view of the store."""

    version: int  # 0: no events (never seen, or deleted)
    history: list[tuple[str, str]]  # the most recent (item_id, event_type), oldest first
    last_timestamp: float | None  # of the latest event
    vector: np.ndarray | None  # the cached user vector, only when computed for ``version``


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

    def context(self, user_id: str, limit: int) -> UserContext:
        """Version, ``limit`` most recent events and cached vector of a user, in one call (stores override
        it with one consistent read)."""
        version = self.version(user_id)
        if not version:
            return UserContext(0, [], None, None)
        events = self.history(user_id, limit)
        return UserContext(version, [(e.item_id, e.event_type) for e in events], events[-1].timestamp if events else None,
                           self.get_vector(user_id, version))

    def contexts(self, user_ids: Sequence[str], limit: int) -> list[UserContext]:
        """:meth:`context` of several users (stores override it with one read for all)."""
        return [self.context(u, limit) for u in user_ids]

    @abstractmethod
    def version(self, user_id: str) -> int:
        """The user's current version; 0 for a user with no events (never seen, or deleted)."""

    @abstractmethod
    def delete_user(self, user_id: str) -> bool:
        """Remove the user's events, version and cached vector. True when there was anything to remove."""

    @abstractmethod
    def get_vector(self, user_id: str, version: int) -> np.ndarray | None:
        """The cached user vector, only when it was stored for ``version`` and ``version`` is still current."""

    @abstractmethod
    def put_vectors(self, vectors: Sequence[tuple[str, int, np.ndarray]]) -> list[bool]:
        """Cache each (user_id, version, vec) in one write; per entry False (nothing stored) when ``version``
        is no longer current. A cache, not a record: it need not survive a crash (it is recomputed)."""

    def put_vector(self, user_id: str, version: int, vec: np.ndarray) -> bool:
        """:meth:`put_vectors` of one vector."""
        return self.put_vectors([(user_id, version, vec)])[0]

    @abstractmethod
    def put_item_vectors(self, vectors: Sequence[tuple[str, int, np.ndarray]]) -> list[bool]:
        """This model's vector for each (item_id, version, vec) whose record ``items_since`` returned at
        ``version`` without one (another model encoded it), in one write; the item's version moves on so every
        replica syncs it again. Per entry False (nothing stored) when the item changed since ``version`` (its
        new record says what to encode) or already has a vector of this model."""

    @abstractmethod
    def upsert_items(self, items: Iterable[tuple[str, str, dict, np.ndarray]], model: str | None = None) -> int:
        """Insert or replace (item_id, text, attributes, vector) items atomically; returns the last item version.
        ``model``: the model that encoded the vectors, when not this handle's."""

    @abstractmethod
    def _items_page(self, after: int, limit: int) -> list[ItemRecord]: ...

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
    def close(self) -> None: ...

    @abstractmethod
    def claim(self, name: str) -> bool:
        """Set the flag ``name`` once: True for the one caller (across every process) that set it, False
        for everyone after. Guards one-time work such as seeding when several replicas start together."""

    @abstractmethod
    def remove_items(self, item_ids: Iterable[str]) -> int:
        """Write a tombstone for each id (posted here or part of a model's catalog: the store cannot tell, so
        any valid id is accepted) atomically; returns the last item version."""

    def upsert_item(self, item_id: str, text: str, attributes: dict, vector: np.ndarray) -> int:
        """Insert or replace one item; returns its version (monotonically increasing across the store)."""
        return self.upsert_items([(item_id, text, attributes, vector)])

    def remove_item(self, item_id: str) -> int:
        """Remove one item (see :meth:`remove_items`); returns the tombstone's version."""
        return self.remove_items([item_id])

    def items_since(self, version: int, limit: int | None = None) -> list[ItemRecord]:
        """Items written after ``version``, each once in its latest state, by increasing version; at most
        ``limit`` of them (all when None). Page with ``items_since(records[-1].version, limit)``."""
        _check_count(version, "version")
        if limit is not None:
            return self._items_page(version, _check_count(limit))
        out: list[ItemRecord] = []
        while True:
            page = self._items_page(version, ITEMS_PAGE)
            out += page
            if len(page) < ITEMS_PAGE:
                return out
            version = page[-1].version

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_store(url: str | None, path: str | Path, model: str = "") -> Store:
    """``redis://``, ``rediss://`` or ``unix://`` URL → RedisStore; None or "" → SQLiteStore at ``path``;
    the handle reads and writes ``model``'s vectors."""
    if not url:
        return SQLiteStore(path, model=model)
    if url.split("://", 1)[0] in ("redis", "rediss", "unix"):
        return RedisStore(url, model=model)
    raise StoreError(f"unsupported store url {url!r}: use redis://host:port/db for Redis, or leave it empty for SQLite at {path}")


# ---------------------------------------------------------------------------------------------- SQLite
_SCHEMA = (
    # seq: arrival order, never reused (AUTOINCREMENT), the tie-break between events with one timestamp
    "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL,"
    " item_id TEXT NOT NULL, event_type TEXT NOT NULL, value REAL, ts REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, ts)",  # + the rowid: (user, ts, seq) order
    "CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID",
    # one cached vector per user: of the model that computed it last (two models serving at once recompute)
    "CREATE TABLE IF NOT EXISTS user_vectors (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL, vec BLOB NOT NULL,"
    " model TEXT NOT NULL DEFAULT '') WITHOUT ROWID",
    # vec: encoded by ``model`` (the poster's); item_vectors: other models' vectors of the same text
    "CREATE TABLE IF NOT EXISTS items (item_id TEXT PRIMARY KEY, version INTEGER NOT NULL UNIQUE, text TEXT NOT NULL,"
    " attributes TEXT NOT NULL, vec BLOB NOT NULL, removed INTEGER NOT NULL DEFAULT 0, model TEXT NOT NULL DEFAULT '')",
    # written: the item version the write gave it; an item keeps the MODEL_VECTORS latest
    "CREATE TABLE IF NOT EXISTS item_vectors (item_id TEXT NOT NULL, model TEXT NOT NULL, vec BLOB NOT NULL,"
    " written INTEGER NOT NULL, PRIMARY KEY (item_id, model)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT OR IGNORE INTO counters VALUES ('user_version', 0), ('item_version', 0), ('events', 0), ('users', 0), ('items', 0)",
)
_SQLITE_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_BUSY  # extended codes (SQLITE_BUSY_SNAPSHOT...) keep the primary in the low byte
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


class SQLiteStore(Store):
    """SQLite file store (see the module docstring). One connection per (process, thread), opened lazily."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0, model: str = ""):
        self.path = Path(path)
        self.model = str(model)
        self.busy_timeout_s = float(busy_timeout_s)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[tuple[int, sqlite3.Connection]] = []  # (pid, connection) for close()
        self._all_lock = threading.Lock()
        self._write(self._create)

    @staticmethod
    def _create(con: sqlite3.Connection) -> None:
        for sql in _SCHEMA:
            con.execute(sql)
        # a file written by an older version: its vectors read as model '' (re-encoded by the model serving it)
        columns = {row[1] for row in con.execute("PRAGMA table_info(items)")}
        if "removed" not in columns:
            con.execute("ALTER TABLE items ADD COLUMN removed INTEGER NOT NULL DEFAULT 0")
        if "model" not in columns:
            con.execute("ALTER TABLE items ADD COLUMN model TEXT NOT NULL DEFAULT ''")
        if "model" not in {row[1] for row in con.execute("PRAGMA table_info(user_vectors)")}:
            con.execute("ALTER TABLE user_vectors ADD COLUMN model TEXT NOT NULL DEFAULT ''")

    # connections ------------------------------------------------------------------------------------
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is not None and self._local.pid == os.getpid():
            return con
        # a fresh connection in each process (never one inherited through fork) and each thread
        # timeout = SQLite's busy handler; check_same_thread=False only so close() can close every thread's one
        con = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
        self._retry(lambda: con.execute("PRAGMA journal_mode = WAL").fetchone())
        con.execute("PRAGMA synchronous = FULL")  # fsync the WAL at every commit: a returned append survives a crash
        self._local.con, self._local.pid = con, os.getpid()
        with self._all_lock:
            self._all.append((os.getpid(), con))
        return con

    def close(self) -> None:
        with self._all_lock:
            cons, self._all = self._all, []
        for pid, con in cons:
            if pid == os.getpid():  # a connection inherited through fork is the parent's to close
                con.close()
        self._local = threading.local()

    def _retry(self, fn):
        """Run ``fn`` again while SQLite reports BUSY/LOCKED beyond its own busy handler, up to busy_timeout_s."""
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    if _is_busy(exc):
                        raise StoreUnavailableError(f"{self.path} stayed locked for {self.busy_timeout_s:.0f} s; "
                                         "raise busy_timeout_s or reduce the number of writers") from exc
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.2)

    def _write(self, fn):
        """``fn(con)`` inside one write transaction (taken up front, so two writers never deadlock on upgrade)."""

        def attempt():
            con = self._con()
            con.execute("BEGIN IMMEDIATE")
            try:
                result = fn(con)
                con.execute("COMMIT")
                return result
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

        return self._retry(attempt)

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._retry(lambda: self._con().execute(sql, params).fetchall())

    def claim(self, name: str) -> bool:
        return self._write(lambda con: con.execute(
            "INSERT OR IGNORE INTO counters (name, value) VALUES (?, 1)", (f"claim:{name}",)).rowcount == 1)

    @staticmethod
    def _bump(con: sqlite3.Connection, name: str, by: int) -> int:
        return con.execute("UPDATE counters SET value = value + ? WHERE name = ? RETURNING value", (by, name)).fetchone()[0]

    # events -----------------------------------------------------------------------------------------
    def append_events(self, events: Sequence[Event]) -> int:
        by_user = _check_events(events)
        if not by_user:
            return 0

        def write(con: sqlite3.Connection) -> int:
            users = list(by_user)
            known = 0
            for start in range(0, len(users), 500):  # stay under SQLite's bound-parameter limit
                chunk = users[start:start + 500]
                known += con.execute(f"SELECT count(*) FROM users WHERE user_id IN ({','.join('?' * len(chunk))})", chunk).fetchone()[0]
            con.executemany(
                "INSERT INTO events (user_id, item_id, event_type, value, ts) VALUES (?, ?, ?, ?, ?)",
                [(e.user_id, e.item_id, e.event_type, e.value, e.timestamp) for user in users for e in by_user[user]],
            )
            last = self._bump(con, "user_version", len(users))
            con.executemany(
                "INSERT INTO users (user_id, version) VALUES (?, ?) ON CONFLICT (user_id) DO UPDATE SET version = excluded.version",
                [(u, last - len(users) + 1 + i) for i, u in enumerate(users)],
            )
            self._bump(con, "events", len(events))
            self._bump(con, "users", len(users) - known)
            return len(events)

        return self._write(write)

    def _scan_events(self, columns: str, page: int) -> Iterator[tuple]:
        """``columns`` of every event in arrival order, ``page`` rows per read (each read its own snapshot)."""
        after = 0
        while True:
            rows = self._read(f"SELECT seq, {columns} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, page))
            yield from (row[1:] for row in rows)
            if len(rows) < page:
                return
            after = rows[-1][0]

    def interactions(self, page: int = 100_000) -> Iterator[tuple[str, str]]:
        return self._scan_events("user_id, item_id", page)

    def events(self, page: int = 100_000) -> Iterator[Event]:
        return (Event(*row) for row in self._scan_events("user_id, item_id, event_type, value, ts", page))

    def history(self, user_id: str, limit: int = 50) -> list[Event]:
        check_id(user_id, "user_id")
        rows = self._read(
            "SELECT item_id, event_type, value, ts FROM events WHERE user_id = ? ORDER BY ts DESC, seq DESC LIMIT ?",
            (user_id, _check_count(limit)),
        )
        return [Event(user_id, item, kind, value, ts) for item, kind, value, ts in reversed(rows)]

    def version(self, user_id: str) -> int:
        check_id(user_id, "user_id")
        rows = self._read("SELECT version FROM users WHERE user_id = ?", (user_id,))
        return rows[0][0] if rows else 0

    def context(self, user_id: str, limit: int) -> UserContext:
        return self.contexts([user_id], limit)[0]

    def contexts(self, user_ids: Sequence[str], limit: int) -> list[UserContext]:
        for user_id in user_ids:
            check_id(user_id, "user_id")
        _check_count(limit)

        def read() -> list[UserContext]:
            con = self._con()
            con.execute("BEGIN")  # one snapshot for the versions, the events and the vectors
            try:
                out = []
                for user_id in user_ids:
                    row = con.execute(
                        "SELECT u.version, v.vec FROM users u LEFT JOIN user_vectors v ON v.user_id = u.user_id AND v.version = u.version "
                        "AND v.model = ? WHERE u.user_id = ?", (self.model, user_id)).fetchone()  # fmt: skip
                    if row is None:
                        out.append(UserContext(0, [], None, None))
                        continue
                    rows = con.execute("SELECT item_id, event_type, ts FROM events WHERE user_id = ? ORDER BY ts DESC, seq DESC LIMIT ?",
                                       (user_id, limit)).fetchall()  # fmt: skip
                    history = [(item, kind) for item, kind, _ in reversed(rows)]
                    out.append(UserContext(row[0], history, rows[0][2] if rows else None, None if row[1] is None else _vec_from(row[1])))
                return out
            finally:
                if con.in_transaction:
                    con.execute("COMMIT")

        return self._retry(read)

    def delete_user(self, user_id: str) -> bool:
        check_id(user_id, "user_id")

        def write(con: sqlite3.Connection) -> bool:
            events = con.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            user = con.execute("DELETE FROM users WHERE user_id = ?", (user_id,)).rowcount
            vec = con.execute("DELETE FROM user_vectors WHERE user_id = ?", (user_id,)).rowcount
            self._bump(con, "events", -events)
            self._bump(con, "users", -user)
            return bool(events or user or vec)

        return self._write(write)

    # user vectors -----------------------------------------------------------------------------------
    def get_vector(self, user_id: str, version: int) -> np.ndarray | None:
        check_id(user_id, "user_id")
        rows = self._read(
            "SELECT v.vec FROM user_vectors v LEFT JOIN users u ON u.user_id = v.user_id "
            "WHERE v.user_id = ? AND v.version = ? AND coalesce(u.version, 0) = v.version AND v.model = ?",
            (user_id, _check_count(version, "version"), self.model),
        )
        return _vec_from(rows[0][0]) if rows else None

    def put_vectors(self, vectors: Sequence[tuple[str, int, np.ndarray]]) -> list[bool]:
        rows = _check_vectors(vectors)

        def write(con: sqlite3.Connection) -> list[bool]:
            stored = []
            for user_id, version, blob in rows:
                row = con.execute("SELECT version FROM users WHERE user_id = ?", (user_id,)).fetchone()
                stored.append((row[0] if row else 0) == version)
                if stored[-1]:
                    con.execute("INSERT OR REPLACE INTO user_vectors (user_id, version, vec, model) VALUES (?, ?, ?, ?)",
                                (user_id, version, blob, self.model))
            return stored

        if not rows:
            return []
        # a cache: committed without its own fsync (WAL + synchronous NORMAL keeps the file consistent; the
        # next durable commit syncs these pages too, and a vector lost to a power cut is recomputed)
        con = self._con()
        con.execute("PRAGMA synchronous = NORMAL")
        try:
            return self._write(write)
        finally:
            con.execute("PRAGMA synchronous = FULL")

    # items ------------------------------------------------------------------------------------------
    @staticmethod
    def _live_item(con: sqlite3.Connection, item_id: str) -> bool:
        """Whether the store holds the item posted and not removed (a model's catalog item: False)."""
        row = con.execute("SELECT removed = 0 FROM items WHERE item_id = ?", (item_id,)).fetchone()
        return bool(row and row[0])

    def upsert_items(self, items: Iterable[tuple[str, str, dict, np.ndarray]], model: str | None = None) -> int:
        rows = _check_items(items)
        if not rows:
            return self.item_version()
        model = self.model if model is None else str(model)

        def write(con: sqlite3.Connection) -> int:
            last = self._bump(con, "item_version", len(rows))
            first = last - len(rows) + 1
            new = 0
            for i, (item_id, text, attrs, vec) in enumerate(rows):
                new += not self._live_item(con, item_id)
                con.execute(
                    "INSERT INTO items (item_id, version, text, attributes, vec, removed, model) VALUES (?, ?, ?, ?, ?, 0, ?) "
                    "ON CONFLICT (item_id) DO UPDATE SET version = excluded.version, text = excluded.text, "
                    "attributes = excluded.attributes, vec = excluded.vec, removed = 0, model = excluded.model",
                    (item_id, first + i, text, attrs, _vec_bytes(vec), model),
                )
                con.execute("DELETE FROM item_vectors WHERE item_id = ?", (item_id,))  # other models': of the old text
            self._bump(con, "items", new)
            return last

        return self._write(write)

    def remove_items(self, item_ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(check_id(i, "item_id") for i in item_ids))
        if not ids:
            return self.item_version()

        def write(con: sqlite3.Connection) -> int:
            last = self._bump(con, "item_version", len(ids))
            first = last - len(ids) + 1
            gone = 0
            for i, item_id in enumerate(ids):
                gone += self._live_item(con, item_id)
                con.execute(
                    "INSERT INTO items (item_id, version, text, attributes, vec, removed) VALUES (?, ?, '', '{}', x'', 1) "
                    "ON CONFLICT (item_id) DO UPDATE SET version = excluded.version, removed = 1",
                    (item_id, first + i),
                )
            self._bump(con, "items", -gone)
            return last

        return self._write(write)

    def put_item_vectors(self, vectors: Sequence[tuple[str, int, np.ndarray]]) -> list[bool]:
        rows = _check_vectors(vectors, "item")
        if not rows:
            return []

        def write(con: sqlite3.Connection) -> list[bool]:
            stored = []
            for item_id, version, blob in rows:
                row = con.execute("SELECT version, model FROM items WHERE item_id = ?", (item_id,)).fetchone()
                has = row is not None and (row[1] == self.model or con.execute(
                    "SELECT 1 FROM item_vectors WHERE item_id = ? AND model = ?", (item_id, self.model)).fetchone() is not None)
                stored.append(row is not None and row[0] == version and not has)
                if stored[-1]:
                    version = self._bump(con, "item_version", 1)
                    con.execute("INSERT INTO item_vectors (item_id, model, vec, written) VALUES (?, ?, ?, ?)", (item_id, self.model, blob, version))
                    con.execute("DELETE FROM item_vectors WHERE item_id = ? AND model NOT IN "
                                "(SELECT model FROM item_vectors WHERE item_id = ? ORDER BY written DESC LIMIT ?)",
                                (item_id, item_id, MODEL_VECTORS))
                    con.execute("UPDATE items SET version = ? WHERE item_id = ?", (version, item_id))
            return stored

        return self._write(write)

    def _items_page(self, after: int, limit: int) -> list[ItemRecord]:
        rows = self._read(
            "SELECT i.version, i.item_id, i.text, i.attributes, CASE WHEN i.model = ? THEN i.vec ELSE v.vec END, i.removed "
            "FROM items i LEFT JOIN item_vectors v ON v.item_id = i.item_id AND v.model = ? "
            "WHERE i.version > ? ORDER BY i.version LIMIT ?",
            (self.model, self.model, after, limit),
        )
        return [ItemRecord(v, i, t, json.loads(a), None if b is None else _vec_from(b), bool(r)) for v, i, t, a, b, r in rows]

    def item_version(self) -> int:
        return self._read("SELECT value FROM counters WHERE name = 'item_version'")[0][0]

    def stats(self) -> dict:
        counters = dict(self._read("SELECT name, value FROM counters"))
        wal = self.path.with_name(self.path.name + "-wal")
        return {
            "backend": "sqlite",
            "path": str(self.path),
            "durable": True,
            "users": counters["users"],
            "events": counters["events"],
            "items": counters["items"],
            "item_version": counters["item_version"],
            "user_version": counters["user_version"],
            "bytes": self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0),
        }


# ----------------------------------------------------------------------------------------------- Redis
# Keys (prefix P): P"u:"uid hash {version}; P"ev:"uid zset (score ts, member "%020d seq|json event");
# P"vec:"uid hash {version, vec, model}; P"item:"id hash {version, text, attributes, vec, removed, model, and "v:"model
# per other model's vector of the same text}; P"items" zset (score version, member item id); P"n" hash of counters.
# Every write is one script: atomic, and visible on return.
_LUA_APPEND = """
local p, nu, i, total, new = ARGV[1], tonumber(ARGV[2]), 3, 0, 0
for _ = 1, nu do
  local uid, ne = ARGV[i], tonumber(ARGV[i + 1]); i = i + 2
  if redis.call('EXISTS', p .. 'u:' .. uid) == 0 then new = new + 1 end
  local seq = redis.call('HINCRBY', p .. 'n', 'event_seq', ne) - ne
  local z = {}
  for e = 1, ne do
    z[#z + 1] = ARGV[i]
    z[#z + 1] = string.format('%020d', seq + e) .. '|' .. ARGV[i + 1]
    i = i + 2
    if #z >= 1000 then redis.call('ZADD', p .. 'ev:' .. uid, unpack(z)); z = {} end
  end
  if #z > 0 then redis.call('ZADD', p .. 'ev:' .. uid, unpack(z)) end
  redis.call('HSET', p .. 'u:' .. uid, 'version', redis.call('HINCRBY', p .. 'n', 'user_version', 1))
  total = total + ne
end
redis.call('HINCRBY', p .. 'n', 'events', total)
redis.call('HINCRBY', p .. 'n', 'users', new)
return total
"""
_LUA_DELETE = """
local p, uid = ARGV[1], ARGV[2]
local events = redis.call('ZCARD', p .. 'ev:' .. uid)
local user = redis.call('EXISTS', p .. 'u:' .. uid)
local removed = redis.call('DEL', p .. 'u:' .. uid, p .. 'ev:' .. uid, p .. 'vec:' .. uid)
redis.call('HINCRBY', p .. 'n', 'events', 0 - events)  -- not -events: Lua prints -0, which HINCRBY rejects
redis.call('HINCRBY', p .. 'n', 'users', 0 - user)
return removed
"""
_LUA_PUT_VECTOR = """
local p, uid, version = ARGV[1], ARGV[2], ARGV[3]
local current = redis.call('HGET', p .. 'u:' .. uid, 'version') or '0'
if current ~= version then return 0 end
redis.call('HSET', p .. 'vec:' .. uid, 'version', version, 'vec', ARGV[4], 'model', ARGV[5])
return 1
"""
_LUA_GET_VECTOR = """
local p, uid, version = ARGV[1], ARGV[2], ARGV[3]
local current = redis.call('HGET', p .. 'u:' .. uid, 'version') or '0'
local cached = redis.call('HMGET', p .. 'vec:' .. uid, 'version', 'vec', 'model')
if current ~= version or cached[1] ~= version or (cached[3] or '') ~= ARGV[4] then return false end
return cached[2]
"""
_LUA_UPSERT_ITEMS = """
local p, model, n, i, last, new = ARGV[1], ARGV[2], tonumber(ARGV[3]), 4, 0, 0
for _ = 1, n do
  local id = ARGV[i]
  last = redis.call('HINCRBY', p .. 'n', 'item_version', 1)
  local key = p .. 'item:' .. id
  if redis.call('EXISTS', key) == 0 or redis.call('HGET', key, 'removed') == '1' then new = new + 1 end
  for _, f in ipairs(redis.call('HKEYS', key)) do  -- other models' vectors were of the old text
    if string.sub(f, 1, 2) == 'v:' or f == 'vmodels' then redis.call('HDEL', key, f) end
  end
  redis.call('HSET', key, 'version', last, 'text', ARGV[i + 1], 'attributes', ARGV[i + 2], 'vec', ARGV[i + 3], 'removed', '0',
             'model', model)
  redis.call('ZADD', p .. 'items', last, id)
  i = i + 4
end
redis.call('HINCRBY', p .. 'n', 'items', new)
return last
"""
_LUA_REMOVE_ITEMS = """
local p, last, gone = ARGV[1], 0, 0
for i = 2, #ARGV do
  local id = ARGV[i]
  last = redis.call('HINCRBY', p .. 'n', 'item_version', 1)
  local key = p .. 'item:' .. id
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'text', '', 'attributes', '{}', 'vec', '')
  elseif redis.call('HGET', key, 'removed') ~= '1' then
    gone = gone + 1
  end
  redis.call('HSET', key, 'version', last, 'removed', '1')
  redis.call('ZADD', p .. 'items', last, id)
end
redis.call('HINCRBY', p .. 'n', 'items', 0 - gone)
return last
"""
_LUA_ITEMS_SINCE = """
local p, model = ARGV[1], ARGV[4]
local ids = redis.call('ZRANGEBYSCORE', p .. 'items', '(' .. ARGV[2], '+inf', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local h = redis.call('HMGET', p .. 'item:' .. id, 'version', 'text', 'attributes', 'vec', 'removed', 'model', 'v:' .. model)
  local vec = h[7]  -- this model's re-encoding, or false (nil: no vector of this model yet)
  if (h[6] or '') == model then vec = h[4] end
  out[#out + 1] = h[1]; out[#out + 1] = id; out[#out + 1] = h[2]; out[#out + 1] = h[3]; out[#out + 1] = vec
  out[#out + 1] = h[5] or '0'
end
return out
"""
_LUA_PUT_ITEM_VECTORS = """
local p, model, keep, out = ARGV[1], ARGV[2], tonumber(ARGV[3]), {}
for i = 4, #ARGV, 3 do
  local key = p .. 'item:' .. ARGV[i]
  local h = redis.call('HMGET', key, 'version', 'model', 'v:' .. model, 'vmodels')
  if h[1] == ARGV[i + 1] and (h[2] or '') ~= model and not h[3] then
    local version = redis.call('HINCRBY', p .. 'n', 'item_version', 1)
    local models = h[4] and cjson.decode(h[4]) or {}  -- the models with a vector here, oldest first
    models[#models + 1] = model
    while #models > keep do
      redis.call('HDEL', key, 'v:' .. table.remove(models, 1))
    end
    redis.call('HSET', key, 'v:' .. model, ARGV[i + 2], 'version', version, 'vmodels', cjson.encode(models))
    redis.call('ZADD', p .. 'items', version, ARGV[i])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""


class RedisStore(Store):
    """Redis store (see the module docstring). ``prefix`` namespaces the keys, so tests and deployments can
    share one server."""

    def __init__(self, url: str, prefix: str = "lmrec:", socket_timeout_s: float = 5.0, model: str = ""):
        import redis

        self.url, self.prefix, self.model = url, prefix, str(model)
        self._redis = redis
        self._r = redis.Redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)
        self._scripts = {
            name: self._r.register_script(src)
            for name, src in (("append", _LUA_APPEND), ("delete", _LUA_DELETE), ("put_vector", _LUA_PUT_VECTOR),
                              ("get_vector", _LUA_GET_VECTOR), ("upsert_items", _LUA_UPSERT_ITEMS),
                              ("items_since", _LUA_ITEMS_SINCE), ("remove_items", _LUA_REMOVE_ITEMS),
                              ("put_item_vectors", _LUA_PUT_ITEM_VECTORS))
        }
        self._call(self._r.ping)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (self._redis.ConnectionError, self._redis.TimeoutError) as exc:
            raise StoreUnavailableError(f"cannot reach Redis at {self.url}: {exc}") from exc

    def _run(self, script: str, *args):
        return self._call(self._scripts[script], keys=[], args=[self.prefix, *args])

    def close(self) -> None:
        self._r.close()

    def claim(self, name: str) -> bool:
        return bool(self._call(self._r.hsetnx, f"{self.prefix}claims", name, 1))

    def append_events(self, events: Sequence[Event]) -> int:
        by_user = _check_events(events)
        if not by_user:
            return 0
        args: list = [len(by_user)]
        for user, evs in by_user.items():
            args += [user, len(evs)]
            for e in evs:
                args += [repr(e.timestamp), json.dumps([e.item_id, e.event_type, e.value, e.timestamp])]
        return int(self._run("append", *args))

    def _scan_events(self, page: int) -> Iterator[tuple[str, list[bytes]]]:
        """(user_id, their event members oldest first) for every user with events, SCAN page by page."""
        cursor, skip = 0, len(self.prefix) + 3  # keys are <prefix>ev:<user_id>
        while True:
            cursor, keys = self._call(self._r.scan, cursor, match=f"{self.prefix}ev:*", count=page)
            if keys:
                pipe = self._r.pipeline(transaction=False)
                for key in keys:
                    pipe.zrange(key, 0, -1)
                for key, members in zip(keys, self._call(pipe.execute)):
                    yield key[skip:].decode(), members
            if cursor == 0:
                return

    def interactions(self, page: int = 500) -> Iterator[tuple[str, str]]:
        for user, members in self._scan_events(page):
            yield from ((user, json.loads(m[21:])[0]) for m in members)  # after "%020d|"

    def events(self, page: int = 500) -> Iterator[Event]:
        for user, members in self._scan_events(page):
            yield from (Event(user, *json.loads(m[21:])) for m in members)

    def history(self, user_id: str, limit: int = 50) -> list[Event]:
        check_id(user_id, "user_id")
        if _check_count(limit) == 0:
            return []
        members = self._call(self._r.zrange, f"{self.prefix}ev:{user_id}", 0, limit - 1, desc=True)
        out = []
        for m in reversed(members):
            item, kind, value, ts = json.loads(m[21:])  # after "%020d|"
            out.append(Event(user_id, item, kind, value, ts))
        return out

    def version(self, user_id: str) -> int:
        check_id(user_id, "user_id")
        return int(self._call(self._r.hget, f"{self.prefix}u:{user_id}", "version") or 0)

    def context(self, user_id: str, limit: int) -> UserContext:
        return self.contexts([user_id], limit)[0]

    def contexts(self, user_ids: Sequence[str], limit: int) -> list[UserContext]:
        for user_id in user_ids:
            check_id(user_id, "user_id")
        _check_count(limit)
        pipe = self._r.pipeline(transaction=True)  # MULTI/EXEC: one round trip, the versions and what they count
        for user_id in user_ids:
            pipe.hget(f"{self.prefix}u:{user_id}", "version")
            pipe.zrange(f"{self.prefix}ev:{user_id}", 0, limit - 1, desc=True) if limit else pipe.echo("")
            pipe.hmget(f"{self.prefix}vec:{user_id}", "version", "vec", "model")
        replies = self._call(pipe.execute)
        out = []
        for j in range(len(user_ids)):
            version, members, (cached_version, blob, model) = replies[3 * j: 3 * j + 3]
            version = int(version or 0)
            if not version:
                out.append(UserContext(0, [], None, None))
                continue
            rows = [json.loads(m[21:]) for m in reversed(members or [])]  # after "%020d|": [item, kind, value, ts]
            mine = blob is not None and int(cached_version or -1) == version and (model or b"").decode() == self.model
            vector = _vec_from(blob) if mine else None
            out.append(UserContext(version, [(r[0], r[1]) for r in rows], rows[-1][3] if rows else None, vector))
        return out

    def delete_user(self, user_id: str) -> bool:
        return int(self._run("delete", check_id(user_id, "user_id"))) > 0

    def get_vector(self, user_id: str, version: int) -> np.ndarray | None:
        blob = self._run("get_vector", check_id(user_id, "user_id"), str(_check_count(version, "version")), self.model)
        return None if blob is None else _vec_from(blob)

    def put_vectors(self, vectors: Sequence[tuple[str, int, np.ndarray]]) -> list[bool]:
        rows = _check_vectors(vectors)
        if not rows:
            return []
        pipe = self._r.pipeline(transaction=False)  # one round trip; each script checks its own version
        for user_id, version, blob in rows:
            self._scripts["put_vector"](keys=[], args=[self.prefix, user_id, str(version), blob, self.model], client=pipe)
        return [bool(r) for r in self._call(pipe.execute)]

    def upsert_items(self, items: Iterable[tuple[str, str, dict, np.ndarray]], model: str | None = None) -> int:
        rows = _check_items(items)
        if not rows:
            return self.item_version()
        model = self.model if model is None else str(model)
        last = 0
        for start in range(0, len(rows), 1000):  # one script per 1000 items keeps each call short
            args: list = [model, len(rows[start:start + 1000])]
            for item_id, text, attrs, vec in rows[start:start + 1000]:
                args += [item_id, text, attrs, _vec_bytes(vec)]
            last = int(self._run("upsert_items", *args))
        return last

    def _items_page(self, after: int, limit: int) -> list[ItemRecord]:
        if limit == 0:
            return []
        flat = self._run("items_since", str(after), limit, self.model)
        out = []
        for k in range(0, len(flat), 6):
            version, item_id, text, attrs, vec, removed = flat[k:k + 6]
            out.append(ItemRecord(int(version), item_id.decode(), text.decode(), json.loads(attrs),
                                  None if vec is None else _vec_from(vec), removed == b"1"))
        return out

    def put_item_vectors(self, vectors: Sequence[tuple[str, int, np.ndarray]]) -> list[bool]:
        rows = _check_vectors(vectors, "item")
        out: list[bool] = []
        for start in range(0, len(rows), 1000):
            args = [a for item_id, version, blob in rows[start:start + 1000] for a in (item_id, str(version), blob)]
            out += [bool(r) for r in self._run("put_item_vectors", self.model, MODEL_VECTORS, *args)]
        return out

    def remove_items(self, item_ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(check_id(i, "item_id") for i in item_ids))
        if not ids:
            return self.item_version()
        last = 0
        for start in range(0, len(ids), 1000):
            last = int(self._run("remove_items", *ids[start:start + 1000]))
        return last

    def item_version(self) -> int:
        return int(self._call(self._r.hget, f"{self.prefix}n", "item_version") or 0)

    def stats(self) -> dict:
        n = {k.decode(): int(v) for k, v in self._call(self._r.hgetall, f"{self.prefix}n").items()}
        info = self._call(self._r.info, "persistence")
        try:
            fsync = self._call(self._r.config_get, "appendfsync").get("appendfsync")
        except self._redis.ResponseError:  # CONFIG disabled (managed Redis): durability unknown here
            fsync = None
        return {
            "backend": "redis",
            "url": self.url,
            # a returned append survives a server crash only with the AOF fsynced at every write
            "durable": bool(info.get("aof_enabled")) and fsync == "always",
            "users": n.get("users", 0),
            "events": n.get("events", 0),
            "items": n.get("items", 0),
            "item_version": n.get("item_version", 0),
            "user_version": n.get("user_version", 0),
        }


# --------------------------------------------------------------------------------------- the deployment
def connect_store(cfg: dict) -> Store:
    """The store named by a serving config: ``store_url`` (or the URL in the ``store_url_env`` variable, a
    secret) for Redis, else SQLite at ``store_path``; a handle for the vectors of ``model`` (the artifact's
    model version; "" when absent)."""
    env = cfg.get("store_url_env")
    url = (os.environ.get(env) if env else None) or cfg.get("store_url")
    return open_store(url, cfg["store_path"], cfg.get("model", ""))


def seed_store(store: Store, dataset_name: str | None, config_file: str | None, chunk: int = 5000) -> int:
    """Load a dataset's interactions as users' histories, once (only into an empty store), so the users
    it knows get personalised recommendations from the first request. Returns the events written."""
    if not (dataset_name or config_file) or store.stats()["events"] > 0 or not store.claim("seeded"):
        return 0  # nothing to seed, seeded already, or another replica starting beside this one is seeding it
    from lmrec.config import load_config
    from lmrec.data.loaders import load_dataset

    cfg = load_config([config_file] if config_file else [], [f"data.dataset={dataset_name}"] if dataset_name else [])
    inter = load_dataset(cfg.data).interactions
    total = 0
    rows = inter[["user_id", "item_id", "event", "value", "timestamp"]].itertuples(index=False)
    batch: list[Event] = []
    for user, item, event, value, ts in rows:
        v = None if value != value else float(value)  # NaN -> no value
        batch.append(Event(str(user), str(item), event, v, float(ts)))
        if len(batch) >= chunk:
            total += store.append_events(batch)
            batch = []
    if batch:
        total += store.append_events(batch)
    log.info("seeded the store with %d events of %s", total, dataset_name or config_file)
    return total


try:
    from ray import serve
except ImportError:  # pragma: no cover
    serve = None


REFRESH_MAX_USERS = 64  # events naming more users at once (bulk loads) leave their vectors to their next request


class UserStateStage:
    """Users' histories and cached user vectors, in the shared durable store (every replica reads the
    same store, so an acknowledged event is seen by the next request whichever replica serves it).
    A cached vector is valid only for the history version it was computed from.

    Once events are acknowledged, the users' new vectors are computed in the background: a recommendation
    arriving meanwhile waits for that computation instead of starting its own, so the one after an event
    pays less than a full trip to the scorer."""

    def __init__(self, scorer, store: dict, max_history: int, seed_dataset: str | None, seed_config: str | None):
        self.scorer = scorer
        self.store = connect_store(store)
        self.max_history = max_history
        self._computing: dict[str, tuple[int, asyncio.Future]] = {}  # user -> (version, its vector to come)
        self._refreshes: set[asyncio.Task] = set()
        seed_store(self.store, seed_dataset, seed_config)

    async def contexts(self, user_ids: list[str]) -> list[dict | LmrecError]:
        """Each user's history (oldest first) and user vector (None for a user without history: cold start),
        or the error of an invalid id in its place; every stale cached vector is recomputed in one scorer call."""
        from lmrec.serving.metrics import count_cache, observe_latency

        started = time.perf_counter()
        users = self._read(user_ids)
        known = [j for j, u in enumerate(users) if isinstance(u, UserContext) and u.history]
        stale = [j for j in known if users[j].vector is None]
        count_cache(True, len(known) - len(stale))
        count_cache(False, len(stale))
        vectors = await self._vectors(user_ids, users, stale) if stale else {}
        out: list[dict | LmrecError] = []
        for j, (user_id, user) in enumerate(zip(user_ids, users)):
            if isinstance(user, LmrecError):
                out.append(user)
                continue
            # the model the vector came from travels with it (retrieval never ranks one model's vector in another's index)
            vector, model = vectors.get(j, (user.vector, self.store.model)) if user.history else (None, None)
            out.append({"user_id": user_id, "history": user.history, "vector": vector, "version": user.version, "model": model})
        observe_latency("state", time.perf_counter() - started)
        return out

    def _read(self, user_ids: list[str]) -> list[UserContext | StoreError]:
        users: list = []
        valid = []
        for j, user_id in enumerate(user_ids):
            try:
                check_id(user_id, "user_id")
                valid.append(j)
                users.append(None)
            except StoreError as exc:
                users.append(exc)
        for j, user in zip(valid, self.store.contexts([user_ids[j] for j in valid], self.max_history) if valid else []):
            users[j] = user
        return users

    async def _vectors(self, user_ids: list[str], users: list, stale: list[int]) -> dict[int, tuple[np.ndarray, str]]:
        """(vector, model) of the ``stale`` users (positions in the batch), computed in one scorer call, except
        those already being computed for the same history version (a refresh after an event, or a duplicate)."""
        loop = asyncio.get_running_loop()
        mine: dict[int, asyncio.Future] = {}
        waits: dict[int, asyncio.Future] = {}
        for j in stale:
            pending = self._computing.get(user_ids[j])
            if pending is not None and pending[0] == users[j].version:
                waits[j] = pending[1]
            else:
                mine[j] = loop.create_future()
                self._computing[user_ids[j]] = (users[j].version, mine[j])
        try:
            vectors = await self._compute(user_ids, users, list(mine)) if mine else {}
            for j, future in mine.items():
                future.set_result(vectors[j])
        except BaseException:
            for future in mine.values():
                future.cancel()  # whoever waits for it computes it itself
            raise
        finally:
            for j, future in mine.items():
                if self._computing.get(user_ids[j], (None, None))[1] is future:
                    del self._computing[user_ids[j]]
        again = []
        for j, future in waits.items():
            try:
                vectors[j] = await asyncio.shield(future)
            except asyncio.CancelledError:
                if not future.cancelled():
                    raise  # this request was cancelled, not the computation
                again.append(j)
        if again:
            vectors.update(await self._compute(user_ids, users, again))
        return vectors

    async def _compute(self, user_ids: list[str], users: list, idx: list[int]) -> dict[int, tuple[np.ndarray, str]]:
        from lmrec.serving.metrics import observe_lag

        fresh, cacheable, model = await self.scorer.user_vectors.remote([users[j].history for j in idx])
        # not cached: another model's vector (a scorer replica of the other side of a rollout), or one that lacks a
        # history item still waiting for this model's vector
        if model == self.store.model:
            self.store.put_vectors([(user_ids[j], users[j].version, v) for j, v, ok in zip(idx, fresh, cacheable) if ok])
        now = time.time()
        for j in idx:
            lag = now - users[j].last_timestamp
            if 0 <= lag < 60:  # a live event (not a replayed or back-dated one)
                observe_lag(lag)
        return {j: (vector, model) for j, vector in zip(idx, fresh)}

    async def append(self, events: list[dict]) -> int:
        from lmrec.serving.metrics import count_events

        n = self.store.append_events([Event(**{k: v for k, v in e.items() if v is not None}) for e in events])
        count_events(n)
        users = list(dict.fromkeys(e["user_id"] for e in events))
        if len(users) <= REFRESH_MAX_USERS:  # after the acknowledgement, not before it
            task = asyncio.ensure_future(self._refresh(users))
            self._refreshes.add(task)
            task.add_done_callback(self._refreshes.discard)
        return n

    async def _refresh(self, user_ids: list[str]) -> None:
        try:
            users = self._read(user_ids)
            stale = [j for j, u in enumerate(users) if isinstance(u, UserContext) and u.history and u.vector is None]
            if stale:
                await self._vectors(user_ids, users, stale)
        except Exception as exc:  # the next recommendation computes it (and reports what is wrong)
            log.warning("refreshing the vectors of %d user(s) after their events failed: %s", len(user_ids), exc)

    async def history(self, user_id: str, limit: int) -> list[dict]:
        return [
            {"item_id": e.item_id, "event_type": e.event_type, "value": e.value, "timestamp": e.timestamp}
            for e in self.store.history(check_id(user_id, "user_id"), limit)
        ]

    async def delete(self, user_id: str) -> bool:
        return self.store.delete_user(check_id(user_id, "user_id"))

    async def upsert_items(self, items: list[tuple[str, str, dict, object]], model: str | None = None) -> int:
        """(item_id, text, attributes, vector) items, written in one atomic store call; the last version.
        ``model``: the model that encoded the vectors (default: this stage's)."""
        from lmrec.serving.metrics import count_items

        version = self.store.upsert_items([(i, t, a, np.asarray(v, dtype=np.float32)) for i, t, a, v in items], model)
        count_items(len(items))
        return version

    async def remove_items(self, item_ids: list[str]) -> int:
        """Durable tombstones for the items, in one atomic store call: every retrieval replica drops them at
        its next sync. The last version."""
        from lmrec.serving.metrics import count_items

        version = self.store.remove_items(item_ids)
        count_items(len(item_ids), removed=True)
        return version

    async def stats(self) -> dict:
        return self.store.stats()


if serve is not None:
    # a stage as its own deployment (the default graph); defaults here, deployments/*.yaml override them
    UserState = serve.deployment(name="UserState", ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)(UserStateStage)
