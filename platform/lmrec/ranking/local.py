"""The whole ranking core in one process, built from an artifact and a store: what the co-located ingress
runs, and what ``lmrec recommend`` (batch recommendations), the simulator and the serve benchmark's no-Ray row
run without Ray or HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lmrec.artifact import ServingModel, load_serving_model, read_model_version
from lmrec.errors import LmrecError
from lmrec.ranking.config import RankingConfig
from lmrec.ranking.encoder import Encoder
from lmrec.ranking.index import IndexConfig
from lmrec.ranking.ranker import Ranker
from lmrec.ranking.records import Query
from lmrec.ranking.retriever import Retriever, catalog_attributes
from lmrec.ranking.telemetry import NO_TELEMETRY, Telemetry
from lmrec.ranking.users import LocalTower, UserStates, UserTower
from lmrec.store import StoreConfig
from lmrec.store.base import Store
from lmrec.store.seed import seed_store


@dataclass
class LocalRanking:
    """The ranking core's parts over one store, wired: ``ranker`` answers queries."""

    model: ServingModel
    store: Store
    encoder: Encoder
    users: UserStates
    retriever: Retriever
    ranker: Ranker

    def reencode_all(self) -> int:
        """Give every item another model encoded this model's vector now (a batch job on a store an older
        artifact served; a service does it in the background)."""
        self.encoder.sync()
        n = 0
        while self.encoder.pending:
            n += self.encoder.reencode(256)
        self.retriever.sync()
        return n

    def close(self) -> None:
        self.retriever.close()
        self.store.close()


def build_local(artifact: str | Path, store: StoreConfig, *, backend: str = "auto", index_backend: str = "auto",
                knn_weight: float | None = None, knn_refresh_s: float = 0.0, max_history: int = 200,
                config: RankingConfig | dict | None = None, seed_dataset: str | None = None, seed_config: str | None = None,
                threads: int = 1, remote_tower: UserTower | None = None, telemetry: Telemetry = NO_TELEMETRY) -> LocalRanking:
    """Load the artifact (verified), open the store for its model (seeded once from the dataset when given)
    and wire the ranking core. ``remote_tower``: where a text user tower's vectors come from (the scorer
    deployment, which holds the LM); a sequence user tower always runs here (well under a millisecond)."""
    config = config if isinstance(config, RankingConfig) else RankingConfig.model_validate(config or {})
    model = load_serving_model(artifact, backend, threads=threads)
    handle = store.open(model.model_version)
    seed_store(handle, seed_dataset, seed_config)
    encoder = Encoder(model, handle)
    tower = remote_tower if remote_tower is not None and model.user_tower_kind == "text" else LocalTower(encoder)
    users = UserStates(handle, tower, max_history, telemetry)
    retriever = Retriever(model, handle, IndexConfig(backend=index_backend, threads=threads), knn_weight, knn_refresh_s,
                          catalog_attributes(model.item_ids, seed_dataset, seed_config), config, telemetry)
    return LocalRanking(model, handle, encoder, users, retriever, Ranker(users, retriever, tower))


def recommend_users(artifact: str | Path, store: StoreConfig, users: Iterable[str], k: int = 10, exclude_seen: bool = True,
                    filters: dict | None = None, rules: dict | None = None, knn_weight: float | None = None,
                    max_history: int = 200, batch: int = 256, backend: str = "auto", index_backend: str = "auto") -> Iterator[pd.DataFrame]:
    """What ``POST /v1/recommend`` would answer now, for many users: one frame per ``batch`` users,
    ``user_id, rank, item_id, score, cold_start`` (``k`` rows a user, fewer when fewer items pass the filters).
    Items another model encoded get this model's vectors first, as the service's scorer would give them."""
    if not 1 <= k <= 1000:
        raise LmrecError(f"k must be between 1 and 1000, got {k}")
    store = StoreConfig(store.path, store.url, store.url_env, read_model_version(artifact, backend))
    local = build_local(artifact, store, backend=backend, index_backend=index_backend, knn_weight=knn_weight,
                        max_history=max_history, config={"rules": rules or {}})
    local.reencode_all()

    def frame(chunk: list[str]) -> pd.DataFrame:
        ranked, _ = asyncio.run(local.ranker.rank([Query(k, user_id=u, exclude_seen=exclude_seen, filters=filters or {}) for u in chunk]))
        bad = next((r for r in ranked if isinstance(r, Exception)), None)
        if bad is not None:
            raise LmrecError(str(bad))
        rows = [(user, rank, item.item_id, item.score, r.cold_start)
                for user, r in zip(chunk, ranked) for rank, item in enumerate(r.items, 1)]
        return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "cold_start"])

    try:
        chunk: list[str] = []
        for user in users:
            chunk.append(user)
            if len(chunk) == batch:
                yield frame(chunk)
                chunk = []
        if chunk:
            yield frame(chunk)
    finally:
        local.close()


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
