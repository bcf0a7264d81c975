"""Popularity and item-kNN baselines against hand-computed values, and popularity on real Scientific data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lmrec.baselines import ItemKNN, Popularity
from lmrec.data.encode import Catalog, Queries
from lmrec.evaluation import evaluate

EMPTY = np.zeros(0, dtype=np.int64)


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(["A", "B", "C", "D"], ["a", "b", "c", "d"])


@pytest.fixture
def interactions() -> pd.DataFrame:
    """4 users x 4 items; u1 buys A twice (binary for kNN, counted twice by popularity).

    u1: A B (A again)   u2: A B C   u3: B C   u4: A D
    """
    rows = [("u1", "A"), ("u1", "B"), ("u1", "A"), ("u2", "A"), ("u2", "B"), ("u2", "C")]
    rows += [("u3", "B"), ("u3", "C"), ("u4", "A"), ("u4", "D")]
    return pd.DataFrame(
        {"user_id": [u for u, _ in rows], "item_id": [i for _, i in rows], "timestamp": np.arange(len(rows))}
    )


def queries(histories) -> Queries:
    hist = [np.asarray(h, dtype=np.int64) for h in histories]
    events = [np.ones(len(h), dtype=np.int64) for h in hist]
    return Queries(np.arange(len(hist)), hist, events, [EMPTY for _ in hist])


# Cosine of binary user vectors: users per item A 3, B 3, C 2, D 1;
# co-occurring users AB 2, AC 1, AD 1, BC 2, BD 0, CD 0.
S_AB, S_AC, S_AD, S_BC = 2 / 3, 1 / math.sqrt(6), 1 / math.sqrt(3), 2 / math.sqrt(6)
FULL_SIM = np.array(
    [
        [0, S_AB, S_AC, S_AD],
        [S_AB, 0, S_BC, 0],
        [S_AC, S_BC, 0, 0],
        [S_AD, 0, 0, 0],
    ]
)


# -------------------------------------------------------------------------------------------- popularity
def test_popularity_scores_are_counts(catalog, interactions):
    model = Popularity(catalog).fit(interactions)
    scores = model.score(queries([[0], [], [1, 2]]))
    assert scores.shape == (3, 4)
    # A: u1 x2 + u2 + u4 = 4; B: 3; C: 2; D: 1 -- the same row for everyone
    np.testing.assert_array_equal(scores, np.tile([4.0, 3.0, 2.0, 1.0], (3, 1)))


def test_popularity_unfitted_scores_zero_and_unseen_items_stay_zero(catalog, interactions):
    assert not Popularity(catalog).score(queries([[]])).any()
    model = Popularity(catalog).fit(interactions[interactions["item_id"] != "D"])
    np.testing.assert_array_equal(model.score(queries([[]]))[0], [4.0, 3.0, 2.0, 0.0])


def test_popularity_through_the_evaluator(catalog, interactions):
    model = Popularity(catalog).fit(interactions)
    q = Queries(np.arange(2), [EMPTY, EMPTY], [EMPTY, EMPTY], [np.array([1]), np.array([3])])
    m = evaluate(model.score, q, len(catalog), ks=(2,))["metrics"]
    # B is second (rank 1), D last (rank 3): recall (1 + 0)/2, NDCG (1/log2(3) + 0)/2
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx(1 / math.log2(3) / 2, abs=1e-6)
    assert m["coverage@2"] == pytest.approx(0.5)  # the same list {A, B} for everyone


# ---------------------------------------------------------------------------------------------- item-kNN
def test_itemknn_cosine_similarity(catalog, interactions):
    model = ItemKNN(catalog, neighbours=10).fit(interactions)
    np.testing.assert_allclose(model.sim.toarray(), FULL_SIM, rtol=1e-6)


def test_itemknn_keeps_top_neighbours_per_item(catalog, interactions):
    model = ItemKNN(catalog, neighbours=1).fit(interactions)
    # row A: B 0.667 > D 0.577 > C 0.408; row B: C 0.816 > A 0.667; row C: B 0.816 > A; row D: only A
    want = np.zeros((4, 4))
    want[0, 1], want[1, 2], want[2, 1], want[3, 0] = S_AB, S_BC, S_BC, S_AD
    np.testing.assert_allclose(model.sim.toarray(), want, rtol=1e-6)
    two = ItemKNN(catalog, neighbours=2).fit(interactions).sim.toarray()
    assert (two > 0).sum(axis=1).tolist() == [2, 2, 2, 1]
    assert two[0, 2] == 0.0  # A's weakest neighbour C is the one dropped


def test_itemknn_recency_weighting(catalog, interactions):
    model = ItemKNN(catalog, neighbours=10, recency=0.5).fit(interactions)
    # history A then C: weights 0.5 (one step back) and 1 (last); score_j = 0.5 sim(A, j) + sim(C, j)
    #   A: 0 + 0.408248            = 0.408248
    #   B: 0.5 * 0.666667 + 0.816497 = 1.149830
    #   C: 0.5 * 0.408248 + 0      = 0.204124
    #   D: 0.5 * 0.577350 + 0      = 0.288675
    scores = model.score(queries([[0, 2], [2, 0], []]))
    assert scores.shape == (3, 4) and scores.dtype == np.float32
    np.testing.assert_allclose(scores[0], [0.408248, 1.149830, 0.204124, 0.288675], rtol=1e-5)
    # reversed order C then A: 0.5 sim(C, j) + sim(A, j)
    np.testing.assert_allclose(scores[1], 0.5 * FULL_SIM[2] + FULL_SIM[0], rtol=1e-5)
    assert not scores[2].any()  # no history, no signal
    # recency 1 weighs the whole history equally
    flat = ItemKNN(catalog, neighbours=10, recency=1.0).fit(interactions).score(queries([[0, 2]]))
    np.testing.assert_allclose(flat[0], FULL_SIM[0] + FULL_SIM[2], rtol=1e-5)


def test_itemknn_all_empty_histories(catalog, interactions):
    scores = ItemKNN(catalog).fit(interactions).score(queries([[], []]))
    assert scores.shape == (2, 4) and not scores.any()


# ------------------------------------------------------------------------------------------- real data
@pytest.mark.data
def test_popularity_on_scientific_matches_the_anchor():
    from lmrec.config import DataConfig, data_dir
    from lmrec.data.encode import build_queries
    from lmrec.data.loaders import load_dataset
    from lmrec.data.split import split_dataset

    folder = data_dir() / "amazon-scientific-unisrec"
    if not folder.is_dir():
        pytest.skip(f"Amazon Scientific data not found at {folder}; set LMREC_DATA_DIR to the data folder")
    cfg = DataConfig(dataset="scientific")
    ds = load_dataset(cfg)
    split = split_dataset(ds, cfg.split)
    catalog = Catalog.from_dataset(ds)
    history = split.history_for("test")  # train + valid
    q = build_queries(history, split.targets_for("test"), catalog)
    model = Popularity(catalog).fit(history)
    report = evaluate(model.score, q, len(catalog), ks=(10,))
    # anchors from the data README: full ranking over 4,385 items, seen items not excluded
    assert report["items"] == 4385
    assert report["metrics"]["recall@10"] == pytest.approx(0.0309, abs=5e-4)
    assert report["metrics"]["ndcg@10"] == pytest.approx(0.0172, abs=5e-4)


def test_itemknn_text_transfer_gives_items_without_interactions_their_text_neighbours_similarities(interactions):
    """E co-occurs with nothing; its text reads like B's (cosine 0.8): E's row and column become 0.8 x B's."""
    cat = Catalog(["A", "B", "C", "D", "E"], list("abcde"))
    knn = ItemKNN(cat).fit(interactions)
    text = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [0, 0.8, 0.6]], dtype=np.float32)
    out = knn.with_text_transfer(text)
    sim, got = knn.sim.toarray(), out.sim.toarray()
    assert np.allclose(sim[4], 0) and np.allclose(sim[:, 4], 0)
    np.testing.assert_allclose(got[:4, :4], sim[:4, :4])  # the known items are untouched
    np.testing.assert_allclose(got[4, :4], 0.8 * sim[1, :4], rtol=1e-6)
    np.testing.assert_allclose(got[:4, 4], 0.8 * sim[:4, 1], rtol=1e-6)
    assert got[4, 4] == 0
    # a history of A scores E at 0.8 of B's score
    s = out.score(queries([[0]]))[0]
    assert s[4] == pytest.approx(0.8 * s[1])
    assert knn.with_text_transfer(np.eye(5, 3, dtype=np.float32)).sim.nnz >= knn.sim.nnz  # never fewer


def test_itemknn_text_transfer_variants_average_the_nearest_at_a_power_of_their_cosine(interactions):
    """E's text: cosine 0.8 to B, 0.6 to C, 0.42 to D."""
    from lmrec.baselines import nearest_k

    cat = Catalog(["A", "B", "C", "D", "E"], list("abcde"))
    knn = ItemKNN(cat).fit(interactions)
    text = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [0, 0.8, 0.6]], dtype=np.float32)
    sim = knn.sim.toarray()
    assert knn.text_transfer(text, 0).sim is knn.sim  # no transfer
    np.testing.assert_allclose(knn.text_transfer(text, 1, 1.0).sim.toarray(), knn.with_text_transfer(text).sim.toarray())
    np.testing.assert_allclose(knn.text_transfer(text, 1, 2.0).sim.toarray()[4, :4], 0.64 * sim[1, :4], rtol=1e-6)
    # the two nearest known items: B (0.8) and C (0.6), averaged
    idx, cos = nearest_k(text[[4]] / 1.0, text / np.linalg.norm(text, axis=1, keepdims=True), np.array([1, 1, 1, 1, 0], bool), 2)
    assert idx.tolist() == [[1, 2]] and np.allclose(cos, [[0.8, 0.6]])
    got = knn.text_transfer(text, 2, 1.0).sim.toarray()
    np.testing.assert_allclose(got[4, :4], (0.8 * sim[1, :4] + 0.6 * sim[2, :4]) / 2, rtol=1e-6, atol=1e-7)
