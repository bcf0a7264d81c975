"""Recommendations for many users at once, offline (``lmrec recommend``): an e-mail campaign, a cache to
warm, a report. The co-located service's stages run in this process — user state from the store (cached
vectors used, stale ones recomputed), retrieval with the artifact's kNN fusion and the store's posted and
removed items, re-rank with the given rules — so each user gets what ``POST /v1/recommend`` would answer
at that moment, without Ray or HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from lmrec.errors import LmrecError


class LocalPipeline:
    """The co-located service's stages (user state, retrieval, re-rank; every user tower, the LM too) in this
    process, without Ray or HTTP: what ``POST /v1/recommend`` answers, for batches of users.
    ``store``: ``{"store_path", "store_url", "store_url_env"}``; ``seed_*`` as the app's args (catalog
    attributes; the store is seeded once, as the service would)."""

    def __init__(self, artifact: str | Path, store: dict, rerank: dict | None = None, knn_weight: float | None = None,
                 max_history: int = 200, backend: str = "auto", index_backend: str = "auto",
                 seed_dataset: str | None = None, seed_config: str | None = None):
        from lmrec.serving.ingress import _local_stages
        from lmrec.serving.rerank import RerankConfig
        from lmrec.serving.scorer import read_model_version

        RerankConfig.model_validate(rerank or {})
        store = {**store, "model": read_model_version(artifact, backend)}
        retrieval = {"artifact": str(artifact), "backend": backend, "store": store, "index_backend": index_backend,
                     "seed_dataset": seed_dataset, "seed_config": seed_config, "knn_weight": knn_weight, "knn_refresh_s": 0.0}
        state = {"store": store, "max_history": max_history, "seed_dataset": seed_dataset, "seed_config": seed_config}
        self.state, self.retrieval, self.rerank = _local_stages(None, {"state": state, "retrieval": retrieval, "rerank": rerank or {}})
        # items another model encoded (a store an older artifact served) get this model's vectors first, as the
        # service's scorer would give them
        core = self.state._stage.scorer._stage.core  # every user tower runs here (scorer None): a ScorerCore
        core.sync()
        while core.pending:
            core.reencode(256)
        self.retrieval._stage._sync()

    async def rank(self, user_ids: list[str], k: int, exclude_seen: bool = True, filters: dict | None = None) -> list[dict]:
        """``{"items": [{"item_id", "score"}], "cold_start"}`` per user; a bad user id, filter or rule is an error."""
        plan = self.rerank._stage.plan(k, None, False)
        ctxs = await self.state.contexts.remote(user_ids)
        bad = next((c for c in ctxs if isinstance(c, Exception)), None)
        if bad is not None:
            raise LmrecError(f"user ids: {bad}")
        found = await self.retrieval.search_many.remote([(c, k, exclude_seen, filters, None, None, plan) for c in ctxs])
        failed = next((f for f in found if isinstance(f, Exception)), None)
        if failed is not None:
            raise LmrecError(f"filters: {failed}")
        ranked = await self.rerank.rerank_many.remote([(f, c, k, None, False, plan) for f, c in zip(found, ctxs)])
        refused = next((r for r in ranked if isinstance(r, Exception)), None)
        if refused is not None:  # rules that need what the candidates lack
            raise LmrecError(f"re-rank rules: {refused}")
        return ranked


def recommend_users(artifact: str | Path, store: dict, users: Iterable[str], k: int = 10, exclude_seen: bool = True,
                    filters: dict | None = None, rerank: dict | None = None, knn_weight: float | None = None,
                    max_history: int = 200, batch: int = 256, backend: str = "auto", index_backend: str = "auto") -> Iterator[pd.DataFrame]:
    """One frame per ``batch`` users: ``user_id, rank, item_id, score, cold_start`` (``k`` rows a user, fewer
    when fewer items pass the filters)."""
    if not 1 <= k <= 1000:
        raise LmrecError(f"k must be between 1 and 1000, got {k}")
    pipeline = LocalPipeline(artifact, store, rerank, knn_weight, max_history, backend, index_backend)

    def frame(chunk: list[str]) -> pd.DataFrame:
        ranked = asyncio.run(pipeline.rank(chunk, k, exclude_seen, filters))
        rows = [(user, rank, item["item_id"], item["score"], r["cold_start"])
                for user, r in zip(chunk, ranked) for rank, item in enumerate(r["items"], 1)]
        return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "cold_start"])

    chunk: list[str] = []
    for user in users:
        chunk.append(user)
        if len(chunk) == batch:
            yield frame(chunk)
            chunk = []
    if chunk:
        yield frame(chunk)


def write_recommendations(out: str | Path, frames: Iterable[pd.DataFrame]) -> dict:
    """Stream ``frames`` into one Parquet file (written whole, then moved into place)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    started, users, rows = time.perf_counter(), 0, 0
    schema = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()), ("score", pa.float32()),
                        ("cold_start", pa.bool_())])
    try:
        writer = pq.ParquetWriter(tmp, schema)
        for frame in frames:
            writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
            users += frame["user_id"].nunique()
            rows += len(frame)
        writer.close()
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"out": str(out), "users": users, "rows": rows, "seconds": round(time.perf_counter() - started, 1)}
