"""The ranking core without Ray (lmrec.ranking): a Ranker over a real SQLite store and a small hand-made model
whose right answers are computed here independently (brute force over the vectors): personal and cold-start
rankings, filters, fields, explanations, posted and removed items, related items, and rollouts."""

import asyncio

import numpy as np
import pytest

from lmrec.artifact import ServingModel
from lmrec.errors import LmrecError, RolloutError, UnknownItemError
from lmrec.ranking.config import RankingConfig
from lmrec.ranking.encoder import Encoder
from lmrec.ranking.index import IndexConfig
from lmrec.ranking.ranker import Ranker
from lmrec.ranking.records import Query, Ranked, UserContext
from lmrec.ranking.rerank import RerankConfig
from lmrec.ranking.retriever import Retriever
from lmrec.ranking.users import LocalTower, UserStates
from lmrec.store.base import Event, ItemWrite
from lmrec.store.sqlite import SQLiteStore

IDS = ["a", "b", "c", "d", "e", "f"]
VECS = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.1, 0.9, 0], [0, 0, 1], [0.7, 0.7, 0]], dtype=np.float32)
COUNTS = np.array([5, 1, 9, 3, 7, 0])  # popularity: c, e, a, d, b, f
ATTRS = [{"color": "red"}, {"color": "red"}, {"color": "blue"}, {"color": "blue"}, {"color": "green"}, {"color": "red"}]
MODEL = "m1"


def model(version: str = MODEL, history_bias: float = 0.0, knn=None, knn_weight: float = 0.0) -> ServingModel:
    """A two-tower model small enough to rank by hand: the user vector is the mean of the history's item
    vectors, an item's text vector is given by its first word (the catalog's own texts are their names)."""
    words = {"red": [1, 0, 0], "blue": [0, 1, 0], "green": [0, 0, 1]}
    return ServingModel(
        model_version=version, item_ids=list(IDS), item_texts=[f"item {i}" for i in IDS], item_vectors=VECS.copy(),
        normalize=False, max_history=10, user_tower_kind="gru", backend="test", item_counts=COUNTS,
        _user_fn=lambda vecs, events, pad: np.stack([v[~p].mean(0) if (~p).any() else np.zeros(3) for v, p in zip(vecs, pad)]),
        _item_fn=lambda texts: np.array([words[t.split()[0]] for t in texts], dtype=np.float32),
        history_bias=history_bias, knn=knn, knn_weight=knn_weight,
    )


def build(tmp_path, rules: RerankConfig | None = None, version: str = MODEL, config: RankingConfig | None = None,
          history_bias: float = 0.0):
    store = SQLiteStore(tmp_path / "state.sqlite", model=version)
    m = model(version, history_bias)
    encoder = Encoder(m, store)
    tower = LocalTower(encoder)
    users = UserStates(store, tower, max_history=10)
    retriever = Retriever(m, store, IndexConfig(backend="exact"), attributes=ATTRS,
                          config=config or RankingConfig(rules=rules or RerankConfig()))
    return store, encoder, users, retriever, Ranker(users, retriever, tower)


def rank(ranker: Ranker, *queries: Query) -> list:
    return asyncio.run(ranker.rank(list(queries)))[0]


def brute_force(history: list[str], k: int, exclude_seen: bool = True, ok=lambda i: True) -> list[str]:
    """The reference: items by dot product with the mean of the history's vectors."""
    vecs = dict(zip(IDS, VECS))
    user = np.mean([vecs[i] for i in history], axis=0)
    candidates = [i for i in IDS if ok(i) and not (exclude_seen and i in history)]
    return sorted(candidates, key=lambda i: (-float(vecs[i] @ user), IDS.index(i)))[:k]


def ids(ranked: Ranked) -> list[str]:
    return [i.item_id for i in ranked.items]


def test_a_user_gets_the_brute_force_top_k_and_a_new_user_the_popular_items(tmp_path):
    store, _, _, _, ranker = build(tmp_path)
    store.append_events([Event("u", "a", "click", timestamp=1.0), Event("u", "c", "view", timestamp=2.0)])
    known, cold = rank(ranker, Query(3, user_id="u"), Query(3, user_id="new"))
    assert ids(known) == brute_force(["a", "c"], 3) and not known.cold_start
    assert known.history_version == store.version("u") > 0 and known.model_version == MODEL
    assert ids(cold) == ["c", "e", "a"] and cold.cold_start and cold.history_version == 0  # by interactions
    (seen,) = rank(ranker, Query(6, user_id="u", exclude_seen=False))
    assert ids(seen) == brute_force(["a", "c"], 6, exclude_seen=False)


def test_an_event_moves_the_very_next_ranking(tmp_path):
    store, _, _, _, ranker = build(tmp_path)
    store.append_events([Event("u", "a", "click", timestamp=1.0)])
    (before,) = rank(ranker, Query(2, user_id="u"))
    store.append_events([Event("u", "e", "click", timestamp=2.0), Event("u", "e", "purchase", timestamp=3.0)])
    (after,) = rank(ranker, Query(2, user_id="u"))
    assert ids(before) == brute_force(["a"], 2) and ids(after) == brute_force(["a", "e", "e"], 2)
    assert after.history_version > before.history_version


def test_filters_allow_deny_and_fields(tmp_path):
    store, _, _, _, ranker = build(tmp_path)
    store.append_events([Event("u", "a", "click", timestamp=1.0)])
    blue, allowed, denied, fields = rank(ranker, Query(2, user_id="u", filters={"color": "blue"}),
                                         Query(5, user_id="u", allow=("e", "c")), Query(2, user_id="u", deny=("b",)),
                                         Query(1, user_id="u", fields=("text", "attributes")))
    assert ids(blue) == brute_force(["a"], 2, ok=lambda i: ATTRS[IDS.index(i)]["color"] == "blue")
    assert ids(allowed) == brute_force(["a"], 5, ok=lambda i: i in ("e", "c"))
    assert ids(denied) == brute_force(["a"], 2, ok=lambda i: i != "b")
    top = fields.items[0]
    assert (top.item_id, top.text, top.attributes) == ("b", "item b", {"color": "red"})
    assert blue.items[0].text is None  # only on request
    (bad,) = rank(ranker, Query(2, user_id="u", filters={"color": {"nested": 1}}))
    assert isinstance(bad, LmrecError) and "filter 'color'" in str(bad)
    (bad_id,) = rank(ranker, Query(2, user_id="bad\tid"))
    assert isinstance(bad_id, LmrecError) and "user_id" in str(bad_id)


def test_rules_and_explanations(tmp_path):
    store, _, _, _, ranker = build(tmp_path, RerankConfig(max_per_attribute={"color": 1}))
    store.append_events([Event("u", "a", "click", timestamp=1.0), Event("u", "c", "view", timestamp=2.0)])
    (capped,) = rank(ranker, Query(3, user_id="u", explain=True))
    colors = [ATTRS[IDS.index(i)]["color"] for i in ids(capped)]
    assert len(set(colors)) == len(colors) == 3  # one item per color
    f = next(i for i in capped.items if i.item_id == "f")  # between a and c: both explain it
    assert f.explanation.reason == "similar to your recent activity"
    assert {e.item_id for e in f.explanation.events} == {"a", "c"}
    assert sum(e.contribution for e in f.explanation.events) == pytest.approx(1.0, abs=1e-3)


def test_posted_items_rank_at_once_and_removed_ones_never(tmp_path):
    store, encoder, _, retriever, ranker = build(tmp_path)
    store.append_events([Event("u", "c", "click", timestamp=1.0)])
    vector = encoder.encode_items(["blue new thing"])[0]
    store.upsert_items([ItemWrite("new", "blue new thing", {"color": "blue"}, vector)])
    (ranked,) = rank(ranker, Query(1, user_id="u", fields=("text",)))
    assert ids(ranked) == ["new"] and ranked.items[0].text == "blue new thing"  # [0, 1, 0]: the same as c
    store.remove_items(["new", "d"])
    (ranked,) = rank(ranker, Query(6, user_id="u"))
    assert "new" not in ids(ranked) and "d" not in ids(ranked)
    assert retriever.item("d") is None and retriever.item("a").source == "catalog"


def test_related_items_exclude_the_item_and_an_unknown_item_is_an_error(tmp_path):
    _, _, _, _, ranker = build(tmp_path)
    related, unknown = rank(ranker, Query(3, item_id="a"), Query(3, item_id="nope"))
    assert ids(related) == brute_force(["a"], 3)  # what a user whose one event is the item gets
    assert isinstance(unknown, UnknownItemError)


class Switching:
    """User state that, during a rollout, still answers with the old model's vectors ``times`` times."""

    def __init__(self, users: UserStates, times: int):
        self.users, self.times, self.calls = users, times, 0

    async def contexts(self, user_ids):
        self.calls += 1
        out = await self.users.contexts(user_ids)
        if self.times:
            self.times -= 1
            return [UserContext(c.user_id, c.version, c.history, c.vector, "old-model") for c in out]
        return out


def test_a_request_that_meets_two_models_is_retried_then_answered_without_the_vector(tmp_path):
    store, _, users, retriever, ranker = build(tmp_path)
    store.append_events([Event("u", "a", "click", timestamp=1.0)])
    (refused,) = retriever.rank([(Query(2, user_id="u"), UserContext("u", 1, (("a", "click"),), VECS[0], "old-model"))])
    assert isinstance(refused, RolloutError)
    tower = ranker.tower
    healed = Switching(users, times=2)
    (ranked,) = rank(Ranker(healed, retriever, tower, retries=3), Query(2, user_id="u"))
    assert ids(ranked) == brute_force(["a"], 2) and not ranked.cold_start and healed.calls == 3
    stuck = Switching(users, times=99)
    (ranked,) = rank(Ranker(stuck, retriever, tower, retries=3), Query(2, user_id="u"))
    assert ranked.cold_start and ids(ranked) == ["c", "e"] and stuck.calls == 4  # popular, minus the history


# ------------------------------------------------------------------------------------- exploration
def test_an_exploring_policy_draws_from_the_pool_with_exact_logged_propensities(tmp_path):
    """epsilon over the whole re-ranked pool: the slate depends only on the recommendation id; every shown
    item's propensity is the policy's exact marginal for that item at that position over the pool (the pool
    computed here by brute force); the impression is in the store before the answer."""
    from lmrec.loop.policies import ExplorationPolicy

    config = RankingConfig(policy={"kind": "epsilon", "epsilon": 0.5}, pool=5)
    store, _, _, _, ranker = build(tmp_path, config=config)
    store.append_events([Event("u", "a", "click", timestamp=1.0)])
    pool = brute_force(["a"], 5)
    vecs, user = dict(zip(IDS, VECS)), VECS[0]
    scores = np.array([float(vecs[i] @ user) for i in pool])
    policy = ExplorationPolicy(config.policy)
    answers = {}
    for rec in ("r1", "r2", "r3", "r4", "r5", "r6"):
        (ranked,) = rank(ranker, Query(2, user_id="u", recommendation_id=rec))
        assert ranked.recommendation_id == rec and ranked.policy == "epsilon"
        marg = policy.marginals(scores, 2)
        for position, item in enumerate(ranked.items):
            assert item.propensity == pytest.approx(marg[pool.index(item.item_id), position], abs=1e-12)
            assert item.explored == (item.item_id != pool[position])
        answers[rec] = ids(ranked)
    assert len(set(map(tuple, answers.values()))) > 1  # exploration happened somewhere
    (again,) = rank(ranker, Query(2, user_id="u", recommendation_id="r3"))
    assert ids(again) == answers["r3"]  # seeded by the recommendation id
    logged = {i.recommendation_id: i for i in store.impressions()}
    assert set(logged) == set(answers) and logged["r3"].item_ids == tuple(answers["r3"])
    assert logged["r3"].user_id == "u" and logged["r3"].policy == "epsilon" and logged["r3"].model_version == MODEL


def test_greedy_answers_carry_propensity_one_and_unnamed_queries_log_nothing(tmp_path):
    store, _, _, _, ranker = build(tmp_path)
    store.append_events([Event("u", "a", "click", timestamp=1.0)])
    (named,) = rank(ranker, Query(3, user_id="u", recommendation_id="r1"))
    (batch,) = rank(ranker, Query(3, user_id="u"))  # a batch job names no recommendation: nothing is logged
    assert [i.propensity for i in named.items] == [1.0, 1.0, 1.0] and not any(i.explored for i in named.items)
    assert ids(batch) == ids(named) == brute_force(["a"], 3)
    assert [i.recommendation_id for i in store.impressions()] == ["r1"]


def test_new_items_get_exploration_slots(tmp_path):
    """Personalize's knob: with weight 1 every slot explores, and a just-posted item (young) is shown first
    even though the user's vector points away from it."""
    config = RankingConfig(policy={"kind": "greedy", "new_items": {"weight": 1.0, "age_cutoff_s": 3600, "order": "youngest"}}, pool=6)
    store, encoder, _, _, ranker = build(tmp_path, config=config)
    store.append_events([Event("u", "a", "click", timestamp=1.0)])
    store.upsert_items([ItemWrite("fresh", "green fresh thing", {}, encoder.encode_items(["green fresh thing"])[0])])
    (ranked,) = rank(ranker, Query(3, user_id="u", recommendation_id="r1"))
    assert ids(ranked)[0] == "fresh" and ranked.items[0].explored and ranked.policy == "greedy+new_items"
    assert ids(ranked)[1:] == brute_force(["a"], 2)  # the other slots: the ranking as it was


def test_an_experiments_users_keep_their_variant_and_its_policy(tmp_path):
    experiment = {"name": "explore-vs-control", "variants": [{"name": "control", "share": 1.0},
                                                              {"name": "explore", "share": 1.0, "policy": {"kind": "softmax", "temperature": 0.1}}]}
    store, _, _, _, ranker = build(tmp_path, config=RankingConfig(experiment=experiment, pool=6))
    users = [f"user-{i}" for i in range(40)]
    store.append_events([Event(u, "a", "click", timestamp=1.0) for u in users])
    first = rank(ranker, *[Query(2, user_id=u, recommendation_id=f"{u}-1") for u in users])
    again = rank(ranker, *[Query(2, user_id=u, recommendation_id=f"{u}-2") for u in users])
    assert [r.variant for r in first] == [r.variant for r in again]  # sticky
    assert 10 <= sum(r.variant == "explore" for r in first) <= 30  # about half of 40 (a hash, not a coin: fixed)
    for r in first:
        assert r.policy == ("softmax" if r.variant == "explore" else "greedy")
    assert {i.variant for i in store.impressions()} == {"control", "explore"}


@pytest.mark.parametrize("bias", [-0.3, 0.3])
def test_a_learned_history_bias_moves_the_history_items_when_they_are_ranked(tmp_path, bias):
    store, encoder, _, _, ranker = build(tmp_path, history_bias=bias)
    store.upsert_items([ItemWrite("new", "blue new thing", {"color": "blue"}, encoder.encode_items(["blue new thing"])[0])])
    store.append_events([Event("u", "a", "click", timestamp=1.0), Event("u", "new", "click", timestamp=2.0)])
    (seen,) = rank(ranker, Query(7, user_id="u", exclude_seen=False))
    # user [0.5, 0.5, 0]: f 0.7; a, b, c, d and the posted item 0.5; e 0; a and new (the history) move by the bias
    scores = {"a": 0.5 + bias, "b": 0.5, "c": 0.5, "d": 0.5, "e": 0.0, "f": 0.7, "new": 0.5 + bias}
    got = [round(i.score, 4) for i in seen.items]
    assert got == sorted(got, reverse=True)  # best first; ties (b, c, d) in any order
    assert sorted((i.item_id, round(i.score, 4)) for i in seen.items) == sorted((i, round(v, 4)) for i, v in scores.items())
    (unseen,) = rank(ranker, Query(7, user_id="u"))  # left out as usual: the bias changes nothing else
    assert ids(unseen)[0] == "f" and set(ids(unseen)[1:4]) == {"b", "c", "d"} and ids(unseen)[4:] == ["e"]


@pytest.mark.parametrize("skip", [True, False])
def test_fused_with_a_history_bias_serves_as_evaluated(tmp_path, skip):
    """kNN fusion + the history bias in the index (boosts) give the evaluation's scores (experiments.fused over
    the model's scores with the bias): with knn_skip_history the history's items take the bias only and the kNN
    boost is scaled by its largest among the other items."""
    import dataclasses

    import scipy.sparse as sp
    import torch

    from lmrec.baselines import ItemKNN
    from lmrec.data.encode import Queries, add_history_bias
    from lmrec.experiments import fused

    sim = sp.csr_matrix(np.array([[0, .9, .1, 0, 0, .5], [.9, 0, 0, .2, 0, 0], [.1, 0, 0, .8, 0, .3],
                                  [0, .2, .8, 0, .4, 0], [0, 0, 0, .4, 0, 0], [.5, 0, .3, 0, 0, 0]], dtype=np.float32))
    knn = ItemKNN.from_similarity(sim)
    m = dataclasses.replace(model(history_bias=-0.4, knn=knn, knn_weight=2.0), knn_skip_history=skip)
    store = SQLiteStore(tmp_path / "state.sqlite", model=MODEL)
    encoder = Encoder(m, store)
    ranker = Ranker(UserStates(store, LocalTower(encoder), max_history=10), Retriever(m, store, IndexConfig(backend="exact")), LocalTower(encoder))
    history = ["c", "a"]
    store.append_events([Event("u", i, "click", timestamp=float(t)) for t, i in enumerate(history)])
    (got,) = rank(ranker, Query(6, user_id="u", exclude_seen=False))
    hist = np.array([IDS.index(i) for i in history])
    user = VECS[hist].mean(0)
    q = Queries(np.array(["u"], dtype=object), [hist], [np.ones(2, dtype=np.int64)], [np.array([0])])
    want = fused(lambda b: torch.as_tensor(add_history_bias((VECS @ user)[None].copy(), b.histories, -0.4, 10)), knn, 2.0,
                 10 if skip else 0)(q).numpy()[0]
    assert sorted((i.item_id, round(i.score, 4)) for i in got.items) == sorted((i, round(float(v), 4)) for i, v in zip(IDS, want))
    assert [i.item_id for i in got.items][0] == IDS[int(np.argmax(want))]


def test_a_posted_item_takes_the_history_bias_with_a_fusion_that_lends_nothing(tmp_path):
    """kNN fusion on, but its kNN has no similarities yet (nothing for a posted item to borrow): the posted
    item still takes a fusion position, the index keys it at the same position, and the history bias
    reaches it when the history is ranked."""
    import scipy.sparse as sp

    from lmrec.baselines import ItemKNN

    empty = ItemKNN.from_similarity(sp.csr_matrix((len(IDS), len(IDS)), dtype=np.float32))
    m = model(history_bias=-0.3, knn=empty, knn_weight=2.0)
    store = SQLiteStore(tmp_path / "state.sqlite", model=MODEL)
    encoder = Encoder(m, store)
    retriever = Retriever(m, store, IndexConfig(backend="exact"))
    ranker = Ranker(UserStates(store, LocalTower(encoder), max_history=10), retriever, LocalTower(encoder))
    store.upsert_items([ItemWrite("new", "blue new thing", {}, encoder.encode_items(["blue new thing"])[0])])
    store.append_events([Event("u", "a", "click", timestamp=1.0), Event("u", "new", "click", timestamp=2.0)])
    (seen,) = rank(ranker, Query(7, user_id="u", exclude_seen=False))
    assert retriever.fusion is not None and retriever.fusion.position["new"] == len(IDS)
    assert retriever.index.key_positions(["new"]).tolist() == [len(IDS)]
    scores = {i.item_id: round(i.score, 4) for i in seen.items}
    # user [0.5, 0.5, 0] (the mean of a and the posted blue item): both history items move by the bias
    assert scores["new"] == round(0.5 - 0.3, 4) and scores["a"] == round(0.5 - 0.3, 4) and scores["b"] == 0.5
