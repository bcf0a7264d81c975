"""Checkpoints: weights as safetensors, the lmrec config as YAML, the LM's tokenizer and config, the
catalog (item ids, text, training interactions per item), and the training state for resuming.

Nothing here is unpickled: tensors come from safetensors, everything else from YAML/JSON/Parquet.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from lmrec.config import Config, dump_config, load_config
from lmrec.errors import LmrecError

WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
CONFIG = "config.yaml"
CATALOG = "catalog.parquet"
STATE = "train_state.json"
LM_DIR = "lm"


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    best_metric: float = float("-inf")
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    history: list[dict] = field(default_factory=list)  # per-epoch metrics

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["best_metric"] = None if d["best_metric"] == float("-inf") else d["best_metric"]
        return d

    @classmethod
    def from_json(cls, d: dict) -> TrainState:
        d = dict(d)
        d["best_metric"] = float("-inf") if d.get("best_metric") is None else d["best_metric"]
        return cls(**d)


def save_checkpoint(
    path: str | Path,
    model,
    config: Config,
    item_ids,
    texts,
    counts,
    state: TrainState,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write a complete checkpoint into ``path`` (written to a sibling temp dir, then renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / WEIGHTS))
    (tmp / CONFIG).write_text(dump_config(config))
    counts = np.asarray(counts).astype(np.int64)  # a bool "seen" mask counts as 0/1
    pd.DataFrame(
        {"item_id": np.asarray(item_ids, dtype=str), "text": list(texts), "seen": counts > 0, "count": counts}
    ).to_parquet(tmp / CATALOG, index=False)
    (tmp / STATE).write_text(json.dumps(state.to_json(), indent=1))
    if model.lm is not None:
        model.lm.config.save_pretrained(tmp / LM_DIR)
        model.tokenizer.save_pretrained(tmp / LM_DIR)
    if optimizer is not None:
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / OPTIMIZER))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            key = f"{idx}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                scalars[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass
class Loaded:
    model: object
    config: Config
    catalog: pd.DataFrame
    state: TrainState
    path: Path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", attach_catalog: bool = True) -> Loaded:
    """Rebuild the model from a checkpoint directory (no network, no pickle)."""
    from lmrec.models.recommender import build_model

    path = Path(path)
    for name in (WEIGHTS, CONFIG, CATALOG, STATE):
        if not (path / name).is_file():
            raise LmrecError(f"{path} is not an lmrec checkpoint: {name} is missing")
    config = load_config([path / CONFIG])
    catalog = pd.read_parquet(path / CATALOG)
    lm_dir = path / LM_DIR
    model = build_model(config.model, len(catalog), lm_path=str(lm_dir) if lm_dir.exists() else None, weights_follow=True)
    missing, unexpected = load_model(model, str(path / WEIGHTS), strict=False)
    if unexpected or [m for m in missing if not _derived(m)]:
        raise LmrecError(f"{path / WEIGHTS} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.to(device)
    if attach_catalog:
        model.set_catalog(catalog["text"].tolist(), catalog["seen"].to_numpy())
    state = TrainState.from_json(json.loads((path / STATE).read_text()))
    return Loaded(model, config, catalog, state, path)


def _derived(name: str) -> bool:
    # non-persistent buffers rebuilt from the catalog
    return name.endswith((".input_ids", ".attention_mask", ".features"))


def load_optimizer_state(path: str | Path, optimizer: torch.optim.Optimizer) -> bool:
    path = Path(path)
    if not (path / OPTIMIZER).is_file():
        return False
    meta = json.loads((path / "optimizer.json").read_text())
    optimizer.load_state_dict(_unflatten_optimizer(load_file(str(path / OPTIMIZER)), meta))
    return True


def read_train_state(path: str | Path) -> TrainState:
    """The training state of a checkpoint, without building the model."""
    f = Path(path) / STATE
    if not f.is_file():
        raise LmrecError(f"{path} is not an lmrec checkpoint: {STATE} is missing")
    return TrainState.from_json(json.loads(f.read_text()))
