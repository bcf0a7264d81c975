"""SQLite store (the default): one file per node, on a local disk (WAL needs memory shared between the
processes: not NFS). WAL journal with ``synchronous=FULL``, so an append that returned survives a process or
OS crash (the user-vector cache, recomputable, and the impression log are written without an fsync of their
own: they survive a process crash; the next durable commit syncs them along). Several processes (Serve replicas) may share the file: each process and thread opens its own
connection, writers take the lock up front (``BEGIN IMMEDIATE``) and retry on SQLITE_BUSY for up to
``busy_timeout_s``. See :mod:`lmrec.store.base` for what every store guarantees.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from lmrec.errors import StoreUnavailableError
from lmrec.store.base import (
    MODEL_VECTORS,
    NO_USER,
    Event,
    Impression,
    ItemRecord,
    ItemWrite,
    Store,
    UserRecord,
    check_count,
    check_id,
    group_events,
    item_rows,
    vec_bytes,
    vec_from,
    vector_rows,
)

_SCHEMA = (
    # seq: arrival order, never reused (AUTOINCREMENT), the tie-break between events with one timestamp
    "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL,"
    " item_id TEXT NOT NULL, event_type TEXT NOT NULL, value REAL, ts REAL NOT NULL, rec_id TEXT, position INTEGER)",
    "CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, ts)",  # + the rowid: (user, ts, seq) order
    "CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID",
    # one cached vector per user: of the model that computed it last (two models serving at once recompute)
    "CREATE TABLE IF NOT EXISTS user_vectors (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL, vec BLOB NOT NULL,"
    " model TEXT NOT NULL DEFAULT '') WITHOUT ROWID",
    # vec: encoded by ``model`` (the poster's); item_vectors: other models' vectors of the same text
    "CREATE TABLE IF NOT EXISTS items (item_id TEXT PRIMARY KEY, version INTEGER NOT NULL UNIQUE, text TEXT NOT NULL,"
    " attributes TEXT NOT NULL, vec BLOB NOT NULL, removed INTEGER NOT NULL DEFAULT 0, model TEXT NOT NULL DEFAULT '',"
    " created REAL)",
    # written: the item version the write gave it; an item keeps the MODEL_VECTORS latest
    "CREATE TABLE IF NOT EXISTS item_vectors (item_id TEXT NOT NULL, model TEXT NOT NULL, vec BLOB NOT NULL,"
    " written INTEGER NOT NULL, PRIMARY KEY (item_id, model)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    # the answers as shown (lmrec.store.base.Impression as JSON), by recommendation id; pruned by time
    "CREATE TABLE IF NOT EXISTS impressions (rec_id TEXT PRIMARY KEY, ts REAL NOT NULL, user_id TEXT, body TEXT NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS impressions_by_time ON impressions (ts)",
    "CREATE INDEX IF NOT EXISTS impressions_by_user ON impressions (user_id)",  # a deleted user's go with them
    "INSERT OR IGNORE INTO counters VALUES ('user_version', 0), ('item_version', 0), ('events', 0), ('users', 0), ('items', 0),"
    " ('impressions', 0)",
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
        if "created" not in columns:
            con.execute("ALTER TABLE items ADD COLUMN created REAL")
        events = {row[1] for row in con.execute("PRAGMA table_info(events)")}
        if "rec_id" not in events:
            con.execute("ALTER TABLE events ADD COLUMN rec_id TEXT")
            con.execute("ALTER TABLE events ADD COLUMN position INTEGER")
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

    def _write_unsynced(self, fn):
        """:meth:`_write` committed to the WAL without an fsync of its own (synchronous NORMAL): the file stays
        consistent and a crash of any process loses nothing committed (the WAL is the OS's once written); a
        power cut may lose what was committed since the last durable commit, whose fsync syncs these pages too."""
        con = self._con()
        con.execute("PRAGMA synchronous = NORMAL")
        try:
            return self._write(fn)
        finally:
            con.execute("PRAGMA synchronous = FULL")

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
        by_user = group_events(events)
        if not by_user:
            return 0

        def write(con: sqlite3.Connection) -> int:
            users = list(by_user)
            known = 0
            for start in range(0, len(users), 500):  # stay under SQLite's bound-parameter limit
                chunk = users[start:start + 500]
                known += con.execute(f"SELECT count(*) FROM users WHERE user_id IN ({','.join('?' * len(chunk))})", chunk).fetchone()[0]
            con.executemany(
                "INSERT INTO events (user_id, item_id, event_type, value, ts, rec_id, position) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(e.user_id, e.item_id, e.event_type, e.value, e.timestamp, e.recommendation_id, e.position)
                 for user in users for e in by_user[user]],
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
        return (Event(*row) for row in self._scan_events("user_id, item_id, event_type, value, ts, rec_id, position", page))

    def history(self, user_id: str, limit: int = 50) -> list[Event]:
        check_id(user_id, "user_id")
        rows = self._read(
            "SELECT item_id, event_type, value, ts, rec_id, position FROM events WHERE user_id = ? ORDER BY ts DESC, seq DESC LIMIT ?",
            (user_id, check_count(limit)),
        )
        return [Event(user_id, *row) for row in reversed(rows)]

    def version(self, user_id: str) -> int:
        check_id(user_id, "user_id")
        rows = self._read("SELECT version FROM users WHERE user_id = ?", (user_id,))
        return rows[0][0] if rows else 0

    def read_users(self, user_ids: Sequence[str], limit: int) -> list[UserRecord]:
        for user_id in user_ids:
            check_id(user_id, "user_id")
        check_count(limit)

        def read() -> list[UserRecord]:
            con = self._con()
            con.execute("BEGIN")  # one snapshot for the versions, the events and the vectors
            try:
                out = []
                for user_id in user_ids:
                    row = con.execute(
                        "SELECT u.version, v.vec FROM users u LEFT JOIN user_vectors v ON v.user_id = u.user_id AND v.version = u.version "
                        "AND v.model = ? WHERE u.user_id = ?", (self.model, user_id)).fetchone()  # fmt: skip
                    if row is None:
                        out.append(NO_USER)
                        continue
                    rows = con.execute("SELECT item_id, event_type, ts FROM events WHERE user_id = ? ORDER BY ts DESC, seq DESC LIMIT ?",
                                       (user_id, limit)).fetchall()  # fmt: skip
                    history = tuple((item, kind) for item, kind, _ in reversed(rows))
                    out.append(UserRecord(row[0], history, rows[0][2] if rows else None, None if row[1] is None else vec_from(row[1])))
                return out
            finally:
                if con.in_transaction:
                    con.execute("COMMIT")

        return self._retry(read)

    def list_users(self, prefix: str = "", limit: int = 50, after: str = "") -> list[tuple[str, int]]:
        check_count(limit)
        rows = self._read(
            "SELECT u.user_id, (SELECT count(*) FROM events e WHERE e.user_id = u.user_id) FROM users u "
            "WHERE u.user_id > ? AND u.user_id >= ? AND u.user_id < ? ORDER BY u.user_id LIMIT ?",
            (after, prefix, prefix + "\U0010ffff", limit))  # fmt: skip
        return [(user, n) for user, n in rows]

    def delete_user(self, user_id: str) -> bool:
        check_id(user_id, "user_id")

        def write(con: sqlite3.Connection) -> bool:
            events = con.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            user = con.execute("DELETE FROM users WHERE user_id = ?", (user_id,)).rowcount
            vec = con.execute("DELETE FROM user_vectors WHERE user_id = ?", (user_id,)).rowcount
            shown = con.execute("DELETE FROM impressions WHERE user_id = ?", (user_id,)).rowcount  # what they were shown
            self._bump(con, "events", -events)
            self._bump(con, "users", -user)
            self._bump(con, "impressions", -shown)
            return bool(events or user or vec or shown)

        return self._write(write)

    # user vectors -----------------------------------------------------------------------------------
    def put_user_vectors(self, vectors: Sequence[tuple[str, int, np.ndarray]]) -> list[bool]:
        rows = vector_rows(vectors)

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
        # a cache: a vector lost to a power cut is recomputed
        return self._write_unsynced(write)

    # items ------------------------------------------------------------------------------------------
    @staticmethod
    def _live_item(con: sqlite3.Connection, item_id: str) -> bool:
        """Whether the store holds the item posted and not removed (a model's catalog item: False)."""
        row = con.execute("SELECT removed = 0 FROM items WHERE item_id = ?", (item_id,)).fetchone()
        return bool(row and row[0])

    def upsert_items(self, items: Iterable[ItemWrite], model: str | None = None) -> int:
        rows = item_rows(items)
        if not rows:
            return self.item_version()
        model = self.model if model is None else str(model)

        def write(con: sqlite3.Connection) -> int:
            last = self._bump(con, "item_version", len(rows))
            first = last - len(rows) + 1
            new = 0
            for i, (item_id, text, attrs, vec, created) in enumerate(rows):
                new += not self._live_item(con, item_id)
                con.execute(
                    "INSERT INTO items (item_id, version, text, attributes, vec, removed, model, created) VALUES (?, ?, ?, ?, ?, 0, ?, ?) "
                    "ON CONFLICT (item_id) DO UPDATE SET version = excluded.version, text = excluded.text, "
                    "attributes = excluded.attributes, vec = excluded.vec, removed = 0, model = excluded.model, "
                    "created = coalesce(items.created, excluded.created)",  # an item is as old as its first post
                    (item_id, first + i, text, attrs, vec_bytes(vec), model, created),
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
        rows = vector_rows(vectors, "item")
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

    def items_page(self, after: int, limit: int) -> list[ItemRecord]:
        rows = self._read(
            "SELECT i.version, i.item_id, i.text, i.attributes, CASE WHEN i.model = ? THEN i.vec ELSE v.vec END, i.removed, "
            "i.created FROM items i LEFT JOIN item_vectors v ON v.item_id = i.item_id AND v.model = ? "
            "WHERE i.version > ? ORDER BY i.version LIMIT ?",
            (self.model, self.model, after, limit),
        )
        return [ItemRecord(v, i, t, json.loads(a), None if b is None else vec_from(b), bool(r), c) for v, i, t, a, b, r, c in rows]

    # impressions ------------------------------------------------------------------------------------
    def log_impressions(self, impressions: Sequence[Impression]) -> int:
        rows = [(i.recommendation_id, i.time, i.user_id, i.to_json()) for i in impressions]
        if not rows:
            return 0
        def write(con: sqlite3.Connection) -> int:
            new = sum(con.execute("INSERT OR IGNORE INTO impressions (rec_id, ts, user_id, body) VALUES (?, ?, ?, ?)", row).rowcount
                      for row in rows)
            self._bump(con, "impressions", new)
            return new

        # a kill -9 of any process loses none; a power cut may lose the last ones. On every answer, an fsync
        # was most of the ranking path's time.
        return self._write_unsynced(write)

    def impressions(self, since: float = 0.0, page: int = 10_000) -> Iterator[Impression]:
        after = (float(since), "")
        while True:
            rows = self._read("SELECT ts, rec_id, body FROM impressions WHERE (ts, rec_id) > (?, ?) ORDER BY ts, rec_id LIMIT ?",
                              (*after, page))
            yield from (Impression.from_json(body) for _, _, body in rows)
            if len(rows) < page:
                return
            after = rows[-1][:2]

    def prune_impressions(self, before: float) -> int:
        def write(con: sqlite3.Connection) -> int:
            gone = con.execute("DELETE FROM impressions WHERE ts < ?", (float(before),)).rowcount
            self._bump(con, "impressions", -gone)
            return gone

        return self._write(write)

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
            "impressions": counters.get("impressions", 0),
            "bytes": self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0),
        }
