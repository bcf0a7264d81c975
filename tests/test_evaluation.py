"""Full-ranking evaluator: every metric checked against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmrec.data.encode import Queries
from lmrec.evaluation import evaluate, format_table


def make_queries(targets, histories=None) -> Queries:
    """Query q gets user id q, so a score function can look its row up in a fixed matrix."""
    n = len(targets)
    histories = histories if histories is not None else [[] for _ in range(n)]
    hist = [np.asarray(h, dtype=np.int64) for h in histories]
    return Queries(
        np.arange(n),
        hist,
        [np.ones(len(h), dtype=np.int64) for h in hist],
        [np.asarray(t, dtype=np.int64) for t in targets],
    )


def run(scores, targets, histories=None, ks=(10,), **kwargs) -> dict:
    """Evaluate a fixed (Q, N) score matrix; one row per query."""
    scores = np.asarray(scores, dtype=np.float64)
    queries = make_queries(targets, histories)
    return evaluate(lambda b: scores[b.user_ids], queries, scores.shape[1], ks=ks, **kwargs)


def descending(n_items: int, n_queries: int = 1) -> np.ndarray:
    """Item i scored n-i, so item i sits at rank i for every query."""
    return np.tile(np.arange(n_items, 0, -1, dtype=np.float64), (n_queries, 1))


def inv_log2(rank: int) -> float:
    return 1.0 / math.log2(rank + 2)


# ------------------------------------------------------------------------------------------ one target
@pytest.mark.parametrize(
    "target, k, hit, ndcg, mrr",
    [
        (0, 5, 1.0, 1.0, 1.0),  # rank 0: 1/log2(2) = 1
        (3, 5, 1.0, 0.430677, 0.25),  # rank 3: 1/log2(5) = 0.430677, 1/(3+1)
        (7, 5, 0.0, 0.0, 0.0),  # rank 7 >= K: nothing
        (7, 10, 1.0, 0.315465, 0.125),  # rank 7 < 10: 1/log2(9) = 0.315465, 1/8
        (4, 4, 0.0, 0.0, 0.0),  # rank K exactly is outside the top K
    ],
)
def test_single_target_rank(target, k, hit, ndcg, mrr):
    m = run(descending(10), [[target]], ks=(k,))["metrics"]
    assert m[f"recall@{k}"] == pytest.approx(hit)
    assert m[f"hit@{k}"] == pytest.approx(hit)
    assert m[f"ndcg@{k}"] == pytest.approx(ndcg, abs=1e-6)
    assert m[f"mrr@{k}"] == pytest.approx(mrr)


def test_query_metrics_are_means_over_queries():
    # targets at ranks 0, 3, 7 with K=5: recall (1+1+0)/3, ndcg (1 + 0.430677 + 0)/3, mrr (1 + 0.25)/3
    report = run(descending(10, 3), [[0], [3], [7]], ks=(5,))
    m = report["metrics"]
    assert m["recall@5"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["ndcg@5"] == pytest.approx((1 + inv_log2(3)) / 3, abs=1e-6)
    assert m["mrr@5"] == pytest.approx(1.25 / 3, abs=1e-6)
    # AUC of a target at rank r among 9 negatives = (9 - r)/9: (9 + 6 + 2)/27
    assert m["auc"] == pytest.approx(17 / 27, abs=1e-6)
    assert (report["queries"], report["targets"], report["items"]) == (3, 3, 10)
    assert report["exclude_seen"] is False


# ------------------------------------------------------------------------------------ several targets
def test_multiple_targets():
    # item i at rank i; T = {1, 4, 8}
    m = run(descending(10), [[1, 4, 8]], ks=(2, 5))["metrics"]
    # K=5: hits at ranks 1 and 4 -> recall 2/3
    #   DCG = 1/log2(3) + 1/log2(6) = 0.630930 + 0.386853 = 1.017783
    #   IDCG(min(3, 5) = 3) = 1 + 0.630930 + 0.5 = 2.130930 -> NDCG 0.477624
    assert m["recall@5"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["hit@5"] == 1.0
    ideal = 1 + inv_log2(1) + inv_log2(2)
    assert m["ndcg@5"] == pytest.approx((inv_log2(1) + inv_log2(4)) / ideal, abs=1e-6)
    assert m["ndcg@5"] == pytest.approx(0.477624, abs=1e-6)
    assert m["mrr@5"] == pytest.approx(0.5)  # best rank 1
    # K=2: one hit at rank 1 -> recall 1/3; IDCG(min(3, 2) = 2) = 1.630930 -> NDCG 0.630930/1.630930
    assert m["recall@2"] == pytest.approx(1 / 3, abs=1e-6)
    assert m["ndcg@2"] == pytest.approx(0.386853, abs=1e-6)
    assert m["mrr@2"] == pytest.approx(0.5)
    # AUC per target over the 7 non-targets {0,2,3,5,6,7,9}:
    #   target 1: 6 below; target 4: 4 below (5,6,7,9); target 8: 1 below (9) -> (6+4+1)/21
    assert m["auc"] == pytest.approx(11 / 21, abs=1e-6)


def test_targets_ranked_above_each_other_reach_ndcg_one():
    # T = {0, 1} at ranks 0 and 1: the ideal list
    m = run(descending(10), [[0, 1]], ks=(1, 10))["metrics"]
    assert m["ndcg@10"] == pytest.approx(1.0)
    assert m["recall@10"] == pytest.approx(1.0)
    # K=1: one of two targets fits -> recall 1/2, and it is the ideal top-1
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["ndcg@1"] == pytest.approx(1.0)


def test_repeated_target_counts_once():
    # T = [3, 3] is the set {3}: one target at rank 3
    report = run(descending(10), [[3, 3]], ks=(5,))
    assert report["targets"] == 1
    assert report["metrics"]["recall@5"] == pytest.approx(1.0)
    assert report["metrics"]["ndcg@5"] == pytest.approx(inv_log2(3), abs=1e-6)


# ------------------------------------------------------------------------------------------------ ties
def test_target_tied_with_non_targets_is_ranked_last_among_them():
    # target 2 (score 2) ties with non-targets 1 and 3; item 0 is higher: rank 1 + 2 = 3
    m = run([[3, 2, 2, 2, 1, 0]], [[2]], ks=(3, 4))["metrics"]
    assert m["hit@3"] == 0.0
    assert m["hit@4"] == 1.0
    assert m["ndcg@4"] == pytest.approx(inv_log2(3), abs=1e-6)  # 1/log2(5)
    assert m["mrr@4"] == pytest.approx(0.25)
    # AUC over 5 negatives: 2 below (items 4, 5), 2 tied (half each), 1 above -> 3/5
    assert m["auc"] == pytest.approx(0.6)


def test_targets_tied_with_each_other_take_distinct_places():
    # targets 0 and 1 tie only with each other: places 0 and 1, never both at 0
    m = run([[5, 5, 0, 0, 0]], [[0, 1]], ks=(1, 2))["metrics"]
    assert m["recall@1"] == pytest.approx(0.5)  # a top-1 list holds one of two targets
    assert m["ndcg@1"] == pytest.approx(1.0)  # and it is ideal: DCG 1 / IDCG(1) 1
    assert m["ndcg@2"] == pytest.approx(1.0)
    assert m["mrr@2"] == pytest.approx(1.0)
    # both targets also tie with non-target 2: places 1 and 2 (after the tied non-target)
    m = run([[1, 1, 1, 0, 0]], [[0, 1]], ks=(1, 2, 3))["metrics"]
    assert m["recall@1"] == 0.0
    # K=2: one hit at rank 1 -> 0.630930 / IDCG(2) 1.630930
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx(0.386853, abs=1e-6)
    # K=3: hits at ranks 1, 2 -> (0.630930 + 0.5) / 1.630930 = 0.693426
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["ndcg@3"] == pytest.approx(0.693426, abs=1e-6)
    assert m["mrr@3"] == pytest.approx(0.5)
    # AUC per target over negatives {2, 3, 4}: 2 below + 1 tied at half -> 2.5/3
    assert m["auc"] == pytest.approx(2.5 / 3, abs=1e-6)


def test_constant_scores_earn_nothing():
    # every non-target ties with the target: rank = N - 1 = 4 (one target); 3 and 4 (two targets:
    # 3 tied non-targets first, then the targets in item order)
    m = run(np.zeros((2, 5)), [[2], [1, 3]], ks=(1, 3, 4))["metrics"]
    for k in (1, 3):  # K <= N - |T|: no hits at all
        assert m[f"recall@{k}"] == 0.0
        assert m[f"ndcg@{k}"] == 0.0
        assert m[f"mrr@{k}"] == 0.0
    # K=4: the first query still misses (rank 4); the second hits once, at rank 3 -> recall (0 + 1/2)/2
    assert m["recall@4"] == pytest.approx(0.25)
    assert m["mrr@4"] == pytest.approx(0.25 / 2)
    assert m["auc"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------- AUC
def test_auc_by_hand():
    # query 0: target 2 (0.5) against negatives 0.9, 0.1, 0.5, 0.3 -> below 2, tie 1 -> 2.5/4 = 0.625
    # query 1: target 0 (0.9) above all 4 negatives -> 1.0; mean (0.625 + 1)/2 = 0.8125
    scores = [[0.9, 0.1, 0.5, 0.5, 0.3], [0.9, 0.1, 0.5, 0.5, 0.3]]
    m = run(scores, [[2], [0]], ks=(1, 3))["metrics"]
    assert m["auc"] == pytest.approx(0.8125)
    # query 0's target is at rank 2 (one higher + one tie): misses K=1, hits K=3
    assert m["recall@1"] == pytest.approx(0.5)  # query 1 only
    assert m["recall@3"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------- exclude_seen
SCORES_5 = [[0.9, 0.1, 0.5, 0.5, 0.3]]


def test_exclude_seen_removes_history_from_ranking_and_auc():
    # without exclusion target 2 is at rank 2 (item 0 higher, item 3 tied), AUC 0.625
    plain = run(SCORES_5, [[2]], histories=[[0, 3]], ks=(1,))
    assert plain["metrics"]["recall@1"] == 0.0
    assert plain["metrics"]["auc"] == pytest.approx(0.625)
    # history {0, 3} removed: remaining items 1 (0.1), 2 (0.5), 4 (0.3) -> target at rank 0;
    # AUC negatives are {1, 4}, both below -> 1.0
    seen = run(SCORES_5, [[2]], histories=[[0, 3]], ks=(1,), exclude_seen=True)
    assert seen["exclude_seen"] is True
    assert seen["metrics"]["recall@1"] == 1.0
    assert seen["metrics"]["ndcg@1"] == 1.0
    assert seen["metrics"]["auc"] == pytest.approx(1.0)


def test_target_in_history_is_a_miss_when_seen_items_are_excluded():
    # target 0 is the top item, but it is in the history: a miss even at K = N, AUC 0
    m = run(SCORES_5, [[0]], histories=[[0]], ks=(1, 5), exclude_seen=True)["metrics"]
    assert m["recall@5"] == 0.0
    assert m["mrr@5"] == 0.0
    assert m["auc"] == 0.0
    # a second, unseen target still counts: T = {0, 2}, history {0}; target 2 at rank 1 (item 3 tied)
    m = run(SCORES_5, [[0, 2]], histories=[[0]], ks=(5,), exclude_seen=True)["metrics"]
    assert m["recall@5"] == pytest.approx(0.5)
    # DCG 1/log2(3) over IDCG(2) = 1 + 1/log2(3)
    assert m["ndcg@5"] == pytest.approx(inv_log2(1) / (1 + inv_log2(1)), abs=1e-6)


def test_excluded_items_do_not_tie_with_a_minus_inf_target():
    # target 0 is NaN (-inf); history {1, 2} is excluded. Left in the ranking: 3, 4 (0.0), then 0
    # -> rank 2, a hit at K=3 with NDCG 1/log2(4) = 0.5; AUC 0 (both negatives above)
    m = run([[np.nan, 5, 5, 0, 0]], [[0]], histories=[[1, 2]], ks=(3,), exclude_seen=True)["metrics"]
    assert m["recall@3"] == 1.0
    assert m["ndcg@3"] == pytest.approx(0.5)
    assert m["auc"] == 0.0


def test_exclusion_does_not_touch_the_callers_scores():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.5, 0.3]])
    before = scores.clone()
    evaluate(lambda b: scores, make_queries([[2]], [[0, 3]]), 5, ks=(1,), exclude_seen=True)
    assert torch.equal(scores, before)


# --------------------------------------------------------------------------------------------- coverage
def test_coverage():
    # query 0 ranks items 0..5 in order, query 1 in reverse
    scores = np.stack([np.arange(6, 0, -1), np.arange(1, 7)]).astype(float)
    m = run(scores, [[0], [5]], ks=(1, 2, 3))["metrics"]
    assert m["coverage@1"] == pytest.approx(2 / 6, abs=1e-6)  # {0, 5}
    assert m["coverage@2"] == pytest.approx(4 / 6, abs=1e-6)  # {0, 1, 5, 4}
    assert m["coverage@3"] == pytest.approx(1.0)
    # with histories {0} and {5} excluded the top-1 lists are {1} and {4}
    m = run(scores, [[1], [4]], histories=[[0], [5]], ks=(1,), exclude_seen=True)["metrics"]
    assert m["coverage@1"] == pytest.approx(2 / 6, abs=1e-6)


def test_coverage_lists_no_excluded_items():
    # 3 items, 2 excluded: the top-3 list holds only item 2
    m = run([[3.0, 2.0, 1.0]], [[2]], histories=[[0, 1]], ks=(3,), exclude_seen=True)["metrics"]
    assert m["coverage@3"] == pytest.approx(1 / 3, abs=1e-6)


def test_k_larger_than_catalog():
    m = run(descending(4), [[3]], ks=(10,))["metrics"]
    assert m["recall@10"] == 1.0
    assert m["ndcg@10"] == pytest.approx(inv_log2(3), abs=1e-6)
    assert m["coverage@10"] == 1.0


# ------------------------------------------------------------------------------------------- warm/cold
def test_warm_cold_breakdown_is_per_target():
    # items 1, 3, 5 never occur in training; item i at rank i for every query
    train_counts = np.array([3, 0, 2, 0, 1, 0])
    report = run(descending(6, 3), [[0, 1], [3], [4]], ks=(2,), train_counts=train_counts)
    warm, cold = report["warm"], report["cold"]
    # warm targets: 0 (rank 0, query 0) and 4 (rank 4, query 2)
    assert warm["targets"] == 2
    assert warm["metrics"]["recall@2"] == pytest.approx(0.5)
    assert warm["metrics"]["ndcg@2"] == pytest.approx(0.5)  # (1 + 0)/2
    assert warm["metrics"]["mrr@2"] == pytest.approx(0.5)  # (1 + 0)/2
    # AUC: target 0 above its 4 negatives {2,3,4,5} -> 1; target 4 above 1 of 5 -> 0.2; mean 0.6
    assert warm["metrics"]["auc"] == pytest.approx(0.6)
    # cold targets: 1 (rank 1: target 0 is higher) and 3 (rank 3)
    assert cold["targets"] == 2
    assert cold["metrics"]["recall@2"] == pytest.approx(0.5)
    assert cold["metrics"]["ndcg@2"] == pytest.approx(inv_log2(1) / 2, abs=1e-6)  # 0.315465
    assert cold["metrics"]["mrr@2"] == pytest.approx(0.25)  # (1/2 + 0)/2
    # AUC: target 1 above all of {2,3,4,5} -> 1; target 3 above {4,5} of 5 -> 0.4; mean 0.7
    assert cold["metrics"]["auc"] == pytest.approx(0.7)
    # the query-level numbers are unchanged by the breakdown
    assert report["targets"] == 4
    assert report["metrics"]["recall@2"] == pytest.approx((1 + 0 + 0) / 3, abs=1e-6)


def test_no_breakdown_without_train_counts():
    report = run(descending(6), [[0]])
    assert "warm" not in report and "cold" not in report


def test_empty_side_of_breakdown():
    report = run(descending(6), [[0]], ks=(2,), train_counts=np.ones(6))
    assert report["warm"]["targets"] == 1
    assert report["cold"] == {"targets": 0, "metrics": {}}


# ------------------------------------------------------------------------------------------ inputs
def test_nan_scores_count_as_minus_inf():
    # target 0 is NaN: below everything -> rank 3, AUC 0
    m = run([[np.nan, 1.0, 0.0, 2.0]], [[0]], ks=(3, 4))["metrics"]
    assert m["recall@3"] == 0.0
    assert m["ndcg@4"] == pytest.approx(inv_log2(3), abs=1e-6)
    assert m["auc"] == 0.0
    # target 1: only item 3 is higher; the NaN item is below it -> rank 1, AUC 2/3
    m = run([[np.nan, 1.0, 0.0, 2.0]], [[1]], ks=(1, 2))["metrics"]
    assert m["recall@1"] == 0.0
    assert m["mrr@2"] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx(2 / 3, abs=1e-6)
    # two NaNs tie: target 0 is below item 2 and tied with item 1 -> rank 2, AUC (0 + 0.5)/2
    m = run([[np.nan, np.nan, 1.0]], [[0]], ks=(2, 3))["metrics"]
    assert m["recall@2"] == 0.0
    assert m["recall@3"] == 1.0
    assert m["auc"] == pytest.approx(0.25)


@pytest.mark.parametrize("shape", [(1, 6), (1, 4), (2, 5), (5,)])
def test_wrong_score_shape_raises(shape):
    queries = make_queries([[0]])
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda b: np.zeros(shape), queries, 5, ks=(1,))


def test_torch_and_numpy_scores_agree():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(6, 12)).astype(np.float64)
    queries = make_queries([[i % 12, (3 * i + 1) % 12] for i in range(6)])
    a = evaluate(lambda b: scores[b.user_ids], queries, 12, ks=(3, 5))
    b = evaluate(lambda b: torch.from_numpy(scores[b.user_ids]), queries, 12, ks=(3, 5))
    assert a["metrics"] == b["metrics"]


def test_batch_size_does_not_change_the_report():
    rng = np.random.default_rng(7)
    n_q, n_items = 23, 40
    scores = rng.integers(0, 6, size=(n_q, n_items)).astype(np.float64)  # many ties on purpose
    scores[rng.random(scores.shape) < 0.05] = np.nan
    targets = [rng.choice(n_items, size=rng.integers(1, 4), replace=False) for _ in range(n_q)]
    histories = [rng.choice(n_items, size=rng.integers(0, 8), replace=False) for _ in range(n_q)]
    train_counts = rng.integers(0, 3, size=n_items)
    kwargs = dict(ks=(1, 5, 20), exclude_seen=True, train_counts=train_counts)
    queries = make_queries(targets, histories)
    one = evaluate(lambda b: scores[b.user_ids], queries, n_items, batch_size=1, **kwargs)
    big = evaluate(lambda b: scores[b.user_ids], queries, n_items, batch_size=1000, **kwargs)
    for key in ("metrics", "warm", "cold"):
        got = one[key]["metrics"] if key != "metrics" else one[key]
        want = big[key]["metrics"] if key != "metrics" else big[key]
        assert got == pytest.approx(want, abs=2e-6)
    assert one["targets"] == big["targets"]
    assert one["warm"]["targets"] == big["warm"]["targets"]


def test_empty_queries():
    report = run(np.zeros((0, 5)), [], ks=(2,))
    assert report["queries"] == 0 and report["targets"] == 0
    assert report["metrics"]["recall@2"] == 0.0
    assert report["metrics"]["coverage@2"] == 0.0


# -------------------------------------------------------------------------------------------- table
def test_format_table():
    row = {"model": "popularity", "dataset": "scientific", "split": "test", "metrics": {"ndcg@10": 0.0172}}
    reports = [row]
    lines = format_table(reports, columns=("ndcg@10", "auc")).splitlines()
    assert lines[0].split() == ["dataset", "model", "split", "ndcg@10", "auc"]
    assert lines[2].split() == ["scientific", "popularity", "test", "0.0172", "-"]
    assert format_table([], columns=("auc",)).splitlines()[0].split() == ["dataset", "model", "split", "auc"]


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_every_rank_and_auc_match_a_per_target_count(exclude_seen):
    """Random integer scores (many ties), one to three targets per query, histories: each target's rank and
    AUC as the module docstring defines them, counted item by item, against the evaluator's metrics."""
    rng = np.random.default_rng(0)
    n_q, n_items = 40, 30
    scores = rng.integers(0, 12, (n_q, n_items)).astype(np.float64)
    scores[3, :] = np.nan  # NaN counts as -inf
    targets = [rng.choice(n_items, rng.integers(1, 4), replace=False) for _ in range(n_q)]
    histories = [rng.choice(n_items, rng.integers(0, 5), replace=False) for _ in range(n_q)]
    ks = (1, 5, 10)
    report = run(scores, targets, histories, ks=ks, exclude_seen=exclude_seen)
    want = {f"ndcg@{k}": 0.0 for k in ks} | {"auc": 0.0}
    for q in range(n_q):
        s = np.nan_to_num(scores[q], nan=-np.inf)
        excl = np.zeros(n_items, bool)
        if exclude_seen:
            excl[histories[q]] = True
            s = np.where(excl, -np.inf, s)
        tset = set(targets[q].tolist())
        ranks, aucs = [], []
        for t in sorted(tset):
            if excl[t]:
                ranks.append(n_items)
                aucs.append(0.0)
                continue
            higher = sum(1 for j in range(n_items) if not excl[j] and s[j] > s[t])
            tied_neg = sum(1 for j in range(n_items) if not excl[j] and j not in tset and s[j] == s[t])
            tied_earlier = sum(1 for j in tset if j < t and not excl[j] and s[j] == s[t])
            ranks.append(higher + tied_neg + tied_earlier)
            negs = [j for j in range(n_items) if not excl[j] and j not in tset]
            aucs.append(sum(1.0 if s[j] < s[t] else 0.5 if s[j] == s[t] else 0.0 for j in negs) / max(1, len(negs)))
        for k in ks:
            dcg = sum(1 / math.log2(r + 2) for r in ranks if r < k)
            want[f"ndcg@{k}"] += dcg / sum(1 / math.log2(i + 2) for i in range(min(len(tset), k))) / n_q
        want["auc"] += np.mean(aucs) / n_q
    for name, value in want.items():
        assert report["metrics"][name] == pytest.approx(value, abs=1e-6), name
