"""The Ray Serve application: ``serve run deployments/<name>.yaml``.

``build_app(args)`` binds the graph — ingress → user state → retrieval → scorer → re-rank — from typed
args. Replica counts, autoscaling, ``max_ongoing_requests``, ``ray_actor_options`` and ``user_config``
(batch sizes, re-rank rules) live in the YAML, not here.
"""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from lmrec.errors import LmrecError
from lmrec.serving.ingress import Ingress
from lmrec.serving.rerank import RerankConfig, Reranker
from lmrec.serving.retrieval import Retrieval
from lmrec.serving.scorer import Scorer, read_model_version
from lmrec.serving.user_state import UserState


class AppArgs(BaseModel):
    """The application's typed arguments (``args:`` in the deployment YAML)."""

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
    # seconds in each retrieval replica; 0 = keep the artifact's
    knn_refresh_s: float = Field(60.0, ge=0)
    # co-locate user state (with a sequence user tower), retrieval and re-rank in the ingress replicas (only
    # the LM scorer is a separate deployment): no hops between the light stages; the YAML then lists Ingress
    # and Scorer only
    colocate: bool = False
    rerank: dict = Field(default_factory=dict)  # co-located re-rank rules (RerankConfig); else the Reranker's user_config


def _absolute(path: str | None) -> str | None:
    """Paths in the YAML are relative to where ``serve run`` starts; replicas may run elsewhere."""
    return None if path is None else str(Path(path).expanduser().resolve())


def _check_knn(artifact: str) -> None:
    """knn_weight > 0 needs an exported artifact that carries the item-kNN (fail at build time)."""
    import json

    from lmrec.export import KNN, MANIFEST

    manifest = Path(artifact) / MANIFEST
    files = json.loads(manifest.read_text()).get("files", {}) if manifest.is_file() else {}
    if KNN not in files:
        raise LmrecError(f"args.knn_weight: {artifact} has no item-kNN to fuse with ({KNN}); export the checkpoint "
                         "with `lmrec export` (this version) or set knn_weight: 0")


def build_app(args: AppArgs) -> serve.Application:
    args = args.model_copy(update={
        "artifact": _absolute(args.artifact), "store_path": _absolute(args.store_path),
        "seed_config": _absolute(args.seed_config),
    })  # fmt: skip
    if not Path(args.artifact).is_dir():
        raise LmrecError(f"artifact {args.artifact} does not exist: run `lmrec export` (or `make demo`) first")
    Path(args.store_path).parent.mkdir(parents=True, exist_ok=True)
    version = read_model_version(args.artifact, args.backend)
    if args.knn_weight:
        _check_knn(args.artifact)
    # every stage's store handle reads and writes this model's vectors (another artifact's are never mixed in)
    store = {"store_path": args.store_path, "store_url": args.store_url, "store_url_env": args.store_url_env, "model": version}
    scorer = Scorer.bind(args.artifact, args.backend, store)
    # each stage's arguments, whether it becomes its own deployment or lives in the ingress
    state = {"store": store, "max_history": args.max_history, "seed_dataset": args.seed_dataset, "seed_config": args.seed_config}
    retrieval = {"artifact": args.artifact, "backend": args.backend, "store": store, "index_backend": args.retrieval_backend,
                 "seed_dataset": args.seed_dataset, "seed_config": args.seed_config, "knn_weight": args.knn_weight, "knn_refresh_s": args.knn_refresh_s}  # fmt: skip
    if args.colocate:
        RerankConfig.model_validate(args.rerank)  # fail at build time, not in a replica
        local = {"state": state, "retrieval": retrieval, "rerank": args.rerank}
        return Ingress.bind(None, scorer, None, None, args.api_token_env, args.auth_reads, version, local)
    if args.rerank:
        raise LmrecError("args.rerank is for colocate: true; the Reranker deployment takes its rules from user_config")
    return Ingress.bind(UserState.bind(scorer, **state), scorer, Retrieval.bind(**retrieval), Reranker.bind(),
                        args.api_token_env, args.auth_reads, version)
