"""The UserState deployment (the separated layout): users' histories and cached vectors
(:class:`lmrec.ranking.users.UserStates`) in replicas of their own, and :class:`UserStatePort`, how the ingress
calls it. With a SQLite store keep one replica (one writer per file); with Redis, any number."""

from __future__ import annotations

from collections.abc import Sequence

from ray import serve
from ray.serve.handle import DeploymentHandle

from lmrec.ranking.records import UserContext
from lmrec.ranking.users import UserStates
from lmrec.serving.metrics import TELEMETRY
from lmrec.serving.scorer import ScorerPort
from lmrec.store import StoreConfig
from lmrec.store.base import Event, ItemWrite
from lmrec.store.seed import seed_store


@serve.deployment(name="UserState", ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
class UserState:
    def __init__(self, scorer: DeploymentHandle, store: StoreConfig, max_history: int, seed_dataset: str | None,
                 seed_config: str | None):
        handle = store.open()
        seed_store(handle, seed_dataset, seed_config)
        self.core = UserStates(handle, ScorerPort(scorer), max_history, TELEMETRY)

    async def contexts(self, user_ids: list[str]) -> list:
        return await self.core.contexts(user_ids)

    async def append(self, events: list[Event]) -> int:
        return await self.core.append(events)

    async def history(self, user_id: str, limit: int) -> list[Event]:
        return await self.core.history(user_id, limit)

    async def list_users(self, prefix: str, limit: int, after: str) -> list[tuple[str, int]]:
        return await self.core.list_users(prefix, limit, after)

    async def delete(self, user_id: str) -> bool:
        return await self.core.delete(user_id)

    async def upsert_items(self, items: list[ItemWrite], model: str | None) -> int:
        return await self.core.upsert_items(items, model)

    async def remove_items(self, item_ids: list[str]) -> int:
        return await self.core.remove_items(item_ids)

    async def stats(self) -> dict:
        return await self.core.stats()


class UserStatePort:
    """The UserState deployment with :class:`UserStates`' interface."""

    def __init__(self, handle: DeploymentHandle):
        self.h = handle

    async def contexts(self, user_ids: Sequence[str]) -> list[UserContext]:
        return await self.h.contexts.remote(list(user_ids))

    async def append(self, events: list[Event]) -> int:
        return await self.h.append.remote(events)

    async def history(self, user_id: str, limit: int) -> list[Event]:
        return await self.h.history.remote(user_id, limit)

    async def list_users(self, prefix: str, limit: int, after: str) -> list[tuple[str, int]]:
        return await self.h.list_users.remote(prefix, limit, after)

    async def delete(self, user_id: str) -> bool:
        return await self.h.delete.remote(user_id)

    async def upsert_items(self, items: list[ItemWrite], model: str | None = None) -> int:
        return await self.h.upsert_items.remote(items, model)

    async def remove_items(self, item_ids: list[str]) -> int:
        return await self.h.remove_items.remote(item_ids)

    async def stats(self) -> dict:
        return await self.h.stats.remote()
