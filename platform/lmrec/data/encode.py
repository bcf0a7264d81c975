"""Integer-encoded views of a dataset for models and the evaluator.

Items are indexed ``0..N-1`` in catalog order (:class:`Catalog`); events are coded ``1..4``
(``0`` is padding), in the order of :data:`lmrec.data.schema.EVENT_TYPES`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lmrec.data.schema import EVENT_TYPES, Dataset
from lmrec.data.split import chronological

EVENT_CODE = {name: i + 1 for i, name in enumerate(EVENT_TYPES)}


class Catalog:
    """The ranked universe: every item of the dataset, with its text."""

    def __init__(self, item_ids, texts):
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.texts = [str(t) for t in texts]
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        if len(self.index) != len(self.item_ids):
            raise ValueError("catalog item ids must be unique")

    @classmethod
    def from_dataset(cls, ds: Dataset) -> Catalog:
        return cls(ds.items["item_id"].to_numpy(), ds.items["text"].to_numpy())

    def __len__(self) -> int:
        return len(self.item_ids)

    def encode(self, item_ids) -> np.ndarray:
        return np.fromiter((self.index[i] for i in item_ids), dtype=np.int64, count=len(item_ids))


@dataclass
class Queries:
    """One row per query user: chronological history and the target items to rank.

    ``histories[q]`` / ``events[q]``: int64 arrays of item indices / event codes, oldest first.
    ``targets[q]``: int64 array of target item indices (one for leave-one-out).
    """

    user_ids: np.ndarray
    histories: list[np.ndarray]
    events: list[np.ndarray]
    targets: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.user_ids)

    def __getitem__(self, s: slice) -> Queries:
        return Queries(self.user_ids[s], self.histories[s], self.events[s], self.targets[s])


def user_sequences(df: pd.DataFrame, catalog: Catalog) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{user_id: (item indices, event codes)}, chronological."""
    df = chronological(df)
    items = catalog.encode(df["item_id"].to_numpy())
    events = df["event"].map(EVENT_CODE).to_numpy(dtype=np.int64)
    users = df["user_id"].to_numpy()
    if len(users) == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    return {users[s]: (items[s:e], events[s:e]) for s, e in zip(starts, ends)}


def build_queries(history: pd.DataFrame, targets: pd.DataFrame, catalog: Catalog) -> Queries:
    """Queries for every user with at least one target; users without history get empty arrays."""
    seqs = user_sequences(history, catalog)
    tgt = user_sequences(targets, catalog)
    empty = np.zeros(0, dtype=np.int64)
    users = np.asarray(sorted(tgt), dtype=object)
    return Queries(
        users,
        [seqs.get(u, (empty, empty))[0] for u in users],
        [seqs.get(u, (empty, empty))[1] for u in users],
        [tgt[u][0] for u in users],
    )


def item_counts(df: pd.DataFrame, catalog: Catalog) -> np.ndarray:
    """Interactions per catalog item, (N,) int64."""
    return np.bincount(catalog.encode(df["item_id"].to_numpy()), minlength=len(catalog)).astype(np.int64)


def pad_left(seqs: list[np.ndarray], length: int, pad: int = 0) -> np.ndarray:
    """The last ``length`` entries of each sequence, right-aligned: (B, length) int64; ``pad`` fills."""
    out = np.full((len(seqs), length), pad, dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            out[i, length - len(s) :] = s
    return out


def history_cells(histories: list[np.ndarray], last: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The (row, item) cells of a (B, N) score matrix that hold each row's history items (catalog indices),
    its last ``last`` only when given: two int64 arrays of one length (an item seen twice appears twice)."""
    recent = [np.asarray(h, dtype=np.int64)[-last:] if last else np.asarray(h, dtype=np.int64) for h in histories]
    rows = np.repeat(np.arange(len(recent)), [len(h) for h in recent])
    return rows, (np.concatenate(recent) if len(rows) else np.zeros(0, dtype=np.int64))


def add_history_bias(scores, histories: list[np.ndarray], bias: float, max_history: int):
    """Add ``bias`` once to each row's scores (B, N) of the items among its history's last ``max_history``
    (catalog indices): the learned offset of ``model.history_bias``, as trained. In place; returns ``scores``."""
    rows, cols = history_cells(histories, max_history)
    scores[rows, cols] += bias  # a repeated item takes it once (no accumulation)
    return scores
