"""Off-policy evaluation of a candidate on logged-bandit data: the glue between the logs, a candidate's
ranking of each logged recommendation's context, its exploration policy, and the estimators.

The caller supplies, per logged ``recommendation_id``, the candidate's :class:`CandidatePool` for that
context (its re-ranked pool with scores and item ages: what its ``Ranker`` would have retrieved for that
user at that time). :func:`candidate_feedback` turns it into the estimators' :class:`Feedback`: the
candidate's marginal propensity of each logged item at its logged position (0 where the item is not in
its pool), its prefix probabilities of each logged slate, and, for ``dm`` / ``dr``, a reward model
calibrated on the logs from the candidate's own scores. :func:`evaluate` runs every estimator and reports
intervals, effective sample size, and the estimators that refused (with why).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from lmrec.errors import DataError
from lmrec.loop.estimators import (
    ESTIMATORS,
    Feedback,
    Interval,
    SupportError,
    effective_sample_size,
    fit_isotonic,
    fit_platt,
    with_reward_model,
)
from lmrec.loop.logs import LoggedBandit
from lmrec.loop.policies import ExplorationPolicy


@dataclass(frozen=True)
class CandidatePool:
    """A candidate's re-ranked pool for one logged context, best first."""

    item_ids: Sequence[str]
    scores: np.ndarray  # (n,)
    item_age_s: np.ndarray | None = None  # (n,), for a new_items policy
    item_impressions: np.ndarray | None = None  # (n,) shown so far, for new_items' default order


def candidate_feedback(
    logged: LoggedBandit,
    pools: Mapping[str, CandidatePool] | Callable[[str], CandidatePool],
    policy: ExplorationPolicy | dict,
    reward_model: Literal["platt", "isotonic"] | None = "platt",
) -> Feedback:
    """The estimators' input for ``policy`` over the candidate's ``pools`` (one per logged recommendation)."""
    policy = policy if isinstance(policy, ExplorationPolicy) else ExplorationPolicy(policy)
    get = pools if callable(pools) else pools.get
    imp = logged.impressions
    n = len(imp)
    eval_p, eval_prefix, cand_score = np.zeros(n), np.zeros(n), np.full(n, np.nan)
    prefix_ok = True
    full: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}  # first row -> (end, scores, marginals): q_policy
    rid_col, pos_col, item_col = (imp[c].to_numpy() for c in ("recommendation_id", "position", "item_id"))
    starts = np.flatnonzero(np.r_[True, imp["slate"].to_numpy()[1:] != imp["slate"].to_numpy()[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], n]):
        rid = rid_col[a]
        pool = get(rid)
        if pool is None:
            raise DataError(f"no candidate pool for logged recommendation {rid!r}: pass one for every recommendation")
        pos = pos_col[a:b].astype(np.int64)
        k = int(pos.max()) + 1
        where = {i: r for r, i in enumerate(pool.item_ids)}
        in_pool = np.array([where.get(i, -1) for i in item_col[a:b]], dtype=np.int64)
        present = in_pool >= 0
        scores = np.asarray(pool.scores, dtype=np.float64)
        if present.any():
            marg = policy.marginals(scores, k, pool.item_age_s, in_pool[present], pool.item_impressions)
            # a logged slate longer than the candidate's pool: the candidate fills no position past its pool
            placed = present & (pos < marg.shape[1])
            eval_p[a:b][placed] = marg[in_pool[placed], pos[placed]]
            cand_score[a:b][present] = scores[in_pool[present]]
        if (pos != np.arange(len(pos))).any():
            prefix_ok = False  # rows missing from the slate: prefixes are unknown
        elif prefix_ok:
            first_missing = int(np.argmin(present)) if not present.all() else len(pos)
            if first_missing:
                eval_prefix[a : a + first_missing] = policy.prefix_probabilities(
                    scores, in_pool[:first_missing], k, pool.item_age_s, pool.item_impressions
                )
        if reward_model is not None:
            full[a] = (b, scores, policy.marginals(scores, k, pool.item_age_s, None, pool.item_impressions))
    has_prefix = prefix_ok and imp["prefix_propensity"].notna().all()
    fb = logged.feedback(eval_p, eval_prefix if has_prefix else None)
    if reward_model is None:
        return fb
    ok = ~np.isnan(cand_score)
    if not ok.any():
        raise DataError("no logged item is in the candidate's pools: a reward model cannot be calibrated")
    reward, position = fb.reward, fb.position
    fit = fit_platt if reward_model == "platt" else fit_isotonic
    model = fit(cand_score[ok], reward[ok], position[ok])
    q_logged = np.where(ok, model.predict(np.nan_to_num(cand_score), position), 0.0)
    q_policy = np.empty(n)
    for a, (b, scores, marg) in full.items():
        for r in range(a, b):
            j = position[r]
            # past the candidate's pool it shows nothing: no expected reward there
            q_policy[r] = marg[:, j] @ model.predict(scores, np.full(len(scores), j)) if j < marg.shape[1] else 0.0
    return with_reward_model(fb, q_logged, q_policy)


@dataclass(frozen=True)
class OPEReport:
    """Every estimator's estimate (or why it refused) for one candidate on one set of logs."""

    policy: str
    params: dict[str, Any]
    slots: int
    recommendations: int
    logged_value: float  # the logger's own mean reward per slot
    effective_sample_size: float
    mean_weight: float  # ~1 when the logs support the candidate
    estimates: dict[str, Interval] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["estimates"] = {k: asdict(v) for k, v in self.estimates.items()}
        return out


def evaluate(
    logged: LoggedBandit,
    pools: Mapping[str, CandidatePool] | Callable[[str], CandidatePool],
    policy: ExplorationPolicy | dict,
    estimators: Sequence[str] = ("ips", "snips", "dm", "dr", "iips", "rips"),
    reward_model: Literal["platt", "isotonic"] | None = "platt",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> OPEReport:
    """Estimate ``policy`` (over the candidate's ``pools``) from ``logged``; slot-level estimators give the
    mean reward per slot, slate-level ones (iips, rips) the mean reward per recommendation."""
    unknown = sorted(set(estimators) - set(ESTIMATORS))
    if unknown:
        raise DataError(f"unknown estimator(s) {unknown}; choose from {sorted(ESTIMATORS)}")
    policy = policy if isinstance(policy, ExplorationPolicy) else ExplorationPolicy(policy)
    needs_q = any(ESTIMATORS[e].needs_reward_model for e in estimators)
    fb = candidate_feedback(logged, pools, policy, reward_model if needs_q else None)
    estimates, refused = {}, {}
    for name in estimators:
        try:
            estimates[name] = ESTIMATORS[name]().interval(fb, n_bootstrap=n_bootstrap, seed=seed)
        except (SupportError, DataError) as e:
            refused[name] = str(e)
    return OPEReport(
        policy=policy.name,
        params=policy.params,
        slots=len(fb.reward),
        recommendations=int(fb.slate.max()) + 1,
        logged_value=float(fb.reward.mean()),
        effective_sample_size=effective_sample_size(fb.weight),
        mean_weight=float(fb.weight.mean()),
        estimates=estimates,
        refused=refused,
    )
