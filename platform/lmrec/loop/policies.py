"""Exploration policies over a ranked candidate pool, with exact propensities.

A policy turns the re-ranked pool (``n`` candidates, best first) into a slate of ``k`` items and says, for
each shown item, the probability that the policy puts that item at that position (its per-position
*marginal* propensity), the probability of each prefix of the slate, and the slate's own probability.
Off-policy estimators need exactly these numbers (see :mod:`lmrec.loop.estimators`), so they are computed,
never approximated by sampling, and the randomness is seeded by the recommendation id: anyone holding the
pool and the id can recompute the slate and every propensity.

Policies (the ``kind`` of a :data:`PolicyConfig`):

- ``greedy``: the first ``k`` of the pool. Every propensity is 1.
- ``epsilon``: each slot, in position order, is explored independently with probability ``epsilon``; an
  explored slot takes an item drawn uniformly, without replacement, from the pool beyond the first ``k``
  (the *tail*, ``m = n - k`` items). Marginals: ``1 - p_j`` for the greedy item at slot ``j`` and ``p_j / m``
  for each tail item, where ``p_j = epsilon * P(fewer than m of the j earlier slots explored)`` (exactly
  ``epsilon`` when ``m >= k``). Once the tail is used up, further explored slots keep their greedy item.
- ``softmax``: Plackett-Luce sampling of the slate from the whole pool with weights ``exp(score / T)``
  (drawn as the top ``k`` of Gumbel-perturbed log-weights). Log-weights are floored at ``max - 50``: only
  the order among items more than ``50 T`` below the best one changes, and the marginals stay finite to
  compute. Per-position marginals have no closed form; they are computed from the exponential-race
  representation (item ``i`` is at rank ``j`` iff exactly ``j - 1`` other items "arrive" before it, arrival
  times ``~ Exp(w)``)::

      P(i at j) = integral_0^inf  w_i e^{-w_i t}  [z^(j-1)] prod_{l != i} (e^{-w_l t} + z (1 - e^{-w_l t}))  dt

  by the trapezoid rule in ``log t`` (the integrand is analytic in a strip and decays double-exponentially at
  both ends, so the rule converges geometrically: ``_PL_STEP`` agrees with enumeration to 1e-13). The
  polynomials are built from prefix and suffix products truncated at degree ``k - 1``: ``O(N n k)``, plus
  ``O(N k^2)`` per row wanted, for ``N`` ~ 250 nodes (``bench_policies`` measures the cost).
- ``new_items`` (composes with any of the three): Amazon Personalize's exploration weight and item-age
  cutoff. Each slot is, independently with probability ``weight``, an *exploration slot*; the ``b``-th
  exploration slot (in position order) shows the ``b``-th new item of the pool (younger than
  ``age_cutoff_s``) in the config's ``order`` (fewest impressions so far, then youngest, by default), and the
  base policy fills the other slots, in order, from the pool without those new items. Exploration slots beyond the number of new items are ordinary slots. A new item that the model
  already ranks highly is still shown by the base policy where it belongs. Marginals are exact: a small
  dynamic programme over positions for the exploration slots, and the base policy's own marginals on each
  of the at most ``k + 1`` reduced pools.

All three base policies fill positions in order, so the probability of a slate's first ``j`` items (the
*prefix probability*, which reward-interaction IPS needs) is a product of per-position factors; for
``new_items`` it is a sum over the exploration patterns consistent with the slate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from lmrec.errors import ConfigError, DataError

LOG_WEIGHT_FLOOR = 50.0  # softmax: log-weights below max - 50 are raised to it (e^-50 ~ 2e-22: never drawn early)
_PL_STEP = 0.2  # trapezoid step in log t: 1e-13 against enumeration (0.25: 2e-9 on 50 equal weights, 0.4: 3e-5)
_PL_LOW = 1e-15  # integrate from t = _PL_LOW / sum(w): the mass left out below is at most w_i t < 1e-15
_PL_HIGH = 40.0  # ... to t = (40 + ln k) / w_(k+1): by then k others have arrived but for e^-40 of the mass


# ------------------------------------------------------------------------------------------ configs
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NewItemsBoost(_Strict):
    """Exploration slots for new items (Personalize's ``explorationWeight`` / ``explorationItemAgeCutOff``)."""

    weight: float = Field(0.3, ge=0, le=1, description="chance that each slot is an exploration slot")
    age_cutoff_s: float = Field(7 * 86_400.0, gt=0, description="items younger than this (seconds) are new")
    # which new items the exploration slots show first. fewest_impressions (then youngest): every new item
    # gets its turn (measured in the simulator: ranking them by score instead let yesterday's new items,
    # clicked once, take every exploration slot, and today's were never clicked); youngest; or score
    order: Literal["fewest_impressions", "youngest", "score"] = Field(
        "fewest_impressions", description="the order new items fill exploration slots"
    )


class GreedyPolicy(_Strict):
    kind: Literal["greedy"] = "greedy"
    new_items: NewItemsBoost | None = None


class EpsilonPolicy(_Strict):
    kind: Literal["epsilon"] = "epsilon"
    epsilon: float = Field(0.1, ge=0, le=1, description="chance that each slot shows a random item from the tail")
    new_items: NewItemsBoost | None = None


class SoftmaxPolicy(_Strict):
    kind: Literal["softmax"] = "softmax"
    # scores are similarities of order 0.1-1: T = 0.05 is close to greedy, T = 1 close to uniform
    temperature: float = Field(0.05, gt=0, description="Plackett-Luce weights are exp(score / temperature)")
    new_items: NewItemsBoost | None = None


PolicyConfig = Annotated[GreedyPolicy | EpsilonPolicy | SoftmaxPolicy, Field(discriminator="kind")]
_ADAPTER: TypeAdapter = TypeAdapter(PolicyConfig)


def parse_policy(value: Any) -> GreedyPolicy | EpsilonPolicy | SoftmaxPolicy:
    """A policy config from a mapping (a deployment's ``user_config``) or a config; errors name the key."""
    if isinstance(value, GreedyPolicy | EpsilonPolicy | SoftmaxPolicy):
        return value
    try:
        return _ADAPTER.validate_python(value)
    except ValidationError as e:
        problems = []
        for err in e.errors(include_url=False):
            loc = [str(p) for p in err["loc"]]
            if loc and loc[0] in ("greedy", "epsilon", "softmax"):  # the union's tag, not a key
                loc = loc[1:]
            problems.append(f"policy.{'.'.join(loc) or 'kind'}: {err['msg']}")
        raise ConfigError(
            f"{'; '.join(problems)} (kinds: greedy, epsilon, softmax; each may carry new_items)"
        ) from None


# ---------------------------------------------------------------------------------------- the slate
@dataclass(frozen=True)
class Slate:
    """One logged slate. ``propensities[j]``: P(this item at position j) under ``policy``;
    ``prefix_probabilities[j]``: P(the first j + 1 items are exactly these, in this order);
    ``slate_probability``: P(this exact slate) (None for a policy that cannot say)."""

    item_ids: tuple[str, ...]
    scores: tuple[float, ...]
    propensities: tuple[float, ...]
    prefix_probabilities: tuple[float, ...]
    slate_probability: float | None
    explored: tuple[bool, ...]  # the slot was filled by exploration (a tail item, or a new-item slot)
    policy: str
    params: dict[str, Any] = field(default_factory=dict)


def rng_for(seed_key: str) -> np.random.Generator:
    """The generator a slate is drawn with: a hash of ``seed_key`` (the recommendation id), so it is replayable."""
    digest = hashlib.blake2b(seed_key.encode("utf-8"), digest_size=8, person=b"lmrec-ex").digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


# --------------------------------------------------------------------------------- base policies
class _Base(Protocol):
    """A base policy over pool positions ``0..n-1`` (best first). ``k <= n`` always."""

    def sample(self, rng: np.random.Generator, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(k,) pool indices and (k,) explored flags."""

    def marginals(self, scores: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
        """(n, k): P(pool item i at position j); with ``rows``, only those rows need be right (the others may
        be left 0: the caller reads only ``rows``)."""

    def prefix(self, scores: np.ndarray, seq: np.ndarray, k: int) -> np.ndarray:
        """(len(seq),): P(first j+1 positions are seq[:j+1]) for a k-slate; seq entries of -1 are impossible."""


def _cut_at_missing(seq: np.ndarray, out: np.ndarray) -> np.ndarray:
    bad = np.flatnonzero(seq < 0)
    if len(bad):
        out[bad[0] :] = 0.0
    return out


def _capped_counts(k: int, p: float, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Slots ``0..k-1`` each flip a coin with probability ``p``; a flip counts while fewer than ``cap`` have.

    Returns ``before`` (k + 1, cap + 1): P(c counted flips among slots < j), and ``final`` (k + 1, cap + 1,
    cap + 1): P(c counted in all given c counted before slot j).
    """
    before = np.zeros((k + 1, cap + 1))
    before[0, 0] = 1.0
    for j in range(k):
        before[j + 1, :cap] += before[j, :cap] * (1 - p)
        before[j + 1, 1:] += before[j, :cap] * p
        before[j + 1, cap] += before[j, cap]
    final = np.zeros((k + 1, cap + 1, cap + 1))
    final[k] = np.eye(cap + 1)
    for j in range(k - 1, -1, -1):
        final[j, :cap] = (1 - p) * final[j + 1, :cap] + p * final[j + 1, 1:]
        final[j, cap] = final[j + 1, cap]
    return before, final


class _Greedy:
    def sample(self, rng, scores, k):
        return np.arange(k), np.zeros(k, dtype=bool)

    def marginals(self, scores, k, rows=None):
        out = np.zeros((len(scores), k))
        out[np.arange(k), np.arange(k)] = 1.0
        return out

    def prefix(self, scores, seq, k):
        return np.cumprod(seq == np.arange(len(seq))).astype(float)


@dataclass(frozen=True)
class _Epsilon:
    epsilon: float

    def sample(self, rng, scores, k):
        m = len(scores) - k
        flips = rng.random(k) < self.epsilon
        order = k + rng.permutation(m)  # always drawn, so the stream does not depend on the flips
        explored = flips & (np.cumsum(flips) <= m)
        idx = np.arange(k)
        idx[explored] = order[: int(explored.sum())]
        return idx, explored

    def marginals(self, scores, k, rows=None):
        n, m = len(scores), len(scores) - k
        out = np.zeros((n, k))
        if m == 0:
            out[np.arange(k), np.arange(k)] = 1.0
            return out
        before, _ = _capped_counts(k, self.epsilon, m)
        p = self.epsilon * before[:k, :m].sum(axis=1)  # (k,) chance slot j takes a tail item
        out[np.arange(k), np.arange(k)] = 1.0 - p
        out[k:, :] = p / m
        return out

    def prefix(self, scores, seq, k):
        m = len(scores) - k
        out = np.empty(len(seq))
        prob, c = 1.0, 0
        for j, i in enumerate(seq):
            if i >= k and c < m:
                prob *= self.epsilon / (m - c)
                c += 1
            elif i == j:
                prob *= (1.0 - self.epsilon) if c < m else 1.0
            else:
                prob = 0.0
            out[j] = prob
        return _cut_at_missing(seq, out)


def _log_weights(scores: np.ndarray, temperature: float) -> np.ndarray:
    z = (scores - scores.max()) / temperature
    return np.maximum(z, -LOG_WEIGHT_FLOOR)


def plackett_luce_marginals(log_weights: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """(n, k): P(item i at position j) when ``k`` items are drawn without replacement with probability
    proportional to ``exp(log_weights)`` (Plackett-Luce), by quadrature of the exponential race (module doc).
    With ``rows``, only those items' rows, (len(rows), k): a logged slate needs k of the n.

    Rows sum to P(item in the top k), columns to 1 (to ~1e-13).
    """
    w = np.exp(log_weights - log_weights.max())
    n = len(w)
    # past t_high at least k of the others have arrived (item i is below rank k) but for e^-40 of the mass:
    # P(fewer than k others by t) <= k exp(-w_(k+1) t), with w_(k+1) the (k+1)-th largest weight
    t_high = (_PL_HIGH + np.log(k)) / (np.partition(w, n - k - 1)[n - k - 1] if n > k else w.min())
    x = np.arange(np.log(_PL_LOW / w.sum()), np.log(t_high) + _PL_STEP, _PL_STEP)
    t = np.exp(x)  # (N,)
    wt = np.multiply.outer(t, w)  # (N, n)
    a = np.exp(-wt)  # P(item l has not arrived by t)
    b = -np.expm1(-wt)  # P(it has)
    nodes = len(t)
    # pre[l]: prod_{m < l} (a_m + z b_m) truncated to degree k - 1, as coefficients; suf[l]: prod_{m >= l}.
    # Both in one pass (item q from the front, item n-1-q from the back): half the Python steps.
    both = np.zeros((n + 1, 2, nodes, k))  # both[q, 0] = pre[q], both[q, 1] = suf[n - q]
    both[0, :, :, 0] = 1.0
    ab = np.stack([np.stack([a, a[:, ::-1]]), np.stack([b, b[:, ::-1]])])[..., None]  # (2, 2, N, n, 1)
    for q in range(n):
        np.multiply(both[q], ab[0, :, :, q], out=both[q + 1])
        both[q + 1, :, :, 1:] += both[q, :, :, :-1] * ab[1, :, :, q]
    pre, suf = both[:, 0], both[::-1, 1]
    rows = np.arange(n) if rows is None else np.asarray(rows)
    # others[i, :, j]: coefficient of z^j in prod_{l != i}: the chance that exactly j others arrived by t
    others = np.zeros((len(rows), nodes, k))
    for r in range(k):
        others[:, :, r:] += pre[rows, :, r : r + 1] * suf[rows + 1, :, : k - r]
    density = (wt * a).T[rows]  # (rows, N): w_i e^{-w_i t} times dt/dx = t
    return _PL_STEP * np.einsum("in,inj->ij", density, others)


@dataclass(frozen=True)
class _Softmax:
    temperature: float

    def sample(self, rng, scores, k):
        keys = _log_weights(scores, self.temperature) + rng.gumbel(size=len(scores))
        return np.argsort(-keys, kind="stable")[:k], np.zeros(k, dtype=bool)

    def marginals(self, scores, k, rows=None):
        lw = _log_weights(scores, self.temperature)
        if rows is None:
            return plackett_luce_marginals(lw, k)
        out = np.zeros((len(scores), k))
        rows = np.unique(rows)
        if len(rows):
            out[rows] = plackett_luce_marginals(lw, k, rows=rows)
        return out

    def prefix(self, scores, seq, k):
        w = np.exp(_log_weights(scores, self.temperature))
        ok = seq >= 0
        left = np.ones((len(seq), len(w)))  # left[j]: items still in the pool at position j
        for j, i in enumerate(seq[:-1]):
            if ok[j]:
                left[j + 1 :, i] = 0.0
        chosen = np.where(ok, w[np.where(ok, seq, 0)], 0.0)
        return _cut_at_missing(seq, np.cumprod(chosen / (left @ w)))


# ----------------------------------------------------------------------------------- new items
def _without(n: int, drop: np.ndarray) -> np.ndarray:
    """Pool indices 0..n-1 without ``drop``, in pool order."""
    keep = np.ones(n, dtype=bool)
    keep[drop] = False
    return np.flatnonzero(keep)


@dataclass(frozen=True)
class _NewItems:
    base: _Base
    weight: float

    def sample(self, rng, scores, k, new_idx):
        flips = rng.random(k) < self.weight
        slot = flips & (np.cumsum(flips) <= len(new_idx))
        e = int(slot.sum())
        rest = _without(len(scores), new_idx[:e])
        base_idx, base_explored = self.base.sample(rng, scores[rest], k - e)
        idx = np.empty(k, dtype=np.int64)
        idx[slot] = new_idx[:e]
        idx[~slot] = rest[base_idx]
        explored = slot.copy()
        explored[~slot] = base_explored
        return idx, explored

    def marginals(self, scores, k, new_idx, rows=None):
        n, cap = len(scores), min(len(new_idx), k)
        before, final = _capped_counts(k, self.weight, cap)
        out = np.zeros((n, k))
        # the b-th exploration slot shows new item b: at slot j with P(b exploration slots before j) * weight
        out[new_idx[:cap]] += (before[:k, :cap] * self.weight).T
        stay = np.where(np.arange(cap + 1) < cap, 1.0 - self.weight, 1.0)  # slot j is not one (or cannot be)
        for e in range(cap + 1):  # e exploration slots in all: the base ranks the pool without new_idx[:e]
            kk = k - e
            p = before[:k] * stay * final[1:, :, e]  # (k, cap + 1): P(slot j ordinary, c before it, e in all)
            if kk == 0 or not p.any():
                continue
            rest = _without(n, new_idx[:e])
            local = None
            if rows is not None:
                where = np.full(n, -1)
                where[rest] = np.arange(len(rest))
                local = where[np.asarray(rows)]
                local = local[local >= 0]
            base = self.base.marginals(scores[rest], kk, local)
            for c in range(cap + 1):  # ordinary slot j is the base's position j - c
                js = np.arange(c, min(k, c + kk))
                if len(js) and p[js, c].any():
                    out[np.ix_(rest, js)] += base[:, js - c] * p[js, c]
        return out

    def prefix(self, scores, seq, k, new_idx):
        n, cap = len(scores), min(len(new_idx), k)
        _, final = _capped_counts(k, self.weight, cap)
        where = {int(i): j for j, i in enumerate(seq)}
        patterns: list[list[int]] = [[]]  # exploration slots consistent with seq: new items 0..e-1, in order
        for b in range(cap):
            j = where.get(int(new_idx[b]))
            if j is None or (patterns[-1] and j <= patterns[-1][-1]):
                break
            patterns.append([*patterns[-1], j])
        out = np.zeros(k)
        for slots in patterns:
            e = len(slots)
            in_slots = np.zeros(k, dtype=bool)
            in_slots[slots] = True
            factor = np.where(in_slots, self.weight, 1.0 - self.weight)
            if e == cap:  # after the last new item, a flip changes nothing
                factor[slots[-1] + 1 if slots else 0 :] = 1.0
            pattern = np.concatenate([[1.0], np.cumprod(factor)])  # pattern[L]: over positions < L
            ordinary = seq[~in_slots]
            for total in range(e, cap + 1):
                rest = _without(n, new_idx[:total])
                local = np.full(n, -1)
                local[rest] = np.arange(len(rest))
                kk = k - total
                base = self.base.prefix(scores[rest], local[ordinary[:kk]], kk) if kk else np.zeros(0)
                # prefixes of length L holding all the e exploration slots, and at most kk ordinary ones
                lengths = np.arange(max(e, slots[-1] + 1 if slots else 0, 1), min(k, e + kk) + 1)
                base_part = np.concatenate([[1.0], base])[lengths - e]
                out[lengths - 1] += pattern[lengths] * final[lengths, e, total] * base_part
        return out


# ------------------------------------------------------------------------------------------ policy
class ExplorationPolicy:
    """A policy config made executable. ``select`` draws a slate; ``marginals`` and ``prefix_probabilities``
    give the same distribution's exact numbers (for a candidate policy in off-policy evaluation)."""

    def __init__(self, config: GreedyPolicy | EpsilonPolicy | SoftmaxPolicy | dict):
        self.config = parse_policy(config)
        c = self.config
        self._base: _Base = (
            _Greedy() if c.kind == "greedy" else _Epsilon(c.epsilon) if c.kind == "epsilon" else _Softmax(c.temperature)
        )
        self._new = _NewItems(self._base, c.new_items.weight) if c.new_items and c.new_items.weight > 0 else None
        self._params = self.config.model_dump(exclude_none=True)

    @property
    def name(self) -> str:
        return self.config.kind + ("+new_items" if self.config.new_items else "")

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    # -------------------------------------------------------------------------------- inputs
    def _inputs(
        self, scores: Any, k: int, item_age_s: Any, item_impressions: Any = None, ids: Any = None
    ) -> tuple[np.ndarray, int, np.ndarray | None]:
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 1 or len(s) == 0:
            raise DataError(f"pool_scores must be a non-empty 1-d array, got shape {s.shape}")
        if not np.isfinite(s).all():
            raise DataError("pool_scores must be finite (a NaN or infinite score was passed)")
        if ids is not None and len(ids) != len(s):
            raise DataError(f"pool_ids has {len(ids)} entries but pool_scores has {len(s)}")
        if k < 1:
            raise DataError(f"k must be at least 1, got {k}")
        new_idx = None
        if self._new is not None:
            if item_age_s is None:
                raise DataError(
                    "this policy has new_items: pass item_age_s (seconds since each pool item was added; inf if unknown)"
                )
            age = np.asarray(item_age_s, dtype=np.float64)
            if age.shape != s.shape:
                raise DataError(f"item_age_s has shape {age.shape} but pool_scores has {s.shape}")
            new_idx = np.flatnonzero(age < self.config.new_items.age_cutoff_s)
            order = self.config.new_items.order
            if order == "fewest_impressions":
                if item_impressions is None:
                    raise DataError(
                        "new_items.order is fewest_impressions: pass item_impressions (how often each pool item "
                        "was shown so far), or set new_items.order to youngest or score"
                    )
                shown = np.asarray(item_impressions, dtype=np.float64)
                if shown.shape != s.shape:
                    raise DataError(f"item_impressions has shape {shown.shape} but pool_scores has {s.shape}")
                new_idx = new_idx[np.lexsort((new_idx, age[new_idx], shown[new_idx]))]
            elif order == "youngest":
                new_idx = new_idx[np.lexsort((new_idx, age[new_idx]))]
        return s, min(k, len(s)), new_idx

    # ---------------------------------------------------------------------------- sampling
    def sample_positions(
        self, pool_scores: Any, k: int, rng: np.random.Generator, item_age_s: Any = None, item_impressions: Any = None
    ):
        """(k,) pool indices and (k,) explored flags, drawn with ``rng`` (k is capped at the pool size)."""
        s, k, new_idx = self._inputs(pool_scores, k, item_age_s, item_impressions)
        if new_idx is None or len(new_idx) == 0:
            return self._base.sample(rng, s, k)
        return self._new.sample(rng, s, k, new_idx)

    def marginals(
        self, pool_scores: Any, k: int, item_age_s: Any = None, rows: Any = None, item_impressions: Any = None
    ) -> np.ndarray:
        """(n, k): P(pool item i at position j). With ``rows`` (pool indices), only those rows are computed
        (the others are 0): a softmax slate needs k of the n rows."""
        s, k, new_idx = self._inputs(pool_scores, k, item_age_s, item_impressions)
        rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        if new_idx is None or len(new_idx) == 0:
            return self._base.marginals(s, k, rows)
        return self._new.marginals(s, k, new_idx, rows)

    def propensities(
        self,
        pool_scores: Any,
        positions: Any,
        k: int | None = None,
        item_age_s: Any = None,
        item_impressions: Any = None,
    ):
        """(len(positions),): P(pool item ``positions[j]`` at position j) for a ``k``-slate."""
        seq = np.asarray(positions, dtype=np.int64)
        k = len(seq) if k is None else k
        return self.marginals(pool_scores, k, item_age_s, seq, item_impressions)[seq, np.arange(len(seq))]

    def prefix_probabilities(
        self,
        pool_scores: Any,
        positions: Any,
        k: int | None = None,
        item_age_s: Any = None,
        item_impressions: Any = None,
    ):
        """(len(positions),): P(the slate starts with pool items ``positions[:j+1]``) for a ``k``-slate
        (``k`` defaults to ``len(positions)``)."""
        seq = np.asarray(positions, dtype=np.int64)
        s, k, new_idx = self._inputs(pool_scores, len(seq) if k is None else k, item_age_s, item_impressions)
        if len(seq) > k or (seq < 0).any() or (seq >= len(s)).any() or len(np.unique(seq)) != len(seq):
            raise DataError(f"positions must be distinct pool indices in [0, {len(s)}), at most k={k} of them")
        if new_idx is None or len(new_idx) == 0:
            return self._base.prefix(s, seq, k)
        return self._new.prefix(s, np.concatenate([seq, np.full(k - len(seq), -1)]), k, new_idx)[: len(seq)]

    def select(
        self,
        pool_ids: Any,
        pool_scores: Any,
        k: int,
        seed_key: str,
        item_age_s: Any = None,
        item_impressions: Any = None,
    ) -> Slate:
        """Draw the slate for one recommendation, seeded by ``seed_key`` (its recommendation id).

        ``pool_ids`` / ``pool_scores``: (n,) the re-ranked candidates, best first. ``item_age_s``: (n,) seconds
        since each item was added, and ``item_impressions``: (n,) how often each was shown so far (both needed
        with ``new_items``; impressions only for its default order). Returns ``min(k, n)`` items.
        """
        ids = list(pool_ids)
        s, k, new_idx = self._inputs(pool_scores, k, item_age_s, item_impressions, ids)
        if isinstance(self._base, _Greedy) and (new_idx is None or len(new_idx) == 0):
            # the first k, each with certainty: what the general path below computes, without drawing (the
            # serving default: it runs for every answer)
            certain = (1.0,) * k
            return Slate(item_ids=tuple(ids[:k]), scores=tuple(float(v) for v in s[:k]), propensities=certain,
                         prefix_probabilities=certain, slate_probability=1.0, explored=(False,) * k, policy=self.name,
                         params=self.params)
        idx, explored = self.sample_positions(s, k, rng_for(seed_key), item_age_s, item_impressions)
        prefix = self.prefix_probabilities(s, idx, k, item_age_s, item_impressions)
        return Slate(
            item_ids=tuple(ids[i] for i in idx),
            scores=tuple(float(v) for v in s[idx]),
            propensities=tuple(float(v) for v in self.propensities(s, idx, k, item_age_s, item_impressions)),
            prefix_probabilities=tuple(float(v) for v in prefix),
            slate_probability=float(prefix[-1]),
            explored=tuple(bool(v) for v in explored),
            policy=self.name,
            params=self.params,
        )
