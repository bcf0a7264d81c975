"""The model's towers in one process (:class:`Encoder`): user vectors from histories, item vectors from text,
and the re-encoding of items another model encoded. The scorer deployment, the co-located ingress (for a
sequence user tower, which costs well under a millisecond) and every offline user of the ranking path run it."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

import numpy as np

from lmrec.artifact import ServingModel
from lmrec.data.text import HISTORY_SEPARATOR
from lmrec.ranking.records import UserVectors
from lmrec.store.base import Store


class Encoder:
    """The model's two towers in one process: user vectors from histories of item ids, item vectors for new
    text. Vectors of items added after export are pulled from the store before each use; items another model
    encoded (the store held them before this artifact served it) wait in ``pending`` for :meth:`reencode`."""

    def __init__(self, model: ServingModel, store: Store):
        self.model = model
        self.store = store
        self.vectors = dict(zip(model.item_ids, model.item_vectors))
        self.texts = dict(zip(model.item_ids, model.item_texts))
        self.catalog = {item_id: row for row, item_id in enumerate(model.item_ids)}
        self.pending: dict[str, tuple[int, str]] = {}  # item -> (version, text) without a vector of this model
        self.item_version = 0
        self._lock = threading.Lock()

    def sync(self) -> None:
        with self._lock:
            for record in self.store.items_since(self.item_version):
                if record.vector is not None:
                    self.pending.pop(record.item_id, None)
                    if not record.removed:  # a removed item keeps its vector: it still describes its users
                        self.vectors[record.item_id] = record.vector
                elif record.text:  # another model's vector, or a tombstone keeping the posted text
                    self.pending[record.item_id] = (record.version, record.text)
                if not record.removed:
                    self.texts[record.item_id] = record.text
                self.item_version = max(self.item_version, record.version)

    def reencode(self, batch: int = 64, cheap: int = 4096) -> int:
        """Write this model's vectors of pending items to the store: up to ``batch`` through the LM and up to
        ``cheap`` whose text is the artifact's catalog text (e.g. a model trained on what ``lmrec collect``
        gathered): those take the catalog's trained vector, no LM call. Returns how many were written.
        Replicas started together share the work by picking at random; a vector another replica wrote first
        is refused by the store, not duplicated."""
        self.sync()
        m = self.model
        with self._lock:
            order = list(self.pending)
            random.shuffle(order)
            from_catalog: dict[str, np.ndarray] = {}
            to_encode: list[str] = []
            for item_id in order:
                row = self.catalog.get(item_id)
                if row is not None and m.item_texts[row] == self.pending[item_id][1]:
                    if len(from_catalog) < cheap:
                        from_catalog[item_id] = m.item_vectors[row]
                elif len(to_encode) < batch:
                    to_encode.append(item_id)
                if len(from_catalog) >= cheap and len(to_encode) >= batch:
                    break
            work = {item_id: self.pending.pop(item_id) for item_id in [*from_catalog, *to_encode]}
        if not work:
            return 0
        try:
            vectors = dict(from_catalog)
            if to_encode:
                vectors.update(zip(to_encode, m.encode_items([work[i][1] for i in to_encode])))
            written = self.store.put_item_vectors([(i, version, vectors[i]) for i, (version, _) in work.items()])
        except BaseException:
            with self._lock:  # still pending (unless a newer record came meanwhile)
                for item_id, entry in work.items():
                    self.pending.setdefault(item_id, entry)
            raise
        self.sync()  # this model's vectors of them (refused ones: the item changed; its new record is pending)
        return sum(written)

    def user_vectors(self, histories: Sequence[Sequence[tuple[str, str]]]) -> UserVectors:
        """Histories as [(item_id, event_type), ...], oldest first -> one raw user vector each, and whether
        it may be cached: False while an item of the history waits for this model's vector (:meth:`reencode`).
        Items the model does not know (never upserted) are skipped; removed items still count."""
        self.sync()
        m = self.model
        if m.user_tower_kind == "text":
            texts = [HISTORY_SEPARATOR.join(self.texts.get(i, "") for i, _ in reversed(h[-m.max_history :])) for h in histories]
            return UserVectors(tuple(m.user_vectors_from_text(texts)), (True,) * len(histories), m.model_version)
        rows, complete = [], []
        pending = self.pending
        for h in histories:
            known = [(i, e) for i, e in h if i in self.vectors]
            vecs = np.stack([self.vectors[i] for i, _ in known]) if known else np.zeros((0, m.dim), np.float32)
            rows.append((vecs, [e for _, e in known]))
            complete.append(not pending or not any(i in pending for i, _ in h))
        return UserVectors(tuple(m.user_vectors_from_item_vectors(rows)), tuple(complete), m.model_version)

    def encode_items(self, texts: list[str]) -> list[np.ndarray]:
        """Item vectors for texts (an artifact's engine groups them by length, in calls of its encode batch)."""
        return list(self.model.encode_items(texts))

    def item_queries(self, item_ids: list[str]) -> list[np.ndarray | None]:
        """For related items: the user tower over a history of the one item (what users who chose it go on
        to choose), per item; None for an item the model has no vector of (unknown, or waiting for
        :meth:`reencode`). A removed item still has one: alternatives to what is gone."""
        self.sync()
        have = self.texts if self.model.user_tower_kind == "text" else self.vectors
        known = [j for j, item_id in enumerate(item_ids) if item_id in have and item_id not in self.pending]
        out: list[np.ndarray | None] = [None] * len(item_ids)
        if known:
            vectors = self.user_vectors([((item_ids[j], "view"),) for j in known]).vectors
            for j, vector in zip(known, vectors):
                out[j] = vector
        return out
