"""The Retrieval deployment (the separated layout): retrieve + re-rank (:class:`lmrec.ranking.retriever.Retriever`)
in replicas of their own, re-rank rules from ``user_config``; and :class:`RetrievalPort`, how the ingress calls it."""

from __future__ import annotations

from collections.abc import Sequence

from ray import serve
from ray.serve.handle import DeploymentHandle

from lmrec.artifact import load_serving_model
from lmrec.errors import LmrecError
from lmrec.ranking.config import RankingConfig
from lmrec.ranking.index import IndexConfig
from lmrec.ranking.records import Query, Ranked, UserContext
from lmrec.ranking.retriever import ItemView, Retriever, catalog_attributes
from lmrec.serving.metrics import TELEMETRY
from lmrec.serving.scorer import replica_cpus
from lmrec.store import StoreConfig


@serve.deployment(name="Retrieval", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
class Retrieval:
    def __init__(self, artifact: str, backend: str, store: StoreConfig, index_backend: str, seed_dataset: str | None = None,
                 seed_config: str | None = None, knn_weight: float | None = None, knn_refresh_s: float = 0.0):
        threads = replica_cpus()
        model = load_serving_model(artifact, backend, threads=threads)
        self.core = Retriever(model, store.open(model.model_version), IndexConfig(backend=index_backend, threads=threads),
                              knn_weight, knn_refresh_s, catalog_attributes(model.item_ids, seed_dataset, seed_config),
                              telemetry=TELEMETRY)

    def reconfigure(self, config: dict) -> None:
        """The re-rank rules, the exploration policy, an experiment (a :class:`RankingConfig`), without a restart."""
        ranking = RankingConfig.model_validate(config or {})
        if ranking.models():
            raise LmrecError("experiment.variants[].model: variants with their own model need the co-located layout "
                             "(colocate: true, the challengers in the app's models: args)")
        self.core.configure(ranking)

    async def ready(self) -> dict:
        return self.core.ready()

    async def rank(self, requests: list[tuple[Query, UserContext]]) -> list:
        return self.core.rank(requests)

    async def item(self, item_id: str) -> ItemView | None:
        return self.core.item(item_id)

    async def texts(self, item_ids: list[str]) -> list[str | None]:
        return self.core.texts_of(item_ids)

    async def config(self) -> dict:
        return self.core.config.model_dump(mode="json")


class RetrievalPort:
    """The Retrieval deployment as the ranking core's ranking stage."""

    def __init__(self, handle: DeploymentHandle):
        self.h = handle

    async def rank(self, requests: Sequence[tuple[Query, UserContext]]) -> list[Ranked]:
        return await self.h.rank.remote(list(requests))

    async def item(self, item_id: str) -> ItemView | None:
        return await self.h.item.remote(item_id)

    async def texts(self, item_ids: list[str]) -> list[str | None]:
        return await self.h.texts.remote(item_ids)

    async def ready(self) -> dict:
        return await self.h.ready.remote()

    async def config(self) -> dict:
        return await self.h.config.remote()
