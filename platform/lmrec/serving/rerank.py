"""Re-rank: business rules, diversity (MMR) and per-item explanations, over the retrieved candidates.

Input: candidates with their retrieval scores and vectors, the user's history (item ids, event types,
vectors). Output: the final ``k`` items, each with its score and, on request, the history events that
contributed most to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError


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

    @staticmethod
    def conservative(k: int, explain: bool) -> Plan:
        """Before the caller knows the rules in force (the Reranker is another deployment): the default
        number of candidates per item, every attribute, the vectors."""
        return Plan(k * RerankConfig.model_fields["candidates_per_item"].default, None, True, explain)

    def covers(self, need: Plan) -> bool:
        """Whether what this plan fetched is enough for ``need``."""
        if self.attribute_keys is None:  # every attribute
            keys = True
        else:
            keys = need.attribute_keys is not None and set(need.attribute_keys) <= set(self.attribute_keys)
        return keys and self.fetch >= need.fetch and (self.vectors or not need.vectors) and (self.history or not need.history)

    def union(self, other: Plan) -> Plan:
        """A plan that covers both."""
        keys = None if self.attribute_keys is None or other.attribute_keys is None else sorted({*self.attribute_keys, *other.attribute_keys})
        return Plan(max(self.fetch, other.fetch), keys, self.vectors or other.vectors, self.history or other.history)


class StalePlanError(Exception):
    """A separate Reranker got candidates fetched for rules other than its own (its ``user_config`` changed):
    ``rules`` are the ones in force, for the caller to plan with and retry."""

    def __init__(self, rules: dict):
        super().__init__(rules)
        self.rules = rules

    def __str__(self) -> str:
        return "the re-rank rules changed while the request was in flight; retry"


class RulesCopy:
    """A caller's copy of a separate Reranker's rules, so retrieval fetches only what re-ranking needs (for
    plain top-k, k ids and scores instead of 4k candidates with their vectors and attributes). Conservative
    until the first ``learn``; the Reranker refuses a plan that no longer covers its rules (StalePlanError,
    carrying them), and the caller refreshes its copy every ``ttl_s`` so it also learns of lighter rules."""

    def __init__(self, ttl_s: float = 10.0):
        self.cfg: RerankConfig | None = None
        self.ttl_s = ttl_s
        self.learnt_at = float("-inf")

    def plan(self, k: int, diversity: float | None, explain: bool) -> Plan:
        return Plan.conservative(k, explain) if self.cfg is None else plan(k, self.cfg, diversity, explain)

    def learn(self, rules: dict) -> None:
        try:
            self.cfg = RerankConfig.model_validate(rules)
        except ValidationError:  # rules of another version of this code (a rolling upgrade): plan conservatively
            self.cfg = None
        self.postpone()

    def postpone(self) -> None:
        """The next refresh is due ttl_s from now (after learning the rules, or failing to read them)."""
        self.learnt_at = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.learnt_at > self.ttl_s


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
) -> list[dict]:
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
        item = {"item_id": cands.ids[i], "score": float(scores[i])}
        if explain:
            knn = history.knn[i] if history is not None and history.knn is not None else None
            model_part = float(cands.scores[i]) - float(knn.sum()) if knn is not None else None
            item["explanation"] = _explain(vecs[i], hist_vecs, hist_w, history, cfg.explain_top, knn, model_part)
        out.append(item)
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
             knn: np.ndarray | None = None, model_part: float | None = None) -> dict:
    """The history events closest to the item (cosine), weighted by recency; shares sum to 1 over
    the positive contributions. With item-kNN fusion (``knn``: each event's part of the item's kNN boost,
    ``model_part``: the rest of its score) the model's part is shared in proportion to those similarities
    and each event adds its exact part of the boost."""
    if hist_vecs is None:
        return {"reason": "no history yet: cold-start ranking", "events": []}
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
    return {
        "reason": reason,
        "events": [
            {"item_id": history.events[j][0], "event_type": history.events[j][1], "contribution": round(float(pos[j]) / total, 4)}
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

    def plan(self, k: int, diversity: float | None, explain: bool) -> Plan:
        return plan(k, self.cfg, diversity, explain)

    async def ready(self) -> dict:
        """The rules in force (for the ingress's plans; also its health check)."""
        return self.cfg.model_dump()

    async def rerank_many(self, requests: list[tuple]) -> list[dict | Exception]:
        """The final items for a batch of ``(retrieved, ctx, k, diversity, explain, plan)``, ``plan`` being
        what retrieval was asked for; one that does not cover these rules gets a StalePlanError in its place."""
        from lmrec.serving.metrics import observe_latency

        started = time.perf_counter()
        out: list[dict | Exception] = []
        for retrieved, ctx, k, diversity, explain, fetched in requests:
            if not fetched.covers(self.plan(k, diversity, explain)):
                out.append(StalePlanError(self.cfg.model_dump()))
                continue
            cands = Candidates(retrieved["ids"], retrieved["scores"], retrieved.get("vectors"), retrieved.get("attributes"))
            history = None
            if explain and retrieved.get("history") is not None:
                h = retrieved["history"]
                events = ctx["history"]
                history = History([events[j] for j in h["positions"]], h["vectors"], len(events) - 1 - np.asarray(h["positions"]),
                                  h.get("knn"))
            try:
                out.append({"items": rerank(cands, k, self.cfg, diversity, explain, history), "cold_start": ctx["vector"] is None})
            except ValueError as exc:  # rules that need what the candidates lack: this request only
                out.append(exc)
        observe_latency("rerank", time.perf_counter() - started)
        return out


if serve is not None:
    # a stage as its own deployment (the default graph); defaults here, deployments/*.yaml override them
    Reranker = serve.deployment(name="Reranker", ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)(RerankerStage)
