"""Training losses over user states ``h`` (M, D) and their target items ``t`` (M,) (catalog indices).

Scores come from :class:`Scoring`: the dot product, optionally of L2-normalised vectors, divided by a
temperature. ``allowed`` (N,) bool marks items that may be negatives: the training catalog (items held
out of training are not in it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ItemFn = Callable[[torch.Tensor], torch.Tensor]  # (...,) item indices -> (..., D)


@dataclass(frozen=True)
class Scoring:
    normalize: bool = True
    temperature: float = 1.0

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def matrix(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """(M, D) x (C, D) -> (M, C)."""
        return self._prep(h) @ self._prep(e).T / self.temperature

    def rows(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """(M, D) x (M, [K,] D) -> (M, [K]): each user state with its own item(s)."""
        if e.dim() == 3:
            return (self._prep(h).unsqueeze(1) * self._prep(e)).sum(-1) / self.temperature
        return (self._prep(h) * self._prep(e)).sum(-1) / self.temperature


def full_softmax(h: torch.Tensor, t: torch.Tensor, all_items: torch.Tensor, scoring: Scoring, allowed: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the whole (allowed) catalog; all_items (N, D)."""
    logits = scoring.matrix(h, all_items).masked_fill(~allowed, float("-inf"))
    return F.cross_entropy(logits, t)


def sequence_softmax(
    states: torch.Tensor,
    items: torch.Tensor,
    all_items: torch.Tensor,
    scoring: Scoring,
    allowed: torch.Tensor,
    history_bias: torch.Tensor | None = None,
    future_targets: int = 1,
    future_decay: float = 0.5,
) -> torch.Tensor:
    """Full softmax of every state of a batch of windows: ``items`` (B, L) item index + 1 (0 = left
    padding), ``states`` (B, L - 1, D) where state j has seen items 0..j and predicts item j + 1.

    ``history_bias`` (a scalar): added to the logits of the items already in each state's history, so the
    model learns how likely a user is to come back to an item (0.6% of Scientific's test targets are).
    ``future_targets`` K > 1: each state also learns the K - 1 items after its next one, the k-th at weight
    ``future_decay ** (k - 1)`` (PinnerFormer's dense all-action loss: more signal per state where
    histories are short and sparse). The loss is the next item's mean cross-entropy plus the weighted
    means of the later ones."""
    inputs = items[:, :-1]
    keep = inputs > 0  # left padding: a real input is always followed by a real next item
    logits = scoring.matrix(states[keep], all_items).masked_fill(~allowed, float("-inf"))
    if history_bias is not None:
        logits = logits + history_bias * history_mask(inputs, keep, len(all_items))
    row = torch.cumsum(keep.reshape(-1), 0).reshape(keep.shape) - 1  # state (b, j) -> its logits row
    loss = logits.new_zeros(())
    for k in range(1, future_targets + 1):
        target = torch.zeros_like(inputs)
        target[:, : inputs.shape[1] - k + 1] = items[:, k:]
        pair = keep & (target > 0)
        if k > 1 and not pair.any():
            break
        loss = loss + future_decay ** (k - 1) * F.cross_entropy(logits[row[pair]], target[pair] - 1)
    return loss


def history_mask(inputs: torch.Tensor, keep: torch.Tensor, n_items: int) -> torch.Tensor:
    """(M, N) float, 1 where an item is in a state's history: ``inputs`` (B, L) item index + 1 (0 =
    padding), state j has seen inputs 0..j; ``keep`` (B, L) bool marks the M states, row-major."""
    b, length = inputs.shape
    row = torch.cumsum(keep.reshape(-1), 0).reshape(b, length) - 1
    j, seen = torch.tril_indices(length, length, device=inputs.device)  # every (j, j') with j' <= j
    batch = torch.arange(b, device=inputs.device).repeat_interleave(len(j))
    j, seen = j.repeat(b), seen.repeat(b)
    ok = keep[batch, j] & (inputs[batch, seen] > 0)
    mask = torch.zeros(int(keep.sum()), n_items, device=inputs.device)
    mask[row[batch[ok], j[ok]], inputs[batch[ok], seen[ok]] - 1] = 1.0
    return mask


def _sample(allowed_idx: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    pick = torch.randint(len(allowed_idx), (n,), generator=generator, device=allowed_idx.device)
    return allowed_idx[pick]


def sampled_softmax(
    h: torch.Tensor,
    t: torch.Tensor,
    items: ItemFn,
    scoring: Scoring,
    allowed: torch.Tensor,
    num_negatives: int,
    log_pop: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Softmax over in-batch targets + ``num_negatives`` uniform samples, deduplicated.

    With ``log_pop`` (N,) (log of each item's share of training interactions) the logQ correction
    subtracts the log of each candidate's expected count in the candidate set: in-batch targets are
    drawn by popularity (M draws), the extra negatives uniformly. Without it popular items are
    over-penalised as negatives.
    """
    allowed_idx = torch.nonzero(allowed).squeeze(1)
    cand, inverse = torch.unique(torch.cat([t, _sample(allowed_idx, num_negatives, generator)]), return_inverse=True)
    label = inverse[: len(t)]
    logits = scoring.matrix(h, items(cand))
    if log_pop is not None:
        expected = len(t) * log_pop[cand].exp() + num_negatives / len(allowed_idx)
        logits = logits - expected.log().unsqueeze(0)
    return F.cross_entropy(logits, label)


def bpr(h, t, items: ItemFn, scoring: Scoring, allowed, generator=None) -> torch.Tensor:
    """Bayesian personalised ranking with one uniform negative per positive."""
    neg = _sample(torch.nonzero(allowed).squeeze(1), len(t), generator)
    return -F.logsigmoid(scoring.rows(h, items(t)) - scoring.rows(h, items(neg))).mean()


def squared_error(h, t, value: torch.Tensor, items: ItemFn, allowed, num_negatives: int, generator=None):
    """The seed article's objective, (r - f(d, H))^2 with f the raw dot product: on observed ratings
    (1.0 where the event has no value) and on ``num_negatives`` unobserved items per positive, r = 0."""
    target = torch.where(torch.isnan(value), torch.ones_like(value), value)
    pos = (h * items(t)).sum(-1)
    neg_idx = _sample(torch.nonzero(allowed).squeeze(1), len(t) * num_negatives, generator).view(len(t), num_negatives)
    neg = (h.unsqueeze(1) * items(neg_idx)).sum(-1)
    return 0.5 * (((target - pos) ** 2).mean() + (neg**2).mean())


def alignment(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric in-batch InfoNCE between two views of the same K items, (K, D) each: row i of ``a``
    should be nearest to row i of ``b`` among ``b``'s rows, and the other way round (cosine / temperature)."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    label = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, label) + F.cross_entropy(logits.T, label))
