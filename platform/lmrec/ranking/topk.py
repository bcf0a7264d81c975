"""The index's numeric kernels, on plain arrays: the exact top-k of ``Q @ V.T`` (with per-query sparse boosts,
a row mask or a subset of rows, and per-query exclusions), and the merge of a graph search's candidates with
boosted rows scored exactly. No state: :class:`lmrec.ranking.index.ItemIndex` holds it."""

from __future__ import annotations

import threading

import numpy as np

NEG_INF = float("-inf")


def _buffer(scratch: threading.local, size: int) -> np.ndarray:
    """A per-thread float32 scratch buffer of at least ``size`` values, reused across searches."""
    buf = getattr(scratch, "buf", None)
    if buf is None or buf.size < size:
        buf = scratch.buf = np.empty(max(size, 1 << 16), dtype=np.float32)
    return buf[:size]


def exact_top_k(matrix: np.ndarray, q: np.ndarray, k: int, excluded: list[np.ndarray], mask: np.ndarray | None = None,
                subset: np.ndarray | None = None, boosts: list | None = None,
                scratch: threading.local | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows (B, k') and scores (B, k') of the exact top-k over ``matrix`` (N, D) for queries ``q`` (B, D): over
    every row (minus ``mask``'s False ones) or the ``subset`` rows only (sorted), with ``boosts`` (per query:
    rows, values, a row once) added to the scores and ``excluded`` rows (per query) left out. k' = min(k, rows
    scored); a slot that only excluded or masked rows could fill has the score -inf."""
    if subset is not None:
        if not len(subset):
            return np.zeros((len(q), 0), dtype=np.int64), np.zeros((len(q), 0), dtype=np.float32)
        matrix = matrix[subset]
    m = matrix.shape[0]
    scores = _buffer(scratch or threading.local(), len(q) * m).reshape(len(q), m)
    np.matmul(q, matrix.T, out=scores)  # BLAS, threads as IndexConfig.threads
    for b, entry in enumerate(boosts or ()):
        if entry is not None:
            rows, values = entry
            if subset is not None:  # boosted rows -> positions in the subset
                pos = np.searchsorted(subset, rows).clip(max=m - 1)
                hit = subset[pos] == rows
                rows, values = pos[hit], values[hit]
            scores[b, rows] += values
    if subset is None and mask is not None:
        scores[:, ~mask] = NEG_INF
    for b, rows in enumerate(excluded):
        if len(rows):
            if subset is not None:  # excluded rows -> positions in the subset
                pos = np.searchsorted(subset, rows).clip(max=m - 1)
                rows = pos[subset[pos] == rows]
            scores[b, rows] = NEG_INF
    k = min(k, m)
    idx = np.argpartition(scores, m - k, axis=1)[:, m - k:] if k < m else np.broadcast_to(np.arange(m), scores.shape)
    at = np.arange(len(q))[:, None]
    idx = idx[at, np.argsort(-scores[at, idx], axis=1, kind="stable")]
    top = scores[at, idx]
    return (subset[idx] if subset is not None else idx), top


def merge_boosted(matrix: np.ndarray, q: np.ndarray, r: np.ndarray, s: np.ndarray, entry: tuple, excluded: np.ndarray,
                  eligible: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A graph search's candidates (rows ``r``, scores ``s``) and the boosted ``eligible`` rows of ``entry``
    (rows, values), on summed scores: the top ``k``. A boosted row is scored exactly (its dot product with ``q``
    plus its boost), found by the graph or not."""
    rows, values = entry
    ok = eligible[rows].copy()
    if len(excluded):
        ok[member(rows, np.sort(excluded))] = False
    rows, values = rows[ok], values[ok]
    order = np.argsort(rows)
    rows, values = rows[order], values[order]
    rest = ~member(r, rows)
    r = np.concatenate([r[rest], rows])
    s = np.concatenate([s[rest], matrix[rows] @ q + values])
    if len(s) > k:
        part = np.argpartition(-s, k - 1)[:k]
        top = part[np.argsort(-s[part], kind="stable")]
    else:
        top = np.argsort(-s, kind="stable")
    return r[top], s[top]


def member(x: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """``np.isin(x, sorted_values)`` for an already sorted ``sorted_values``, without sorting both again."""
    if not len(sorted_values) or not len(x):
        return np.zeros(len(x), dtype=bool)
    pos = np.searchsorted(sorted_values, x).clip(max=len(sorted_values) - 1)
    return sorted_values[pos] == x
