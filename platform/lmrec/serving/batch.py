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


def recommend_users(artifact: str | Path, store: dict, users: Iterable[str], k: int = 10, exclude_seen: bool = True,
                    filters: dict | None = None, rerank: dict | None = None, knn_weight: float | None = None,
                    max_history: int = 200, batch: int = 256, backend: str = "auto", index_backend: str = "auto") -> Iterator[pd.DataFrame]:
    """One frame per ``batch`` users: ``user_id, rank, item_id, score, cold_start`` (``k`` rows a user, fewer
    when fewer items pass the filters). ``store``: ``{"store_path", "store_url", "store_url_env"}``."""
    from lmrec.serving.ingress import _local_stages
    from lmrec.serving.rerank import RerankConfig

    if not 1 <= k <= 1000:
        raise LmrecError(f"k must be between 1 and 1000, got {k}")
    RerankConfig.model_validate(rerank or {})
    retrieval = {"artifact": str(artifact), "backend": backend, "store": store, "index_backend": index_backend,
                 "knn_weight": knn_weight, "knn_refresh_s": 0.0}
    state = {"store": store, "max_history": max_history, "seed_dataset": None, "seed_config": None}
    users_stage, retrieval_stage, rerank_stage = _local_stages(None, {"state": state, "retrieval": retrieval, "rerank": rerank or {}})
    plan = rerank_stage._stage.plan(k, None, False)

    async def one(chunk: list[str]) -> pd.DataFrame:
        ctxs = await users_stage.contexts.remote(chunk)
        bad = next((c for c in ctxs if isinstance(c, Exception)), None)
        if bad is not None:
            raise LmrecError(f"user ids: {bad}")
        found = await retrieval_stage.search_many.remote([(c, k, exclude_seen, filters, None, None, plan) for c in ctxs])
        failed = next((f for f in found if isinstance(f, Exception)), None)
        if failed is not None:
            raise LmrecError(f"filters: {failed}")
        ranked = await rerank_stage.rerank_many.remote([(f, c, k, None, False, plan) for f, c in zip(found, ctxs)])
        refused = next((r for r in ranked if isinstance(r, Exception)), None)
        if refused is not None:  # rules that need what the candidates lack
            raise LmrecError(f"re-rank rules: {refused}")
        rows = [(user, rank, item["item_id"], item["score"], r["cold_start"])
                for user, r in zip(chunk, ranked) for rank, item in enumerate(r["items"], 1)]
        return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "cold_start"])

    chunk: list[str] = []
    for user in users:
        chunk.append(user)
        if len(chunk) == batch:
            yield asyncio.run(one(chunk))
            chunk = []
    if chunk:
        yield asyncio.run(one(chunk))


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
