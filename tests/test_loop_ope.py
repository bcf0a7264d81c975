"""Off-policy evaluation from simulated logs: the candidate's propensities are recomputed from its pools,
and estimates are checked against hand formulas on those logs."""

import numpy as np
import pytest

from lmrec.config import SyntheticConfig
from lmrec.errors import DataError
from lmrec.loop.estimators import IPS, SNIPS
from lmrec.loop.logs import read_logs
from lmrec.loop.ope import candidate_feedback, evaluate
from lmrec.loop.simulator import SimConfig, Simulator, World, popularity_agent

CFG = SimConfig(
    world=SyntheticConfig(n_items=80, n_users=60, n_topics=6, events_per_user=8, seed=4),
    days=1,
    k=4,
    sessions_per_day=2.0,
    new_items_per_day=4,
    seed=5,
)
EPSILON = {"kind": "epsilon", "epsilon": 0.25}


@pytest.fixture(scope="module")
def logged():
    world = World.build(CFG)
    agent = popularity_agent(world, policy=EPSILON, pool_size=20, keep_pools=True)
    result = Simulator(world, agent).run()
    return read_logs((result.impressions, result.events)), agent.pools


def test_the_logger_evaluated_on_its_own_logs_is_its_logged_value(logged):
    logs, pools = logged
    fb = candidate_feedback(logs, pools, EPSILON, reward_model=None)
    np.testing.assert_allclose(fb.eval_pscore, fb.pscore, rtol=1e-12)
    np.testing.assert_allclose(fb.eval_pscore_prefix, fb.pscore_prefix, rtol=1e-12)
    report = evaluate(logs, pools, EPSILON, n_bootstrap=200)
    assert report.refused == {}
    for name in ("ips", "snips"):
        assert report.estimates[name].estimate == pytest.approx(logs.reward.mean())
    assert report.estimates["iips"].estimate == pytest.approx(logs.reward.sum() / report.recommendations)
    assert report.mean_weight == pytest.approx(1.0) and report.effective_sample_size == pytest.approx(report.slots)


def test_a_greedy_candidate_by_hand(logged):
    logs, pools = logged
    imp = logs.impressions
    fb = candidate_feedback(logs, pools, {"kind": "greedy"}, reward_model=None)
    # greedy shows pool item j at slot j: the logged rows that kept their greedy item have weight 1 / (1 - p_j)
    kept = ~imp["explored"].to_numpy()
    np.testing.assert_array_equal(fb.eval_pscore, kept.astype(float))
    p_greedy = imp["propensity"].to_numpy()
    hand = (logs.reward * kept / p_greedy).mean()
    assert IPS().estimate(fb) == pytest.approx(hand)
    assert SNIPS().estimate(fb) == pytest.approx((logs.reward * kept / p_greedy).sum() / (kept / p_greedy).sum())
    # rips: the greedy prefix up to slot j has logger probability 0.75 ** (j + 1) (the tail outnumbers the slots)
    prefix_kept = imp.assign(kept=kept).groupby("slate")["kept"].cumprod().to_numpy()
    hand = (logs.reward * prefix_kept / 0.75 ** (imp["position"].to_numpy() + 1)).sum() / (imp["slate"].max() + 1)
    report = evaluate(logs, pools, {"kind": "greedy"}, n_bootstrap=200)
    assert report.estimates["rips"].estimate == pytest.approx(hand)
    assert report.refused == {}


def test_a_missing_pool_is_named(logged):
    logs, pools = logged
    with pytest.raises(DataError, match="no candidate pool for logged recommendation 'popularity-1'"):
        candidate_feedback(logs, {}, EPSILON)
    with pytest.raises(DataError, match="unknown estimator"):
        evaluate(logs, pools, EPSILON, estimators=("ips", "switch"))


def test_a_candidate_pool_shorter_than_the_logged_slate_fills_no_position_past_it(logged):
    """A service's logs may hold slates longer than the candidate's pool (a request for more items than the
    replay re-ranks): the candidate puts nothing at those positions, probability 0, no error."""
    from lmrec.loop.ope import CandidatePool

    logs, pools = logged
    short = {rid: CandidatePool(p.item_ids[:3], p.scores[:3]) for rid, p in pools.items()}
    fb = candidate_feedback(logs, short, {"kind": "greedy"}, reward_model=None)
    position = logs.impressions["position"].to_numpy()
    assert (position == CFG.k - 1).any() and (fb.eval_pscore[position >= 3] == 0).all()
    full = candidate_feedback(logs, pools, {"kind": "greedy"}, reward_model=None)
    np.testing.assert_array_equal(fb.eval_pscore[position < 3], full.eval_pscore[position < 3])
    report = evaluate(logs, short, {"kind": "greedy"}, n_bootstrap=50)  # the reward model's direct term too
    assert "dr" in report.estimates or "dr" in report.refused
