"""The canonical form every loader produces.

``interactions`` (one row per event, in source order):

=========== ======= ===================================================================
column      dtype   meaning
=========== ======= ===================================================================
user_id     str     the source's user id
item_id     str     the source's item id
timestamp   int64   seconds since the epoch, or the position in the user's sequence
event       str     one of :data:`EVENT_TYPES`
value       float64 rating or other value; NaN when the source has none
split       str     only for datasets that ship their own split: train / valid / test
=========== ======= ===================================================================

``items`` (one row per catalog item): ``item_id`` (str), ``text`` (str, built by the text template),
plus the raw text fields the template read (title, genres, brand, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lmrec.errors import DataError

# Index 0 is reserved for padding wherever events are embedded.
EVENT_TYPES: tuple[str, ...] = ("view", "click", "purchase", "rating")
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "event", "value")
SPLITS = ("train", "valid", "test")


@dataclass
class Dataset:
    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    source: str = ""
    synthetic: bool = False
    # Fields the loader knows about the data (e.g. the text template used); reported, never branched on.
    info: dict = field(default_factory=dict)

    @property
    def has_given_split(self) -> bool:
        return "split" in self.interactions.columns

    @property
    def has_text(self) -> bool:
        return bool((self.items["text"].str.len() > 0).any())

    def summary(self) -> dict:
        inter = self.interactions
        return {
            "dataset": self.name,
            "synthetic": self.synthetic,
            "users": int(inter["user_id"].nunique()),
            "items": int(len(self.items)),
            "interactions": int(len(inter)),
            "items_with_text": int((self.items["text"].str.len() > 0).sum()),
            "events": {k: int(v) for k, v in inter["event"].value_counts().items()},
            "given_split": self.has_given_split,
        }


def canonical_interactions(
    user_id, item_id, timestamp, event="rating", value=np.nan, split=None, source: str = ""
) -> pd.DataFrame:
    """Assemble and type-check an interactions frame; ``event``/``value`` may be scalars."""
    n = len(user_id)
    df = pd.DataFrame(
        {
            "user_id": as_ids(user_id, "user_id", source),
            "item_id": as_ids(item_id, "item_id", source),
            "timestamp": _as_int64(timestamp, source),
            "event": np.full(n, event, dtype=object) if isinstance(event, str) else np.asarray(event, dtype=object),
            "value": np.full(n, value, dtype=np.float64) if np.isscalar(value) else _as_float(value, source),
        }
    )
    if split is not None:
        df["split"] = np.asarray(split, dtype=object)
    bad = ~df["event"].isin(EVENT_TYPES)
    if bad.any():
        raise DataError(
            f"{source}: unknown event type {df.loc[bad, 'event'].iloc[0]!r}; expected one of {EVENT_TYPES}"
        )
    return df


def as_ids(values, name: str, source: str) -> np.ndarray:
    """Ids as strings; a missing or blank id is an error (it would silently become the id "nan")."""
    s = pd.Series(values).reset_index(drop=True)
    if pd.api.types.is_float_dtype(s) and s.notna().all() and (s % 1 == 0).all():
        s = s.astype("int64")  # ids stored as floats (1.0): match the same ids read as integers or text
    text = s.astype(str)
    bad = s.isna().to_numpy() | (text.str.strip() == "").to_numpy()
    if bad.any():
        raise DataError(f"{source}: {name} is empty in data row {int(bad.argmax()) + 1}")
    return text.to_numpy(dtype=object)


def _as_int64(values, source: str) -> np.ndarray:
    s = pd.Series(values).reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(s):
        if s.isna().any():
            raise DataError(f"{source}: timestamp is missing in data row {int(s.isna().to_numpy().argmax()) + 1}")
        if s.dt.tz is not None:  # an aware time (e.g. a Parquet timestamp with a zone): its UTC instant
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        return (s.astype("datetime64[s]").astype("int64")).to_numpy()
    num = pd.to_numeric(s, errors="coerce")
    if num.isna().any():
        row = int(num.isna().to_numpy().argmax())
        raise DataError(f"{source}: timestamp {s.iloc[row]!r} is not a number (data row {row + 1})")
    return num.astype("float64").round().astype("int64").to_numpy()


def _as_float(values, source: str) -> np.ndarray:
    s = pd.Series(values).reset_index(drop=True)
    num = pd.to_numeric(s, errors="coerce")
    bad = (num.isna() & s.notna()).to_numpy()
    if bad.any():
        row = int(bad.argmax())
        raise DataError(f"{source}: value {s.iloc[row]!r} is not a number (data row {row + 1})")
    return num.astype("float64").to_numpy()


def require_columns(df: pd.DataFrame, columns, source: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(map(repr, missing))}; found {', '.join(map(repr, df.columns))}"
        )


def finish_items(items: pd.DataFrame, interactions: pd.DataFrame) -> pd.DataFrame:
    """Dedupe items and add a text-less row for every interacted item the item table lacks."""
    items = items.copy()
    items["item_id"] = items["item_id"].astype(str)
    items = items.drop_duplicates("item_id", keep="first")
    known = set(items["item_id"])
    extra = pd.unique(interactions.loc[~interactions["item_id"].isin(known), "item_id"])
    if len(extra):
        items = pd.concat([items, pd.DataFrame({"item_id": extra})], ignore_index=True)
    if "text" in items.columns:
        items["text"] = items["text"].fillna("").astype(str)
    return items.reset_index(drop=True)
