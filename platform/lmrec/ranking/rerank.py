"""Re-rank: business rules, diversity (MMR) and per-item explanations, over the retrieved candidates.

Input: candidates with their retrieval scores and vectors, the user's history (item ids, event types,
vectors). Output: the final ``k`` items (:class:`~lmrec.ranking.records.RankedItem`), each with its score and,
on request, the history events that contributed most to it. :func:`plan` says what retrieval must fetch for
the rules in force (for plain top-k: k ids and scores, nothing more).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lmrec.ranking.records import ExplainedEvent, Explanation, RankedItem


class RerankConfig(BaseModel):
    """Rules applied to every request: ``ranking.rules`` of the ranking config (``RankingConfig``), which the
    Retrieval deployment's or the co-located Ingress's ``user_config`` carries."""

    model_config = ConfigDict(extra="forbid")

    # 0 = pure relevance; 1 = pure novelty against what is already selected (MMR trade-off)
    diversity: float = Field(0.0, ge=0, le=1)
    # at most this many items sharing a value of an attribute, e.g. {"brand": 3}
    max_per_attribute: dict[str, int] = Field(default_factory=dict)
    # additive score boosts for attribute values, e.g. {"category": {"Sale": 0.1}}; negative buries
    boosts: dict[str, dict[str, float]] = Field(default_factory=dict)
    explain_top: int = Field(3, ge=1, le=20)  # history events named per explained item
    recency_decay: float = Field(0.9, gt=0, le=1)  # weight of an event n steps back: decay ** n
    # candidates retrieved per requested item when boosts, caps or diversity can reorder them (else exactly k)
    candidates_per_item: int = Field(4, ge=1, le=50)


@dataclass
class Candidates:
    """Retrieved items, best first: ids, retrieval scores, and what the rules in force need (see ``Plan``)."""

    ids: list[str]
    scores: np.ndarray  # (n,)
    vectors: np.ndarray | None = None  # (n, D): for diversity and explanations
    attributes: list[dict] | None = None  # for boosts and per-attribute caps (only the keys they name)


@dataclass
class History:
    """The user's history events whose items are indexed, with their vectors (for explanations)."""

    events: list[tuple[str, str]]  # (item_id, event_type), oldest first
    vectors: np.ndarray  # (m, D)
    steps_back: np.ndarray  # (m,) events between this one and the latest (0 = the latest)
    knn: np.ndarray | None = None  # (candidates, m): each event's part of each candidate's item-kNN boost


@dataclass(frozen=True)
class Plan:
    """What re-ranking ``k`` items needs from retrieval: how many candidates, which attribute keys (None =
    all), candidate vectors, history vectors. Only rules, boosts and diversity need more than ``k``."""

    fetch: int
    attribute_keys: list[str] | None
    vectors: bool
    history: bool


def plan(k: int, cfg: RerankConfig, diversity: float | None = None, explain: bool = False) -> Plan:
    d = cfg.diversity if diversity is None else diversity
    rules = bool(cfg.boosts or cfg.max_per_attribute or d > 0)
    return Plan(k * cfg.candidates_per_item if rules else k, sorted(set(cfg.boosts) | set(cfg.max_per_attribute)),
                d > 0 or explain, explain)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def rerank(
    cands: Candidates,
    k: int,
    cfg: RerankConfig,
    diversity: float | None = None,
    explain: bool = False,
    history: History | None = None,
) -> list[RankedItem]:
    """Select ``k`` of ``cands``: boosted scores, attribute caps, then greedy MMR.

    MMR picks, at each step, the candidate maximising ``(1 - d) * relevance - d * max_sim_to_selected``
    with relevance min-max scaled to [0, 1] over the candidates and similarity the cosine of item vectors.
    Without diversity and caps this is the top ``k`` by (boosted) score, ties in retrieval order.
    """
    n = len(cands.ids)
    if n == 0:
        return []
    d = cfg.diversity if diversity is None else diversity
    scores = np.asarray(cands.scores, dtype=np.float64)
    if cfg.boosts or cfg.max_per_attribute:
        if cands.attributes is None:
            raise ValueError("re-rank rules need the candidates' attributes")
    if cfg.boosts:
        scores = scores + np.array([_boost(a, cfg) for a in cands.attributes], dtype=np.float64)
    vecs = None
    if d > 0 or explain:
        if cands.vectors is None:
            raise ValueError("diversity and explanations need the candidates' vectors")
        vecs = _unit(np.asarray(cands.vectors, dtype=np.float32))
    if d <= 0 and not cfg.max_per_attribute:
        chosen = np.argsort(-scores, kind="stable")[:k].tolist()
    else:
        chosen = _select(scores, vecs, cands.attributes, k, d, cfg)
    out = []
    hist_vecs, hist_w = _history_matrix(history, cfg.recency_decay) if explain else (None, None)
    for i in chosen:
        explanation = None
        if explain:
            knn = history.knn[i] if history is not None and history.knn is not None else None
            model_part = float(cands.scores[i]) - float(knn.sum()) if knn is not None else None
            explanation = _explain(vecs[i], hist_vecs, hist_w, history, cfg.explain_top, knn, model_part)
        out.append(RankedItem(cands.ids[i], float(scores[i]), explanation))
    return out


def _select(scores: np.ndarray, vecs: np.ndarray | None, attributes: list[dict] | None, k: int, d: float,
            cfg: RerankConfig) -> list[int]:
    rel = (scores - scores.min()) / (scores.max() - scores.min()) if scores.max() > scores.min() else np.ones_like(scores)
    chosen: list[int] = []
    max_sim = np.full(len(scores), -np.inf)
    used: dict[tuple[str, str], int] = {}
    available = np.ones(len(scores), dtype=bool)
    while len(chosen) < k and available.any():
        value = (1 - d) * rel - d * np.where(np.isfinite(max_sim), max_sim, 0.0) if d > 0 else rel.copy()
        value[~available] = -np.inf
        i = int(np.argmax(value))
        available[i] = False
        attrs = attributes[i] if attributes is not None else {}
        if _capped(attrs, cfg, used):
            continue
        chosen.append(i)
        for key in cfg.max_per_attribute:
            if key in attrs:
                v = str(attrs[key])
                used[(key, v)] = used.get((key, v), 0) + 1
        if d > 0:
            max_sim = np.maximum(max_sim, vecs @ vecs[i])
    return chosen


def _boost(attributes: dict, cfg: RerankConfig) -> float:
    return sum(cfg.boosts.get(key, {}).get(str(value), 0.0) for key, value in attributes.items())


def _capped(attributes: dict, cfg: RerankConfig, used: dict) -> bool:
    return any(
        key in attributes and used.get((key, str(attributes[key])), 0) >= limit
        for key, limit in cfg.max_per_attribute.items()
    )


def _history_matrix(history: History | None, decay: float):
    if history is None or not len(history.events):
        return None, None
    return _unit(np.asarray(history.vectors, dtype=np.float32)), (decay ** np.asarray(history.steps_back, dtype=np.float32))


def _explain(item_vec: np.ndarray, hist_vecs, hist_w, history: History | None, top: int,
             knn: np.ndarray | None = None, model_part: float | None = None) -> Explanation:
    """The history events closest to the item (cosine), weighted by recency; shares sum to 1 over
    the positive contributions. With item-kNN fusion (``knn``: each event's part of the item's kNN boost,
    ``model_part``: the rest of its score) the model's part is shared in proportion to those similarities
    and each event adds its exact part of the boost."""
    if hist_vecs is None:
        return Explanation("no history yet: cold-start ranking", ())
    contrib = (hist_vecs @ item_vec) * hist_w
    reason = "similar to your recent activity"
    knn_total = float(knn.sum()) if knn is not None else 0.0
    if knn_total > 0:  # else (no co-occurrence) the model's part alone, as without kNN
        sim = np.clip(contrib, 0, None)
        sim_total, model = float(sim.sum()), max(model_part or 0.0, 0.0)
        contrib = (sim * (model / sim_total) if sim_total > 0 else 0.0) + knn
        if knn_total > model:
            reason = "often chosen with items in your recent activity"
    order = np.argsort(-contrib, kind="stable")[:top]
    pos = np.clip(contrib, 0, None)
    total = float(pos.sum()) or 1.0
    return Explanation(reason, tuple(
        ExplainedEvent(history.events[j][0], history.events[j][1], round(float(pos[j]) / total, 4)) for j in order if contrib[j] > 0))
