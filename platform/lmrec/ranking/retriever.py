"""Retrieve and re-rank (:class:`Retriever`): for a batch of (query, user context), candidates from the item
index (exact or FAISS, kept in sync with the store's posted and removed items), fused with item-kNN, then the
re-rank rules (boosts, caps, MMR, explanations) — the final :class:`~lmrec.ranking.records.Ranked` answer.
Users without a vector (no history: cold start) get the most popular items, through the same filters and rules.

Re-rank lives here, beside retrieval, because it reads what retrieval holds (candidate vectors and attributes,
history vectors, kNN contributions): one stage, one hop, and the rules and what must be fetched for them are
known in one place (``lmrec bench serve`` measured the separate re-rank stage slower).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import threading
import time
from collections.abc import Sequence

import numpy as np

from lmrec.artifact import ServingModel
from lmrec.baselines import unit_rows
from lmrec.errors import LmrecError, RolloutError, StoreError
from lmrec.loop.policies import ExplorationPolicy, Slate
from lmrec.ranking.config import RankingConfig
from lmrec.ranking.fusion import KnnFusion
from lmrec.ranking.index import IndexConfig, ItemIndex
from lmrec.ranking.records import Query, Ranked, RankedItem, UserContext
from lmrec.ranking.rerank import Candidates, History, Plan, plan, rerank
from lmrec.ranking.telemetry import NO_TELEMETRY, Telemetry
from lmrec.store.base import Impression, ItemRecord, Store

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 600.0  # impressions past the retention go at most this long after they expire


@dataclasses.dataclass(frozen=True, slots=True)
class ItemView:
    """An item as a replica serves it now."""

    item_id: str
    text: str
    attributes: dict
    source: str  # "catalog": the id came with the model; "posted": it did not


class Retriever:
    """The item index, kNN fusion and re-rank of one model over one store. Thread-safe."""

    def __init__(self, model: ServingModel, store: Store, index: IndexConfig | None = None, knn_weight: float | None = None,
                 knn_refresh_s: float = 0.0, attributes: Sequence[dict] | None = None, config: RankingConfig | None = None,
                 telemetry: Telemetry = NO_TELEMETRY):
        self.model_version = model.model_version
        self.normalize = model.normalize
        self.telemetry = telemetry
        self.configure(config or RankingConfig())
        self.created: dict[str, float] = {}  # posted item -> when it was first posted (its age, for new-item exploration)
        self.shown: collections.Counter[str] = collections.Counter()  # item -> slots this replica showed it in
        self._pruned_at = 0.0
        vectors = unit_rows(model.item_vectors) if self.normalize else model.item_vectors
        self.index = ItemIndex.build(model.item_ids, vectors, attributes, index or IndexConfig())
        self.fusion = _fusion(model, knn_weight)
        # model.history_bias on the index's scale (dot products; the model's scores are them / temperature),
        # added to the recent history's items when they are ranked (exclude_seen off)
        self.history_boost = float(model.history_bias) * float(model.temperature)
        self.max_history = model.max_history
        # model.knn_skip_history: the history's items take the bias, not the kNN boost
        self.knn_skip = model.max_history if self.history_boost and model.knn_skip_history else 0
        if self.fusion is not None or self.history_boost:
            self.index.set_keys(model.item_ids)
        self.store = store
        self.texts = dict(zip(model.item_ids, model.item_texts))  # posted items' texts join at sync
        self.known = set(model.item_ids)
        counts = np.asarray(model.item_counts if model.item_counts is not None else np.zeros(len(model.item_ids)))
        order = np.argsort(-counts, kind="stable")
        self.popular = [(model.item_ids[i], float(np.log1p(counts[i]))) for i in order]
        self.knn_interactions = model.knn_interactions
        self.knn_refits: dict = {}  # the last refit of the kNN on the store's events (ready() reports it)
        self._knn_seen: tuple | None = None  # the store's (user_version, events) at the last refit
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        try:  # the store's items before the first request (a replica starting under load, say in a rollout)
            self.sync()
        except StoreError as exc:  # the first request syncs (and reports what is wrong)
            log.warning("could not read the store's items at start: %s", exc)
        if self.fusion is not None and knn_refresh_s > 0:
            threading.Thread(target=self._refit_every, args=(knn_refresh_s,), name="lmrec-knn-refit", daemon=True).start()

    def close(self) -> None:
        self._stop.set()

    def configure(self, config: RankingConfig) -> None:
        """New rules, policy, pool or experiment, from the next batch on (a ``user_config`` change)."""
        self.config = config
        self.rules = config.rules
        self._policies = {None: ExplorationPolicy(config.policy)}
        for v in config.experiment.variants if config.experiment else ():
            self._policies[v.name] = ExplorationPolicy(config.policy_for(v.name))

    def ready(self) -> dict:
        return {"items": len(self.index), "backend": self.index.kind, "knn_weight": self.fusion.weight if self.fusion else 0.0,
                "knn_refit": self.knn_refits, "ranking": self.config.model_dump(mode="json")}

    # ---------------------------------------------------------------------------------------- ranking
    def rank(self, requests: Sequence[tuple[Query, UserContext]]) -> list[Ranked | LmrecError]:
        """The answer to each (query, context), or its error in its place (invalid filters, a user vector of
        another model: a :class:`RolloutError`); queries that share filters and allow/deny lists are scored in
        one matrix product."""
        started = time.perf_counter()
        self.sync()
        variants = [self.config.variant_of(q.user_id) for q, _ in requests]
        policies = [self._policies.get(v) or self._policies[None] for v in variants]
        # an exploring policy draws the slate from the best `pool` re-ranked candidates; greedy needs k
        sizes = [q.k if p.config.kind == "greedy" and p.config.new_items is None else max(q.k, self.config.pool)
                 for (q, _), p in zip(requests, policies)]
        plans = [plan(n, self.rules, q.diversity, q.explain) for n, (q, _) in zip(sizes, requests)]
        excludes = [set(i for i, _ in ctx.history) if q.exclude_seen else set() for q, ctx in requests]
        found: list[list | LmrecError] = [[] for _ in requests]
        norms: dict[int, float] = {}  # request -> its kNN-to-boost factor (explanations)
        groups: dict[tuple, list[int]] = {}
        for j, (q, ctx) in enumerate(requests):
            if ctx.vector is not None and ctx.model not in (None, self.model_version):
                found[j] = RolloutError(f"a vector of {ctx.model} reached the index of {self.model_version} "
                                        "(a new model is rolling out): retry")
            elif ctx.vector is None:
                try:
                    found[j] = self._popular(plans[j].fetch, excludes[j], q)
                except LmrecError as exc:
                    found[j] = exc
            else:
                groups.setdefault(_same_candidates(q), []).append(j)
        for members in groups.values():
            q0 = requests[members[0]][0]
            vectors = np.stack([np.asarray(requests[j][1].vector, dtype=np.float32) for j in members])
            vectors = unit_rows(vectors) if self.normalize else vectors
            try:
                group_norms: list[float] = []
                histories = [[i for i, _ in requests[j][1].history] for j in members]
                boosts = self.fusion.boosts(histories, group_norms, self.knn_skip) if self.fusion else None
                if self.history_boost:
                    boosts = self._history_boosts(boosts, histories, [not requests[j][0].exclude_seen for j in members])
                norms.update(zip(members, group_norms))
                results = self.index.search(vectors, max(plans[j].fetch for j in members), [excludes[j] for j in members],
                                            q0.filters or None, q0.allow, q0.deny, boosts)
            except LmrecError as exc:
                results = [exc] * len(members)
            for j, result in zip(members, results):
                found[j] = result if isinstance(result, Exception) else result[: plans[j].fetch]
        out: list[Ranked | LmrecError] = []
        shown: list[Impression] = []
        now = time.time()
        for j, ((q, ctx), result) in enumerate(zip(requests, found)):
            if isinstance(result, Exception):
                out.append(result)
                continue
            try:
                cands = self._candidates(result, plans[j])
                pool = rerank(cands, sizes[j], self.rules, q.diversity, q.explain, self._history(ctx, cands.ids, plans[j], norms.get(j, 0.0)))
            except ValueError as exc:  # rules that need what the candidates lack: this request only
                out.append(LmrecError(f"re-rank rules: {exc}"))
                continue
            asked = q.time if q.time is not None else now
            items, slate = self._draw(pool, q, policies[j], asked)
            out.append(Ranked(tuple(self._with_fields(items, q.fields)), ctx.vector is None, ctx.version, self.model_version,
                              q.recommendation_id, policies[j].name, variants[j]))
            if q.recommendation_id and slate is not None:
                shown.append(Impression(q.recommendation_id, asked, "related" if q.related else "recommend", q.user_id, q.item_id,
                                        slate.item_ids, slate.scores, slate.propensities, slate.prefix_probabilities,
                                        slate.slate_probability, slate.explored, slate.policy, json.dumps(slate.params, sort_keys=True),
                                        self.model_version, variants[j]))
        self._log(shown, now)
        self.telemetry.latency("retrieval", time.perf_counter() - started)
        return out

    def _draw(self, pool: list[RankedItem], q: Query, policy: ExplorationPolicy, now: float) -> tuple[list[RankedItem], Slate | None]:
        """The slate the policy draws from the re-ranked ``pool`` (seeded by the recommendation id), each item
        with its propensity; greedy takes the first k (propensity 1)."""
        if not pool:
            return [], None
        ids = [i.item_id for i in pool]
        ages = np.array([now - self.created[i] if i in self.created else np.inf for i in ids]) if policy.config.new_items else None
        counts = np.array([self.shown[i] for i in ids], dtype=np.float64) if policy.config.new_items else None
        seed = q.recommendation_id or f"{q.user_id or q.item_id}:{now}"
        slate = policy.select(ids, np.array([i.score for i in pool]), q.k, seed, ages, counts)
        at = {i.item_id: i for i in pool}
        items = [dataclasses.replace(at[item], propensity=p, explored=e)
                 for item, p, e in zip(slate.item_ids, slate.propensities, slate.explored)]
        return items, slate

    def _log(self, shown: list[Impression], now: float) -> None:
        """The batch's impressions in one durable store write (before the answers leave); old ones pruned
        now and then (retention)."""
        if not shown:
            return
        self.store.log_impressions(shown)
        for imp in shown:
            self.shown.update(imp.item_ids)
            self.telemetry.impressions(imp.policy, imp.variant, len(imp.item_ids))
        if now - self._pruned_at > PRUNE_EVERY_S:
            self._pruned_at = now
            self.store.prune_impressions(now - self.config.impressions_days * 86_400)

    def _candidates(self, found: list[tuple[str, float]], need: Plan) -> Candidates:
        """What re-ranking needs of the found (item_id, score) pairs, as ``need`` says."""
        ids = [i for i, _ in found]
        scores = np.fromiter((s for _, s in found), dtype=np.float32, count=len(found))
        if not (need.vectors or need.attribute_keys is None or need.attribute_keys):
            return Candidates(ids, scores)
        known, vectors, attrs = self.index.gather(ids, need.attribute_keys)
        if not known.all():  # replaced between search and gather (a concurrent upsert): keep the rest
            ids, scores = [i for i, kept in zip(ids, known) if kept], scores[known]
        return Candidates(ids, scores, vectors if need.vectors else None, attrs)

    def _history(self, ctx: UserContext, candidates: list[str], need: Plan, norm: float) -> History | None:
        """The history's indexed events with their vectors and, with kNN fusion, each event's part of each
        candidate's kNN boost (for explanations)."""
        history = [i for i, _ in ctx.history]
        if not (need.history and history):
            return None
        known, vectors, _ = self.index.gather(history, ())
        positions = np.flatnonzero(known)
        knn = None
        if self.fusion is not None and norm > 0:
            knn = self.fusion.contributions(history, candidates, norm)[:, known]
        return History([ctx.history[j] for j in positions], vectors, len(history) - 1 - positions, knn)

    def _with_fields(self, items: list[RankedItem], fields: Sequence[str]) -> list[RankedItem]:
        if not fields:
            return items
        attrs = self.index.gather([i.item_id for i in items], None)[2] if "attributes" in fields else None
        return [dataclasses.replace(item, text=self.texts.get(item.item_id, "") if "text" in fields else None,
                                    attributes=attrs[j] if attrs is not None else None) for j, item in enumerate(items)]

    def _popular(self, n: int, exclude: set, q: Query) -> list[tuple[str, float]]:
        # items posted since the export have no interactions yet: after the catalog, so filters can reach them
        fresh = ((i, 0.0) for i in self.index.item_ids() if i not in self.known)
        return self.index.ranked(itertools.chain(self.popular, fresh), n, exclude, q.filters or None, q.allow, q.deny)

    # ------------------------------------------------------------------------------------------ items
    def item(self, item_id: str) -> ItemView | None:
        """The item as this replica serves it now (after syncing the store's writes); None when it is not
        recommendable (unknown or removed)."""
        self.sync()
        if item_id not in self.index:
            return None
        return ItemView(item_id, self.texts.get(item_id, ""), self.index.attributes(item_id),
                        "catalog" if item_id in self.known else "posted")

    def texts_of(self, item_ids: Sequence[str]) -> list[str | None]:
        """Each item's text as this replica knows it (removed items too); None for an item it never saw."""
        self.sync()
        return [self.texts.get(i) for i in item_ids]

    def sync(self) -> None:
        """Apply the store's item writes (the request path and the kNN refit thread both do, one at a time)."""
        with self._sync_lock:
            self.index.sync_from(_Feed(self), on_apply=self._key_new if self.fusion or self.history_boost else None)

    def _key_new(self, item_ids: list[str], vectors: np.ndarray) -> None:
        """Items synced from the store take the next free positions, in the index's keys and the kNN fusion's
        alike (there they read like their nearest catalog item); the history bias reaches them through it.
        The index keys them first: a search that already sees the fusion's new positions finds them keyed."""
        unkeyed = list(dict.fromkeys(i for i, p in zip(item_ids, self.index.key_positions(item_ids)) if p < 0))
        if unkeyed:
            self.index.add_keys(unkeyed)
        if self.fusion is not None:
            added = self.fusion.add(item_ids, vectors)
            if added != unkeyed:  # both follow the same order from the same start: never expected
                log.error("kNN fusion positions %s differ from the index's new keys %s", added[:5], unkeyed[:5])

    def _history_boosts(self, boosts: list | None, histories: list[list[str]], ranked: list[bool]) -> list:
        """``boosts`` (kNN's, per query, or None) with the history bias added to the recent history's items
        of the queries that rank them (``ranked``)."""
        if not any(ranked):  # the default, exclude_seen: the history is left out, the bias changes nothing
            return boosts
        out = list(boosts) if boosts is not None else [None] * len(histories)
        for j, (history, on) in enumerate(zip(histories, ranked)):
            pos = self.index.key_positions(history[-self.max_history:]) if on else np.zeros(0, dtype=np.int64)
            pos = np.unique(pos[pos >= 0])
            if not len(pos):
                continue
            values = np.full(len(pos), self.history_boost, dtype=np.float32)
            if out[j] is not None:  # one value per position: the sum of both
                pos, inverse = np.unique(np.concatenate([out[j][0], pos]), return_inverse=True)
                values = np.bincount(inverse, np.concatenate([out[j][1], values])).astype(np.float32)
            out[j] = (pos, values)
        return out

    # -------------------------------------------------------------------------------------- kNN refit
    def refit_knn(self) -> dict:
        """Refit the fusion's item-kNN on every event in the store now (also run every ``knn_refresh_s``).
        Skipped while the store holds fewer events than the artifact's kNN was fitted on (a store that was
        not seeded with the training data): until then the artifact's similarities know more."""
        counters = self.store.stats()
        events = counters["events"]
        if events < self.knn_interactions:
            return {**self.knn_refits, "skipped": f"the store holds {events} events, the artifact's kNN was fitted on {self.knn_interactions}"}
        # an append moves user_version, a user's deletion the event count: neither moved, nothing to learn
        seen = (counters.get("user_version"), events)
        if seen == self._knn_seen:
            return {**self.knn_refits, "skipped": "no event appended or deleted since the last refit"}
        started = time.perf_counter()
        self.sync()  # items posted so far take part
        stats = self.fusion.refit(self.store.interactions())
        self._knn_seen = seen
        self.knn_refits = {**stats, "seconds": round(time.perf_counter() - started, 2), "at": time.time(),
                           "count": self.knn_refits.get("count", 0) + 1}
        log.info("item-kNN refitted on the store: %s", self.knn_refits)
        return self.knn_refits

    def _refit_every(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.refit_knn()
            except Exception:  # noqa: BLE001 - the previous similarities stay in use; the next round retries
                log.exception("refitting item-kNN on the store failed; the previous similarities stay in use")


class _Feed:
    """The store's item feed as the index reads it: unit vectors when the model scores by cosine, and each
    posted item's text noted for answers that ask for it."""

    def __init__(self, retriever: Retriever):
        self.r = retriever

    def items_since(self, version: int, limit: int | None = None) -> list[ItemRecord]:
        records = self.r.store.items_since(version, limit)
        for rec in records:
            if not rec.removed and rec.text:
                self.r.texts[rec.item_id] = rec.text
            if rec.created is not None:
                self.r.created[rec.item_id] = rec.created
        if not self.r.normalize:
            return records
        return [r if r.removed or r.vector is None else dataclasses.replace(r, vector=unit_rows(r.vector)) for r in records]


def _fusion(model: ServingModel, knn_weight: float | None) -> KnnFusion | None:
    """Item-kNN fusion at ``knn_weight`` (None: the training config's ``model.knn_weight``)."""
    weight = model.knn_weight if knn_weight is None else knn_weight
    if weight <= 0:
        return None
    if model.knn is None:
        if knn_weight is not None:
            raise LmrecError(f"knn_weight={knn_weight}: the model has no item-kNN to fuse with (an artifact "
                             "exported by `lmrec export` carries one; a checkpoint served with backend torch does not)")
        log.warning("the model was trained for fusion with item-kNN (knn_weight=%g) but has none: serving "
                    "the model's scores alone; export the checkpoint to serve the fused ranking", weight)
        return None
    return KnnFusion(model.knn, model.item_ids, weight, model.temperature, model.item_text_vectors())


def _same_candidates(q: Query) -> tuple:
    """A key shared by queries whose eligible items are the same (so their vectors go in one product)."""
    try:  # JSON tells 1, 1.0 and true apart, as the index does (or more finely: harmless)
        key = json.dumps(q.filters or {}, sort_keys=True, default=repr)
    except (TypeError, ValueError):  # not JSON-like: a group of its own, the index names what is wrong
        key = object()
    return key, q.allow, q.deny


def catalog_attributes(item_ids: Sequence[str], seed_dataset: str | None, seed_config: str | None) -> list[dict]:
    """Filterable attributes per item from the dataset's item table (scalar columns other than the text)."""
    if not (seed_dataset or seed_config):
        return [{} for _ in item_ids]
    from lmrec.config import load_config
    from lmrec.data.loaders import load_dataset

    cfg = load_config([seed_config] if seed_config else [], [f"data.dataset={seed_dataset}"] if seed_dataset else [])
    items = load_dataset(cfg.data).items.set_index("item_id")
    cols = [c for c in items.columns if c not in ("text", "description", "title")]
    out = []
    for i in item_ids:
        row = items.loc[i] if i in items.index else None
        attrs = {}
        for c in cols:
            v = None if row is None else row.get(c)
            if isinstance(v, (str, int, float, bool, np.integer, np.floating)) and v == v and v != "":
                attrs[c] = v.item() if isinstance(v, (np.integer, np.floating)) else v
        out.append(attrs)
    return out
