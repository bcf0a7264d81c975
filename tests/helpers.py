"""Helpers shared by test modules (importable because pytest puts tests/ on sys.path)."""

import torch

from lmrec.checkpoint import TrainState, save_checkpoint
from lmrec.experiments import prepare
from lmrec.models.recommender import build_model
from lmrec.training import prepare_data


def save_untrained(cfg, path):
    """An untrained (seeded) model for ``cfg``, saved as a checkpoint at ``path``: real export and serving
    code paths without training time. Returns the prepared data and the training tensors."""
    p = prepare(cfg)
    data = prepare_data(cfg, p.split, p.catalog)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.n_items)
    model.set_catalog(data.texts, data.seen)
    save_checkpoint(path, model, cfg, data.item_ids, data.texts, data.counts, TrainState(epoch=1, best_metric=0.1))
    return p, data
