"""Training examples: the split encoded as plain arrays (:class:`TrainData`, shipped to every Ray Train
worker) and the datasets and samplers the training loop draws batches from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from lmrec.config import Config
from lmrec.data.encode import EVENT_CODE, Catalog, Queries, build_queries, item_counts, pad_left
from lmrec.data.loaders import load_dataset
from lmrec.data.split import Split, chronological, split_dataset
from lmrec.errors import LmrecError


@dataclass
class TrainData:
    """Everything a worker needs, as plain arrays (picklable, shipped through Ray's object store)."""

    dataset: str
    item_ids: np.ndarray  # (N,) str
    texts: list[str]  # (N,)
    seen: np.ndarray  # (N,) bool: item has training interactions
    counts: np.ndarray  # (N,) int64 training interactions per item
    sequences: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per user: items, event codes, values
    valid: Queries

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def user_value_sequences(df, catalog: Catalog) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    df = chronological(df)
    items = catalog.encode(df["item_id"].to_numpy())
    events = df["event"].map(EVENT_CODE).to_numpy(dtype=np.int64)
    values = df["value"].to_numpy(dtype=np.float32)
    users = df["user_id"].to_numpy()
    if not len(users):
        return []
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    return [(items[s:e], events[s:e], values[s:e]) for s, e in zip(starts, ends)]


def prepare_data(config: Config, split: Split | None = None, catalog: Catalog | None = None) -> TrainData:
    """Load, split and encode the configured dataset (or use the given split/catalog)."""
    if split is None or catalog is None:
        ds = load_dataset(config.data)
        split = split_dataset(ds, config.data.split)
        catalog = Catalog.from_dataset(ds)
        name = ds.name
    else:
        name = config.data.dataset or "custom"
    needs_text = config.model.item_tower.kind != "id" or config.model.user_tower.kind == "text"
    if needs_text and not any(catalog.texts):
        raise LmrecError(
            f"dataset {name!r} has no item text, which the text towers read; use model.item_tower.kind=id "
            "(or give the items text through data.text_template)"
        )
    counts = item_counts(split.train, catalog)
    return TrainData(
        dataset=name,
        item_ids=catalog.item_ids,
        texts=catalog.texts,
        seen=counts > 0,
        counts=counts,
        sequences=user_value_sequences(split.train, catalog),
        valid=build_queries(split.train, split.valid, catalog),
    )


class SequenceWindows(TorchDataset):
    """Training examples for sequential user towers: windows of ``L + 1`` events, the last window
    ending at the user's latest event; every position predicts the next item (SASRec-style)."""

    def __init__(self, sequences, max_history: int, trim: bool = True):
        self.trim = trim  # pad each batch to its longest window, not to L + 1
        self.rows = []
        for u, (items, _, _) in enumerate(sequences):
            end = len(items)
            while end >= 2:
                self.rows.append((u, max(0, end - max_history - 1), end))
                end -= max_history
        self.sequences = sequences
        self.length = max_history + 1

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.rows[i]

    def lengths(self) -> np.ndarray:
        """(len(self),) events per window."""
        return np.array([e - s for _, s, e in self.rows], dtype=np.int64)

    def collate(self, rows) -> dict[str, torch.Tensor]:
        """Windows left-padded to the batch's longest with ``trim`` (for a user tower whose states do not
        depend on padding: the padding cut off changes nothing but the time spent on it), else to ``L + 1``."""
        items, events, values = [], [], []
        for u, s, e in rows:
            seq = self.sequences[u]
            items.append(seq[0][s:e] + 1)
            events.append(seq[1][s:e])
            values.append(seq[2][s:e])
        length = max((len(i) for i in items), default=1) if self.trim else self.length
        val = np.full((len(rows), length), np.nan, dtype=np.float32)
        for r, v in enumerate(values):
            if len(v):
                val[r, length - len(v) :] = v
        return {
            "items": torch.as_tensor(pad_left(items, length)),
            "events": torch.as_tensor(pad_left(events, length)),
            "values": torch.as_tensor(val),
        }


class LengthBuckets(torch.utils.data.Sampler):
    """Batches of examples of similar length, in random order: each epoch shuffles, sorts every run of
    ``pool`` batches by length, cuts it into batches and shuffles the batches. Padding to a batch's longest
    window then costs little (Amazon histories are mostly short, a few are 50 long). With ``world`` > 1
    every rank draws the same batches and takes every ``world``-th (DDP without a DistributedSampler)."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, rank: int = 0, world: int = 1, pool: int = 50):
        self.lengths, self.batch_size, self.seed = np.asarray(lengths), batch_size, seed
        self.rank, self.world, self.pool = rank, world, pool
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        span = self.batch_size * self.pool
        batches = []
        for s in range(0, len(order), span):
            chunk = order[s : s + span]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[b : b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        per_rank = len(batches) // self.world if self.world > 1 else len(batches)
        return batches[self.rank :: self.world][:per_rank]

    def __iter__(self):
        return (b.tolist() for b in self._batches())

    def __len__(self) -> int:
        n = -(-len(self.lengths) // self.batch_size)
        return n // self.world if self.world > 1 else n


class PrefixExamples(TorchDataset):
    """Training examples for the text user tower: (history prefix -> next item), one per event."""

    def __init__(self, sequences, max_history: int):
        self.rows = [(u, j) for u, (items, _, _) in enumerate(sequences) for j in range(1, len(items))]
        self.sequences = sequences
        self.max_history = max_history

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return i

    def history(self, i: int) -> np.ndarray:
        u, j = self.rows[i]
        return self.sequences[u][0][max(0, j - self.max_history) : j]

    def collate(self, idx) -> dict[str, torch.Tensor]:
        return {
            "example": torch.as_tensor(idx, dtype=torch.long),
            "target": torch.as_tensor([self.sequences[self.rows[i][0]][0][self.rows[i][1]] for i in idx]),
            "value": torch.as_tensor([self.sequences[self.rows[i][0]][2][self.rows[i][1]] for i in idx]),
        }
