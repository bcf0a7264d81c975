"""The Ray Serve application: ``serve run deployments/<name>.yaml``.

``build_app(args)`` binds the graph from typed args: co-located (``colocate: true``, the one-node answer) an
Ingress holding the ranking core and a Scorer holding the LM; separated, an Ingress, a UserState, a Retrieval
(retrieve + re-rank) and a Scorer. Replica counts, autoscaling, ``max_ongoing_requests``,
``ray_actor_options`` and ``user_config`` (batch sizes, re-rank rules) live in the YAML, not here.
(No ``from __future__ import annotations``: Serve reads ``build_app``'s annotation to validate the YAML's args.)
"""

from pathlib import Path

from ray import serve

from lmrec.artifact import has_knn, read_model_version
from lmrec.errors import LmrecError
from lmrec.serving.args import AppArgs
from lmrec.serving.ingress import Ingress
from lmrec.serving.retrieval import Retrieval
from lmrec.serving.scorer import Scorer
from lmrec.serving.user_state import UserState

__all__ = ["AppArgs", "build_app"]


def build_app(args: AppArgs) -> serve.Application:
    args = args.resolved()
    if not Path(args.artifact).is_dir():
        raise LmrecError(f"artifact {args.artifact} does not exist: run `lmrec export` (or `make demo`) first")
    Path(args.store_path).parent.mkdir(parents=True, exist_ok=True)
    version = read_model_version(args.artifact, args.backend)
    if args.knn_weight and args.backend != "torch" and not has_knn(args.artifact):
        raise LmrecError(f"args.knn_weight: {args.artifact} has no item-kNN to fuse with; export the checkpoint with "
                         "`lmrec export` (this version) or set knn_weight: 0")
    # every stage's store handle reads and writes this model's vectors (another artifact's are never mixed in)
    store = args.store(version)
    scorer = Scorer.bind(args.artifact, args.backend, store)
    if args.models and not args.colocate:
        raise LmrecError("args.models: challenger models for experiments need the co-located layout (colocate: true)")
    challengers = {}
    for name, path in args.models.items():
        if not Path(path).is_dir():
            raise LmrecError(f"args.models.{name}: artifact {path} does not exist")
        other = read_model_version(path, args.backend)
        if other == version:
            raise LmrecError(f"args.models.{name}: {path} is the served model itself ({version})")
        # each challenger's own LM replicas, encoding for its index and user vectors on the same store
        challengers[name] = Scorer.options(name=f"Scorer-{name}").bind(path, args.backend, args.store(other))
    if args.colocate:
        return Ingress.bind(args, version, scorer, challengers=challengers)
    state = UserState.bind(scorer, store, args.max_history, args.seed_dataset, args.seed_config)
    retrieval = Retrieval.bind(args.artifact, args.backend, store, args.retrieval_backend, args.seed_dataset,
                               args.seed_config, args.knn_weight, args.knn_refresh_s)
    return Ingress.bind(args, version, scorer, state, retrieval)
