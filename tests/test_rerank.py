"""Re-rank: the plan it asks retrieval for, top-k order, boosts, per-attribute caps, MMR diversity and
explanations — on hand-made candidates whose right answer is known."""

import numpy as np
import pytest

from lmrec.ranking.rerank import Candidates, History, Plan, RerankConfig, plan, rerank

# four candidates, best first: a and b are near-duplicates, c and d point elsewhere
VECS = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
ATTRS = [{"brand": "x", "sale": True}, {"brand": "x"}, {"brand": "y"}, {"brand": "x"}]


def cands(scores=(0.9, 0.8, 0.5, 0.4), vectors=True, attributes=True) -> Candidates:
    return Candidates(["a", "b", "c", "d"], np.array(scores, dtype=np.float32), VECS if vectors else None,
                      ATTRS if attributes else None)


def ids(out) -> list[str]:
    return [x.item_id for x in out]


def test_plan_fetches_only_what_the_rules_need():
    assert plan(10, RerankConfig()) == Plan(10, [], False, False)  # plain top-k: exactly k, nothing else
    assert plan(10, RerankConfig(), explain=True) == Plan(10, [], True, True)
    assert plan(10, RerankConfig(), diversity=0.3) == Plan(40, [], True, False)
    rules = RerankConfig(boosts={"sale": {"True": 0.5}}, max_per_attribute={"brand": 2}, candidates_per_item=3)
    assert plan(5, rules) == Plan(15, ["brand", "sale"], False, False)


def test_without_rules_it_is_the_top_k_in_score_order_ties_in_retrieval_order():
    cfg = RerankConfig()
    assert ids(rerank(cands(vectors=False, attributes=False), 3, cfg)) == ["a", "b", "c"]
    assert ids(rerank(cands((0.5, 0.9, 0.9, 0.1), vectors=False, attributes=False), 4, cfg)) == ["b", "c", "a", "d"]
    out = rerank(cands(), 2, cfg)
    assert out[0].to_dict() == {"item_id": "a", "score": pytest.approx(0.9)}  # no explanation unless asked
    assert rerank(Candidates([], np.zeros(0, np.float32)), 5, cfg) == []
    assert len(rerank(cands(), 10, cfg)) == 4  # k above the candidates: all of them


def test_boosts_and_caps():
    boosted = rerank(cands(), 4, RerankConfig(boosts={"brand": {"y": 0.5}}))
    assert ids(boosted) == ["c", "a", "b", "d"] and boosted[0].score == pytest.approx(1.0)
    assert ids(rerank(cands(), 2, RerankConfig(boosts={"brand": {"x": -1.0}}))) == ["c", "a"]  # negative buries
    assert ids(rerank(cands(), 3, RerankConfig(max_per_attribute={"brand": 1}))) == ["a", "c"]  # only two brands exist
    assert ids(rerank(cands(), 4, RerankConfig(max_per_attribute={"brand": 2}))) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="attributes"):
        rerank(cands(attributes=False), 2, RerankConfig(max_per_attribute={"brand": 1}))


def test_diversity_trades_relevance_for_novelty():
    cfg = RerankConfig()
    assert ids(rerank(cands(), 2, cfg, diversity=0.0)) == ["a", "b"]
    assert ids(rerank(cands(), 2, cfg, diversity=0.6)) == ["a", "c"]  # b is a near-duplicate of a
    assert ids(rerank(cands(), 2, RerankConfig(diversity=0.6))) == ["a", "c"]  # from the config too
    with pytest.raises(ValueError, match="vectors"):
        rerank(cands(vectors=False), 2, cfg, diversity=0.5)


def test_explanations_name_the_closest_recent_history_events():
    history = History([("h1", "click"), ("h2", "view")], np.array([[0.0, 1.0], [1.0, 0.0]], np.float32), np.array([1, 0]))
    out = rerank(cands(), 3, RerankConfig(explain_top=2), explain=True, history=history)
    first = out[0].explanation.to_dict()  # "a" points where h2 points
    assert first["reason"] == "similar to your recent activity"
    assert [e["item_id"] for e in first["events"]] == ["h2"] and first["events"][0]["contribution"] == pytest.approx(1.0)
    third = out[2].explanation.to_dict()  # "c" points where h1 points
    assert third["events"][0] == {"item_id": "h1", "event_type": "click", "contribution": pytest.approx(1.0)}
    for item in out:
        assert sum(e.contribution for e in item.explanation.events) == pytest.approx(1.0, abs=1e-3)
    cold = rerank(cands(), 1, RerankConfig(), explain=True, history=None)
    assert cold[0].explanation.to_dict() == {"reason": "no history yet: cold-start ranking", "events": []}


def test_recency_decay_weighs_the_latest_event_more():
    # two history events equally close to "d" (0.6, 0.8): the more recent one contributes more
    history = History([("old", "view"), ("new", "view")], np.array([[0.6, 0.8], [0.6, 0.8]], np.float32), np.array([1, 0]))
    out = rerank(Candidates(["d"], np.array([1.0], np.float32), VECS[3:]), 1, RerankConfig(recency_decay=0.5),
                 explain=True, history=history)
    events = out[0].explanation.events
    assert [e.item_id for e in events] == ["new", "old"]
    assert events[0].contribution == pytest.approx(2 / 3, abs=1e-3)


def test_config_is_validated():
    with pytest.raises(ValueError, match="diversity"):
        RerankConfig(diversity=1.5)
    with pytest.raises(ValueError, match="unknown"):
        RerankConfig.model_validate({"unknown": 1})
