"""The Scorer deployment: the model's towers (:class:`lmrec.ranking.encoder.Encoder`) in replicas of their
own, for what needs the LM — new items' text and a text user tower — batched; and :class:`ScorerPort`, how
the other stages call it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from ray import serve
from ray.serve.handle import DeploymentHandle

from lmrec.artifact import load_serving_model
from lmrec.errors import LmrecError
from lmrec.ranking.encoder import Encoder
from lmrec.ranking.records import ItemVectors, UserVectors
from lmrec.serving.metrics import TELEMETRY
from lmrec.store import StoreConfig

log = logging.getLogger(__name__)


def replica_cpus(default: int = 1) -> int:
    """CPUs granted to this replica (ray_actor_options.num_cpus), at least 1: the ORT / BLAS thread count."""
    try:
        import ray

        if not ray.is_initialized():  # get_runtime_context() would start a local Ray
            return max(1, default)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", default)
    except Exception:  # noqa: BLE001 - outside Ray
        cpus = default
    return max(1, int(round(cpus)))


# defaults; deployments/*.yaml override them per environment
@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class Scorer:
    """User vectors come in batches the caller formed; new items' texts are grouped by ``@serve.batch`` into
    one LM call (batch size and wait from ``user_config``). Every answer names the model that computed it."""

    def __init__(self, artifact: str, backend: str, store: StoreConfig):
        model = load_serving_model(artifact, backend, threads=replica_cpus())
        self.encoder = Encoder(model, store.open(model.model_version))
        try:  # the store's items before the first request (a replica starting under load, say in a rollout)
            self.encoder.sync()
        except LmrecError as exc:
            log.warning("could not read the store's items at start: %s", exc)
        threading.Thread(target=self._reencode_loop, name="lmrec-reencode", daemon=True).start()

    def _reencode_loop(self, idle_s: float = 1.0) -> None:
        """Items another model encoded get this model's vectors (after a rollout to a new artifact: the ones
        posted since its data was collected), a batch at a time, in the background."""
        while True:
            try:
                n = self.encoder.reencode()
                if n:
                    TELEMETRY.reencoded(n)
                    log.info("re-encoded %d item(s) another model had encoded; %d still pending", n, len(self.encoder.pending))
            except Exception:  # noqa: BLE001 - the store may be down for a while: retried in the next round
                log.exception("re-encoding items another model encoded failed; retrying")
                n = 0
            if not n:
                time.sleep(idle_s)

    def reconfigure(self, config: dict) -> None:
        self.encode_item.set_max_batch_size(int(config.get("max_batch_size", 16)))
        self.encode_item.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.002)))

    async def ready(self) -> dict:
        return {"model_version": self.encoder.model.model_version}

    async def reencode(self) -> int:
        """Items another model encoded get this model's vectors now (a challenger's, right after an item is
        posted), not at the background loop's next round."""
        return self.encoder.reencode()

    async def user_vectors(self, histories: list) -> UserVectors:
        TELEMETRY.batch("user_vectors", len(histories))
        return self.encoder.user_vectors(histories)

    async def item_queries(self, item_ids: list[str]) -> ItemVectors:
        return ItemVectors(tuple(self.encoder.item_queries(item_ids)), self.encoder.model.model_version)

    async def encode_items(self, texts: list[str]) -> ItemVectors:
        """Many texts of one request (a bulk item upload): no batching wait."""
        TELEMETRY.batch("encode_items", len(texts))
        return ItemVectors(tuple(self.encoder.encode_items(texts)), self.encoder.model.model_version)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def encode_item(self, texts: list[str]) -> list[ItemVectors]:
        TELEMETRY.batch("encode_item", len(texts))
        model = self.encoder.model.model_version
        return [ItemVectors((vector,), model) for vector in self.encoder.encode_items(texts)]


class ScorerPort:
    """The Scorer deployment as the ranking core's user tower (and the ingress's item encoder)."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    async def user_vectors(self, histories: Sequence) -> UserVectors:
        return await self.handle.user_vectors.remote(list(histories))

    async def item_queries(self, item_ids: Sequence[str]) -> ItemVectors:
        return await self.handle.item_queries.remote(list(item_ids))

    async def encode_item(self, text: str) -> ItemVectors:
        return await self.handle.encode_item.remote(text)

    async def encode_items(self, texts: list[str]) -> ItemVectors:
        return await self.handle.encode_items.remote(texts)

    async def ready(self) -> dict:
        return await self.handle.ready.remote()

    async def reencode(self) -> int:
        return await self.handle.reencode.remote()
