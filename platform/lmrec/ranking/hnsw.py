"""The FAISS HNSW side of :class:`lmrec.ranking.index.ItemIndex` (a base class it inherits: one index, two
files): the graph search with an eligibility bitmap and exact boosts, the background switch from exact to HNSW
past ``exact_max_items``, and the background compaction of dead rows. Every method runs under the index's
lock unless it says otherwise; the builds run in threads (FAISS releases the GIL) and swap in under it."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from lmrec.ranking.topk import merge_boosted

log = logging.getLogger("lmrec.ranking.index")


class HnswBackend:
    """Needs the index's state: ``config``, ``dim``, ``kind``, ``_lock``, ``_faiss``, rows and their masks."""

    @staticmethod
    def _faiss_module():
        import sys

        if "faiss" not in sys.modules:  # setLevel empties every logger's cache: once, not per search
            logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs its CPU probing at INFO
        import faiss

        return faiss

    def _new_hnsw(self):
        faiss = self._faiss_module()
        if self.config.threads:
            faiss.omp_set_num_threads(self.config.threads)
        index = faiss.IndexHNSWFlat(self.dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.config.ef_construction
        return index

    def _start_switch(self) -> None:
        """(Under the lock.) Build HNSW over the current rows in a background thread: at 100k items it takes
        seconds, during which searches stay exact and upserts go on (auto, past exact_max_items)."""
        self._switch_rows, self._dirty = self._n, set()
        rows = self._vecs[: self._n]  # a view: an upsert that grows the matrix leaves it intact
        self._switch = threading.Thread(target=self._build_switch, args=(rows,), name="lmrec-hnsw-build", daemon=True)
        self._switch.start()

    def _build_switch(self, rows: np.ndarray) -> None:
        started = time.perf_counter()
        try:
            graph = self._new_hnsw()
            graph.add(rows)
        except Exception:  # noqa: BLE001 - the index stays exact and says why
            log.exception("item index: building HNSW failed; searches stay exact (the next upsert tries again)")
            with self._lock:
                self._switch, self._dirty = None, set()
            return
        built = time.perf_counter() - started
        with self._lock:
            n0, n = self._switch_rows, self._n
            if n > n0:  # appended during the build
                graph.add(self._vecs[n0:n])
            # overwritten during the build, and still live (not removed since): the graph holds their old vectors
            dirty = [r for r in sorted(self._dirty) if self._alive[r]]
            ids, vectors, attrs = [self.ids[r] for r in dirty], self._vecs[dirty].copy(), [self._attrs_of(r) for r in dirty]
            self.kind, self._faiss, self._dirty = "faiss", graph, set()
            self._vecs = np.zeros((0, self.dim), dtype=np.float32)
            if dirty:
                self._apply(ids, vectors, attrs)  # as FAISS replacements: tombstone the row, append the new vector
            self._masks.clear()
            self._alive_bits = None
        log.info("item index: %d items past exact_max_items=%d, built HNSW in %.1f s in the background "
                 "(+%d rows appended, %d replaced meanwhile)", len(self._row), self.config.exact_max_items, built,
                 n - n0, len(dirty))

    def wait_for_switch(self, timeout: float | None = None) -> bool:
        """Wait for a background HNSW build (the auto switch, or a compaction), if one runs; True once none is running."""
        thread = self._switch
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def _maybe_compact(self) -> None:
        """(Under the lock.) Past ``compact_dead_fraction`` dead rows: the exact matrix is compacted at once (a
        copy of the live rows), HNSW rebuilt over the live rows in a background thread while searches and
        writes go on against the current graph; writes made meanwhile are applied to the new one at the swap."""
        if self._switch is not None or self._dead < max(self.config.compact_min_dead, self.config.compact_dead_fraction * self._n):
            return
        if self.kind == "exact":
            self._compact_now()
            return
        live = np.flatnonzero(self._alive[: self._n])
        vectors = self._matrix()[live].copy()
        self._touched = set()
        self._switch = threading.Thread(target=self._build_compacted, args=(live, vectors), name="lmrec-hnsw-compact", daemon=True)
        self._switch.start()

    def _build_compacted(self, live: np.ndarray, vectors: np.ndarray) -> None:
        started = time.perf_counter()
        try:
            graph = self._new_hnsw()
            graph.add(vectors)
        except Exception:  # noqa: BLE001 - the current graph stays in use
            log.exception("item index: compacting HNSW failed; the current graph stays in use")
            with self._lock:
                self._switch, self._touched = None, None
            return
        with self._lock:
            dead = self._dead
            ids = [self.ids[r] for r in live.tolist()]
            attrs = [self._attrs_of(r) for r in live.tolist()]
            touched = sorted(self._touched or ())  # written since the snapshot: their state now, re-applied below
            now = [(i, self._row.get(i)) for i in touched]
            redo = [(i, self._matrix()[r].copy(), self._attrs_of(r)) for i, r in now if r is not None]
            gone = [i for i, r in now if r is None]
            self._reset(self.dim, "faiss")
            self._faiss = graph  # holds the snapshot's live rows as rows 0..len(ids)-1
            self._apply(ids, vectors, attrs, in_graph=True)
            if redo:
                self._apply([i for i, _, _ in redo], np.stack([v for _, v, _ in redo]), [a for _, _, a in redo])
            self._kill(gone)
            self._switch, self._touched = None, None
        log.info("item index: compacted HNSW in the background in %.1f s: %d dead rows dropped, %d items written "
                 "meanwhile re-applied", time.perf_counter() - started, dead, len(touched))

    def _search_faiss(self, q: np.ndarray, k: int, excluded: list[np.ndarray], mask: np.ndarray | None,
                      count: int, bits: np.ndarray | None, boosts: list | None = None) -> list[list[tuple[str, float]]]:
        faiss = self._faiss_module()
        fetch = min(k + max(len(rows) for rows in excluded), count)
        ef = max(self.config.ef_search, fetch)
        if mask is not None:
            ef = max(ef, min(int(ef * self._n / max(count, 1)), self.config.ef_search_max))
        params = faiss.SearchParametersHNSW(efSearch=ef)
        if bits is not None:
            params.sel = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
        scores, rows = self._faiss.search(q, fetch, params=params)
        out = []
        for b in range(len(q)):
            r, s = rows[b], scores[b]
            keep = r >= 0
            if len(excluded[b]):
                keep &= ~np.isin(r, excluded[b])
            entry = boosts[b] if boosts else None
            r, s = (r[keep], s[keep]) if entry is not None else (r[keep][:k], s[keep][:k])
            eligible = count - (int(mask[excluded[b]].sum()) if mask is not None else len(excluded[b]))
            if len(r) < min(k, eligible):  # the graph walk came up short: refill exactly
                out.append(self._exact(q[b:b + 1], k, [excluded[b]], mask=mask, boosts=[entry])[0])
                continue
            if entry is not None:
                r, s = merge_boosted(self._matrix(), q[b], r, s, entry, excluded[b], mask if mask is not None else self._alive, k)
            out.append(self._result(r, s))
        return out
