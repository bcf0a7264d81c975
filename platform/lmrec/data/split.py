"""Filters (value threshold, k-core) and splits (given, leave-one-out by time, global temporal cut).

Order within a user is ``timestamp``, ties broken by the source's row order (a stable sort), so a
split is a pure function of the input file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lmrec.config import DataConfig, SplitConfig
from lmrec.data.schema import Dataset
from lmrec.errors import DataError


@dataclass
class Split:
    """``train`` is what models fit on; ``valid``/``test`` hold the target interactions.

    For the valid split a user's history is their ``train`` rows; for the test split it is
    ``train`` + ``valid`` rows (see :func:`history_for`).
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    method: str

    def history_for(self, split: str) -> pd.DataFrame:
        if split == "valid":
            return self.train
        if split == "test":
            return pd.concat([self.train, self.valid], ignore_index=True)
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")

    def targets_for(self, split: str) -> pd.DataFrame:
        return {"valid": self.valid, "test": self.test}[split]

    def summary(self) -> dict:
        return {
            "method": self.method,
            **{f"{name}_interactions": int(len(df)) for name, df in (("train", self.train), ("valid", self.valid), ("test", self.test))},
            "test_users": int(self.test["user_id"].nunique()),
        }


def chronological(df: pd.DataFrame) -> pd.DataFrame:
    """Sort by user then time, keeping source order among equal timestamps."""
    return df.sort_values(["user_id", "timestamp"], kind="stable")


def kcore(df: pd.DataFrame, min_user: int, min_item: int) -> pd.DataFrame:
    """Repeatedly drop users/items with too few interactions until both bounds hold."""
    if min_user <= 1 and min_item <= 1:
        return df
    while True:
        n = len(df)
        if min_item > 1:
            counts = df["item_id"].map(df["item_id"].value_counts())
            df = df[counts >= min_item]
        if min_user > 1:
            counts = df["user_id"].map(df["user_id"].value_counts())
            df = df[counts >= min_user]
        if len(df) == n:
            return df


def apply_filters(ds: Dataset, cfg: DataConfig) -> Dataset:
    inter = ds.interactions
    if cfg.min_value is not None:
        inter = inter[inter["value"] >= cfg.min_value]
    inter = kcore(inter, cfg.min_user_interactions, cfg.min_item_interactions)
    if len(inter) == 0:
        raise DataError(
            f"{ds.name}: no interactions left after filtering (min_value={cfg.min_value}, "
            f"min_user_interactions={cfg.min_user_interactions}, min_item_interactions={cfg.min_item_interactions})"
        )
    if len(inter) != len(ds.interactions) and ds.has_given_split:
        raise DataError(f"{ds.name}: filters would change the dataset's given split; turn them off or use another split")
    items = ds.items
    if cfg.min_item_interactions > 0:  # the k-core bound holds for the catalog too, not only for the events
        items = items[items["item_id"].isin(set(inter["item_id"]))].reset_index(drop=True)
    if len(inter) != len(ds.interactions) or len(items) != len(ds.items):
        ds = Dataset(ds.name, inter.reset_index(drop=True), items, ds.source, ds.synthetic, dict(ds.info))
    return ds


def leave_one_out(df: pd.DataFrame) -> Split:
    """Last interaction of each user = test, second-to-last = valid; users with < 3 stay in train."""
    df = chronological(df)
    size = df.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    pos_from_end = size - 1 - df.groupby("user_id", sort=False).cumcount().to_numpy()
    eligible = size >= 3
    test = eligible & (pos_from_end == 0)
    valid = eligible & (pos_from_end == 1)
    return Split(df[~(test | valid)], df[valid], df[test], "leave_one_out")


def temporal(df: pd.DataFrame, cfg: SplitConfig) -> Split:
    """One global time cut for valid and one for test, at quantiles of the interaction timestamps."""
    df = chronological(df)
    t_valid, t_test = np.quantile(df["timestamp"].to_numpy(), [cfg.valid_quantile, cfg.test_quantile])
    if t_valid == t_test:
        raise DataError("temporal split: valid and test cut at the same timestamp; widen the quantiles")
    ts = df["timestamp"]
    return Split(df[ts < t_valid], df[(ts >= t_valid) & (ts < t_test)], df[ts >= t_test], "temporal")


def given(df: pd.DataFrame) -> Split:
    df = chronological(df)
    s = df["split"]
    return Split(df[s == "train"], df[s == "valid"], df[s == "test"], "given")


def split_dataset(ds: Dataset, cfg: SplitConfig) -> Split:
    method = cfg.method
    if method == "auto":
        method = "given" if ds.has_given_split else "leave_one_out"
    if method == "given":
        if not ds.has_given_split:
            raise DataError(f"{ds.name}: split.method=given but the dataset ships no split; use leave_one_out or temporal")
        return given(ds.interactions)
    if method == "leave_one_out":
        return leave_one_out(ds.interactions)
    return temporal(ds.interactions, cfg)


def hold_out_items(split: Split, item_ids, fraction: float, seed: int = 0) -> tuple[Split, np.ndarray]:
    """The cold-start protocol: a random ``fraction`` of the catalog leaves training entirely.

    Their interactions are removed from train and valid (so from every history too); test targets are
    kept, so test users whose target is a held-out item measure zero-shot recommendation.
    Returns the new split and the held-out item ids.
    """
    if not 0 < fraction < 1:
        raise DataError(f"hold-out fraction must be in (0, 1), got {fraction}")
    ids = np.asarray(sorted(set(map(str, item_ids))), dtype=object)
    held = np.random.default_rng(seed).choice(ids, size=max(1, int(round(fraction * len(ids)))), replace=False)
    keep = lambda df: df[~df["item_id"].isin(set(held))]  # noqa: E731
    return Split(keep(split.train), keep(split.valid), split.test, f"{split.method}+holdout{fraction:g}"), held
