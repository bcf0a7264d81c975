"""Helpers shared by test modules (importable because pytest puts tests/ on sys.path)."""

import socket
from pathlib import Path

import torch
import yaml

from lmrec.checkpoint import TrainState, save_checkpoint
from lmrec.data.examples import prepare_data
from lmrec.experiments import prepare
from lmrec.models.recommender import build_model

REPO = Path(__file__).resolve().parents[1]


def save_untrained(cfg, path, seed: int = 0):
    """An untrained (seeded) model for ``cfg``, saved as a checkpoint at ``path``: real export and serving
    code paths without training time. Returns the prepared data and the training tensors."""
    p = prepare(cfg)
    data = prepare_data(cfg, p.split, p.catalog)
    torch.manual_seed(seed)
    model = build_model(cfg.model, data.n_items)
    model.set_catalog(data.texts, data.seen)
    if model.history_bias is not None:  # a value to carry through export and serving, as training leaves one
        model.history_bias.data.fill_(-1.5)
    save_checkpoint(path, model, cfg, data.item_ids, data.texts, data.counts, TrainState(epoch=1, best_metric=0.1))
    return p, data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_yaml(artifact, tmp_path) -> tuple[Path, int]:
    """deployments/demo.yaml on the module's artifact and a free port, every replica at 0 CPUs (whatever the
    test machine has): what the benchmarks run with `serve run`."""
    root, data_file, _, _ = artifact
    port = free_port()
    spec = yaml.safe_load((REPO / "deployments" / "demo.yaml").read_text())
    spec["http_options"]["port"] = port
    spec["applications"][0]["args"].update(artifact=str(root / "art"), seed_config=str(data_file))
    for d in spec["applications"][0]["deployments"]:
        d["ray_actor_options"] = {"num_cpus": 0}
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(spec))
    return config, port


def tiny_training(tiny_lm, tmp_path) -> Path:
    """A training config for the module's tiny model, one epoch (what `lmrec retrain` trains)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": {
        "item_tower": {"pretrained": tiny_lm, "kind": "text", "dim": 16, "max_text_length": 24},
        "user_tower": {"kind": "transformer", "max_history": 8, "dropout": 0.0}}, "train": {"epochs": 1}}))
    return config


def export_tiny(root, tiny_lm: str, data: dict, max_text_length: int = 24, seed: int = 0):
    """An untrained tiny model (``tiny_lm``: a text item tower, dim 16; a transformer user tower over 8
    events; its heads initialised from ``seed``) of the ``data`` config section, exported to int8 ONNX through
    the parity gate at ``root/art``.
    Returns the data config file written at ``root/data.yaml`` (the service's seed) and the prepared data."""
    from lmrec.config import load_config
    from lmrec.export import export_checkpoint

    data_file = root / "data.yaml"
    data_file.write_text(yaml.safe_dump({"data": data}))
    cfg = load_config([data_file], [
        f"model.item_tower.pretrained={tiny_lm}", "model.item_tower.kind=text", "model.item_tower.dim=16",
        f"model.item_tower.max_text_length={max_text_length}", "model.user_tower.kind=transformer",
        "model.user_tower.max_history=8", "model.user_tower.dropout=0.0",
    ])  # fmt: skip
    prepared, tensors = save_untrained(cfg, root / "ckpt", seed)
    export_checkpoint(root / "ckpt", root / "art", quantize="int8", data=prepared)
    return data_file, prepared, tensors
