"""An experiment's online result from its logs (``lmrec experiment report``): per variant, the click-through
(mean reward per shown slot, with a 95% bootstrap interval over users), the difference to the control (the
variant named by --control, else the one named "control", else the first seen) with a permutation test over users, and, beside it, the off-policy estimate made for that
variant before it went live (``lmrec ope`` reports)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from lmrec.errors import DataError
from lmrec.loop.logs import LoggedBandit


def _per_user(frame: pd.DataFrame) -> np.ndarray:
    """(users, 2): each user's summed reward and shown slots (users are the independent units)."""
    g = frame.groupby(frame["user_id"].fillna(frame["recommendation_id"]))["reward"].agg(["sum", "size"])
    return g.to_numpy(dtype=np.float64)


def _interval(per_user: np.ndarray, n_bootstrap: int, rng: np.random.Generator) -> tuple[float, float]:
    idx = rng.integers(0, len(per_user), size=(n_bootstrap, len(per_user)))
    sums = per_user[idx].sum(axis=1)
    draws = sums[:, 0] / sums[:, 1]
    lo, hi = np.quantile(draws, [0.025, 0.975], method="inverted_cdf")
    return float(lo), float(hi)


def _permutation_p(a: np.ndarray, b: np.ndarray, n: int, rng: np.random.Generator) -> float:
    """Two-sided p-value of CTR(b) - CTR(a) under exchangeable users (the arms' labels shuffled ``n`` times)."""
    both = np.concatenate([a, b])
    observed = b[:, 0].sum() / b[:, 1].sum() - a[:, 0].sum() / a[:, 1].sum()
    hits = 0
    for _ in range(n):
        perm = rng.permutation(len(both))
        x, y = both[perm[: len(a)]], both[perm[len(a):]]
        hits += abs(y[:, 0].sum() / y[:, 1].sum() - x[:, 0].sum() / x[:, 1].sum()) >= abs(observed) - 1e-15
    return (hits + 1) / (n + 1)


def experiment_report(logged: LoggedBandit, ope: Mapping[str, dict] | None = None, control: str | None = None,
                      n_bootstrap: int = 2000, n_permutations: int = 2000, seed: int = 0,
                      surface: str = "recommend") -> dict:
    """Per-variant CTR with intervals on one surface (default: the users' recommendations, not related-item
    lists), each variant against ``control`` (default: the variant named "control", else the first seen) with a
    permutation test, and the OPE estimate made beforehand (``ope``: variant -> an ``lmrec ope`` report) beside
    the online figure."""
    frame = logged.impressions
    frame = frame[frame["variant"].notna() & (frame["surface"] == surface)]
    if frame.empty:
        raise DataError(f"the logs hold no {surface} impressions of an experiment (no variant named): "
                        "configure ranking.experiment")
    rng = np.random.default_rng(seed)
    variants = list(dict.fromkeys(frame.sort_values("time")["variant"]))
    per_user = {v: _per_user(frame[frame["variant"] == v]) for v in variants}
    control = control or ("control" if "control" in variants else variants[0])
    if control not in variants:
        raise DataError(f"control variant {control!r} is not in the logs (variants: {', '.join(variants)})")
    out = {"surface": surface, "control": control, "variants": {}}
    for v in variants:
        users = per_user[v]
        ctr = float(users[:, 0].sum() / users[:, 1].sum())
        lo, hi = _interval(users, n_bootstrap, rng)
        mine = frame[frame["variant"] == v]
        row = {"users": len(users), "recommendations": int(mine["recommendation_id"].nunique()),
               "slots": int(users[:, 1].sum()), "ctr": ctr, "ctr_95": [lo, hi],
               "models": sorted(mine["model_version"].unique().tolist()), "policies": sorted(mine["policy"].unique().tolist())}
        if v != control:
            base = per_user[control]
            row["vs_control"] = {"difference": ctr - float(base[:, 0].sum() / base[:, 1].sum()),
                                 "p_value": _permutation_p(base, users, n_permutations, rng)}
        if ope and v in ope:
            estimates = ope[v].get("report", ope[v]).get("estimates", {})
            row["ope_before"] = {name: est for name, est in estimates.items() if name in ("snips", "dr", "ips")}
        out["variants"][v] = row
    return out
