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


def export_tiny(root, tiny_lm: str, data: dict, max_text_length: int = 24):
    """An untrained tiny model (``tiny_lm``: a text item tower, dim 16; a transformer user tower over 8
    events) of the ``data`` config section, exported to int8 ONNX through the parity gate at ``root/art``.
    Returns the data config file written at ``root/data.yaml`` (the service's seed) and the prepared data."""
    import yaml

    from lmrec.config import load_config
    from lmrec.export import export_checkpoint

    data_file = root / "data.yaml"
    data_file.write_text(yaml.safe_dump({"data": data}))
    cfg = load_config([data_file], [
        f"model.item_tower.pretrained={tiny_lm}", "model.item_tower.kind=text", "model.item_tower.dim=16",
        f"model.item_tower.max_text_length={max_text_length}", "model.user_tower.kind=transformer",
        "model.user_tower.max_history=8", "model.user_tower.dropout=0.0",
    ])  # fmt: skip
    prepared, tensors = save_untrained(cfg, root / "ckpt")
    export_checkpoint(root / "ckpt", root / "art", quantize="int8", data=prepared)
    return data_file, prepared, tensors
