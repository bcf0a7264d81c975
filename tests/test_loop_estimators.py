"""Off-policy estimators: hand-computed cases, convergence to the true value of a candidate policy on
synthetic slate logs with exact propensities, refusals, and agreement with the Open Bandit Pipeline."""

import numpy as np
import pytest

from lmrec.errors import DataError
from lmrec.loop.estimators import (
    DM,
    DR,
    ESTIMATORS,
    IIPS,
    IPS,
    RIPS,
    SNIPS,
    Feedback,
    SupportError,
    effective_sample_size,
    fit_isotonic,
    fit_platt,
    with_reward_model,
)
from lmrec.loop.policies import ExplorationPolicy


# ------------------------------------------------------------------------------------------- by hand
def hand_feedback(**kw):
    base = dict(
        reward=[1.0, 0.0, 1.0, 0.0],
        position=np.array([0, 1, 0, 1]),
        pscore=[0.5, 0.5, 0.25, 1.0],
        eval_pscore=[1.0, 0.5, 0.5, 1.0],  # weights 2, 1, 2, 1
        slate=np.array([7, 7, 9, 9]),
        q_logged=[0.5, 0.1, 0.2, 0.3],
        q_policy=[0.3, 0.3, 0.4, 0.2],
        pscore_prefix=[0.5, 0.25, 0.25, 0.25],
        eval_pscore_prefix=[1.0, 0.5, 0.5, 0.5],  # prefix weights 2, 2, 2, 2
    )
    return Feedback(**{**base, **kw})


def test_estimates_by_hand():
    fb = hand_feedback()
    assert IPS().estimate(fb) == pytest.approx((2 + 0 + 2 + 0) / 4)
    assert SNIPS().estimate(fb) == pytest.approx(4 / 6)
    assert DM().estimate(fb) == pytest.approx((0.3 + 0.3 + 0.4 + 0.2) / 4)
    # q_policy + w (r - q_logged): 0.3 + 2 * 0.5, 0.3 - 0.1, 0.4 + 2 * 0.8, 0.2 - 0.3
    assert DR().estimate(fb) == pytest.approx((1.3 + 0.2 + 2.0 - 0.1) / 4)
    assert IIPS().estimate(fb) == pytest.approx(4 / 2)  # per slate: two slates
    assert RIPS().estimate(fb) == pytest.approx((2 * 1 + 2 * 1) / 2)
    assert effective_sample_size(fb.weight) == pytest.approx(36 / 10)


def test_interval_resamples_whole_slates():
    fb = hand_feedback()
    iv = IIPS().interval(fb, n_bootstrap=4000, seed=1)
    # each slate's total is 2 (w r summed over its two slots): every resample gives exactly 2
    assert (iv.estimate, iv.lower, iv.upper) == pytest.approx((2.0, 2.0, 2.0))
    iv = IPS().interval(hand_feedback(reward=[1.0, 1.0, 0.0, 0.0]), n_bootstrap=4000, seed=1)
    # slate totals of w r: 3 and 0 over 2 slots each: resamples give 0, 0.75 or 1.5 with prob 1/4, 1/2, 1/4
    assert iv.estimate == pytest.approx(0.75) and iv.lower == 0.0 and iv.upper == 1.5
    assert set(iv.as_dict()) == {"mean", "95% CI (lower)", "95% CI (upper)"}


def test_refusals_name_what_is_wrong():
    with pytest.raises(DataError, match=r"pscore must be a probability in \(0, 1\].*rows \[2\]"):
        hand_feedback(pscore=[0.5, 0.5, 0.0, 1.0])
    with pytest.raises(DataError, match="pscore is missing or not finite at 1 rows"):
        hand_feedback(pscore=[0.5, np.nan, 0.2, 1.0])
    with pytest.raises(DataError, match="eval_pscore must be a 1-d array of 4 rows"):
        hand_feedback(eval_pscore=[1.0, 0.5])
    with pytest.raises(DataError, match="needs a reward model"):
        DR().estimate(hand_feedback(q_logged=None))
    with pytest.raises(DataError, match="needs prefix propensities"):
        RIPS().estimate(hand_feedback(pscore_prefix=None))
    # a greedy logger (propensity 1) cannot evaluate a candidate that shows something else there
    greedy = hand_feedback(pscore=[1.0, 1.0, 1.0, 1.0], eval_pscore=[1.0, 0.2, 1.0, 1.0])
    for est in (IPS(), SNIPS(), DR(), IIPS()):
        with pytest.raises(SupportError, match=r"at 1 logged slots \(first: rows \[1\]\).*probability 1"):
            est.estimate(greedy)
    assert DM().estimate(greedy) == pytest.approx(0.3)  # the reward model needs no support
    assert IPS(check_support=False).estimate(greedy) == pytest.approx(0.5)


def test_support_violation_detected_from_the_mean_weight():
    # a logger that shows item A or B at one position with 1/2 each; the candidate shows A with 1/2 and,
    # the rest of the time, an item C the logger never shows: the mean weight estimates the covered mass 1/2
    rng = np.random.default_rng(0)
    shown_a = rng.random(400) < 0.5
    fb = Feedback(
        reward=rng.random(400) < 0.3,
        position=np.zeros(400, dtype=np.int64),
        pscore=np.full(400, 0.5),
        eval_pscore=np.where(shown_a, 0.5, 0.0),
    )
    with pytest.raises(SupportError, match="position 0: the mean importance weight is 0.4"):
        SNIPS().estimate(fb)


def test_dense_arrays_as_in_obp():
    # two rounds, three actions, two positions
    dist = np.zeros((2, 3, 2))
    dist[0, :, 0] = [0.5, 0.5, 0.0]
    dist[1, :, 1] = [0.0, 0.25, 0.75]
    q = np.full((2, 3, 2), 0.1)
    q[1, 2, 1] = 0.5
    args = dict(reward=np.array([1.0, 0.0]), action=np.array([1, 2]), position=np.array([0, 1]))
    args.update(pscore=np.array([0.25, 0.5]), action_dist=dist)
    assert IPS().estimate_policy_value(**args) == pytest.approx((0.5 / 0.25 * 1 + 0) / 2)
    # DM: row 0 expects 0.1, row 1 expects 0.25 * 0.1 + 0.75 * 0.5
    assert DM().estimate_policy_value(**args, estimated_rewards_by_reg_model=q) == pytest.approx((0.1 + 0.4) / 2)
    with pytest.raises(DataError, match="action_dist must have shape"):
        IPS().estimate_policy_value(**{**args, "action_dist": dist[0]})


# -------------------------------------------------------------------------------- synthetic logs
THETA = np.array([1.0, 0.6, 0.35])  # position-based examination


def synthetic_world(seed=0, types=12, pool=6):
    rng = np.random.default_rng(seed)
    attr = rng.uniform(0.05, 0.6, size=(types, pool))  # the true click probability when examined
    logger_scores = attr + rng.normal(0, 0.15, size=attr.shape)  # a weaker model's view
    cand_scores = np.log(attr) + rng.normal(0, 0.2, size=attr.shape)  # the candidate's
    return attr, logger_scores, cand_scores


def item_marginals(policy, scores, k):
    """(pool, k) marginals indexed by item, for a policy over the pool in its own best-first order."""
    order = np.argsort(-scores, kind="stable")
    out = np.zeros((len(scores), k))
    out[order] = policy.marginals(scores[order], k)
    return out, order


def synthetic_logs(n_slates=20_000, seed=1, logger_cfg=None, cand_cfg=None):
    attr, logger_scores, cand_scores = synthetic_world()
    types, pool = attr.shape
    k = len(THETA)
    logger = ExplorationPolicy(logger_cfg or {"kind": "softmax", "temperature": 0.25})
    cand = ExplorationPolicy(cand_cfg or {"kind": "softmax", "temperature": 0.3})
    m_log = np.stack([item_marginals(logger, logger_scores[t], k)[0] for t in range(types)])
    m_cand = np.stack([item_marginals(cand, cand_scores[t], k)[0] for t in range(types)])
    rng = np.random.default_rng(seed)
    ctx = rng.integers(0, types, n_slates)
    slates = np.empty((n_slates, k), dtype=np.int64)
    for t in range(types):  # draw each type's slates with the logging policy itself
        rows = np.flatnonzero(ctx == t)
        order = np.argsort(-logger_scores[t], kind="stable")
        for r in rows:
            slates[r] = order[logger.sample_positions(logger_scores[t][order], k, rng)[0]]
    prefix_cache = {}

    def prefixes(t, slate):
        key = (t, tuple(slate))
        if key not in prefix_cache:
            out = []
            for policy, scores in ((logger, logger_scores[t]), (cand, cand_scores[t])):
                order = np.argsort(-scores, kind="stable")
                rank = np.argsort(order)  # item -> pool position
                out.append(policy.prefix_probabilities(scores[order], rank[list(slate)], k))
            prefix_cache[key] = out
        return prefix_cache[key]

    pre = [prefixes(t, s) for t, s in zip(ctx, slates)]
    rows_ctx = np.repeat(ctx, k)
    item = slates.ravel()
    pos = np.tile(np.arange(k), n_slates)
    clicks = rng.random(len(item)) < THETA[pos] * attr[rows_ctx, item]
    truth_slot = np.mean([(m_cand[t] * attr[t][:, None] * THETA).sum() for t in range(types)]) / k
    return dict(
        attr=attr,
        cand_scores=cand_scores,
        m_log=m_log,
        m_cand=m_cand,
        ctx=rows_ctx,
        item=item,
        pos=pos,
        slate=np.repeat(np.arange(n_slates), k),
        reward=clicks.astype(float),
        pscore=m_log[rows_ctx, item, pos],
        eval_pscore=m_cand[rows_ctx, item, pos],
        pscore_prefix=np.concatenate([p[0] for p in pre]),
        eval_pscore_prefix=np.concatenate([p[1] for p in pre]),
        truth_slot=truth_slot,
        k=k,
    )


@pytest.fixture(scope="module")
def logs():
    return synthetic_logs()


def feedback_of(logs, q=None):
    fb = Feedback(
        reward=logs["reward"],
        position=logs["pos"],
        pscore=logs["pscore"],
        eval_pscore=logs["eval_pscore"],
        slate=logs["slate"],
        pscore_prefix=logs["pscore_prefix"],
        eval_pscore_prefix=logs["eval_pscore_prefix"],
    )
    if q is None:
        return fb
    ctx, pos = logs["ctx"], logs["pos"]
    q_all = q(ctx, pos)  # (rows, pool): the model's prediction for every pool item at the row's position
    return with_reward_model(
        fb, q_all[np.arange(len(ctx)), logs["item"]], (q_all * logs["m_cand"][ctx, :, pos]).sum(axis=1)
    )


def test_every_estimator_converges_to_the_true_value(logs):
    truth = logs["truth_slot"]
    true_q = lambda ctx, pos: THETA[pos][:, None] * logs["attr"][ctx]  # noqa: E731
    fb = feedback_of(logs, true_q)
    for name, est in ESTIMATORS.items():
        scale = logs["k"] if name in ("iips", "rips") else 1  # slate estimators: the sum over positions
        iv = est().interval(fb, alpha=0.001, n_bootstrap=300, seed=0)
        assert iv.lower <= truth * scale <= iv.upper, (name, iv, truth * scale)
        assert abs(iv.estimate / (truth * scale) - 1) < 0.04, (name, iv.estimate, truth * scale)
    assert 0.3 * len(fb.reward) < effective_sample_size(fb.weight) < len(fb.reward)


def test_dm_and_dr_with_calibrated_candidate_scores(logs):
    """The reward model is the candidate's own scores, calibrated on the logs (isotonic x position, or Platt)."""
    truth = logs["truth_slot"]
    ctx, item, pos = logs["ctx"], logs["item"], logs["pos"]
    scores = logs["cand_scores"]
    iso = fit_isotonic(scores[ctx, item], logs["reward"], pos)
    platt = fit_platt(scores[ctx, item], logs["reward"], pos)
    for model in (iso, platt):
        q = lambda c, p, m=model: m.predict(scores[c], np.broadcast_to(p[:, None], (len(p), scores.shape[1])))  # noqa: E731
        fb = feedback_of(logs, q)
        assert abs(DR().estimate(fb) / truth - 1) < 0.04
        assert abs(DM().estimate(fb) / truth - 1) < 0.15  # biased by the scores' noise, as a model would be
    # the position intercepts recover the examination ratios' order
    assert platt.b[0] > platt.b[1] > platt.b[2]
    np.testing.assert_allclose(iso.position_factor / iso.position_factor[0], THETA / THETA[0], rtol=0.1)


def test_greedy_candidate_from_exploration_logs(logs):
    """A deterministic candidate is fine to evaluate when the logger explored everywhere."""
    greedy = synthetic_logs(n_slates=8000, cand_cfg={"kind": "greedy"})
    fb = feedback_of(greedy)
    for est in (IPS(), SNIPS()):
        assert abs(est.estimate(fb) / greedy["truth_slot"] - 1) < 0.06


def test_epsilon_logger_softmax_candidate_outside_its_support_is_refused():
    # an epsilon logger never shows a top-k item at another top-k position; a softmax candidate does
    with pytest.raises(SupportError, match="support violation at position"):
        fb = feedback_of(synthetic_logs(n_slates=3000, logger_cfg={"kind": "epsilon", "epsilon": 0.2}))
        SNIPS().estimate(fb)


# ------------------------------------------------------------------------------------ against OBP
def test_same_estimates_as_open_bandit_pipeline(logs):
    obp_ope = pytest.importorskip("obp.ope", reason="obp (the Open Bandit Pipeline) is not installed")
    ctx, pos, item = logs["ctx"], logs["pos"], logs["item"]
    dist = logs["m_cand"][ctx]  # (rows, pool, k)
    q = THETA[None, None, :] * logs["attr"][ctx][:, :, None] * 0.9  # a slightly-off reward model
    dense = dict(reward=logs["reward"], action=item, position=pos, pscore=logs["pscore"], action_dist=dist)
    ours = {
        "ips": IPS().estimate_policy_value(**dense),
        "snips": SNIPS().estimate_policy_value(**dense),
        "dm": DM().estimate_policy_value(**dense, estimated_rewards_by_reg_model=q),
        "dr": DR().estimate_policy_value(**dense, estimated_rewards_by_reg_model=q),
    }
    theirs = {
        "ips": obp_ope.InverseProbabilityWeighting().estimate_policy_value(**dense),
        "snips": obp_ope.SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(**dense),
        "dm": obp_ope.DirectMethod().estimate_policy_value(
            position=pos, action_dist=dist, estimated_rewards_by_reg_model=q
        ),
        "dr": obp_ope.DoublyRobust().estimate_policy_value(**dense, estimated_rewards_by_reg_model=q),
    }
    slate = dict(slate_id=logs["slate"], reward=logs["reward"], position=pos)
    fb = feedback_of(logs)
    ours["iips"] = IIPS().estimate(fb)
    theirs["iips"] = obp_ope.SlateIndependentIPS(len_list=logs["k"]).estimate_policy_value(
        **slate, pscore_item_position=logs["pscore"], evaluation_policy_pscore_item_position=logs["eval_pscore"]
    )
    ours["rips"] = RIPS().estimate(fb)
    theirs["rips"] = obp_ope.SlateRewardInteractionIPS(len_list=logs["k"]).estimate_policy_value(
        **slate, pscore_cascade=logs["pscore_prefix"], evaluation_policy_pscore_cascade=logs["eval_pscore_prefix"]
    )
    for name in ours:
        assert ours[name] == pytest.approx(float(theirs[name]), rel=1e-12), name
