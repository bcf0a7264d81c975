"""Ranking-time fusion with item-kNN (the model of record: the LM's scores plus co-occurrence), as evaluated
by ``lmrec.experiments.fused``, kept live: new items borrow similarities from their nearest item by text, and
a refit learns co-occurrence from the store's events."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence

import numpy as np

from lmrec.baselines import nearest, unit_rows

_EMPTY = np.zeros(0, dtype=np.int64)
_DENSE_KNN_MAX = 1 << 17  # kNN scores summed into a dense row up to this many items, by sorting above


class KnnFusion:
    """Ranking-time fusion with item-kNN, as evaluated (``lmrec.experiments.fused``): score = model score +
    ``weight`` * kNN score / the user's largest kNN score, the kNN score being the recency-weighted sum of
    the history items' similarities. The model's score is dot / temperature and the index ranks dot
    products, so each item's boost is ``weight * temperature * knn / max``.

    Items posted after the export (:meth:`add`) co-occur with nothing yet: each takes the similarities of
    its nearest item by text, scaled by their cosine (``ItemKNN.with_text_transfer``, as evaluated), as a
    candidate and in a history alike. :meth:`refit` refits the similarities on the store's events (live
    co-occurrence, deleted users gone), posted items included. Positions: the catalog's order, then posted
    items in turn; the similarity matrix covers the first ``n``, later ones borrow. Thread-safe."""

    def __init__(self, knn, item_ids: Sequence[str], weight: float, temperature: float, text_vectors: np.ndarray | None = None):
        self.knn = knn
        self.n = len(item_ids)  # positions the similarity matrix covers
        self.position = {item_id: p for p, item_id in enumerate(item_ids)}
        self.weight = float(weight)
        self.scale = float(weight) * float(temperature)
        self._lock = threading.Lock()
        self._text = unit_rows(np.asarray(text_vectors, dtype=np.float32)) if text_vectors is not None else None  # (n, D)
        self._donors = self._donor_mask(knn, self.n)
        self._late_text: list[np.ndarray] = []  # position n + j -> its unit text vector
        self.alias = np.zeros(0, dtype=np.int64)  # position n + j -> the covered item it reads like
        self.alias_w = np.zeros(0, dtype=np.float32)  # and their cosine

    @staticmethod
    def _donor_mask(knn, n: int) -> np.ndarray:
        return np.bincount(knn.sim.indices, minlength=n)[:n] > 0  # items with similarities to lend

    def add(self, item_ids: Sequence[str], vectors: np.ndarray) -> list[str]:
        """Items upserted since the export (their text vectors, (M, D)): each borrows the similarities of its
        nearest item by text until a refit gives it its own. Catalog items keep theirs. Returns the ids given
        new positions. With no text vectors or no item to borrow from, an item still takes a position (the
        history bias and a refit reach it) and borrows nothing."""
        with self._lock:
            fresh = [j for j, i in enumerate(item_ids) if self.position.get(i, len(self.alias) + self.n) >= self.n]
            if not fresh:
                return []
            unit = unit_rows(np.asarray(vectors, dtype=np.float32)[fresh])
            if self._text is not None and self._donors.any():
                nn, w = nearest(unit, self._text, self._donors)
            else:
                nn, w = np.zeros(len(fresh), dtype=np.int64), np.zeros(len(fresh), dtype=np.float32)
            added = []
            for j, u, target, weight in zip(fresh, unit, nn.tolist(), w.tolist()):
                p = self.position.get(item_ids[j])
                if p is None:  # a new position; a re-posted item keeps its own and reads like its new text
                    p = self.position[item_ids[j]] = self.n + len(self.alias)
                    self.alias, self.alias_w = np.append(self.alias, 0), np.append(self.alias_w, np.float32(0))
                    self._late_text.append(u)
                    added.append(item_ids[j])
                self.alias[p - self.n], self.alias_w[p - self.n] = target, weight
                self._late_text[p - self.n] = u
            return added

    def refit(self, interactions: Iterable[tuple[str, str]]) -> dict:
        """Refit the similarities on ``(user_id, item_id)`` pairs (every event in the store), over every
        position so far; items still without interactions borrow from their text neighbour. Searches go on
        meanwhile; positions added during the refit borrow from the new similarities."""
        from lmrec.baselines import ItemKNN, similarity

        with self._lock:
            position, covered, neighbours = dict(self.position), len(self.position), self.knn.neighbours
            text = None
            if self._text is not None:
                text = np.vstack([self._text, *self._late_text[: covered - self.n]]) if covered > self.n else self._text
        users: dict[str, int] = {}
        codes, items = [], []
        for j, (user, item) in enumerate(interactions):
            p = position.get(item)
            if p is not None:
                codes.append(users.setdefault(user, len(users)))
                items.append(p)
            if j % 8192 == 8191:
                time.sleep(0)  # let the replica's event loop run: a refit of millions of events must not stall it
        sim = similarity(np.asarray(codes, dtype=np.int64), np.asarray(items, dtype=np.int64), covered, neighbours)
        knn = ItemKNN.from_similarity(sim, self.knn.recency)
        knn.neighbours = neighbours
        if text is not None:
            knn = knn.with_text_transfer(text)
        with self._lock:
            late = len(self.position) - covered  # posted while refitting: they borrow from the new similarities
            late_text = self._late_text[len(self._late_text) - late:] if late else []
            self.knn, self.n, self._text = knn, covered, text
            self._donors = self._donor_mask(knn, covered)
            self._late_text, self.alias, self.alias_w = late_text, np.zeros(late, dtype=np.int64), np.zeros(late, dtype=np.float32)
            if late and text is not None and self._donors.any():
                self.alias, self.alias_w = nearest(np.stack(late_text), text, self._donors)
        return {"interactions": len(items), "users": len(users), "items": covered, "nonzeros": int(knn.sim.nnz)}

    def _rows(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Catalog positions of ``item_ids`` (-1: unknown) and a factor each: an added item reads as the
        catalog item it borrows from, at their cosine."""
        n = self.n
        rows = np.fromiter((self.position.get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))
        scale = np.ones(len(rows), dtype=np.float32)
        late = rows >= n
        if late.any():
            scale[late] = self.alias_w[rows[late] - n]
            rows[late] = self.alias[rows[late] - n]
        return rows, scale

    def boosts(self, histories: Sequence[Sequence[str]], norms: list | None = None, skip_history: int = 0) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per history (item ids, oldest first): (positions, boosts), or None when nothing co-occurs.
        ``norms``, when given, receives each history's factor from kNN score to boost (0: none).
        ``skip_history`` > 0: no boost for the history's last that many items (as ``experiments.fused``)."""
        with self._lock:
            return self._boosts(histories, norms, skip_history)

    def _boosts(self, histories: Sequence[Sequence[str]], norms: list | None, skip_history: int = 0) -> list[tuple[np.ndarray, np.ndarray] | None]:
        out = []
        for h in histories:
            idx, data = self._scores(*self._rows(h))
            if skip_history and len(idx):
                own = np.fromiter((self.position.get(i, -1) for i in h[-skip_history:]), dtype=np.int64)
                keep = ~np.isin(idx, own)
                idx, data = idx[keep], data[keep]
            top = float(data.max()) if len(data) else 0.0
            out.append((idx, data * np.float32(self.scale / top)) if top > 0 else None)
            if norms is not None:
                norms.append(self.scale / top if top > 0 else 0.0)
        return out

    def _scores(self, rows: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One history's kNN scores, as ``ItemKNN.sparse_scores`` computes them (with numpy gathers: no
        sparse matrix is built per request): (positions, values), posted items that borrow included."""
        sim, n = self.knn.sim, self.n
        w = self.knn.recency_weights(len(rows)) * scale
        keep = (rows >= 0) & (scale > 0)  # unknown items, and posted ones that borrow nothing
        rows, w = rows[keep], w[keep]
        at, lengths = self._entries(rows)
        if not len(at):
            return _EMPTY, np.zeros(0, dtype=np.float32)
        cols, vals = sim.indices[at], sim.data[at] * np.repeat(w, lengths)
        if n <= _DENSE_KNN_MAX:
            dense = np.bincount(cols, vals, minlength=n)
            idx = np.flatnonzero(dense)
            data = dense[idx].astype(np.float32)
            late = dense[self.alias] * self.alias_w if len(self.alias) else None
        else:
            idx, inverse = np.unique(cols, return_inverse=True)
            data = np.bincount(inverse, vals).astype(np.float32)
            late = None
            if len(self.alias):
                at = np.searchsorted(idx, self.alias).clip(max=len(idx) - 1)
                late = np.where(idx[at] == self.alias, data[at], 0) * self.alias_w
        if late is not None and late.any():  # posted items read like the item they borrow from
            hit = np.flatnonzero(late)
            idx, data = np.concatenate([idx, hit + n]), np.concatenate([data, late[hit].astype(np.float32)])
        return idx.astype(np.int64), data

    def contributions(self, history: Sequence[str], item_ids: Sequence[str], norm: float) -> np.ndarray:
        """(items, history events): each event's part of each item's boost (``norm`` from :meth:`boosts`);
        a row sums to the item's boost. For explanations: which events made an item co-occur."""
        with self._lock:
            return self._contributions(history, item_ids, norm)

    def _contributions(self, history: Sequence[str], item_ids: Sequence[str], norm: float) -> np.ndarray:
        h, hs = self._rows(history)
        c, cs = self._rows(item_ids)
        out = np.zeros((len(item_ids), len(history)), dtype=np.float32)
        hk, ck = h >= 0, c >= 0
        if norm <= 0 or not hk.any() or not ck.any():
            return out
        w = self.knn.recency_weights(len(h)) * hs * norm
        events, items = np.flatnonzero(hk), np.flatnonzero(ck)
        entries, lengths = self._entries(h[events])  # every stored similarity of the events' items
        cols, vals = self.knn.sim.indices[entries], self.knn.sim.data[entries]
        event = np.repeat(events, lengths)
        cand, inverse = np.unique(c[items], return_inverse=True)  # items borrowing from one item share its column
        at = np.searchsorted(cand, cols).clip(max=len(cand) - 1)
        hit = cand[at] == cols
        parts = np.zeros((len(cand), len(history)), dtype=np.float32)
        np.add.at(parts, (at[hit], event[hit]), vals[hit] * w[event[hit]])
        out[items] = parts[inverse] * cs[items][:, None]
        return out

    def _entries(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices into the similarity's CSR arrays of every entry of ``rows``, and each row's count."""
        indptr = self.knn.sim.indptr
        starts = indptr[rows]
        lengths = indptr[rows + 1] - starts
        total = int(lengths.sum())
        return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(total), lengths
