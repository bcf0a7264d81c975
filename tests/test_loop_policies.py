"""Exploration policies: every propensity checked against an independent enumeration of the policy's random
draws (flips, tail orders, Plackett-Luce sequences), and the sampler checked against those numbers."""

import itertools
import math

import numpy as np
import pytest

from lmrec.errors import ConfigError, DataError
from lmrec.loop.policies import (
    EpsilonPolicy,
    ExplorationPolicy,
    parse_policy,
    plackett_luce_marginals,
    rng_for,
)


# ---------------------------------------------------------------------- reference enumerations
def enum_greedy(n, k):
    return {tuple(range(k)): 1.0}


def enum_epsilon(n, k, eps):
    """All flip patterns x all tail orders, straight from the policy's definition."""
    m = n - k
    out = {}
    for flips in itertools.product([0, 1], repeat=k):
        p_flips = math.prod(eps if f else 1 - eps for f in flips)
        if p_flips == 0:
            continue
        for order in itertools.permutations(range(k, n)):
            p = p_flips / math.factorial(m)
            slate, used = list(range(k)), 0
            for j, f in enumerate(flips):
                if f and used < m:
                    slate[j] = order[used]
                    used += 1
            out[tuple(slate)] = out.get(tuple(slate), 0.0) + p
    return out


def enum_pl(scores, k, temperature):
    """Every ordered k-subset with its Plackett-Luce probability (the sequential definition)."""
    w = np.exp((scores - scores.max()) / temperature)
    out = {}
    for seq in itertools.permutations(range(len(w)), k):
        p, left = 1.0, set(range(len(w)))
        for i in seq:
            p *= w[i] / math.fsum(w[sorted(left)])  # summed afresh: subtracting loses the small weights
            left.discard(i)
        out[seq] = p
    return out


def enum_new_items(n, k, weight, new_idx, base_enum):
    """Flip patterns x the base's slates on the pool without the new items the exploration slots take."""
    out = {}
    for flips in itertools.product([0, 1], repeat=k):
        p_flips = math.prod(weight if f else 1 - weight for f in flips)
        slots = [j for j, f in enumerate(flips) if f][: len(new_idx)]
        e = len(slots)
        rest = [i for i in range(n) if i not in set(new_idx[:e])]
        for base_slate, p_base in base_enum(rest, k - e).items():
            slate, it = [None] * k, iter(base_slate)
            for j in range(k):
                slate[j] = new_idx[slots.index(j)] if j in slots else rest[next(it)]
            key = tuple(slate)
            out[key] = out.get(key, 0.0) + p_flips * p_base
    return out


def marginals_of(dist, n, k):
    m = np.zeros((n, k))
    for slate, p in dist.items():
        m[list(slate), np.arange(k)] += p
    return m


def prefix_of(dist, slate):
    return np.array([sum(p for s, p in dist.items() if s[: j + 1] == slate[: j + 1]) for j in range(len(slate))])


SCORES = np.array([0.91, 0.83, 0.80, 0.62, 0.55, 0.31])


def check_policy(policy, dist, scores, k, age=None, shown=None):
    n = len(scores)
    assert sum(dist.values()) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(
        policy.marginals(scores, k, age, item_impressions=shown), marginals_of(dist, n, k), atol=1e-10, rtol=0
    )
    for slate, p in dist.items():
        prefix = policy.prefix_probabilities(scores, slate, k, age, shown)
        np.testing.assert_allclose(prefix, prefix_of(dist, slate), atol=1e-12, rtol=1e-9)
        assert prefix[-1] == pytest.approx(p, rel=1e-9, abs=1e-14)


# ----------------------------------------------------------------------------------- exactness
def test_greedy_is_the_top_k_with_propensity_one():
    policy = ExplorationPolicy({"kind": "greedy"})
    check_policy(policy, enum_greedy(6, 3), SCORES, 3)
    slate = policy.select([f"i{i}" for i in range(6)], SCORES, 3, seed_key="r1")
    assert slate.item_ids == ("i0", "i1", "i2")
    assert slate.propensities == (1.0, 1.0, 1.0) and slate.slate_probability == 1.0
    assert slate.explored == (False, False, False) and slate.policy == "greedy"


@pytest.mark.parametrize("n,k", [(6, 3), (6, 4), (5, 5), (6, 1)])
def test_epsilon_marginals_and_slate_probabilities_are_exact(n, k):
    # (6, 4): the 2-item tail runs out when three or more slots explore; (5, 5): no tail at all
    policy = ExplorationPolicy({"kind": "epsilon", "epsilon": 0.3})
    check_policy(policy, enum_epsilon(n, k, 0.3), SCORES[:n], k)


def test_epsilon_marginals_by_hand():
    # tail of 3 >= k: each slot explores with 0.3, each tail item then 0.1 at every position
    m = ExplorationPolicy({"kind": "epsilon", "epsilon": 0.3}).marginals(SCORES, 3)
    np.testing.assert_allclose(np.diag(m[:3]), [0.7, 0.7, 0.7])
    np.testing.assert_allclose(m[3:], np.full((3, 3), 0.1))
    # a 1-item tail: slot 0 takes it with 0.3; slot 1 only if slot 0 did not: 0.3 * 0.7
    m = ExplorationPolicy({"kind": "epsilon", "epsilon": 0.3}).marginals(SCORES[:3], 2)
    np.testing.assert_allclose(m, [[0.7, 0], [0, 1 - 0.21], [0.3, 0.21]])


@pytest.mark.parametrize("temperature", [0.02, 0.1, 0.5, 5.0])
def test_softmax_marginals_match_enumeration_to_1e_10(temperature):
    policy = ExplorationPolicy({"kind": "softmax", "temperature": temperature})
    check_policy(policy, enum_pl(SCORES, 3, temperature), SCORES, 3)


def test_plackett_luce_quadrature_full_permutations_and_extreme_weights():
    rng = np.random.default_rng(0)
    for logw in (rng.normal(0, 1, 6), rng.normal(0, 6, 6), np.array([0.0, -45.0, -45.0, -1e-9, -20.0, 0.0])):
        exact = marginals_of(enum_pl(logw, 6, 1.0), 6, 6)  # every rank of every item
        np.testing.assert_allclose(plackett_luce_marginals(logw, 6), exact, atol=1e-10, rtol=0)
        np.testing.assert_allclose(
            plackett_luce_marginals(logw, 3, rows=np.array([4, 1])), exact[[4, 1], :3], atol=1e-10
        )


def test_plackett_luce_large_pool_is_a_distribution():
    logw = np.random.default_rng(1).normal(0, 3, 50)
    m = plackett_luce_marginals(logw, 10)
    np.testing.assert_allclose(m.sum(axis=0), 1.0, atol=1e-10)  # each position holds exactly one item
    assert (m >= 0).all() and (m.sum(axis=1) <= 1 + 1e-10).all()
    # rank 1 has the closed form w_i / sum(w)
    w = np.exp(logw - logw.max())
    np.testing.assert_allclose(m[:, 0], w / w.sum(), atol=1e-12)


@pytest.mark.parametrize(
    "base,base_enum",
    [
        ({"kind": "greedy"}, lambda rest, kk: enum_greedy(len(rest), kk)),
        ({"kind": "epsilon", "epsilon": 0.25}, lambda rest, kk: enum_epsilon(len(rest), kk, 0.25) if kk else {(): 1.0}),
        ({"kind": "softmax", "temperature": 0.2}, lambda rest, kk: enum_pl(SCORES[rest], kk, 0.2)),
    ],
)
@pytest.mark.parametrize("new_idx", [[4], [5, 1], [2, 5, 3]])  # in the order exploration slots take them
def test_new_items_composes_exactly_with_every_base(base, base_enum, new_idx):
    age = np.full(6, 1e9)
    age[new_idx] = 3600.0
    shown = np.zeros(6)
    shown[new_idx] = np.arange(len(new_idx))  # fewest impressions first
    policy = ExplorationPolicy({**base, "new_items": {"weight": 0.4, "age_cutoff_s": 86_400}})
    dist = enum_new_items(6, 3, 0.4, new_idx, base_enum)
    check_policy(policy, dist, SCORES, 3, age, shown)


def test_new_items_order():
    age = np.array([1e9, 50.0, 1e9, 10.0, 30.0, 1e9])  # new: 1, 3, 4
    shown = np.array([0, 2, 0, 2, 1, 0])
    first = {}
    for order in ("fewest_impressions", "youngest", "score"):
        policy = ExplorationPolicy({"kind": "greedy", "new_items": {"weight": 1.0, "age_cutoff_s": 60, "order": order}})
        first[order] = policy.select(list("abcdef"), SCORES, 3, "r", age, shown).item_ids
    # weight 1: every slot explores, in the order's sequence of new items
    assert first == {"fewest_impressions": ("e", "d", "b"), "youngest": ("d", "e", "b"), "score": ("b", "d", "e")}


def test_new_items_with_no_new_item_in_the_pool_is_the_base_policy():
    policy = ExplorationPolicy(
        {"kind": "epsilon", "epsilon": 0.2, "new_items": {"weight": 0.5, "age_cutoff_s": 60, "order": "youngest"}}
    )
    base = ExplorationPolicy({"kind": "epsilon", "epsilon": 0.2})
    age = np.full(6, 3600.0)
    np.testing.assert_array_equal(policy.marginals(SCORES, 3, age), base.marginals(SCORES, 3))
    assert (
        policy.select(list("abcdef"), SCORES, 3, "r9", age).item_ids
        == base.select(list("abcdef"), SCORES, 3, "r9").item_ids
    )


# ------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize(
    "config",
    [
        {"kind": "epsilon", "epsilon": 0.3},
        {"kind": "softmax", "temperature": 0.1},
        {"kind": "softmax", "temperature": 0.1, "new_items": {"weight": 0.3, "age_cutoff_s": 100, "order": "youngest"}},
    ],
)
def test_sampler_frequencies_match_the_exact_marginals(config):
    policy = ExplorationPolicy(config)
    age = np.array([1e6, 1e6, 50.0, 1e6, 10.0, 1e6])
    rng = np.random.default_rng(7)
    draws = 10_000
    counts = np.zeros((6, 3))
    for _ in range(draws):
        idx, _ = policy.sample_positions(SCORES, 3, rng, age)
        counts[idx, np.arange(3)] += 1
    exact = policy.marginals(SCORES, 3, age)
    se = np.sqrt(exact * (1 - exact) / draws) + 1e-12
    assert (np.abs(counts / draws - exact) <= 4.5 * se).all()  # fixed seed: a deterministic check


def test_select_is_replayable_from_the_recommendation_id():
    policy = ExplorationPolicy(
        {"kind": "softmax", "temperature": 0.1, "new_items": {"weight": 0.5, "age_cutoff_s": 100, "order": "youngest"}}
    )
    ids = [f"item{i}" for i in range(6)]
    age = np.array([1e6, 1e6, 50.0, 1e6, 10.0, 1e6])
    slates = [policy.select(ids, SCORES, 3, seed_key=f"rec-{r}", item_age_s=age) for r in range(40)]
    again = [policy.select(ids, SCORES, 3, seed_key=f"rec-{r}", item_age_s=age) for r in range(40)]
    assert slates == again
    assert len({s.item_ids for s in slates}) > 5  # the key really seeds different draws
    marg = policy.marginals(SCORES, 3, age)
    for r, s in enumerate(slates):  # a reader holding the pool recomputes every logged number
        pos = [ids.index(i) for i in s.item_ids]
        assert s.propensities == tuple(marg[pos, np.arange(3)])
        assert s.prefix_probabilities == tuple(policy.prefix_probabilities(SCORES, pos, 3, age))
        assert s.slate_probability == s.prefix_probabilities[-1]
        idx, explored = policy.sample_positions(SCORES, 3, rng_for(f"rec-{r}"), age)
        assert list(idx) == pos and tuple(explored) == s.explored
    assert any(any(s.explored) for s in slates)


def test_a_pool_smaller_than_k_gives_the_whole_pool():
    slate = ExplorationPolicy({"kind": "epsilon", "epsilon": 0.5}).select(["a", "b"], [0.2, 0.1], 5, "r")
    assert slate.item_ids == ("a", "b") and slate.propensities == (1.0, 1.0)


# --------------------------------------------------------------------------------------- config
def test_config_is_strict_and_names_the_bad_key():
    assert parse_policy({"kind": "epsilon", "epsilon": 0.2}) == EpsilonPolicy(epsilon=0.2)
    with pytest.raises(ConfigError, match="policy.epsilon: Input should be less than or equal to 1"):
        parse_policy({"kind": "epsilon", "epsilon": 1.5})
    with pytest.raises(ConfigError, match="policy.temperature: Extra inputs are not permitted"):
        parse_policy({"kind": "greedy", "temperature": 0.1})  # a softmax knob on the greedy policy
    with pytest.raises(ConfigError, match="policy.kind: .*'thompson'"):
        parse_policy({"kind": "thompson"})
    with pytest.raises(ConfigError, match="policy.new_items.age_cutof_s: Extra inputs"):
        parse_policy({"kind": "greedy", "new_items": {"weight": 0.3, "age_cutof_s": 3}})


def test_bad_inputs_are_named():
    policy = ExplorationPolicy({"kind": "greedy", "new_items": {"weight": 0.3}})
    with pytest.raises(DataError, match="item_age_s"):
        policy.select(["a", "b"], [0.2, 0.1], 1, "r")
    with pytest.raises(DataError, match="pass item_impressions"):
        policy.select(["a", "b"], [0.2, 0.1], 1, "r", item_age_s=[1.0, 1e9])
    with pytest.raises(DataError, match="finite"):
        ExplorationPolicy({"kind": "greedy"}).select(["a", "b"], [0.2, float("nan")], 1, "r")
    with pytest.raises(DataError, match="pool_ids has 3"):
        ExplorationPolicy({"kind": "greedy"}).select(["a", "b", "c"], [0.2, 0.1], 1, "r")


@pytest.mark.parametrize(
    "config",
    [
        {"kind": "softmax", "temperature": 0.3},
        {"kind": "softmax", "temperature": 0.3, "new_items": {"weight": 0.3, "age_cutoff_s": 100, "order": "youngest"}},
        {"kind": "epsilon", "epsilon": 0.2, "new_items": {"weight": 0.3, "age_cutoff_s": 100, "order": "youngest"}},
    ],
)
def test_propensities_of_a_slate_equal_the_full_marginals(config):
    scores = np.random.default_rng(3).normal(0.5, 0.2, 12)
    age = np.where(np.arange(12) % 4 == 1, 10.0, 1e6)
    policy = ExplorationPolicy(config)
    full = policy.marginals(scores, 4, age)
    for positions in ([0, 1, 2, 3], [5, 1, 9, 2], [1, 7, 0, 4]):
        np.testing.assert_allclose(policy.propensities(scores, positions, 4, age), full[positions, np.arange(4)])
