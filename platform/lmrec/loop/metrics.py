"""Per-day metrics of a simulated run (the rows of ``lmrec bench loop``), as pure functions of its frames.

Inputs are :class:`~lmrec.loop.simulator.SimResult` frames: ``shown`` (one row per slot shown: day, time,
user_id, recommendation_id, position, item_id, is_new, clicked), ``steps`` (one row per recommendation:
day, expected_clicks, oracle_expected_clicks, clicks) and ``new_items`` (item_id, arrival, day). Any frame
with those columns works, e.g. one built from a service's logs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lmrec.errors import DataError
from lmrec.loop.estimators import Interval


def _need(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{what} lacks column(s) {missing}")


def daily_ctr(shown: pd.DataFrame) -> pd.DataFrame:
    """day, slots, clicks, ctr (clicks per slot shown)."""
    _need(shown, ("day", "clicked"), "shown")
    out = shown.groupby("day")["clicked"].agg(slots="size", clicks="sum")
    out["ctr"] = out["clicks"] / out["slots"]
    return out


def daily_regret(steps: pd.DataFrame) -> pd.DataFrame:
    """day, expected and oracle expected clicks per recommendation, regret (their difference) and
    relative_regret (the share of the oracle's expected clicks missed)."""
    _need(steps, ("day", "expected_clicks", "oracle_expected_clicks"), "steps")
    g = steps.groupby("day")
    out = pd.DataFrame(
        {
            "recommendations": g.size(),
            "expected_clicks": g["expected_clicks"].mean(),
            "oracle_expected_clicks": g["oracle_expected_clicks"].mean(),
        }
    )
    out["regret"] = out["oracle_expected_clicks"] - out["expected_clicks"]
    out["relative_regret"] = out["regret"] / out["oracle_expected_clicks"]
    return out


def new_item_share(shown: pd.DataFrame) -> pd.Series:
    """Per day, the share of slots that showed a new item."""
    _need(shown, ("day", "is_new"), "shown")
    return shown.groupby("day")["is_new"].mean().rename("new_item_share")


def coverage(shown: pd.DataFrame, catalog_size: pd.Series | np.ndarray) -> pd.DataFrame:
    """day, items_shown (distinct), catalog_size (items available that day), coverage (their ratio)."""
    _need(shown, ("day", "item_id"), "shown")
    out = shown.groupby("day")["item_id"].nunique().rename("items_shown").to_frame()
    sizes = np.asarray(catalog_size)
    out["catalog_size"] = sizes[out.index.to_numpy()]
    out["coverage"] = out["items_shown"] / out["catalog_size"]
    return out


def time_to_first_click(shown: pd.DataFrame, new_items: pd.DataFrame, end_time: float) -> pd.DataFrame:
    """One row per new item: item_id, day (of arrival), seconds from arrival to its first click
    (``duration``), and ``clicked`` (False: censored at ``end_time``, no click by then)."""
    _need(shown, ("item_id", "time", "clicked"), "shown")
    _need(new_items, ("item_id", "arrival", "day"), "new_items")
    first = shown.loc[shown["clicked"]].groupby("item_id")["time"].min()
    out = new_items[["item_id", "day", "arrival"]].copy()
    click = out["item_id"].map(first)
    out["clicked"] = click.notna().to_numpy()
    out["duration"] = np.where(out["clicked"], click, end_time) - out["arrival"]
    return out


def km_median(duration: np.ndarray, observed: np.ndarray) -> float:
    """The Kaplan-Meier median of right-censored durations; inf when survival never reaches 1/2 (fewer than
    half the items were ever clicked, as far as censoring lets one tell)."""
    d = np.asarray(duration, dtype=np.float64)
    e = np.asarray(observed, dtype=bool)
    if len(d) == 0:
        return float("nan")
    times = np.unique(d[e])
    surv = 1.0
    for t in times:
        at_risk = (d >= t).sum()
        surv *= 1.0 - (e & (d == t)).sum() / at_risk
        if surv <= 0.5:
            return float(t)
    return float("inf")


def ctr_ratio(
    shown_a: pd.DataFrame, shown_b: pd.DataFrame, n_bootstrap: int = 2000, seed: int = 0, alpha: float = 0.05
) -> Interval:
    """CTR(a) / CTR(b) with a paired bootstrap over users (runs on the same user seeds share their users, so
    resampling users jointly keeps the pairing and narrows the interval)."""
    _need(shown_a, ("user_id", "clicked"), "shown_a")
    _need(shown_b, ("user_id", "clicked"), "shown_b")
    a = shown_a.groupby("user_id")["clicked"].agg(["sum", "size"])
    b = shown_b.groupby("user_id")["clicked"].agg(["sum", "size"])
    both = a.join(b, how="outer", lsuffix="_a", rsuffix="_b").fillna(0.0).to_numpy(dtype=np.float64)
    if both[:, 1].sum() == 0 or both[:, 3].sum() == 0 or both[:, 2].sum() == 0:
        raise DataError("ctr_ratio needs slots shown in both runs and at least one click in the second")

    def ratio(m: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):  # a resample without clicks in b: inf
            return (m[..., 0] * m[..., 3]) / (m[..., 1] * m[..., 2])

    rng = np.random.default_rng(seed)
    draws = np.empty(n_bootstrap)
    for i in range(0, n_bootstrap, 200):
        idx = rng.integers(0, len(both), size=(min(200, n_bootstrap - i), len(both)))
        draws[i : i + len(idx)] = ratio(both[idx].sum(axis=1))
    draws = draws[~np.isnan(draws)]  # 0 / 0: no clicks in either run's resample (tiny runs only)
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return Interval(float(ratio(both.sum(axis=0))), float(lo), float(hi), alpha)


def daily_report(steps: pd.DataFrame, shown: pd.DataFrame, new_items: pd.DataFrame, catalog_size) -> pd.DataFrame:
    """All per-day rows side by side: ctr, regret, new-item share, coverage, and the Kaplan-Meier median time
    to first click of the items that arrived that day (censored at the end of the run)."""
    out = daily_ctr(shown).join(daily_regret(steps)[["regret", "relative_regret"]])
    out = out.join(new_item_share(shown)).join(coverage(shown, catalog_size)[["coverage"]])
    if len(new_items):
        end = float(shown["time"].max())
        ttfc = time_to_first_click(shown, new_items, end)
        med = ttfc.groupby("day").apply(lambda g: km_median(g["duration"], g["clicked"]), include_groups=False)
        out["new_item_median_s_to_first_click"] = med.reindex(out.index)
        out["new_items_clicked"] = ttfc.groupby("day")["clicked"].mean().reindex(out.index)
    return out
