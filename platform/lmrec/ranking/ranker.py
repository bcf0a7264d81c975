"""The ranking path as one object (:class:`Ranker`): a batch of :class:`~lmrec.ranking.records.Query` ->
user contexts -> retrieve + re-rank -> :class:`~lmrec.ranking.records.Ranked`, whatever runs each part.

Its parts are ports: ``users`` gives contexts (a :class:`~lmrec.ranking.users.UserStates` in this process, or
the user-state deployment), ``retrieval`` ranks (a :class:`~lmrec.ranking.retriever.Retriever`, or the
retrieval deployment), ``tower`` gives related items' queries (an in-process encoder, or the scorer). The
co-located ingress, ``lmrec recommend``, the simulator and the separated graph build the same Ranker.

Rollouts: while a new model rolls out, one request may meet stages of two models (a user vector of one,
the index of the other): retrieval refuses it with a :class:`~lmrec.errors.RolloutError`, and the Ranker
fetches fresh contexts and tries again, ``retries`` times, then answers without the user vector
(``cold_start``), never an error.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from lmrec.errors import LmrecError, RolloutError, UnknownItemError
from lmrec.ranking.records import ItemVectors, Query, Ranked, UserContext

log = logging.getLogger(__name__)

ROLLOUT_RETRIES = 3


class ContextSource(Protocol):
    async def contexts(self, user_ids: Sequence[str]) -> list[UserContext | LmrecError]: ...


class RankingStage(Protocol):
    """``rank`` may be a plain method (an in-process Retriever) or a coroutine (a remote stage)."""

    def rank(self, requests: Sequence[tuple[Query, UserContext]]) -> list[Ranked | LmrecError]: ...


class QuerySource(Protocol):
    async def item_queries(self, item_ids: Sequence[str]) -> ItemVectors: ...


@dataclass(frozen=True, slots=True)
class Timing:
    """Where a batch's time went (seconds): reading contexts, then ranking (retries included)."""

    contexts: float
    ranking: float
    size: int


class Ranker:
    def __init__(self, users: ContextSource, retrieval: RankingStage, tower: QuerySource, retries: int = ROLLOUT_RETRIES):
        self.users, self.retrieval, self.tower, self.retries = users, retrieval, tower, retries

    async def rank(self, queries: Sequence[Query]) -> tuple[list[Ranked | LmrecError], Timing]:
        """The answer to each query, or its error in its place (an invalid id or filter; an item the model
        has no vector of: :class:`UnknownItemError`); the others go on."""
        t0 = time.perf_counter()
        ctxs = await self._contexts(queries, range(len(queries)))
        t1 = time.perf_counter()
        out: list = list(ctxs)
        live = [j for j, c in enumerate(ctxs) if isinstance(c, UserContext)]
        for attempt in range(self.retries + 1):
            if not live:
                break
            results = await self._rank([(queries[j], ctxs[j]) for j in live])
            mixed = []
            for j, result in zip(live, results):
                out[j] = result
                if isinstance(result, RolloutError):
                    mixed.append(j)
            if not mixed:
                break
            if attempt < self.retries:
                fresh = await self._contexts(queries, mixed)
                for j, ctx in zip(mixed, fresh):
                    ctxs[j] = out[j] = ctx
                live = [j for j in mixed if isinstance(ctxs[j], UserContext)]
            else:  # no consistent path yet (one stage switched, the next not): the non-personal answer, said so
                log.info("%d request(s) met two models %d times: answered without the user vector", len(mixed), 1 + self.retries)
                for j, result in zip(mixed, await self._rank([(queries[j], ctxs[j].without_vector()) for j in mixed])):
                    out[j] = result
        return out, Timing(t1 - t0, time.perf_counter() - t1, len(queries))

    async def _rank(self, requests: list[tuple[Query, UserContext]]) -> list[Ranked | LmrecError]:
        result = self.retrieval.rank(requests)
        return await result if inspect.isawaitable(result) else result

    async def _contexts(self, queries: Sequence[Query], positions: Sequence[int]) -> list[UserContext | LmrecError]:
        """Contexts of the queries at ``positions``: users' from the user state, items' (related) from the tower."""
        positions = list(positions)
        out: dict[int, UserContext | LmrecError] = {}
        users = [j for j in positions if not queries[j].related]
        items = [j for j in positions if queries[j].related]
        if users:
            out.update(zip(users, await self.users.contexts([queries[j].user_id for j in users])))
        if items:
            found = await self.tower.item_queries([queries[j].item_id for j in items])
            for j, vector in zip(items, found.vectors):
                item = queries[j].item_id
                out[j] = (UnknownItemError(f"item_id: the model has no vector of item {item!r} (unknown to it)")
                          if vector is None else UserContext(None, 0, ((item, "view"),), vector, found.model))
        return [out[j] for j in positions]
