"""Evaluation runs shared by ``lmrec evaluate``, ``lmrec demo`` and the benchmarks: one dataset split,
baselines and trained models scored by the same full-ranking evaluator into the same report form."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lmrec.config import Config
from lmrec.data.encode import Catalog, build_queries, history_cells, item_counts
from lmrec.data.loaders import load_dataset
from lmrec.data.schema import Dataset
from lmrec.data.split import Split, split_dataset
from lmrec.errors import LmrecError
from lmrec.evaluation import evaluate


@dataclass
class Prepared:
    dataset: Dataset
    split: Split
    catalog: Catalog


def prepare(cfg: Config) -> Prepared:
    ds = load_dataset(cfg.data)
    return Prepared(ds, split_dataset(ds, cfg.data.split), Catalog.from_dataset(ds))


def cold_start_split(split: Split, item_ids, fraction: float, seed: int = 0) -> tuple[Split, np.ndarray, np.ndarray]:
    """The cold-start protocol with a validation side: two disjoint random sets of ``fraction`` of the
    catalog each leave training entirely. The *test* set is :func:`hold_out_items`'s (same seed, same items);
    the *valid* set is drawn from the rest. Test-set items are removed from train and valid; valid-set items
    from train only, so valid users whose target is one of them measure zero-shot recommendation on valid
    (where variants are chosen), and test users whose target is a test-set item measure it once, on test.
    Returns (split, test-set ids, valid-set ids)."""
    from lmrec.data.split import hold_out_items

    held_split, held_test = hold_out_items(split, item_ids, fraction, seed)
    rest = np.asarray(sorted(set(map(str, item_ids)) - set(held_test)), dtype=object)
    n = min(len(held_test), len(rest) - 1)
    held_valid = np.random.default_rng(seed + 1).choice(rest, size=n, replace=False)
    valid_set = set(held_valid)
    train = held_split.train[~held_split.train["item_id"].isin(valid_set)]
    return Split(train, held_split.valid, held_split.test, f"{split.method}+coldstart{fraction:g}"), held_test, held_valid


def model_label(m) -> str:
    """A short name for reports: sasrec-id / gru-id for ID-only models, lm-<item>-<user>[-ftN] otherwise
    (``-ftN``: the LM's top N layers fine-tuned); ``-hb``: with the learned history bias."""
    hb = "-hb" if getattr(m, "history_bias", False) else ""
    if m.item_tower.kind == "id":
        return {"transformer": "sasrec-id", "gru": "gru-id"}.get(m.user_tower.kind, "id") + hb
    n = m.item_tower.finetune_layers
    tuned = "" if n == 0 else ("-ft-all" if n == -1 else f"-ft{n}")  # LM layers fine-tuned
    return f"lm-{m.item_tower.kind}-{m.user_tower.kind}{tuned}{hb}"


def _run(p: Prepared, cfg: Config, score_fn, catalog: Catalog, name: str, split: str, exclude_seen: bool | None, groups: dict | None) -> dict:
    queries = build_queries(p.split.history_for(split), p.split.targets_for(split), catalog)
    if len(queries) == 0:
        raise LmrecError(f"the {split} split of {p.dataset.name!r} has no target interactions")
    exclude = cfg.eval.exclude_seen if exclude_seen is None else exclude_seen
    counts = item_counts(p.split.train, catalog)
    masks = {g: np.isin(catalog.item_ids, list(ids)) for g, ids in (groups or {}).items()}
    rep = evaluate(score_fn, queries, len(catalog), cfg.eval.ks, exclude, counts, cfg.eval.batch_size, masks)
    return {"dataset": p.dataset.name, "model": name, "split": split, "split_method": p.split.method, **rep}


def evaluate_baseline(
    p: Prepared, cfg: Config, name: str, split: str = "test", exclude_seen: bool | None = None, groups: dict | None = None
) -> dict:
    """Fit a baseline on everything before the targets (train + valid for test) and evaluate it."""
    from lmrec.baselines import ItemKNN, Popularity

    if name == "popularity":
        model = Popularity(p.catalog)
    elif name == "item-knn":
        model = ItemKNN(p.catalog, cfg.model.knn_neighbours)
    else:
        raise LmrecError(f"unknown baseline {name!r}; choose popularity or item-knn")
    model.fit(p.split.history_for(split))
    return _run(p, cfg, model.score, p.catalog, name, split, exclude_seen, groups)


class CheckpointScorer(NamedTuple):
    """A checkpoint loaded for evaluation: its scoring function (the catalog already encoded), its catalog
    and its label. Load it once with :func:`checkpoint_scorer` to evaluate the same model several times."""

    score_fn: Callable
    catalog: Catalog
    name: str
    text_vectors: np.ndarray | None = None  # (N, D) the LM tower's item vectors (kNN fusion's text transfer)


def evaluate_checkpoint(
    p: Prepared, cfg: Config, checkpoint: str | Path | CheckpointScorer, split: str = "test", exclude_seen: bool | None = None,
    groups: dict | None = None,
) -> dict:
    """Evaluate a trained checkpoint (a directory, or one already loaded); the dataset's items must all be
    in its catalog. ``groups`` maps a name to a set of item ids: per-target metrics for targets in each
    set are added to the report."""
    score_fn, catalog, name, text = _loaded(p, checkpoint)
    weight = cfg.model.knn_weight
    if weight > 0:
        score_fn = fused(score_fn, knn_for(p, cfg, catalog, split, text), weight, knn_skip(cfg.model))
        name += f"+knn{weight:g}"
    return _run(p, cfg, score_fn, catalog, name, split, exclude_seen, groups)


def _covering_catalog(p: Prepared, table, source: str | Path) -> Catalog:
    """A model's catalog (its item table), which must hold every item of the dataset evaluated."""
    catalog = Catalog(table["item_id"].to_numpy(), table["text"].to_numpy())
    unknown = set(p.catalog.item_ids) - set(catalog.index)
    if unknown:
        raise LmrecError(
            f"{len(unknown)} items of dataset {p.dataset.name!r} are not in the catalog of {source} (e.g. {sorted(unknown)[0]!r})"
        )
    return catalog


def checkpoint_scorer(p: Prepared, checkpoint: str | Path) -> CheckpointScorer:
    """Load a checkpoint and encode its catalog (the costly part of an evaluation)."""
    from lmrec.checkpoint import load_checkpoint
    from lmrec.models.recommender import Scorer

    loaded = load_checkpoint(checkpoint)
    catalog = _covering_catalog(p, loaded.catalog, checkpoint)
    scorer = Scorer(loaded.model, catalog.texts)
    text = None
    if loaded.model.text_tower is not None:
        import torch

        with torch.no_grad():
            text = loaded.model.text_tower.all().float().numpy()
    return CheckpointScorer(scorer, catalog, model_label(loaded.config.model), text)


def artifact_scorer(p: Prepared, artifact: str | Path) -> CheckpointScorer:
    """An exported artifact as serving runs it (its int8 text encoder's item matrix and its ONNX user tower),
    for :func:`evaluate_checkpoint`; fusion with item-kNN refits kNN on the split's history like any model."""
    from lmrec.artifact import load_artifact, text_vectors

    a = load_artifact(artifact)
    catalog = _covering_catalog(p, a.catalog, artifact)
    engine = a.engine

    def score_fn(batch):
        return engine.scores(engine.user_vectors(batch.histories, batch.events), batch.histories)

    label = f"{model_label(Config.model_validate(a.manifest['config']).model)}-{engine.info.precision}"
    return CheckpointScorer(score_fn, catalog, label, text_vectors(engine))


def _loaded(p: Prepared, checkpoint: str | Path | CheckpointScorer) -> CheckpointScorer:
    return checkpoint if isinstance(checkpoint, CheckpointScorer) else checkpoint_scorer(p, checkpoint)


def select_knn_weight(p: Prepared, cfg: Config, checkpoint: str | Path | CheckpointScorer, grid: list[float]) -> tuple[float, dict]:
    """The fusion weight (``model.knn_weight``) with the best valid NDCG@10 among ``grid`` (0 = the model
    alone): chosen on the valid split only, so the test figure stays unseen. Returns (weight, {weight: NDCG@10})."""
    if not grid:
        raise LmrecError("select_knn_weight: the grid of weights is empty")
    score_fn, catalog, name, text = _loaded(p, checkpoint)
    knn = knn_for(p, cfg, catalog, "valid", text)
    table = {}
    for w in map(float, grid):
        fn = fused(score_fn, knn, w, knn_skip(cfg.model)) if w > 0 else score_fn
        table[w] = _run(p, cfg, fn, catalog, name, "valid", None, None)["metrics"]["ndcg@10"]
    best = max(table, key=lambda w: (table[w], -w))  # a tie goes to the smaller weight
    return best, table


def knn_for(p: Prepared, cfg: Config, catalog: Catalog, split: str, text_vectors: np.ndarray | None = None):
    """Item-kNN over what is known before the targets (train + valid for test), on ``catalog``'s order; with
    the model's ``text_vectors``, items without interactions borrow their text neighbours' similarities
    (:meth:`ItemKNN.text_transfer`, the variant in ``model.knn_transfer_*``), as serving does for items
    posted after the export (the default variant: the nearest item at its cosine)."""
    from lmrec.baselines import ItemKNN

    m = cfg.model
    knn = ItemKNN(catalog, m.knn_neighbours).fit(p.split.history_for(split))
    return knn.text_transfer(text_vectors, m.knn_transfer_neighbours, m.knn_transfer_power) if text_vectors is not None else knn


def fused(score_fn, knn, weight: float, skip_history: int = 0):
    """Model score + ``weight`` * item-kNN score scaled to [0, 1] per user (see ModelConfig.knn_weight);
    ``skip_history`` > 0: the kNN scores of the history's last that many items are left out (before the
    scaling), their scores the model's own (``knn_skip_history``)."""
    import torch

    def score(batch):
        s = torch.as_tensor(score_fn(batch), dtype=torch.float32)
        k = torch.as_tensor(np.asarray(knn.score(batch)), dtype=torch.float32)
        if skip_history:
            rows, cols = history_cells(batch.histories, skip_history)
            k[torch.as_tensor(rows), torch.as_tensor(cols)] = 0.0
        return s + weight * k / k.amax(dim=1, keepdim=True).clamp(min=1e-9)

    return score


def knn_skip(model_cfg) -> int:
    """How many recent history items the fusion leaves to the model (``model.knn_skip_history`` with a
    learned history bias), else 0."""
    return model_cfg.user_tower.max_history if model_cfg.history_bias and model_cfg.knn_skip_history else 0
