"""Users' state for ranking (:class:`UserStates`): histories from the durable store and user vectors, cached
in the store under the history version they were computed from, recomputed through the user tower when stale.

Every replica reads the same store, so an acknowledged event is seen by the next request whichever replica
serves it. Once events are acknowledged, the users' new vectors are computed in the background; a
recommendation arriving meanwhile waits for that computation instead of starting its own, so the one after
an event pays less than a full trip to the tower.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from lmrec.errors import LmrecError, StoreError
from lmrec.ranking.records import ItemVectors, UserContext, UserVectors
from lmrec.ranking.telemetry import NO_TELEMETRY, Telemetry
from lmrec.store.base import Event, ItemWrite, Store, UserRecord, check_id

log = logging.getLogger(__name__)

REFRESH_MAX_USERS = 64  # events naming more users at once (bulk loads) leave their vectors to their next request


class UserTower(Protocol):
    """Where user vectors come from: an in-process :class:`~lmrec.ranking.encoder.Encoder` (through
    :class:`LocalTower`) or the scorer deployment."""

    async def user_vectors(self, histories: Sequence[Sequence[tuple[str, str]]]) -> UserVectors: ...

    async def item_queries(self, item_ids: Sequence[str]) -> ItemVectors: ...


class LocalTower:
    """An :class:`~lmrec.ranking.encoder.Encoder` in this process as a :class:`UserTower`."""

    def __init__(self, encoder):
        self.encoder = encoder

    async def user_vectors(self, histories: Sequence[Sequence[tuple[str, str]]]) -> UserVectors:
        return self.encoder.user_vectors(histories)

    async def item_queries(self, item_ids: Sequence[str]) -> ItemVectors:
        return ItemVectors(tuple(self.encoder.item_queries(list(item_ids))), self.encoder.model.model_version)


class UserStates:
    """Contexts (history + user vector) for ranking, and the writes that change them. ``store``: a handle for
    the serving model's vectors; ``tower``: computes vectors the cache lacks."""

    def __init__(self, store: Store, tower: UserTower, max_history: int, telemetry: Telemetry = NO_TELEMETRY):
        self.store = store
        self.tower = tower
        self.max_history = max_history
        self.telemetry = telemetry
        self._computing: dict[str, tuple[int, asyncio.Future]] = {}  # user -> (version, its vector to come)
        self._refreshes: set[asyncio.Task] = set()

    # ------------------------------------------------------------------------------------------ reads
    async def contexts(self, user_ids: Sequence[str]) -> list[UserContext | LmrecError]:
        """Each user's history (oldest first) and user vector (None for a user without history: cold start),
        or the error of an invalid id in its place; every stale cached vector is recomputed in one tower call."""
        started = time.perf_counter()
        users = self._read(user_ids)
        known = [j for j, u in enumerate(users) if isinstance(u, UserRecord) and u.history]
        stale = [j for j in known if users[j].vector is None]
        self.telemetry.cache(True, len(known) - len(stale))
        self.telemetry.cache(False, len(stale))
        vectors = await self._vectors(user_ids, users, stale) if stale else {}
        out: list[UserContext | LmrecError] = []
        for j, (user_id, user) in enumerate(zip(user_ids, users)):
            if isinstance(user, LmrecError):
                out.append(user)
            elif not user.history:
                out.append(UserContext(user_id, user.version, (), None, None))
            else:  # the model the vector came from travels with it (never ranked in another model's index)
                vector, model = vectors.get(j, (user.vector, self.store.model))
                out.append(UserContext(user_id, user.version, user.history, vector, model))
        self.telemetry.latency("state", time.perf_counter() - started)
        return out

    def _read(self, user_ids: Sequence[str]) -> list[UserRecord | StoreError]:
        users: list = [None] * len(user_ids)
        valid = []
        for j, user_id in enumerate(user_ids):
            try:
                check_id(user_id, "user_id")
            except StoreError as exc:
                users[j] = exc
                continue
            valid.append(j)
        for j, user in zip(valid, self.store.read_users([user_ids[j] for j in valid], self.max_history) if valid else []):
            users[j] = user
        return users

    async def _vectors(self, user_ids: Sequence[str], users: list, stale: list[int]) -> dict[int, tuple[np.ndarray, str]]:
        """(vector, model) of the ``stale`` users (positions in the batch), computed in one tower call, except
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

    async def _compute(self, user_ids: Sequence[str], users: list, idx: list[int]) -> dict[int, tuple[np.ndarray, str]]:
        out = await self.tower.user_vectors([users[j].history for j in idx])
        # not cached: another model's vector (a scorer replica of the other side of a rollout), or one that lacks a
        # history item still waiting for this model's vector
        if out.model == self.store.model:
            self.store.put_user_vectors([(user_ids[j], users[j].version, v) for j, v, ok in zip(idx, out.vectors, out.cacheable) if ok])
        now = time.time()
        for j in idx:
            lag = now - users[j].last_timestamp
            if 0 <= lag < 60:  # a live event (not a replayed or back-dated one)
                self.telemetry.lag(lag)
        return {j: (vector, out.model) for j, vector in zip(idx, out.vectors)}

    async def history(self, user_id: str, limit: int) -> list[Event]:
        return self.store.history(check_id(user_id, "user_id"), limit)

    async def list_users(self, prefix: str, limit: int, after: str) -> list[tuple[str, int]]:
        return self.store.list_users(prefix, limit, after)

    async def stats(self) -> dict:
        return self.store.stats()

    # ----------------------------------------------------------------------------------------- writes
    async def append(self, events: Sequence[Event]) -> int:
        """Store the events durably (all or none), then refresh their users' vectors in the background."""
        n = self.store.append_events(events)
        self.telemetry.events(n)
        for event_type in {e.event_type for e in events if e.recommendation_id}:
            self.telemetry.attributed(event_type, sum(1 for e in events if e.recommendation_id and e.event_type == event_type))
        users = list(dict.fromkeys(e.user_id for e in events))
        if len(users) <= REFRESH_MAX_USERS:  # after the acknowledgement, not before it
            task = asyncio.ensure_future(self._refresh(users))
            self._refreshes.add(task)
            task.add_done_callback(self._refreshes.discard)
        return n

    async def _refresh(self, user_ids: list[str]) -> None:
        try:
            users = self._read(user_ids)
            stale = [j for j, u in enumerate(users) if isinstance(u, UserRecord) and u.history and u.vector is None]
            if stale:
                await self._vectors(user_ids, users, stale)
        except Exception as exc:  # the next recommendation computes it (and reports what is wrong)
            log.warning("refreshing the vectors of %d user(s) after their events failed: %s", len(user_ids), exc)

    async def delete(self, user_id: str) -> bool:
        return self.store.delete_user(check_id(user_id, "user_id"))

    async def upsert_items(self, items: Sequence[ItemWrite], model: str | None = None) -> int:
        """Items written in one atomic store call; the last version. ``model``: the model that encoded the
        vectors (default: the store handle's)."""
        version = self.store.upsert_items(items, model)
        self.telemetry.items(len(items))
        return version

    async def remove_items(self, item_ids: Sequence[str]) -> int:
        """Durable tombstones for the items, in one atomic store call: every replica drops them at its next
        sync. The last version."""
        version = self.store.remove_items(item_ids)
        self.telemetry.items(len(item_ids), removed=True)
        return version
