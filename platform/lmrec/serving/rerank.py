"""Re-rank: business rules, diversity (MMR) and per-item explanations, over the retrieved candidates.

Input: candidates with their retrieval scores and vectors, the user's history (item ids, event types,
vectors). Output: the final ``k`` items, each with its score and, on request, the history events that
contributed most to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class RerankConfig(BaseModel):
    """Rules applied to every request (from the deployment's ``user_config``)."""

    model_config = ConfigDict(extra="forbid")

    # 0 = pure relevance; 1 = pure novelty against what is already selected (MMR trade-off)
    diversity: float = Field(0.0, ge=0, le=1)
    # at most this many items sharing a value of an attribute, e.g. {"brand": 3}
    max_per_attribute: dict[str, int] = Field(default_factory=dict)
    # additive score boosts for attribute values, e.g. {"category": {"Sale": 0.1}}; negative buries
    boosts: dict[str, dict[str, float]] = Field(default_factory=dict)
    explain_top: int = Field(3, ge=1, le=20)  # history events named per explained item
    recency_decay: float = Field(0.9, gt=0, le=1)  # weight of an event n steps back: decay ** n


@dataclass
class Candidate:
    item_id: str
    score: float
    vector: np.ndarray  # (D,)
    attributes: dict = field(default_factory=dict)


@dataclass
class HistoryEvent:
    item_id: str
    event_type: str
    vector: np.ndarray | None  # (D,); None when the item is no longer in the catalog


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def rerank(
    candidates: list[Candidate],
    history: list[HistoryEvent],
    k: int,
    cfg: RerankConfig,
    diversity: float | None = None,
    explain: bool = False,
) -> list[dict]:
    """Select ``k`` of ``candidates``: boosted scores, attribute caps, then greedy MMR.

    MMR picks, at each step, the candidate maximising ``(1 - d) * relevance - d * max_sim_to_selected``
    with relevance min-max scaled to [0, 1] over the candidates and similarity the cosine of item vectors.
    """
    if not candidates:
        return []
    d = cfg.diversity if diversity is None else diversity
    scores = np.array([c.score + _boost(c.attributes, cfg) for c in candidates], dtype=np.float64)
    rel = (scores - scores.min()) / (scores.max() - scores.min()) if scores.max() > scores.min() else np.ones_like(scores)
    vecs = _unit(np.stack([c.vector for c in candidates]).astype(np.float32))
    chosen: list[int] = []
    max_sim = np.full(len(candidates), -np.inf)
    used: dict[tuple[str, str], int] = {}
    available = np.ones(len(candidates), dtype=bool)
    while len(chosen) < k and available.any():
        value = (1 - d) * rel - d * np.where(np.isfinite(max_sim), max_sim, 0.0) if d > 0 else rel.copy()
        value[~available] = -np.inf
        i = int(np.argmax(value))
        available[i] = False
        if _capped(candidates[i].attributes, cfg, used):
            continue
        chosen.append(i)
        for key in cfg.max_per_attribute:
            if key in candidates[i].attributes:
                v = str(candidates[i].attributes[key])
                used[(key, v)] = used.get((key, v), 0) + 1
        if d > 0:
            max_sim = np.maximum(max_sim, vecs @ vecs[i])
    out = []
    hist_vecs, hist_w, hist_ev = _history_matrix(history, cfg.recency_decay)
    for i in chosen:
        c = candidates[i]
        item = {"item_id": c.item_id, "score": float(scores[i])}
        if explain:
            item["explanation"] = _explain(vecs[i], hist_vecs, hist_w, hist_ev, cfg.explain_top)
        out.append(item)
    return out


def _boost(attributes: dict, cfg: RerankConfig) -> float:
    return sum(cfg.boosts.get(key, {}).get(str(value), 0.0) for key, value in attributes.items())


def _capped(attributes: dict, cfg: RerankConfig, used: dict) -> bool:
    return any(
        key in attributes and used.get((key, str(attributes[key])), 0) >= limit
        for key, limit in cfg.max_per_attribute.items()
    )


def _history_matrix(history: list[HistoryEvent], decay: float):
    kept = [(j, e) for j, e in enumerate(history) if e.vector is not None]
    if not kept:
        return None, None, []
    n = len(history)
    vecs = _unit(np.stack([e.vector for _, e in kept]).astype(np.float32))
    weights = np.array([decay ** (n - 1 - j) for j, _ in kept], dtype=np.float32)
    return vecs, weights, [e for _, e in kept]


def _explain(item_vec: np.ndarray, hist_vecs, hist_w, hist_ev: list[HistoryEvent], top: int) -> dict:
    """The history events closest to the item (cosine), weighted by recency; shares sum to 1 over
    the positive contributions."""
    if hist_vecs is None:
        return {"reason": "no history yet: cold-start ranking", "events": []}
    contrib = (hist_vecs @ item_vec) * hist_w
    order = np.argsort(-contrib)[:top]
    pos = np.clip(contrib, 0, None)
    total = float(pos.sum()) or 1.0
    return {
        "reason": "similar to your recent activity",
        "events": [
            {"item_id": hist_ev[j].item_id, "event_type": hist_ev[j].event_type, "contribution": round(float(pos[j]) / total, 4)}
            for j in order
            if contrib[j] > 0
        ],
    }


try:
    from ray import serve
except ImportError:  # pragma: no cover
    serve = None


class RerankerStage:
    """Business rules, diversity and explanations; rules come from ``user_config`` (see RerankConfig)."""

    def __init__(self):
        self.cfg = RerankConfig()

    def reconfigure(self, config: dict) -> None:
        self.cfg = RerankConfig.model_validate(config or {})

    async def rerank(self, retrieved: dict, ctx: dict, k: int, diversity: float | None, explain: bool) -> dict:
        import time

        from lmrec.serving.metrics import observe_latency

        started = time.perf_counter()
        cands = [Candidate(i, s, v, a) for i, s, v, a in retrieved["candidates"]]
        hist = [HistoryEvent(i, e, retrieved["history_vectors"].get(i)) for i, e in ctx["history"]]
        items = rerank(cands, hist, k, self.cfg, diversity, explain)
        observe_latency("rerank", time.perf_counter() - started)
        return {"items": items, "cold_start": ctx["vector"] is None}


if serve is not None:
    # a stage as its own deployment (the default graph); defaults here, deployments/*.yaml override them
    Reranker = serve.deployment(name="Reranker", ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)(RerankerStage)
