"""The logged-bandit dataset: impressions (what was shown, with its propensities) and attributed events, as
Parquet, and the reader that joins them into the arrays the off-policy estimators take.

This module is the single source of truth for the format: :data:`IMPRESSION_COLUMNS` and
:data:`EVENT_COLUMNS` define it (``docs/loop.md`` prints the same tables, and a test keeps them equal).

A dataset is a folder with ``impressions/`` and ``events/``, each holding one or more ``*.parquet`` files
(``lmrec collect`` writes it; :func:`write_logs` is the writer). One impression row per shown slot; events
are attributed to a slot by ``recommendation_id`` and ``position`` (or, lacking a position, by
``recommendation_id`` and ``item_id``). The reward of a slot is built from its attributed events with
per-type weights (:class:`RewardConfig`, e.g. click = 1, purchase = 5) within an attribution window.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from lmrec.errors import DataError
from lmrec.loop.estimators import Feedback
from lmrec.loop.policies import Slate

SURFACES = ("recommend", "related")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool
    description: str


IMPRESSION_COLUMNS: tuple[Column, ...] = (
    Column("recommendation_id", pa.string(), False, "the id returned with the answer; events cite it"),
    Column("user_id", pa.string(), True, "who was shown the slate (null for an anonymous /related call)"),
    Column("context_item_id", pa.string(), True, "surface related: the item the list is related to"),
    Column("time", pa.float64(), False, "when the slate was served, seconds since the epoch"),
    Column("position", pa.int32(), False, "0 = the top slot"),
    Column("item_id", pa.string(), False, "the item shown in this slot"),
    Column("score", pa.float64(), False, "the model's score for the item (after re-rank)"),
    Column("propensity", pa.float64(), False, "P(this item at this position) under the logging policy, in (0, 1]"),
    Column("prefix_propensity", pa.float64(), True, "P(the slate's items at positions 0..position, in order)"),
    Column("slate_probability", pa.float64(), True, "P(this exact slate); null where the policy cannot say"),
    Column("explored", pa.bool_(), False, "the slot was filled by exploration, not by the ranking"),
    Column("policy", pa.string(), False, "the policy's name, e.g. softmax or epsilon+new_items"),
    Column("policy_params", pa.string(), False, "the policy config, as JSON"),
    Column("model_version", pa.string(), False, "the model artifact that scored the pool"),
    Column("variant", pa.string(), True, "the experiment variant the user was assigned to"),
    Column("surface", pa.string(), False, "recommend or related"),
)
EVENT_COLUMNS: tuple[Column, ...] = (
    Column("recommendation_id", pa.string(), True, "the recommendation it is attributed to; null: organic"),
    Column("position", pa.int32(), True, "the slot it is attributed to; null: found by item_id in the slate"),
    Column("user_id", pa.string(), True, "who acted"),
    Column("item_id", pa.string(), True, "the item acted on"),
    Column("event_type", pa.string(), False, "view, click, purchase, rating, ..."),
    Column("value", pa.float64(), True, "the event's value (a rating, a price), if any"),
    Column("time", pa.float64(), False, "when it happened, seconds since the epoch"),
)


def _schema(columns: Sequence[Column]) -> pa.Schema:
    return pa.schema(
        [pa.field(c.name, c.type, nullable=c.nullable, metadata={"description": c.description}) for c in columns]
    )


IMPRESSION_SCHEMA = _schema(IMPRESSION_COLUMNS)
EVENT_SCHEMA = _schema(EVENT_COLUMNS)


def schema_markdown(columns: Sequence[Column]) -> str:
    """The columns as a Markdown table (the one in docs/loop.md)."""
    rows = ["| column | type | null | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{c.name}` | {c.type} | {'yes' if c.nullable else 'no'} | {c.description} |" for c in columns]
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------- writing
def impression_rows(
    slate: Slate,
    recommendation_id: str,
    time: float,
    model_version: str,
    user_id: str | None = None,
    surface: Literal["recommend", "related"] = "recommend",
    variant: str | None = None,
    context_item_id: str | None = None,
) -> list[dict[str, Any]]:
    """One impression row per slot of ``slate``, in :data:`IMPRESSION_COLUMNS` order."""
    params = json.dumps(slate.params, sort_keys=True, separators=(",", ":"))
    return [
        {
            "recommendation_id": recommendation_id,
            "user_id": user_id,
            "context_item_id": context_item_id,
            "time": float(time),
            "position": j,
            "item_id": item,
            "score": slate.scores[j],
            "propensity": slate.propensities[j],
            "prefix_propensity": slate.prefix_probabilities[j],
            "slate_probability": slate.slate_probability,
            "explored": slate.explored[j],
            "policy": slate.policy,
            "policy_params": params,
            "model_version": model_version,
            "variant": variant,
            "surface": surface,
        }
        for j, item in enumerate(slate.item_ids)
    ]


def to_table(rows: pd.DataFrame | Sequence[dict], columns: Sequence[Column]) -> pa.Table:
    """Rows as an Arrow table of exactly ``columns`` (order, types, nullability); errors name the column."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows), columns=[c.name for c in columns])
    missing = [c.name for c in columns if c.name not in frame.columns and not c.nullable]
    if missing:
        raise DataError(f"missing required column(s) {missing}; the schema is lmrec.loop.logs ({_names(columns)})")
    arrays = []
    for c in columns:
        values = frame[c.name] if c.name in frame.columns else pd.Series([None] * len(frame), dtype=object)
        if not c.nullable and values.isna().any():
            bad = np.flatnonzero(values.isna().to_numpy())
            raise DataError(f"column {c.name} must not be null ({len(bad)} rows are, first: rows {bad[:5].tolist()})")
        try:
            arrays.append(pa.array(values, type=c.type, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise DataError(f"column {c.name} must hold {c.type} values: {str(e).splitlines()[0]}") from None
    return pa.Table.from_arrays(arrays, schema=_schema(columns))


def _names(columns: Sequence[Column]) -> str:
    return ", ".join(c.name for c in columns)


def write_logs(
    folder: str | Path,
    impressions: pd.DataFrame | Sequence[dict],
    events: pd.DataFrame | Sequence[dict],
    part: str = "0",
) -> Path:
    """Validate and write ``folder/impressions/part-PART.parquet`` and ``folder/events/part-PART.parquet``."""
    folder = Path(folder)
    imp = to_table(impressions, IMPRESSION_COLUMNS)
    validate_impressions(imp.to_pandas())
    ev = to_table(events, EVENT_COLUMNS)
    for sub, table in (("impressions", imp), ("events", ev)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / sub / f"part-{part}.parquet")
    return folder


# ------------------------------------------------------------------------------------------- reading
class RewardConfig(BaseModel):
    """How a slot's reward is built from the events attributed to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: dict[str, float] = Field(default_factory=lambda: {"click": 1.0})  # event types not named count 0
    aggregate: Literal["max", "sum"] = "max"  # max: a slot clicked twice counts once (click-through)
    window_s: float | None = Field(86_400.0, gt=0)  # events later than this after the impression are not its own


def validate_impressions(frame: pd.DataFrame) -> None:
    """Raise :class:`DataError` naming the first rule the impressions break."""
    p = frame["propensity"].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~((p > 0) & (p <= 1)))
    if len(bad):
        raise DataError(
            f"impressions: propensity must be in (0, 1] ({len(bad)} rows are not, first: rows {bad[:5].tolist()}); "
            "a slot that could not have been shown cannot have been logged"
        )
    for name in ("prefix_propensity", "slate_probability"):
        v = frame[name].to_numpy(dtype=np.float64)
        if ((v <= 0) | (v > 1)).any():
            raise DataError(f"impressions: {name} must be null or in (0, 1]")
    if (frame["position"] < 0).any():
        raise DataError("impressions: position must be 0 or more (0 = the top slot)")
    dup = frame.duplicated(["recommendation_id", "position"])
    if dup.any():
        r = frame.loc[dup, "recommendation_id"].iloc[0]
        raise DataError(f"impressions: recommendation {r!r} has two rows for one position")
    dup = frame.duplicated(["recommendation_id", "item_id"])
    if dup.any():
        r = frame.loc[dup, "recommendation_id"].iloc[0]
        raise DataError(f"impressions: recommendation {r!r} shows one item twice")
    surfaces = set(frame["surface"].unique()) - set(SURFACES)
    if surfaces:
        raise DataError(f"impressions: surface must be one of {SURFACES}, got {sorted(surfaces)}")
    per_slate = frame.groupby("recommendation_id", sort=False)[["user_id", "time", "policy", "model_version"]].nunique(
        dropna=False
    )
    if (per_slate > 1).any().any():
        col = per_slate.columns[(per_slate > 1).any()][0]
        r = per_slate.index[per_slate[col] > 1][0]
        raise DataError(f"impressions: recommendation {r!r} has more than one {col} across its rows")
    for text in frame["policy_params"].unique():
        try:
            json.loads(text)
        except (TypeError, ValueError):
            raise DataError(f"impressions: policy_params must be JSON, got {str(text)[:80]!r}") from None


@dataclass(frozen=True)
class LoggedBandit:
    """Impressions joined with their rewards, one row per shown slot (sorted by time, recommendation, position).

    ``impressions``: the impression columns plus ``reward`` and ``slate`` (int code of the recommendation).
    ``unattributed``: counts of events that name a recommendation but could not be joined to a slot, by reason.
    """

    impressions: pd.DataFrame
    unattributed: dict[str, int]

    @property
    def reward(self) -> np.ndarray:
        return self.impressions["reward"].to_numpy()

    @property
    def slate(self) -> np.ndarray:
        return self.impressions["slate"].to_numpy()

    def feedback(
        self,
        eval_pscore: np.ndarray,
        eval_pscore_prefix: np.ndarray | None = None,
        q_logged: np.ndarray | None = None,
        q_policy: np.ndarray | None = None,
    ) -> Feedback:
        """The estimators' input for a candidate whose probabilities for these rows are given (aligned)."""
        imp = self.impressions
        prefix = imp["prefix_propensity"].to_numpy(dtype=np.float64)
        return Feedback(
            reward=self.reward,
            position=imp["position"].to_numpy(dtype=np.int64),
            pscore=imp["propensity"].to_numpy(dtype=np.float64),
            eval_pscore=eval_pscore,
            slate=self.slate,
            pscore_prefix=None if eval_pscore_prefix is None else prefix,
            eval_pscore_prefix=eval_pscore_prefix,
            q_logged=q_logged,
            q_policy=q_policy,
        )


def _read_folder(path: Path, columns: Sequence[Column]) -> pd.DataFrame:
    files = sorted(path.glob("*.parquet")) if path.is_dir() else []
    if not files:
        raise DataError(f"no Parquet files in {path.name}/ (a logged-bandit folder has impressions/ and events/)")
    tables = []
    for f in files:
        t = pq.read_table(f)
        missing = [c.name for c in columns if c.name not in t.column_names and not c.nullable]
        if missing:
            raise DataError(f"{path.name}/{f.name}: missing column(s) {missing}")
        tables.append(to_table(t.to_pandas(), columns))
    return pa.concat_tables(tables).to_pandas()


def read_logs(
    source: str | Path | tuple[pd.DataFrame, pd.DataFrame], reward: RewardConfig | dict | None = None
) -> LoggedBandit:
    """Read a logged-bandit folder (or an (impressions, events) pair of frames) and attribute rewards."""
    cfg = reward if isinstance(reward, RewardConfig) else RewardConfig(**(reward or {}))
    if isinstance(source, tuple):
        imp = to_table(source[0], IMPRESSION_COLUMNS).to_pandas()
        ev = to_table(source[1], EVENT_COLUMNS).to_pandas()
    else:
        folder = Path(source)
        imp = _read_folder(folder / "impressions", IMPRESSION_COLUMNS)
        ev = _read_folder(folder / "events", EVENT_COLUMNS) if (folder / "events").is_dir() else None
        if ev is None:
            ev = to_table([], EVENT_COLUMNS).to_pandas()
    validate_impressions(imp)
    imp = imp.sort_values(["time", "recommendation_id", "position"], kind="stable").reset_index(drop=True)
    imp["slate"] = pd.factorize(imp["recommendation_id"])[0]

    ev = ev[ev["recommendation_id"].notna()]
    unattributed = {"unknown_recommendation": 0, "no_such_slot": 0, "item_mismatch": 0, "outside_window": 0}
    slot = pd.Series(np.arange(len(imp)), index=pd.MultiIndex.from_frame(imp[["recommendation_id", "position"]]))
    by_item = pd.Series(np.arange(len(imp)), index=pd.MultiIndex.from_frame(imp[["recommendation_id", "item_id"]]))
    known = ev["recommendation_id"].isin(imp["recommendation_id"]).to_numpy()
    unattributed["unknown_recommendation"] = int((~known).sum())
    ev = ev[known]
    has_pos = ev["position"].notna().to_numpy()
    row = np.full(len(ev), -1, dtype=np.int64)
    if has_pos.any():
        keys = pd.MultiIndex.from_arrays([ev["recommendation_id"][has_pos], ev["position"][has_pos].astype(np.int64)])
        row[has_pos] = slot.reindex(keys).fillna(-1).to_numpy(dtype=np.int64)
    if (~has_pos).any():
        keys = pd.MultiIndex.from_arrays([ev["recommendation_id"][~has_pos], ev["item_id"][~has_pos]])
        row[~has_pos] = by_item.reindex(keys).fillna(-1).to_numpy(dtype=np.int64)
    unattributed["no_such_slot"] = int((row < 0).sum())
    ev, row = ev[row >= 0], row[row >= 0]
    # an event that names both a position and an item must name the item shown there
    named = ev["item_id"].notna().to_numpy()
    mismatch = named & (ev["item_id"].to_numpy() != imp["item_id"].to_numpy()[row])
    unattributed["item_mismatch"] = int(mismatch.sum())
    ev, row = ev[~mismatch], row[~mismatch]
    lag = ev["time"].to_numpy() - imp["time"].to_numpy()[row]
    late = (lag < 0) | (lag > cfg.window_s if cfg.window_s is not None else False)
    unattributed["outside_window"] = int(late.sum())
    ev, row = ev[~late], row[~late]

    w = ev["event_type"].map(cfg.weights).fillna(0.0).to_numpy(dtype=np.float64)
    reward = np.zeros(len(imp))
    if cfg.aggregate == "sum":
        np.add.at(reward, row, w)
    else:
        np.maximum.at(reward, row, w)
    imp["reward"] = reward
    return LoggedBandit(imp, unattributed)
