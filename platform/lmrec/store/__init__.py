"""Durable state shared by every serving replica: events, users' versions and cached vectors, posted and
removed items. ``open_store(url_or_path)`` opens SQLite (a path: one node) or Redis (a ``redis://`` URL: many
nodes); both keep the guarantees written down in :mod:`lmrec.store.base`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lmrec.errors import StoreError
from lmrec.store.base import ITEMS_PAGE, Event, ItemRecord, ItemWrite, Store, UserRecord

REDIS_SCHEMES = ("redis", "rediss", "unix")

__all__ = ["Event", "ItemRecord", "ItemWrite", "Store", "StoreConfig", "UserRecord", "ITEMS_PAGE", "open_store"]


def open_store(url_or_path: str | Path, model: str = "") -> Store:
    """A ``redis://``, ``rediss://`` or ``unix://`` URL opens a RedisStore, anything else is the path of a
    SQLite file (created when missing); the handle reads and writes ``model``'s vectors."""
    text = str(url_or_path)
    scheme = text.split("://", 1)[0] if "://" in text else None
    if scheme in REDIS_SCHEMES:
        from lmrec.store.redis import RedisStore

        return RedisStore(text, model=model)
    if scheme is not None:
        raise StoreError(f"unsupported store {text!r}: give a redis://host:port/db URL, or a file path for SQLite")
    from lmrec.store.sqlite import SQLiteStore

    path = Path(text).expanduser()
    if path.is_dir():
        raise StoreError(f"store {text!r} is a directory: give the path of a SQLite file (e.g. {path / 'state.sqlite'})")
    try:
        return SQLiteStore(path, model=model)
    except Exception as exc:  # not a database, unreadable, ...: one line naming the file
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"cannot open {text!r} as a SQLite store: {exc}") from None


@dataclass(frozen=True)
class StoreConfig:
    """Where a service keeps its state: Redis at ``url`` (or at the URL in the environment variable ``url_env``,
    a secret) when given, else SQLite at ``path``; ``model``: whose vectors the handle reads and writes."""

    path: str
    url: str | None = None
    url_env: str | None = None
    model: str = ""

    @classmethod
    def from_args(cls, args: dict) -> StoreConfig:
        """From the app's store fields (``store_path``, ``store_url``, ``store_url_env``; ``model``)."""
        return cls(args["store_path"], args.get("store_url"), args.get("store_url_env"), args.get("model", ""))

    def location(self) -> str:
        return (os.environ.get(self.url_env) if self.url_env else None) or self.url or self.path

    def open(self, model: str | None = None) -> Store:
        return open_store(self.location(), self.model if model is None else model)
