"""The store: ordering, versions, the vector cache, items, validation, and durability and visibility
across processes. Every test runs on SQLite and on a real Redis (skipped when no redis-server is installed)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from lmrec.errors import LmrecError, StoreError
from lmrec.store import open_store
from lmrec.store.base import NO_USER, Event, Impression, ItemWrite
from lmrec.store.redis import RedisStore
from lmrec.store.sqlite import SQLiteStore

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """A throwaway redis-server on a free port, AOF fsynced at every write (as a durable deployment runs it)."""

    def __init__(self, folder):
        self.folder = str(folder)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.folder, "--save", "",
             "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean shutdown."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed (apt-get install redis-server): Redis store tests skipped")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path):
    """(open, spec): ``open()`` opens one more handle on the same state; ``spec`` lets a child process open it."""
    if request.param == "sqlite":
        path = str(tmp_path / "state.db")
        spec = ("", path, "")
        opened = []

        def make(model=""):
            opened.append(SQLiteStore(path, model=model))
            return opened[-1]
    else:
        server = request.getfixturevalue("redis_server")
        prefix = f"t{uuid.uuid4().hex[:8]}:"  # each test its own key space on the shared server
        spec = (server.url, "", prefix)
        opened = []

        def make(model=""):
            opened.append(RedisStore(server.url, prefix=prefix, model=model))
            return opened[-1]
    yield make, spec
    for store in opened:
        store.close()


@pytest.fixture
def store(backend):
    return backend[0]()


def put_vector(store, user_id, version, vec) -> bool:
    return store.put_user_vectors([(user_id, version, vec)])[0]


def get_vector(store, user_id, version):
    """The cached vector, only while ``version`` is current (as ranking reads it)."""
    from lmrec.store.base import check_count

    record = store.read_users([user_id], 0)[0]
    return record.vector if record.version == check_count(version, "version") else None


def context(store, user_id, limit):
    return store.read_users([user_id], limit)[0]


def upsert_item(store, item_id, text, attributes, vector) -> int:
    return store.upsert_items([ItemWrite(item_id, text, attributes, vector)])



CHILD = """
import os, signal, sys
from lmrec.store.base import Event
from lmrec.store.redis import RedisStore
from lmrec.store.sqlite import SQLiteStore
url, path, prefix, mode, user = sys.argv[1:6]
store = RedisStore(url, prefix=prefix) if url else SQLiteStore(path)
if mode == "hold":  # append, report, stay alive with the connection open until told to go
    store.append_events([Event(user, "from-child", "click", timestamp=5.0)])
    print("appended", flush=True)
    sys.stdin.readline()
elif mode == "crash":  # append, then die without closing anything
    store.append_events([Event(user, f"crash-{i}", "view", timestamp=float(i)) for i in range(3)])
    os.kill(os.getpid(), signal.SIGKILL)
elif mode == "impress":  # log impressions, then die without closing anything
    from lmrec.store.base import Impression
    store.log_impressions([Impression(f"rec-{i}", 10.0 + i, "recommend", user, None, ("a", "b"), (0.5, 0.25), (0.9, 1.0),
                                      (0.9, 0.9), 0.9, (True, False), "epsilon", "{}", "m1") for i in range(3)])
    os.kill(os.getpid(), signal.SIGKILL)
elif mode == "claim":  # race the other children for one flag
    sys.stdin.readline()
    print(store.claim(user), flush=True)
elif mode == "writer":  # many small appends, racing another writer
    for i in range(int(sys.argv[6])):
        store.append_events([Event(user, f"{os.getpid()}-{i}", "view", timestamp=float(i))])
"""


def child(spec, mode, user, *extra, **kwargs):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", CHILD, *spec, mode, user, *map(str, extra)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kwargs)


# ------------------------------------------------------------------------------------------------ events
def test_history_is_most_recent_oldest_first(store):
    events = [Event("u1", "a", "view", timestamp=30.0), Event("u1", "b", "click", timestamp=10.0),
              Event("u1", "c", "rating", 4.5, timestamp=20.0), Event("u1", "d", "purchase", 19.99, timestamp=30.0),
              Event("u2", "x", "view", timestamp=15.0)]
    assert store.append_events(events) == 5
    assert [e.item_id for e in store.history("u1", 10)] == ["b", "c", "a", "d"]  # by time; a tie keeps arrival order
    assert [e.item_id for e in store.history("u1", 2)] == ["a", "d"]
    assert store.history("u1", 10)[1] == Event("u1", "c", "rating", 4.5, timestamp=20.0)
    assert store.history("u1", 0) == [] and store.history("nobody", 5) == []
    assert [e.item_id for e in store.history("u2", 5)] == ["x"]
    store.append_events([Event("u1", "e", "view", timestamp=5.0)])  # a late event sorts by its own time
    assert [e.item_id for e in store.history("u1", 10)] == ["e", "b", "c", "a", "d"]
    assert store.append_events([]) == 0
    s = store.stats()
    assert (s["users"], s["events"]) == (2, 6) and s["durable"] is True


def test_append_is_all_or_nothing(store):
    with pytest.raises(StoreError, match="Event objects"):
        store.append_events([Event("u1", "a", "view"), {"user_id": "u1", "item_id": "b", "event_type": "view"}])
    assert store.history("u1", 10) == [] and store.version("u1") == 0


# ----------------------------------------------------------------------------------- versions and vectors
def test_version_bumps_and_stale_vectors_are_never_served(store):
    assert store.version("u1") == 0
    store.append_events([Event("u1", "a", "view", timestamp=1.0), Event("u1", "b", "view", timestamp=2.0)])
    v1 = store.version("u1")
    assert v1 > 0
    vec = np.array([0.25, -1.5, 3.0], dtype=np.float32)
    assert put_vector(store, "u1", v1, vec)
    np.testing.assert_array_equal(get_vector(store, "u1", v1), vec)
    assert get_vector(store, "u1", v1).dtype == np.float32

    store.append_events([Event("u1", "c", "click")])
    v2 = store.version("u1")
    assert v2 > v1
    assert get_vector(store, "u1", v1) is None  # the old vector is not served for the old version either
    assert get_vector(store, "u1", v2) is None
    assert not put_vector(store, "u1", v1, vec)  # a slow replica's vector for an old version is refused
    assert put_vector(store, "u1", v2, vec * 2)
    np.testing.assert_array_equal(get_vector(store, "u1", v2), vec * 2)

    store.append_events([Event("u2", "a", "view")])  # another user's event leaves u1 alone
    assert store.version("u1") == v2


def test_vectors_of_a_batch_are_cached_in_one_write(store):
    """put_vectors stores each current vector and refuses, per entry, one whose version has moved on; an
    invalid entry rejects the whole batch before anything is written."""
    store.append_events([Event("a", "x", "view"), Event("b", "y", "view")])
    va, vb = store.version("a"), store.version("b")
    store.append_events([Event("b", "z", "click")])  # b's vector below is for an old version
    ones, twos = np.ones(3, dtype=np.float32), np.full(3, 2.0, dtype=np.float32)
    assert store.put_user_vectors([("a", va, ones), ("b", vb, twos)]) == [True, False]
    np.testing.assert_array_equal(get_vector(store, "a", va), ones)
    assert get_vector(store, "b", store.version("b")) is None
    assert store.put_user_vectors([]) == []
    with pytest.raises(StoreError, match="each user vector must be"):
        store.put_user_vectors([("a", va)])
    with pytest.raises(StoreError, match="user 'b' vector"):
        store.put_user_vectors([("a", va, twos), ("b", store.version("b"), np.array([np.inf, 0.0]))])
    np.testing.assert_array_equal(get_vector(store, "a", va), ones)  # nothing of the rejected batch was written
    # the cache writes leave the store's durable commits durable
    if hasattr(store, "_con"):
        assert store._con().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_context_is_one_consistent_read(store):
    """What a recommendation reads — version, recent events, cached vector — in one call, equal to the
    three separate reads."""
    assert context(store, "nobody", 10) == NO_USER
    store.append_events([Event("u1", "a", "view", timestamp=1.0), Event("u1", "b", "click", timestamp=3.0),
                         Event("u1", "c", "rating", 4.0, timestamp=2.0)])
    ctx = context(store, "u1", 2)
    assert ctx.version == store.version("u1") > 0
    assert ctx.history == (("c", "rating"), ("b", "click")) and ctx.last_timestamp == 3.0 and ctx.vector is None
    vec = np.array([1.0, 2.0], dtype=np.float32)
    put_vector(store, "u1", ctx.version, vec)
    np.testing.assert_array_equal(context(store, "u1", 5).vector, vec)
    store.append_events([Event("u1", "d", "view", timestamp=4.0)])
    after = context(store, "u1", 5)
    assert after.version > ctx.version and after.vector is None  # a vector of an older version is never served
    assert [i for i, _ in after.history] == ["a", "c", "b", "d"]
    store.delete_user("u1")
    assert context(store, "u1", 5) == NO_USER
    with pytest.raises(StoreError, match="user_id"):
        context(store, "", 5)


def test_contexts_of_a_batch_equal_each_users_own(store):
    """A batch of users is read in one go (one transaction / one Redis round trip), each as context() reads it:
    unknown users, cached vectors of the current version only, duplicates."""
    store.append_events([Event("a", "x", "view", timestamp=1.0), Event("a", "y", "click", timestamp=2.0), Event("b", "z", "view")])
    put_vector(store, "a", store.version("a"), np.array([1.0, -1.0], dtype=np.float32))
    put_vector(store, "b", store.version("b"), np.array([3.0, 3.0], dtype=np.float32))
    store.append_events([Event("b", "x", "purchase")])  # b's cached vector is now stale
    users = ["a", "nobody", "b", "a"]
    batch = store.read_users(users, 5)
    assert len(batch) == 4
    for user, got in zip(users, batch):
        want = context(store, user, 5)
        assert (got.version, got.history, got.last_timestamp) == (want.version, want.history, want.last_timestamp)
        assert (got.vector is None) == (want.vector is None)
    np.testing.assert_array_equal(batch[0].vector, [1.0, -1.0])
    assert batch[1] == NO_USER and batch[2].vector is None and batch[2].history[-1] == ("x", "purchase")
    assert store.read_users([], 5) == []
    with pytest.raises(StoreError, match="user_id"):
        store.read_users(["a", ""], 5)


def test_delete_user_removes_everything_and_versions_are_never_reused(store):
    store.append_events([Event("u1", "a", "view"), Event("u1", "b", "click"), Event("u2", "a", "view")])
    v1 = store.version("u1")
    put_vector(store, "u1", v1, np.ones(4))
    assert store.delete_user("u1") is True
    assert store.history("u1", 10) == [] and store.version("u1") == 0
    assert get_vector(store, "u1", v1) is None and get_vector(store, "u1", 0) is None
    assert (store.stats()["users"], store.stats()["events"]) == (1, 1)
    assert store.delete_user("u1") is False
    assert [e.item_id for e in store.history("u2", 10)] == ["a"]
    store.append_events([Event("u1", "z", "view")])
    assert store.version("u1") > v1  # a cache keyed (user, version) cannot confuse the new history with the old


def test_interactions_scan_every_users_events_and_forget_deleted_users(store):
    events = [Event(f"user {u}", f"item {i}", "view", timestamp=float(i)) for u in range(30) for i in range(u % 4 + 1)]
    store.append_events(events)
    want = sorted((e.user_id, e.item_id) for e in events)
    assert sorted(store.interactions()) == want
    assert sorted(store.interactions(page=7)) == want  # several pages (SQLite) / scan rounds (Redis)
    store.delete_user("user 3")
    assert sorted(store.interactions()) == [p for p in want if p[0] != "user 3"]


def test_events_scan_returns_every_event_whole(store):
    events = [Event(f"u{u}", f"i{i}", "rating" if i == 2 else "view", 4.0 if i == 2 else None, timestamp=100.0 + i)
              for u in range(12) for i in range(u % 3 + 1)]
    store.append_events(events)
    key = lambda e: (e.user_id, e.timestamp)  # noqa: E731
    assert sorted(store.events(), key=key) == sorted(events, key=key)
    assert sorted(store.events(page=5), key=key) == sorted(events, key=key)
    store.delete_user("u2")
    assert {e.user_id for e in store.events()} == {f"u{u}" for u in range(12)} - {"u2"}


# -------------------------------------------------------------------------------------------------- items
def test_item_upserts_and_items_since(store):
    assert store.item_version() == 0 and store.items_since(0) == []
    va = upsert_item(store, "a", "Trail shoe", {"category": "Running", "price": 89.5}, np.array([1, 0, 0]))
    vb = upsert_item(store, "b", "Road shoe", {"category": "Running"}, np.array([0, 1, 0]))
    assert 0 < va < vb
    va2 = upsert_item(store, "a", "Trail shoe v2", {"category": "Trail"}, np.array([0, 0, 1]))
    assert va2 > vb and store.item_version() == va2
    records = store.items_since(0)
    assert [(r.version, r.item_id) for r in records] == [(vb, "b"), (va2, "a")]  # each item once, latest state
    assert (records[1].text, records[1].attributes) == ("Trail shoe v2", {"category": "Trail"})
    np.testing.assert_array_equal(records[1].vector, np.array([0, 0, 1], dtype=np.float32))
    assert [r.item_id for r in store.items_since(vb)] == ["a"] and store.items_since(va2) == []
    assert [r.item_id for r in store.items_since(0, limit=1)] == ["b"]  # paging by the last version seen
    last = store.upsert_items([ItemWrite(f"n{i}", "", {}, np.full(3, i)) for i in range(5)])
    assert last == va2 + 5 and store.stats()["items"] == 7
    assert [r.item_id for r in store.items_since(va2)] == [f"n{i}" for i in range(5)]


def test_removing_items_writes_tombstones_that_a_new_upsert_lifts(store):
    va = upsert_item(store, "a", "Trail shoe", {"category": "Running"}, np.array([1, 0, 0]))
    upsert_item(store, "b", "Road shoe", {}, np.array([0, 1, 0]))
    assert store.stats()["items"] == 2
    # a posted item and one the store never saw (a model's catalog item): both get a tombstone, in order
    last = store.remove_items(["a", "catalog-7", "a"])
    assert last == va + 3 and store.item_version() == last and store.stats()["items"] == 1
    records = store.items_since(va + 1)
    assert [(r.item_id, r.removed) for r in records] == [("a", True), ("catalog-7", True)]
    kept = records[0]  # the tombstone keeps what was posted (a user tower still reads the item in histories)
    assert (kept.text, kept.attributes) == ("Trail shoe", {"category": "Running"})
    np.testing.assert_array_equal(kept.vector, np.array([1, 0, 0], dtype=np.float32))
    assert records[1].vector.shape == (0,) and records[1].text == ""
    assert store.remove_items(["a"]) == last + 1 and store.stats()["items"] == 1  # again: nothing more to count
    back = upsert_item(store, "a", "Trail shoe v2", {}, np.array([0, 0, 1]))
    (record,) = store.items_since(back - 1)
    assert (record.item_id, record.removed, record.text) == ("a", False, "Trail shoe v2")
    assert store.stats()["items"] == 2
    with pytest.raises(StoreError, match="item_id must be 1 to 256 characters"):
        store.remove_items(["ok", ""])
    assert store.item_version() == back  # nothing of the rejected call was written


def test_cached_user_vectors_belong_to_the_model_that_computed_them(backend):
    old, new = backend[0]("model-a"), backend[0]("model-b")
    old.append_events([Event("u", "a", "view", timestamp=1.0)])
    v = old.version("u")
    assert put_vector(old, "u", v, np.ones(3)) is True
    assert get_vector(old, "u", v) is not None and context(old, "u", 10).vector is not None
    # the new model's handle never reads the old model's vector of the same history
    assert get_vector(new, "u", v) is None and new.read_users(["u"], 10)[0].vector is None
    assert put_vector(new, "u", v, np.full(3, 2.0)) is True
    np.testing.assert_array_equal(context(new, "u", 10).vector, np.full(3, 2.0, dtype=np.float32))
    assert get_vector(old, "u", v) is None  # one cached vector a user: the last model's


def test_an_item_another_model_encoded_waits_for_this_models_vector(backend):
    old, new = backend[0]("model-a"), backend[0]("model-b")
    posted = upsert_item(old, "a", "Trail shoe", {"category": "Running"}, np.array([1, 0, 0]))
    (record,) = new.items_since(0)  # text and attributes, but no vector of model-b yet
    assert (record.item_id, record.text, record.attributes, record.vector) == ("a", "Trail shoe", {"category": "Running"}, None)
    assert new.put_item_vectors([("a", posted - 1, np.zeros(3))]) == [False]  # not the version it read: refused
    assert new.put_item_vectors([("a", posted, np.array([0, 1, 0]))]) == [True]
    assert new.put_item_vectors([("a", posted, np.array([0, 0, 1]))]) == [False]  # has one already
    (record,) = new.items_since(posted)  # the item's version moved on: every replica syncs it again
    assert record.version > posted and new.item_version() == record.version and new.stats()["items"] == 1
    np.testing.assert_array_equal(record.vector, np.array([0, 1, 0], dtype=np.float32))
    (record,) = old.items_since(0)  # the old model still reads its own
    np.testing.assert_array_equal(record.vector, np.array([1, 0, 0], dtype=np.float32))
    assert old.put_item_vectors([("a", record.version, np.zeros(3))]) == [False]  # its own vector is there
    # new text (posted through either model) makes every other model's vector stale
    upsert_item(old, "a", "Trail shoe v2", {}, np.array([1, 1, 0]))
    assert new.items_since(0)[0].vector is None
    upsert_item(new, "a", "Trail shoe v3", {}, np.array([0, 1, 1]))
    assert old.items_since(0)[0].vector is None and new.items_since(0)[0].vector is not None
    removed = new.remove_items(["a"])  # a tombstone keeps the posted text and vector (histories still read them)
    (record,) = old.items_since(removed - 1)
    assert record.removed and record.text == "Trail shoe v3" and record.vector is None
    with pytest.raises(StoreError, match="each item vector must be"):
        new.put_item_vectors([("a", 1)])


def test_an_item_keeps_the_latest_models_re_encodings_only(backend):
    from lmrec.store.base import MODEL_VECTORS

    poster = backend[0]("a")
    upsert_item(poster, "x", "Trail shoe", {}, np.array([1.0, 0]))
    handles = [backend[0](m) for m in ("b", "c", "d")]  # one artifact after the other re-encodes the item
    for j, h in enumerate(handles):
        (record,) = h.items_since(0)
        assert record.vector is None and h.put_item_vectors([("x", record.version, np.full(2, float(j)))]) == [True]
    assert MODEL_VECTORS == 2
    assert handles[0].items_since(0)[0].vector is None  # the oldest re-encoding was evicted
    for j, h in enumerate(handles[1:], start=1):
        np.testing.assert_array_equal(h.items_since(0)[0].vector, np.full(2, float(j), dtype=np.float32))
    np.testing.assert_array_equal(poster.items_since(0)[0].vector, np.array([1.0, 0], dtype=np.float32))


def test_collect_writes_the_store_as_a_dataset(store, tmp_path):
    import pandas as pd

    from lmrec.collect import collect

    store.append_events([Event("u1", "a", "purchase", 9.5, timestamp=10.0), Event("u1", "b", "view", timestamp=11.0),
                         Event("u2", "x", "view", timestamp=12.0)])
    upsert_item(store, "a", "Trail shoe", {"category": "Running"}, np.ones(3))
    upsert_item(store, "b", "Road shoe", {}, np.ones(3))
    store.remove_items(["b"])
    done = collect(store, tmp_path)
    assert done["events"] == 3 and done["users"] == 2 and done["removed"] == 1 and done["items_without_text"] == 1
    events = pd.read_parquet(tmp_path / "events.parquet").sort_values("timestamp")
    assert events[["user_id", "item_id", "event"]].values.tolist() == [["u1", "a", "purchase"], ["u1", "b", "view"], ["u2", "x", "view"]]
    assert events["value"].iloc[0] == 9.5 and np.isnan(events["value"].iloc[1])
    items = pd.read_parquet(tmp_path / "items.parquet").set_index("item_id")
    assert items.loc["a", "text"] == "Trail shoe" and json.loads(items.loc["a", "attributes"]) == {"category": "Running"}
    assert items.loc["b", "text"] == "Road shoe" and items.loc["b", "removed"] and items.loc["x", "text"] == ""


def test_a_store_file_from_before_item_removal_is_upgraded(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE items (item_id TEXT PRIMARY KEY, version INTEGER NOT NULL UNIQUE, text TEXT NOT NULL,"
                " attributes TEXT NOT NULL, vec BLOB NOT NULL)")
    con.execute("INSERT INTO items VALUES ('a', 1, 'Trail shoe', '{}', ?)", (np.ones(2, dtype="<f4").tobytes(),))
    con.commit()
    con.close()
    with SQLiteStore(path) as store:
        assert [(r.item_id, r.removed) for r in store.items_since(0)] == [("a", False)]
        store.remove_items(["a"])
        assert [(r.item_id, r.removed) for r in store.items_since(0)] == [("a", True)]
    with SQLiteStore(path, model="onnx-int8:run@epoch3:abc") as store:  # a model's vector is never another's
        assert store.items_since(0)[0].vector is None


def test_a_store_file_from_before_model_scoped_vectors_is_upgraded(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    with SQLiteStore(path):
        pass
    con = sqlite3.connect(path)  # the tables as an older version wrote them
    con.execute("DROP TABLE user_vectors")
    con.execute("CREATE TABLE user_vectors (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL, vec BLOB NOT NULL) WITHOUT ROWID")
    con.execute("ALTER TABLE items DROP COLUMN model")
    con.execute("ALTER TABLE items DROP COLUMN created")
    con.execute("INSERT INTO items VALUES ('a', 1, 'Trail shoe', '{}', ?, 0)", (np.ones(2, dtype="<f4").tobytes(),))
    con.execute("UPDATE counters SET value = 1 WHERE name = 'item_version'")
    con.commit()
    con.close()
    with SQLiteStore(path, model="m") as store:
        store.append_events([Event("u", "a", "view")])
        assert put_vector(store, "u", store.version("u"), np.ones(2)) and context(store, "u", 5).vector is not None
        (record,) = store.items_since(0)
        assert record.vector is None and store.put_item_vectors([("a", 1, np.zeros(2))]) == [True]
        np.testing.assert_array_equal(store.items_since(0)[0].vector, np.zeros(2, dtype=np.float32))


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Event("", "a", "view"), "user_id must be 1 to 256 characters"),
        (lambda: Event("u" * 257, "a", "view"), "1 to 256 characters"),
        (lambda: Event(7, "a", "view"), "user_id must be a string"),
        (lambda: Event("u", "a", "like"), "event_type must be one of view, click, purchase, rating"),
        (lambda: Event("u", "a", "rating"), "a rating event needs a value"),
        (lambda: Event("u", "a", "rating", float("nan")), "finite number"),
        (lambda: Event("u", "a", "view", timestamp=float("inf")), "timestamp must be finite"),
    ],
)
def test_invalid_events_are_rejected(make, message):
    with pytest.raises(StoreError, match=message) as exc:
        make()
    assert isinstance(exc.value, LmrecError)


def test_invalid_store_input_is_rejected(store):
    with pytest.raises(StoreError, match="NaN or infinite"):
        put_vector(store, "u", 0, np.array([1.0, np.nan]))
    with pytest.raises(StoreError, match="must be 1-D"):
        put_vector(store, "u", 0, np.ones((2, 2)))
    with pytest.raises(StoreError, match="version must be a non-negative integer"):
        get_vector(store, "u", -1)
    with pytest.raises(StoreError, match=r"attributes\['tags'\] must be a str, int, float, bool or None"):
        upsert_item(store, "a", "text", {"tags": ["x", "y"]}, np.ones(3))
    with pytest.raises(StoreError, match="item_id must be 1 to 256 characters, not blank"):
        ItemWrite("", "", {}, np.ones(3))
    with pytest.raises(StoreError, match="upsert_items takes ItemWrite records"):
        store.upsert_items([ItemWrite("ok", "", {}, np.ones(3)), ("", "", {}, np.ones(3))])
    assert store.item_version() == 0  # the valid first item of the rejected batch was not written
    with pytest.raises(StoreError, match="limit must be a non-negative integer"):
        store.history("u", -1)


def test_open_store_picks_the_backend(tmp_path):
    with open_store(tmp_path / "a.db") as s:
        assert isinstance(s, SQLiteStore) and s.stats()["backend"] == "sqlite"
    with pytest.raises(StoreError, match="unsupported store 'redsi://x'"):
        open_store("redsi://x")
    with pytest.raises(StoreError, match="is a directory"):
        open_store(tmp_path)
    (tmp_path / "not-a-db").write_text("hello, this is not SQLite" * 100)
    with pytest.raises(StoreError, match="cannot open .*not-a-db.* as a SQLite store"):
        open_store(tmp_path / "not-a-db")


def test_open_store_redis(redis_server, tmp_path):
    with open_store(redis_server.url) as s:
        assert isinstance(s, RedisStore) and s.stats()["backend"] == "redis"


def test_unreachable_redis_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    with pytest.raises(StoreError, match=f"cannot reach Redis at redis://127.0.0.1:{port}"):
        RedisStore(f"redis://127.0.0.1:{port}", socket_timeout_s=0.5)


# ------------------------------------------------------------------------------ durability and processes
def test_events_survive_close_and_reopen(backend):
    make, _ = backend
    first = make()
    first.append_events([Event("u1", "a", "view", timestamp=1.0), Event("u1", "b", "rating", 3.0, timestamp=2.0)])
    upsert_item(first, "i", "t", {"k": "v"}, np.ones(2))
    first.remove_items(["gone"])
    version = first.version("u1")
    first.close()
    again = make()
    assert [(e.item_id, e.value) for e in again.history("u1", 10)] == [("a", None), ("b", 3.0)]
    assert again.version("u1") == version and again.item_version() == 2
    assert [(r.item_id, r.removed) for r in again.items_since(0)] == [("i", False), ("gone", True)]


def test_append_survives_a_killed_writer(backend):
    make, spec = backend
    proc = child(spec, "crash", "u1")
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert [e.item_id for e in make().history("u1", 10)] == ["crash-0", "crash-1", "crash-2"]


def test_logged_impressions_survive_a_killed_writer(backend):
    make, spec = backend
    proc = child(spec, "impress", "u1")
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    got = list(make().impressions())
    assert [i.recommendation_id for i in got] == ["rec-0", "rec-1", "rec-2"] and got[0].propensities == (0.9, 1.0)


def test_redis_append_survives_a_server_crash(tmp_path):
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path).start()
    try:
        store = RedisStore(server.url)
        store.append_events([Event("u1", "a", "view", timestamp=1.0)])
        store.close()
        server.kill()
        server.start()
        store = RedisStore(server.url)
        assert [e.item_id for e in store.history("u1", 5)] == ["a"] and store.version("u1") > 0
        store.close()
    finally:
        server.stop()


def test_another_process_sees_an_append_at_once(backend):
    make, spec = backend
    reader = make()
    assert reader.history("u1", 5) == [] and reader.version("u1") == 0  # the reader's connection is already open
    proc = child(spec, "hold", "u1")
    try:
        assert proc.stdout.readline().strip() == "appended"  # the writer is alive, its connection still open
        assert [e.item_id for e in reader.history("u1", 5)] == ["from-child"]
        assert reader.version("u1") > 0
    finally:
        proc.communicate("go\n", timeout=30)
    assert proc.returncode == 0


def test_concurrent_writers_lose_nothing(backend):
    make, spec = backend
    n = 15
    procs = [child(spec, "writer", "shared", n) for _ in range(2)]
    for p in procs:
        p.communicate(timeout=60)
        assert p.returncode == 0
    store = make()
    history = store.history("shared", 100)
    assert len(history) == 2 * n and len({e.item_id for e in history}) == 2 * n
    assert store.stats()["events"] == 2 * n and store.version("shared") >= 2 * n


def test_a_claim_is_won_by_exactly_one_process(backend):
    make, spec = backend
    procs = [child(spec, "claim", "seeded") for _ in range(4)]
    for p in procs:  # all started (connections open) before any of them claims
        p.stdin.write("go\n")
        p.stdin.flush()
    won = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(won) == ["False", "False", "False", "True"], won
    store = make()
    assert store.claim("seeded") is False and store.claim("another") is True and store.claim("another") is False


def test_users_are_listed_by_prefix_a_page_at_a_time(store):
    store.append_events([Event(u, "i", "view", timestamp=1.0) for u in ("u02", "u01", "v1", "u10", "u01")])
    assert store.list_users("u", 10) == [("u01", 2), ("u02", 1), ("u10", 1)]
    assert store.list_users("u", 2) == [("u01", 2), ("u02", 1)]
    assert store.list_users("u", 2, after="u02") == [("u10", 1)]  # the next page
    assert store.list_users("", 10) == [("u01", 2), ("u02", 1), ("u10", 1), ("v1", 1)]
    assert store.list_users("w", 10) == [] and store.list_users("u", 0) == []
    store.delete_user("u02")
    assert [u for u, _ in store.list_users("u", 10)] == ["u01", "u10"]


def test_ids_with_control_characters_are_refused(store):
    for bad in ("a\tb", "a\nb", "\x00", "\x7f", "   "):
        with pytest.raises(StoreError, match="without control characters"):
            Event(bad, "i", "view")
    assert Event("ünï cödé 42 ✓", "i", "view").user_id == "ünï cödé 42 ✓"


def _impression(rec_id: str, t: float, user: str | None = "u1", **changes) -> Impression:
    base = dict(recommendation_id=rec_id, time=t, surface="recommend", user_id=user, context_item_id=None,
                item_ids=("a", "b", "c"), scores=(3.0, 2.0, 1.0), propensities=(0.9, 0.05, 1.0),
                prefix_propensities=(0.9, 0.045, 0.045), slate_probability=0.045, explored=(False, True, False),
                policy="epsilon", policy_params='{"epsilon":0.1}', model_version="m1", variant="B")
    return Impression(**{**base, **changes})


def test_impressions_are_logged_whole_scanned_by_time_and_pruned(store):
    assert store.log_impressions([_impression("r2", 20.0), _impression("r1", 10.0, user=None, surface="related",
                                                                        context_item_id="x", prefix_propensities=None,
                                                                        slate_probability=None)]) == 2
    got = list(store.impressions())
    assert [i.recommendation_id for i in got] == ["r1", "r2"]  # by time
    assert got[1] == _impression("r2", 20.0) and got[0].context_item_id == "x" and got[0].slate_probability is None
    assert [i.recommendation_id for i in store.impressions(since=15.0)] == ["r2"]
    assert store.stats()["impressions"] == 2
    if hasattr(store, "_con"):  # the log is committed without its own fsync; the store's durable commits stay durable
        assert store._con().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.prune_impressions(before=15.0) == 1
    assert [i.recommendation_id for i in store.impressions()] == ["r2"] and store.stats()["impressions"] == 1
    with pytest.raises(StoreError, match="propensities must lie in"):
        _impression("bad", 1.0, propensities=(0.9, 0.0, 1.0))
    with pytest.raises(StoreError, match="one entry per slot"):
        _impression("bad", 1.0, explored=(True,))


def test_events_carry_their_attribution(store):
    store.append_events([Event("u1", "b", "click", timestamp=1.0, recommendation_id="r2", position=1),
                         Event("u1", "z", "view", timestamp=2.0)])
    assert [(e.recommendation_id, e.position) for e in store.history("u1", 10)] == [("r2", 1), (None, None)]
    assert [(e.recommendation_id, e.position) for e in store.events()] == [("r2", 1), (None, None)]
    with pytest.raises(StoreError, match="position must be a non-negative integer"):
        Event("u1", "b", "click", position=-1)


def test_items_know_when_they_were_first_posted(store):
    import time as _time

    before = _time.time()
    upsert_item(store, "a", "Trail shoe", {}, np.ones(3))
    first = store.items_since(0)[-1].created
    assert before <= first <= _time.time()
    upsert_item(store, "a", "Trail shoe v2", {}, np.ones(3))  # a new text: the same item, as old as it was
    assert store.items_since(0)[-1].created == first


def test_deleting_a_user_deletes_what_they_were_shown(store):
    store.append_events([Event("u1", "a", "view", timestamp=1.0), Event("u2", "a", "view", timestamp=1.0)])
    store.log_impressions([_impression("r1", 10.0, user="u1"), _impression("r2", 11.0, user="u2"),
                           _impression("r3", 12.0, user=None, surface="related", context_item_id="a")])
    assert store.delete_user("u1")
    assert [i.recommendation_id for i in store.impressions()] == ["r2", "r3"] and store.stats()["impressions"] == 2
    assert store.prune_impressions(before=11.5) == 1  # r2, and u2's index of it
    assert store.delete_user("u2") and [i.recommendation_id for i in store.impressions()] == ["r3"]


def test_an_item_can_say_when_it_first_existed(store):
    upsert_item(store, "a", "Trail shoe", {}, np.ones(3))
    store.upsert_items([ItemWrite("b", "Road shoe", {}, np.ones(3), created=123.0)])
    assert store.items_since(0)[-1].created == 123.0
