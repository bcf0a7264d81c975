"""Off-policy estimators: what a candidate policy's reward would have been, from logs of another policy.

The interface follows the Open Bandit Pipeline (OBP): each estimator has ``estimate_policy_value(reward,
action, position, pscore, action_dist, ...)`` and ``estimate_interval(...)`` over the same plain arrays, one
row per shown slot. Internally every estimator reads one compact record, :class:`Feedback`, that keeps only
what the estimates use (the candidate's probability of the logged item at the logged position, and the
reward model's predictions), so logs with a different candidate pool per recommendation never need the
dense ``(rows, actions, positions)`` array; :meth:`Feedback.from_dense` builds it from OBP's arrays.

Notation, per logged slot ``i`` (recommendation ``s(i)``, position ``j``, item ``a``): ``w_i = pi_e(a, j | x) /
pi_0(a, j | x)`` (candidate over logger, per-position marginals), ``q_i = q(x, a, j)`` the reward model at
the logged item, ``Q_i = sum_b pi_e(b, j | x) q(x, b, j)`` its expectation under the candidate.

==========  ===========================================  ================================================
estimator   estimate                                     value of
==========  ===========================================  ================================================
ips         mean_i w_i r_i                               one slot (OBP's IPW with positions; unbiased)
snips       sum_i w_i r_i / sum_i w_i                    one slot (self-normalised: lower variance)
dm          mean_i Q_i                                   one slot (as good as the reward model)
dr          mean_i Q_i + w_i (r_i - q_i)                 one slot (unbiased if either part is right)
iips        sum_i w_i r_i / slates                       one slate (independent / position-based IPS)
rips        sum_i w^prefix_i r_i / slates                one slate (reward-interaction IPS: the weight
                                                         of the slate prefix up to the slot)
==========  ===========================================  ================================================

Intervals are percentile bootstraps that resample whole recommendations (slots of one slate are not
independent). Every estimator but ``dm`` refuses, with :class:`SupportError`, when the logs cannot support
the candidate: a row whose logger was deterministic (propensity 1) while the candidate is not certain of the
same item there, or a position where the mean weight (an estimate of the share of the candidate's mass the
logger covers) is significantly below 1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from lmrec.errors import DataError

SUPPORT_TOLERANCE = 0.02  # refuse when the logger covers < 98% of the candidate's mass at a position ...
SUPPORT_Z = 3.0  # ... by more than 3 standard errors (a candidate the logger supports passes ~99.9% of the time)


class SupportError(DataError):
    """The logs cannot support an estimate for this candidate (it puts mass where the logger never did)."""


# -------------------------------------------------------------------------------------- feedback
@dataclass(frozen=True)
class Feedback:
    """Logged slots with a candidate's probabilities: all arrays (n,), one row per shown slot.

    ``slate``: which recommendation each row belongs to (int codes; rows of one slate are resampled together);
    ``pscore`` / ``eval_pscore``: the logger's / the candidate's P(this item at this position);
    ``pscore_prefix`` / ``eval_pscore_prefix``: P(the slate's items up to and including this position), for
    ``rips``; ``q_logged`` / ``q_policy``: the reward model at the logged item / in expectation under the
    candidate, for ``dm`` and ``dr``.
    """

    reward: np.ndarray
    position: np.ndarray
    pscore: np.ndarray
    eval_pscore: np.ndarray
    slate: np.ndarray | None = None
    pscore_prefix: np.ndarray | None = None
    eval_pscore_prefix: np.ndarray | None = None
    q_logged: np.ndarray | None = None
    q_policy: np.ndarray | None = None

    def __post_init__(self):  # validated and converted once, here: every estimator reads the same arrays
        n = len(np.asarray(self.reward))
        conv = {}
        for name in (
            "reward",
            "position",
            "pscore",
            "eval_pscore",
            "slate",
            "pscore_prefix",
            "eval_pscore_prefix",
            "q_logged",
            "q_policy",
        ):
            v = getattr(self, name)
            if v is None:
                continue
            a = np.asarray(v)
            if a.ndim != 1 or len(a) != n:
                raise DataError(f"{name} must be a 1-d array of {n} rows (one per logged slot), got shape {a.shape}")
            if name in ("position", "slate"):
                if not np.issubdtype(a.dtype, np.integer) or (a < 0).any():
                    raise DataError(f"{name} must hold non-negative integers")
            else:
                a = a.astype(np.float64)
                if not np.isfinite(a).all():
                    bad = np.flatnonzero(~np.isfinite(a))
                    raise DataError(
                        f"{name} is missing or not finite at {len(bad)} rows (first: rows {bad[:5].tolist()})"
                    )
            conv[name] = a
        if n == 0:
            raise DataError("no logged slots to estimate from")
        for name in ("pscore", "pscore_prefix"):
            if name in conv and ((conv[name] <= 0) | (conv[name] > 1)).any():
                bad = np.flatnonzero((conv[name] <= 0) | (conv[name] > 1))
                raise DataError(
                    f"{name} must be a probability in (0, 1] for every logged slot: {len(bad)} rows are not "
                    f"(first: rows {bad[:5].tolist()}, values {conv[name][bad[:5]].tolist()}); a slot shown with "
                    "propensity 0 or none cannot be reweighted: log propensities with the slate"
                )
        for name in ("eval_pscore", "eval_pscore_prefix"):
            if name in conv and ((conv[name] < 0) | (conv[name] > 1 + 1e-9)).any():
                raise DataError(f"{name} must be a probability in [0, 1]")
        # contiguous codes 0..S-1, so per-slate sums have no empty entries
        conv["slate"] = np.unique(conv["slate"], return_inverse=True)[1] if "slate" in conv else np.arange(n)
        for name, a in conv.items():
            object.__setattr__(self, name, a)

    @property
    def weight(self) -> np.ndarray:
        return self.eval_pscore / self.pscore

    @classmethod
    def from_dense(
        cls,
        reward,
        action,
        pscore,
        action_dist,
        position=None,
        estimated_rewards_by_reg_model=None,
        slate_id=None,
        pscore_prefix=None,
        evaluation_pscore_prefix=None,
    ) -> Feedback:
        """From OBP's arrays: ``action_dist`` and ``estimated_rewards_by_reg_model`` are (n, n_actions, len_list)."""
        action = np.asarray(action)
        dist = np.asarray(action_dist, dtype=np.float64)
        n = len(action)
        if dist.ndim != 3 or dist.shape[0] != n:
            raise DataError(f"action_dist must have shape (n_rounds={n}, n_actions, len_list), got {dist.shape}")
        position = np.zeros(n, dtype=np.int64) if position is None else np.asarray(position)
        rows = np.arange(n)
        q_logged = q_policy = None
        if estimated_rewards_by_reg_model is not None:
            q = np.asarray(estimated_rewards_by_reg_model, dtype=np.float64)
            if q.shape != dist.shape:
                raise DataError(f"estimated_rewards_by_reg_model must have action_dist's shape {dist.shape}")
            q_logged = q[rows, action, position]
            q_policy = (q[rows, :, position] * dist[rows, :, position]).sum(axis=1)
        slate = None if slate_id is None else np.unique(np.asarray(slate_id), return_inverse=True)[1]
        return cls(
            reward=reward,
            position=position,
            pscore=pscore,
            eval_pscore=dist[rows, action, position],
            slate=slate,
            pscore_prefix=pscore_prefix,
            eval_pscore_prefix=evaluation_pscore_prefix,
            q_logged=q_logged,
            q_policy=q_policy,
        )


def effective_sample_size(weight: np.ndarray) -> float:
    """Kish's effective sample size of importance weights: (sum w)^2 / sum w^2 (n when all weights are equal)."""
    w = np.asarray(weight, dtype=np.float64)
    sq = float((w * w).sum())
    return float(w.sum() ** 2 / sq) if sq > 0 else 0.0


def check_support(fb: Feedback, prefix: bool = False) -> None:
    """Refuse (:class:`SupportError`) when the logs cannot support the candidate; see the module doc."""
    pscore = fb.pscore_prefix if prefix else fb.pscore
    eval_p = fb.eval_pscore_prefix if prefix else fb.eval_pscore
    what = "slate prefix" if prefix else "item at a position"
    certain = pscore >= 1.0 - 1e-12
    uncovered = certain & (eval_p < pscore - 1e-9)
    if uncovered.any():
        rows = np.flatnonzero(uncovered)
        raise SupportError(
            f"support violation: at {len(rows)} logged slots (first: rows {rows[:5].tolist()}) the logger showed its "
            f"{what} with probability 1, so it never showed anything else there, but the candidate puts "
            f"{float((pscore - eval_p)[rows].mean()):.1%} of its mass elsewhere on average. Logs from a greedy "
            "policy cannot evaluate a different ranking: collect logs with exploration (epsilon or softmax)"
        )
    w = eval_p / pscore
    for j in np.unique(fb.position):
        wj = w[fb.position == j]
        if len(wj) < 2:
            continue
        mean, se = float(wj.mean()), float(wj.std(ddof=1) / np.sqrt(len(wj)))
        if mean + SUPPORT_Z * se < 1.0 - SUPPORT_TOLERANCE:
            raise SupportError(
                f"support violation at position {int(j)}: the mean importance weight is {mean:.3f} "
                f"(+- {se:.3f}, {len(wj)} slots) where it is 1 if the logger covers the candidate, so these logs "
                f"cover only about {mean:.0%} of the candidate's mass there: it puts mass where the logger never "
                "did, or the logs are too few to have seen it. Estimates would leave the rest out: collect more "
                "logs, log with more exploration, or evaluate a candidate closer to the logger"
            )


# ------------------------------------------------------------------------------------ estimators
@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap percentile interval."""

    estimate: float
    lower: float
    upper: float
    alpha: float = 0.05

    def as_dict(self) -> dict[str, float]:
        pct = f"{100 * (1 - self.alpha):g}%"
        return {"mean": self.estimate, f"{pct} CI (lower)": self.lower, f"{pct} CI (upper)": self.upper}


@dataclass(frozen=True)
class Estimator:
    """Base: an estimate is ``sum_s N_s / sum_s D_s`` over recommendations ``s`` of per-row terms, which makes
    the cluster bootstrap one matrix product per batch of resamples."""

    name: ClassVar[str] = ""
    needs_reward_model: ClassVar[bool] = False
    needs_prefix: ClassVar[bool] = False
    check_support: bool = True

    def terms(self, fb: Feedback) -> tuple[np.ndarray, np.ndarray]:
        """(numerator, denominator) per row."""
        raise NotImplementedError

    def _ready(self, fb: Feedback) -> Feedback:
        if self.needs_reward_model and (fb.q_logged is None or fb.q_policy is None):
            raise DataError(
                f"{self.name} needs a reward model's predictions (q_logged and q_policy, or OBP's "
                "estimated_rewards_by_reg_model): fit one with fit_platt or fit_isotonic"
            )
        if self.needs_prefix and (fb.pscore_prefix is None or fb.eval_pscore_prefix is None):
            raise DataError(f"{self.name} needs prefix propensities (pscore_prefix and eval_pscore_prefix)")
        if self.check_support and self.name != "dm":
            check_support(fb, prefix=self.needs_prefix)
        return fb

    def _sums(self, fb: Feedback) -> tuple[np.ndarray, np.ndarray]:
        num, den = self.terms(self._ready(fb))
        num, den = np.bincount(fb.slate, num), np.bincount(fb.slate, den)
        if den.sum() == 0:
            raise SupportError(f"{self.name}: the candidate gives probability 0 to every logged slot")
        return num, den

    def estimate(self, fb: Feedback) -> float:
        num, den = self._sums(fb)
        return float(num.sum() / den.sum())

    def interval(self, fb: Feedback, alpha: float = 0.05, n_bootstrap: int = 2000, seed: int = 0) -> Interval:
        num, den = self._sums(fb)
        draws = bootstrap_ratio(num, den, n_bootstrap, seed)
        lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
        return Interval(float(num.sum() / den.sum()), float(lo), float(hi), alpha)

    # OBP-style entry points over dense arrays
    def estimate_policy_value(self, reward, action, position, pscore, action_dist, **kwargs) -> float:
        return self.estimate(Feedback.from_dense(reward, action, pscore, action_dist, position, **kwargs))

    def estimate_interval(
        self, reward, action, position, pscore, action_dist, alpha=0.05, n_bootstrap_samples=2000, random_state=0, **kw
    ) -> Interval:
        fb = Feedback.from_dense(reward, action, pscore, action_dist, position, **kw)
        return self.interval(fb, alpha, n_bootstrap_samples, random_state)


def bootstrap_ratio(num: np.ndarray, den: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """(n_bootstrap,) resampled ``sum num / sum den``, drawing clusters with replacement."""
    rng = np.random.default_rng(seed)
    s = len(num)
    out = np.empty(n_bootstrap)
    chunk = max(1, min(n_bootstrap, 4_000_000 // max(s, 1)))  # ~32 MB of indices at a time
    for start in range(0, n_bootstrap, chunk):
        idx = rng.integers(0, s, size=(min(chunk, n_bootstrap - start), s))
        out[start : start + len(idx)] = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    return out


@dataclass(frozen=True)
class IPS(Estimator):
    name: ClassVar[str] = "ips"

    def terms(self, fb):
        return fb.weight * fb.reward, np.ones(len(fb.reward))


@dataclass(frozen=True)
class SNIPS(Estimator):
    name: ClassVar[str] = "snips"

    def terms(self, fb):
        return fb.weight * fb.reward, fb.weight


@dataclass(frozen=True)
class DM(Estimator):
    name: ClassVar[str] = "dm"
    needs_reward_model: ClassVar[bool] = True

    def terms(self, fb):
        return fb.q_policy, np.ones(len(fb.reward))


@dataclass(frozen=True)
class DR(Estimator):
    name: ClassVar[str] = "dr"
    needs_reward_model: ClassVar[bool] = True

    def terms(self, fb):
        return fb.q_policy + fb.weight * (fb.reward - fb.q_logged), np.ones(len(fb.reward))


def _per_slate(fb: Feedback) -> np.ndarray:
    return 1.0 / np.bincount(fb.slate)[fb.slate]


@dataclass(frozen=True)
class IIPS(Estimator):
    """Independent (position-based) IPS for a slate's total reward (OBP's SlateIndependentIPS)."""

    name: ClassVar[str] = "iips"

    def terms(self, fb):
        return fb.weight * fb.reward, _per_slate(fb)


@dataclass(frozen=True)
class RIPS(Estimator):
    """Reward-interaction IPS for a slate's total reward (OBP's SlateRewardInteractionIPS): the reward at a
    slot depends only on the items at and above it, so the weight is the prefix's."""

    name: ClassVar[str] = "rips"
    needs_prefix: ClassVar[bool] = True

    def terms(self, fb):
        return fb.eval_pscore_prefix / fb.pscore_prefix * fb.reward, _per_slate(fb)


ESTIMATORS: dict[str, type[Estimator]] = {e.name: e for e in (IPS, SNIPS, DM, DR, IIPS, RIPS)}


# ---------------------------------------------------------------------------------- reward models
@dataclass(frozen=True)
class PlattReward:
    """``q(score, j) = scale * sigmoid(a * score + b_j)``: a candidate's scores calibrated to rewards, with one
    intercept per position (the position bias). ``scale`` is the largest reward (1 for clicks), so weighted
    rewards (purchase = 5) are fitted as a fraction of it."""

    a: float
    b: np.ndarray  # (positions,)
    scale: float = 1.0

    def predict(self, score: np.ndarray, position: np.ndarray) -> np.ndarray:
        pos = np.minimum(np.asarray(position), len(self.b) - 1)
        return self.scale / (1.0 + np.exp(-(self.a * np.asarray(score, dtype=np.float64) + self.b[pos])))


def fit_platt(score, reward, position=None, ridge: float = 1e-4, iters: int = 50) -> PlattReward:
    """Logistic regression of ``reward / max(reward)`` on the score and a per-position intercept (Newton)."""
    s = np.asarray(score, dtype=np.float64)
    r = np.asarray(reward, dtype=np.float64)
    pos = np.zeros(len(s), dtype=np.int64) if position is None else np.asarray(position, dtype=np.int64)
    if len(s) == 0 or len(r) != len(s) or len(pos) != len(s):
        raise DataError("fit_platt needs equally long, non-empty score, reward and position arrays")
    if (r < 0).any():
        raise DataError("fit_platt needs non-negative rewards")
    scale = float(r.max()) or 1.0
    y = r / scale
    k = int(pos.max()) + 1
    x = np.zeros((len(s), k + 1))
    x[:, 0] = s
    x[np.arange(len(s)), 1 + pos] = 1.0
    beta = np.zeros(k + 1)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        grad = x.T @ (p - y) + ridge * beta
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(k + 1)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return PlattReward(float(beta[0]), beta[1:].copy(), scale)


@dataclass(frozen=True)
class IsotonicReward:
    """A non-decreasing map from score to reward (pool-adjacent violators over quantile bins), times a
    per-position factor (the position bias, as a share of the overall mean reward)."""

    knots: np.ndarray  # (B,) bin score means, increasing
    values: np.ndarray  # (B,) fitted reward at each knot, non-decreasing
    position_factor: np.ndarray  # (positions,)

    def predict(self, score: np.ndarray, position: np.ndarray) -> np.ndarray:
        pos = np.minimum(np.asarray(position), len(self.position_factor) - 1)
        return np.interp(np.asarray(score, dtype=np.float64), self.knots, self.values) * self.position_factor[pos]


def fit_isotonic(score, reward, position=None, bins: int = 256) -> IsotonicReward:
    s = np.asarray(score, dtype=np.float64)
    r = np.asarray(reward, dtype=np.float64)
    pos = np.zeros(len(s), dtype=np.int64) if position is None else np.asarray(position, dtype=np.int64)
    if len(s) == 0 or len(r) != len(s) or len(pos) != len(s):
        raise DataError("fit_isotonic needs equally long, non-empty score, reward and position arrays")
    mean = r.mean()
    factor = np.bincount(pos, r) / np.maximum(np.bincount(pos), 1) / mean if mean > 0 else np.ones(pos.max() + 1)
    f = factor[pos]
    scaled = np.divide(r, f, out=np.zeros_like(r), where=f > 0)  # a position never rewarded predicts 0 anyway
    order = np.argsort(s, kind="stable")
    edges = np.unique(np.linspace(0, len(s), min(bins, len(s)) + 1).astype(np.int64))
    codes = np.searchsorted(edges, np.arange(len(s)), side="right") - 1
    w = np.bincount(codes).astype(np.float64)
    x = np.bincount(codes, s[order]) / w
    y = np.bincount(codes, scaled[order]) / w
    # pool adjacent violators over the bins
    vals, wts, sizes = [], [], []
    for yi, wi in zip(y, w):
        vals.append(yi)
        wts.append(wi)
        sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            v, ww, sz = vals.pop(), wts.pop(), sizes.pop()
            vals[-1] = (vals[-1] * wts[-1] + v * ww) / (wts[-1] + ww)
            wts[-1] += ww
            sizes[-1] += sz
    fitted = np.repeat(vals, sizes)
    return IsotonicReward(x, fitted, factor)


def with_reward_model(fb: Feedback, q_logged: np.ndarray, q_policy: np.ndarray) -> Feedback:
    """``fb`` with a reward model's predictions added (for dm and dr)."""
    return replace(fb, q_logged=q_logged, q_policy=q_policy)
