"""Full-ranking evaluation: every catalog item is ranked for every query (no sampled negatives).

Definitions (``rank`` is 0-based; ``T`` a query's target set; ``K`` the cut-off):

- a target's rank = number of items scored strictly higher + non-target items scored *equal*
  (ties are resolved against the model, so constant scores earn nothing) + targets scored equal
  with a smaller item index (tied targets take distinct places, so NDCG never exceeds 1);
  a query's targets are a set: a repeated target item counts once;
- ``recall@K`` = hits / |T|; ``hit@K`` = any hit (equal to recall@K for one target);
- ``ndcg@K`` = sum over hits of 1/log2(rank+2), divided by the ideal DCG of min(|T|, K) hits;
- ``mrr@K`` = 1/(best rank + 1) when the best rank < K, else 0;
- ``auc`` = share of non-target, non-excluded items scored below the target (ties count half), per
  target, averaged over the query's targets — the per-user AUC over all items;
- ``coverage@K`` = distinct items in all top-K lists / catalog size (excluded items are in no list).

Query metrics are averaged over queries (users). ``warm``/``cold`` split the *targets* by whether
the item occurs in the training interactions; there every metric is per target.
With ``exclude_seen`` the user's history items are removed from the ranking and from the AUC negatives
(a target that is also in the history then counts as a miss, AUC 0); the report records which was used.
NaN scores count as ``-inf``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from lmrec.data.encode import Queries, history_cells

ScoreFn = Callable[[Queries], np.ndarray | torch.Tensor]


def _targets_flat(batch: Queries) -> tuple[torch.Tensor, torch.Tensor]:
    """(query row, item) of every distinct target, rows ascending."""
    targets = [np.unique(np.asarray(t, dtype=np.int64)) for t in batch.targets]
    rows = np.repeat(np.arange(len(batch)), [len(t) for t in targets])
    cols = np.concatenate(targets) if len(batch) else np.zeros(0, dtype=np.int64)
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def _history_mask(batch: Queries, n_items: int) -> torch.Tensor:
    mask = torch.zeros(len(batch), n_items, dtype=torch.bool)
    rows, cols = history_cells(batch.histories)
    mask[torch.as_tensor(rows), torch.as_tensor(cols)] = True
    return mask


def evaluate(
    score_fn: ScoreFn,
    queries: Queries,
    n_items: int,
    ks: list[int] | tuple[int, ...] = (10, 20, 50),
    exclude_seen: bool = False,
    train_counts: np.ndarray | None = None,
    batch_size: int = 512,
    groups: dict[str, np.ndarray] | None = None,
) -> dict:
    """Rank all ``n_items`` for each query with ``score_fn`` and return the metric report.

    ``groups`` adds per-target metrics for named item sets ((N,) bool masks over the catalog), next to
    the ``warm``/``cold`` split that ``train_counts`` gives.
    """
    ks = sorted(set(int(k) for k in ks))
    kmax = min(max(ks), n_items)
    n_q = len(queries)
    n_targets = 0
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "hit", "ndcg", "mrr")}
    sums["auc"] = 0.0
    topk_seen = torch.zeros(len(ks), n_items, dtype=torch.bool)
    per_target_rank: list[torch.Tensor] = []
    per_target_auc: list[torch.Tensor] = []
    per_target_item: list[torch.Tensor] = []
    log2 = torch.log2(torch.arange(2, n_items + 2, dtype=torch.float64))
    ideal = torch.cumsum(1.0 / log2, 0)
    started = time.perf_counter()
    for start in range(0, n_q, batch_size):
        batch = queries[start : start + batch_size]
        out = score_fn(batch)
        # a private float32 CPU copy: excluded items are overwritten below
        if isinstance(out, torch.Tensor):
            scores = out.detach().to(device="cpu", dtype=torch.float32, copy=True)
        else:
            scores = torch.tensor(np.asarray(out), dtype=torch.float32)
        if scores.shape != (len(batch), n_items):
            raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, expected {(len(batch), n_items)}")
        torch.nan_to_num_(scores, nan=-torch.inf)
        excluded = _history_mask(batch, n_items) if exclude_seen else torch.zeros(len(batch), n_items, dtype=torch.bool)
        if exclude_seen:
            scores[excluded] = -torch.inf
        rows, cols = _targets_flat(batch)
        n_targets += len(rows)
        is_target = torch.zeros(len(batch), n_items, dtype=torch.bool)
        is_target[rows, cols] = True

        # per-target rank and AUC, in chunks of targets to bound memory. The common case (the query's only
        # target, no other item scored equal, a finite score) needs two passes over the row: its rank is
        # the count of items scored higher (excluded items sit at -inf) and its AUC follows from that; the
        # rest take the general path below, which resolves ties and the query's other targets.
        ranks = torch.empty(len(rows), dtype=torch.long)
        aucs = torch.empty(len(rows), dtype=torch.float64)
        per_query = torch.bincount(rows, minlength=len(batch))
        n_excluded = torch.count_nonzero(excluded, dim=1) if exclude_seen else torch.zeros(len(batch), dtype=torch.long)
        for c in range(0, len(rows), batch_size):
            r, t = rows[c : c + batch_size], cols[c : c + batch_size]
            s = scores[r] if len(r) != len(scores) or not torch.equal(r, torch.arange(len(scores))) else scores
            st = s[torch.arange(len(r)), t].unsqueeze(1)
            greater = torch.count_nonzero(s > st, dim=1)
            fast = (torch.count_nonzero(s == st, dim=1) == 1) & (per_query[r] == 1) & torch.isfinite(st[:, 0])
            negatives = (n_items - 1 - n_excluded[r]).to(torch.float64)
            ranks[c : c + len(r)] = greater
            aucs[c : c + len(r)] = (negatives - greater) / negatives.clamp(min=1)
            slow = torch.nonzero(~fast).squeeze(1)
            if len(slow):
                rank, auc = _ranks_with_ties(s[slow], st[slow], r[slow], t[slow], excluded, is_target)
                ranks[c + slow], aucs[c + slow] = rank, auc
        # a target that is itself excluded is a miss, whatever the ties say
        target_excluded = excluded[rows, cols]
        ranks[target_excluded] = n_items
        aucs[target_excluded] = 0.0

        n_t = torch.bincount(rows, minlength=len(batch)).to(torch.float64)
        for k in ks:
            hit = (ranks < k).to(torch.float64)
            hits = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, rows, hit)
            dcg = torch.zeros(len(batch), dtype=torch.float64).index_add_(
                0, rows, hit / log2[ranks.clamp(max=n_items - 1)]
            )
            idcg = ideal[(n_t.clamp(max=k) - 1).long().clamp(min=0)]
            best = torch.full((len(batch),), n_items, dtype=torch.long).scatter_reduce(0, rows, ranks, "amin")
            sums[f"recall@{k}"] += float((hits / n_t.clamp(min=1)).sum())
            sums[f"hit@{k}"] += float((hits > 0).sum())
            sums[f"ndcg@{k}"] += float((dcg / idcg).sum())
            sums[f"mrr@{k}"] += float(torch.where(best < k, 1.0 / (best + 1).to(torch.float64), 0.0).sum())
        auc_q = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, rows, aucs) / n_t.clamp(min=1)
        sums["auc"] += float(auc_q.sum())
        top = torch.topk(scores, kmax, dim=1).indices
        listed = ~excluded.gather(1, top)  # excluded items fill the tail only when few items are left
        for i, k in enumerate(ks):
            kk = min(k, kmax)
            topk_seen[i, top[:, :kk][listed[:, :kk]]] = True
        per_target_rank.append(ranks)
        per_target_auc.append(aucs)
        per_target_item.append(cols)

    metrics = {name: (value / n_q if n_q else 0.0) for name, value in sums.items()}
    for i, k in enumerate(ks):
        metrics[f"coverage@{k}"] = float(topk_seen[i].sum()) / n_items
    report = {
        "metrics": _round(metrics),
        "queries": n_q,
        "targets": n_targets,
        "items": n_items,
        "exclude_seen": exclude_seen,
        "seconds": round(time.perf_counter() - started, 3),
    }
    item_groups = dict(groups or {})
    if train_counts is not None:
        cold = np.asarray(train_counts) == 0
        item_groups = {"warm": ~cold, "cold": cold, **item_groups}
    if item_groups and per_target_rank:
        ranks = torch.cat(per_target_rank)
        aucs = torch.cat(per_target_auc)
        items = torch.cat(per_target_item)
        for name, item_mask in item_groups.items():
            mask = torch.as_tensor(np.asarray(item_mask, dtype=bool))[items]
            report[name] = {"targets": int(mask.sum()), "metrics": _round(_per_target(ranks[mask], aucs[mask], ks, log2))}
    return report


def _ranks_with_ties(s, st, r, t, excluded, is_target) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank and AUC of targets ``t`` of query rows ``r`` with scores ``s`` (M, N) and their own ``st`` (M, 1),
    ties and the query's other targets resolved as the module docstring says."""
    item_idx = torch.arange(s.shape[1])
    kept = ~excluded[r]  # excluded items are out of the ranking, even where they tie at -inf
    tied = (s == st) & kept
    negative = ~is_target[r] & kept
    earlier_target = is_target[r] & (item_idx < t.unsqueeze(1))
    greater = ((s > st) & kept).sum(1)
    rank = greater + (tied & negative).sum(1) + (tied & earlier_target).sum(1)
    below = ((s < st) & negative).sum(1)
    auc = (below + 0.5 * (tied & negative).sum(1)) / negative.sum(1).clamp(min=1)
    return rank, auc.to(torch.float64)


def _per_target(ranks: torch.Tensor, aucs: torch.Tensor, ks: list[int], log2: torch.Tensor) -> dict:
    if len(ranks) == 0:
        return {}
    out = {}
    capped = ranks.clamp(max=len(log2) - 1)
    for k in ks:
        hit = (ranks < k).to(torch.float64)
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float((hit / log2[capped]).mean())
        out[f"mrr@{k}"] = float((hit / (ranks + 1).to(torch.float64)).mean())
    out["auc"] = float(aucs.mean())
    return out


def _round(d: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in d.items()}


def format_table(reports: list[dict], columns: tuple[str, ...] = ("ndcg@10", "recall@10", "mrr@10", "auc", "coverage@10")) -> str:
    """A plain-text table, one row per report (``{"model", "dataset", "split", "metrics"}``)."""
    head = ["dataset", "model", "split", *columns]
    rows = [
        [str(r.get("dataset", "")), str(r.get("model", "")), str(r.get("split", ""))]
        + [f"{r['metrics'][c]:.4f}" if c in r["metrics"] else "-" for c in columns]
        for r in reports
    ]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])
