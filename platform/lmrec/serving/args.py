"""The application's typed arguments (``args:`` in a deployment YAML), validated once, at build time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from lmrec.ranking.config import RankingConfig
from lmrec.serving.coalesce import BatchConfig
from lmrec.serving.ratelimit import RateLimitConfig
from lmrec.store import StoreConfig


class AppArgs(BaseModel):
    """What ``build_app`` takes. Unknown keys are errors that name the key."""

    model_config = ConfigDict(extra="forbid")

    # an exported artifact (`lmrec export`; gated int8 by default) or, with backend=torch, a checkpoint
    artifact: str
    backend: Literal["auto", "onnx", "torch"] = "auto"
    # durable user state: SQLite (WAL) at store_path unless store_url names a Redis server
    store_path: str = "runs/serve/state.sqlite"
    store_url: str | None = None
    store_url_env: str | None = "LMREC_REDIS_URL"  # read the URL from this variable when set (a secret)
    # seed the store with this dataset's histories on first start (a named dataset or a config file)
    seed_dataset: str | None = None
    seed_config: str | None = None
    api_token_env: str = "LMREC_API_TOKEN"
    auth_reads: bool = False
    max_history: int = Field(200, ge=1, le=10_000)  # events kept per user for the user tower and explanations
    retrieval_backend: Literal["auto", "exact", "faiss"] = "auto"
    # ranking-time fusion with the artifact's item-kNN: score = model score + knn_weight * kNN score scaled
    # to [0, 1] per user; None = the training config's model.knn_weight, 0 = the model alone
    knn_weight: float | None = Field(None, ge=0)
    # refit that item-kNN on the store's events (live co-occurrence, deleted users gone) every this many
    # seconds in each replica that ranks; 0 = keep the artifact's
    knn_refresh_s: float = Field(60.0, ge=0)
    # co-locate user state (with a sequence user tower), retrieval and re-rank in the ingress replicas (only
    # the LM scorer is a separate deployment): no hops between the light stages; the YAML then lists Ingress
    # and Scorer only
    colocate: bool = False
    # origins allowed to call the API from a browser page on another origin (CORS); none by default
    cors_origins: list[str] = Field(default_factory=list)
    # challenger models for experiments (co-located layout): name -> exported artifact. Each gets a Scorer
    # deployment ("Scorer-NAME") and its own index and user vectors in the ingress, on the same store; a
    # variant with `model: NAME` in the ranking config's experiment ranks with it
    models: dict[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")], str] = \
        Field(default_factory=dict, max_length=4)

    def resolved(self) -> AppArgs:
        """Paths made absolute: they are relative to where ``serve run`` starts, replicas may run elsewhere."""
        def absolute(path: str | None) -> str | None:
            return None if path is None else str(Path(path).expanduser().resolve())

        return self.model_copy(update={"artifact": absolute(self.artifact), "store_path": absolute(self.store_path),
                                       "seed_config": absolute(self.seed_config),
                                       "models": {name: absolute(path) for name, path in self.models.items()}})

    def store(self, model: str) -> StoreConfig:
        return StoreConfig(self.store_path, self.store_url, self.store_url_env, model)


class IngressConfig(BatchConfig):
    """The Ingress's ``user_config``: how requests are batched through the stages and, co-located (where the
    ingress ranks), how it ranks (rules, exploration policy, experiment); separated, the Retrieval
    deployment's ``user_config`` is the RankingConfig."""

    ranking: RankingConfig | None = None
    rate_limit: RateLimitConfig | None = None  # per-client token buckets, off by default (serving/ratelimit.py)
