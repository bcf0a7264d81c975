"""Redis store, for several nodes: every write is one Lua script (``lua/*.lua``, loaded as package resources),
so it is atomic and every replica sees it as soon as it returns. Crash durability is the server's: run it with
``appendonly yes`` and ``appendfsync always`` (``stats()["durable"]`` says whether it does). Needs one primary,
not Redis Cluster (the scripts name keys they build). See :mod:`lmrec.store.base` for what every store
guarantees.

Keys (prefix P): P"u:"uid hash {version}; P"ev:"uid zset (score ts, member "%020d seq|json event"); P"users"
zset of every user with events (score 0: by id); P"vec:"uid hash {version, vec, model}; P"item:"id hash
{version, text, attributes, vec, removed, model, and "v:"model per other model's vector of the same text};
P"items" zset (score version, member item id); impressions: P"imp" hash {recommendation id: JSON}, P"impt" zset
(score time), P"impu:"uid zset (a user's, so deleting the user deletes what they were shown); P"n" hash of counters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources

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

SCRIPTS = ("append", "delete", "put_user_vector", "upsert_items", "remove_items", "items_since", "put_item_vectors",
           "log_impressions", "prune_impressions")

class RedisStore(Store):
    """Redis store (see the module docstring). ``prefix`` namespaces the keys, so tests and deployments can
    share one server."""

    def __init__(self, url: str, prefix: str = "lmrec:", socket_timeout_s: float = 2.0, model: str = ""):
        import redis

        self.url, self.prefix, self.model = url, prefix, str(model)
        self._redis = redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # each command is sent once: a write that timed out may have run, and sent again it would run twice; a
        # server that stops answering costs a request ``socket_timeout_s``, then a 503 with Retry-After (the client
        # retries), well inside Serve's request timeout (redis-py's default retries would hold it for ~30 s)
        self._r = redis.Redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
                                       retry=Retry(NoBackoff(), 0))
        lua = resources.files("lmrec.store") / "lua"
        self._scripts = {name: self._r.register_script((lua / f"{name}.lua").read_text()) for name in SCRIPTS}
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
        by_user = group_events(events)
        if not by_user:
            return 0
        args: list = [len(by_user)]
        for user, evs in by_user.items():
            args += [user, len(evs)]
            for e in evs:
                fields = [e.item_id, e.event_type, e.value, e.timestamp]
                if e.recommendation_id is not None or e.position is not None:
                    fields += [e.recommendation_id, e.position]
                args += [repr(e.timestamp), json.dumps(fields)]
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
        if check_count(limit) == 0:
            return []
        members = self._call(self._r.zrange, f"{self.prefix}ev:{user_id}", 0, limit - 1, desc=True)
        out = []
        for m in reversed(members):
            out.append(Event(user_id, *json.loads(m[21:])))  # after "%020d|": item, kind, value, ts[, rec id, position]
        return out

    def version(self, user_id: str) -> int:
        check_id(user_id, "user_id")
        return int(self._call(self._r.hget, f"{self.prefix}u:{user_id}", "version") or 0)

    def read_users(self, user_ids: Sequence[str], limit: int) -> list[UserRecord]:
        for user_id in user_ids:
            check_id(user_id, "user_id")
        check_count(limit)
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
                out.append(NO_USER)
                continue
            rows = [json.loads(m[21:]) for m in reversed(members or [])]  # after "%020d|": [item, kind, value, ts]
            mine = blob is not None and int(cached_version or -1) == version and (model or b"").decode() == self.model
            vector = vec_from(blob) if mine else None
            out.append(UserRecord(version, tuple((r[0], r[1]) for r in rows), rows[-1][3] if rows else None, vector))
        return out

    def delete_user(self, user_id: str) -> bool:
        return int(self._run("delete", check_id(user_id, "user_id"))) > 0

    def list_users(self, prefix: str = "", limit: int = 50, after: str = "") -> list[tuple[str, int]]:
        check_count(limit)
        if not limit:
            return []
        start = f"({after}" if after >= prefix and after else f"[{prefix}"
        ids = self._call(self._r.zrangebylex, f"{self.prefix}users", start, f"[{prefix}\U0010ffff" if prefix else "+",
                         start=0, num=limit)
        if not ids:
            return []
        pipe = self._r.pipeline(transaction=False)
        for user in ids:
            pipe.zcard(f"{self.prefix}ev:{user.decode()}")
        return [(user.decode(), int(n)) for user, n in zip(ids, self._call(pipe.execute))]

    def put_user_vectors(self, vectors: Sequence[tuple[str, int, np.ndarray]]) -> list[bool]:
        rows = vector_rows(vectors)
        if not rows:
            return []
        pipe = self._r.pipeline(transaction=False)  # one round trip; each script checks its own version
        for user_id, version, blob in rows:
            self._scripts["put_user_vector"](keys=[], args=[self.prefix, user_id, str(version), blob, self.model], client=pipe)
        return [bool(r) for r in self._call(pipe.execute)]

    def upsert_items(self, items: Iterable[ItemWrite], model: str | None = None) -> int:
        rows = item_rows(items)
        if not rows:
            return self.item_version()
        model = self.model if model is None else str(model)
        last = 0
        for start in range(0, len(rows), 1000):  # one script per 1000 items keeps each call short
            args: list = [model, len(rows[start:start + 1000])]
            for item_id, text, attrs, vec, created in rows[start:start + 1000]:
                args += [item_id, text, attrs, vec_bytes(vec), repr(created)]
            last = int(self._run("upsert_items", *args))
        return last

    def items_page(self, after: int, limit: int) -> list[ItemRecord]:
        if limit == 0:
            return []
        flat = self._run("items_since", str(after), limit, self.model)
        out = []
        for k in range(0, len(flat), 7):
            version, item_id, text, attrs, vec, removed, created = flat[k:k + 7]
            out.append(ItemRecord(int(version), item_id.decode(), text.decode(), json.loads(attrs),
                                  None if vec is None else vec_from(vec), removed == b"1", float(created) if created else None))
        return out

    def put_item_vectors(self, vectors: Sequence[tuple[str, int, np.ndarray]]) -> list[bool]:
        rows = vector_rows(vectors, "item")
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

    def log_impressions(self, impressions: Sequence[Impression]) -> int:
        if not impressions:
            return 0
        args: list = []
        for i in impressions:
            args += [i.recommendation_id, repr(i.time), i.user_id or "", i.to_json()]
        return int(self._run("log_impressions", *args))

    def impressions(self, since: float = 0.0, page: int = 10_000) -> Iterator[Impression]:
        start = 0
        while True:
            ids = self._call(self._r.zrangebyscore, f"{self.prefix}impt", float(since), "+inf", start=start, num=page)
            if ids:
                yield from (Impression.from_json(j) for j in self._call(self._r.hmget, f"{self.prefix}imp", ids) if j is not None)
            if len(ids) < page:
                return
            start += page  # appends land at their time; a page boundary moved by a concurrent prune is re-read once

    def prune_impressions(self, before: float) -> int:
        gone = 0
        while True:  # a script a page at a time keeps each call short
            n = int(self._run("prune_impressions", repr(float(before)), 5000))
            gone += n
            if n < 5000:
                return gone

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
            "impressions": int(self._call(self._r.zcard, f"{self.prefix}impt")),
        }
