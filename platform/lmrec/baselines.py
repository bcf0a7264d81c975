"""Non-neural baselines scored by the same evaluator: popularity and item-kNN (co-occurrence)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from lmrec.data.encode import Catalog, Queries, item_counts


class Popularity:
    """Score = number of interactions with the item in the fitted data (same list for everyone)."""

    name = "popularity"

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.counts = np.zeros(len(catalog), dtype=np.float32)

    def fit(self, interactions: pd.DataFrame) -> Popularity:
        self.counts = item_counts(interactions, self.catalog).astype(np.float32)
        return self

    def score(self, batch: Queries) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(batch), len(self.counts)))


class ItemKNN:
    """Item-to-item cosine similarity of co-occurrence in user histories, top ``neighbours`` kept per item.

    A user's score for item j is the sum over their history items i of sim(i, j); the most recent items
    weigh more (``recency`` per step back), since the next item follows the last ones most closely.
    """

    name = "item-knn"

    def __init__(self, catalog: Catalog, neighbours: int = 100, recency: float = 0.8):
        self.catalog = catalog
        self.neighbours = neighbours
        self.recency = recency  # 0.8: weight halves about every 3 steps back
        self.sim = sp.csr_matrix((len(catalog), len(catalog)), dtype=np.float32)

    def fit(self, interactions: pd.DataFrame) -> ItemKNN:
        n = len(self.catalog)
        users, user_idx = np.unique(interactions["user_id"].to_numpy(), return_inverse=True)
        items = self.catalog.encode(interactions["item_id"].to_numpy())
        x = sp.csr_matrix((np.ones(len(items), dtype=np.float32), (user_idx, items)), shape=(len(users), n))
        x.data[:] = 1.0  # repeated interactions count once
        x.sum_duplicates()
        x.data[:] = 1.0
        co = (x.T @ x).tocsr().astype(np.float32)
        co.setdiag(0)
        co.eliminate_zeros()
        norm = np.sqrt(np.asarray(x.sum(axis=0)).ravel()).astype(np.float32)
        norm[norm == 0] = 1.0
        co = sp.diags(1.0 / norm) @ co @ sp.diags(1.0 / norm)
        self.sim = _top_per_row(co.tocsr(), self.neighbours)
        return self

    def score(self, batch: Queries) -> np.ndarray:
        n = len(self.catalog)
        rows, cols, vals = [], [], []
        for q, hist in enumerate(batch.histories):
            if len(hist):
                w = self.recency ** np.arange(len(hist) - 1, -1, -1, dtype=np.float32)
                rows.append(np.full(len(hist), q))
                cols.append(hist)
                vals.append(w)
        if not rows:
            return np.zeros((len(batch), n), dtype=np.float32)
        h = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(batch), n)
        )
        return np.asarray((h @ self.sim).todense(), dtype=np.float32)


def _top_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    indptr, indices, data = [0], [], []
    for r in range(m.shape[0]):
        s, e = m.indptr[r], m.indptr[r + 1]
        d, i = m.data[s:e], m.indices[s:e]
        if len(d) > k:
            keep = np.argpartition(-d, k - 1)[:k]
            d, i = d[keep], i[keep]
        indices.append(i)
        data.append(d)
        indptr.append(indptr[-1] + len(d))
    return sp.csr_matrix(
        (np.concatenate(data) if data else [], np.concatenate(indices) if indices else [], indptr), shape=m.shape
    )
