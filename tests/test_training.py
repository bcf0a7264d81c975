"""Training: loss goes down on real data; Ray Train (2 CPU workers) writes checkpoints that load,
evaluate and resume."""

import json

import numpy as np
import pytest
import torch

from lmrec.checkpoint import read_train_state
from lmrec.config import load_config
from lmrec.errors import LmrecError
from lmrec.experiments import evaluate_checkpoint
from lmrec.training import Objective, PrefixExamples, SequenceWindows, check_resumable, fit, prepare_data


def _cfg(tiny_lm, tmp_path, *sets):
    return load_config(
        [],
        [
            f"model.item_tower.pretrained={tiny_lm}",
            "model.item_tower.dim=32",
            "model.user_tower.max_history=20",
            "model.user_tower.max_text_length=64",
            "model.item_tower.max_text_length=24",
            "train.batch_size=32",
            f"output_dir={tmp_path}",
            *sets,
        ],
    )


@pytest.mark.data
@pytest.mark.parametrize(
    "sets",
    [
        ["model.item_tower.kind=id", "model.loss.normalize=false", "model.loss.temperature=1"],
        ["model.item_tower.kind=text", "model.item_tower.finetune_layers=1", "model.user_tower.kind=gru", "model.loss.kind=sampled_softmax", "model.loss.num_negatives=32"],
        ["model.item_tower.kind=hybrid", "model.item_tower.finetune_layers=0", "model.loss.kind=bpr"],
        ["model.item_tower.kind=text", "model.item_tower.finetune_layers=1", "model.user_tower.kind=text", "model.loss.kind=sampled_softmax", "model.loss.num_negatives=16"],
        ["model.item_tower.kind=id", "model.loss.kind=mse", "model.loss.num_negatives=4"],
    ],
    ids=["sasrec-id-softmax", "text-gru-sampled", "hybrid-transformer-bpr", "text-tower-sampled", "id-mse"],
)
def test_a_few_steps_on_real_data_reduce_the_loss(ml100k_slice, tiny_lm, tmp_path, sets):
    from lmrec.models.recommender import build_model

    p = ml100k_slice
    cfg = _cfg(tiny_lm, tmp_path, *sets)
    data = prepare_data(cfg, p.split, p.catalog)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.n_items)
    model.set_catalog(data.texts, data.seen)
    examples = SequenceWindows(data.sequences, 10) if model.sequential else PrefixExamples(data.sequences, 10)
    idx = list(range(0, len(examples), max(1, len(examples) // 16)))[:16]
    if model.sequential:
        batch = examples.collate([examples[i] for i in idx])
    else:
        batch = examples.collate(idx)
        batch["histories"] = [examples.history(i) for i in idx]
    allowed = torch.as_tensor(data.seen)
    log_pop = torch.log(torch.as_tensor(np.maximum(data.counts / data.counts.sum(), 1e-12), dtype=torch.float32))
    objective = Objective(model, data, cfg, allowed, log_pop, None, torch.Generator().manual_seed(0))
    objective.eval()  # no dropout: the same batch, the same negatives' distribution
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-2)

    def loss_now():
        objective.gen.manual_seed(0)
        with torch.no_grad():
            return float(objective(batch))

    before = loss_now()
    for _ in range(20):
        objective.gen.manual_seed(0)
        loss = objective(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_now()
    assert np.isfinite(before) and after < 0.95 * before, (before, after)


@pytest.mark.data
def test_local_loop_writes_best_and_last_checkpoints(ml100k_slice, tiny_lm, tmp_path):
    p = ml100k_slice
    cfg = _cfg(tiny_lm, tmp_path, "model.item_tower.kind=id", "train.epochs=2", "train.early_stopping_patience=0")
    summary = fit(cfg, local=True, data=prepare_data(cfg, p.split, p.catalog))
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert read_train_state(tmp_path / "checkpoints" / "last").epoch == 2
    assert summary["best_epoch"] in (1, 2)
    assert json.loads((tmp_path / "train_summary.json").read_text())["best_epoch"] == summary["best_epoch"]


@pytest.mark.ray
@pytest.mark.data
def test_ray_train_two_workers_checkpoint_evaluate_resume(ray_session, ml100k_slice, tiny_lm, tmp_path):
    p = ml100k_slice
    sets = ["model.item_tower.kind=hybrid", "model.item_tower.finetune_layers=1", "model.loss.kind=sampled_softmax",
            "model.loss.num_negatives=32", "train.num_workers=2", "train.cpus_per_worker=1", "train.max_steps_per_epoch=3"]
    cfg = _cfg(tiny_lm, tmp_path / "a", *sets, "train.epochs=1")
    data = prepare_data(cfg, p.split, p.catalog)
    first = fit(cfg, data=data)
    ckpt = tmp_path / "a" / "checkpoint"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "lm" / "tokenizer.json").is_file()
    assert read_train_state(ckpt).epoch == 1
    assert len(first["history"]) == 1 and 0.0 <= first["history"][0]["valid_ndcg@10"] <= 1.0

    # the same output dir with another config is refused (Ray Train would resume the old run's weights);
    # a longer run of the same config may continue it
    run_dir = next(d.parent for d in (tmp_path / "a" / "ray").glob("*/checkpoint_*"))
    with pytest.raises(LmrecError, match=r"model.user_tower.max_history: 20 -> 10, train.lr: 0.001 -> 0.01\)"):
        fit(_cfg(tiny_lm, tmp_path / "a", *sets, "train.epochs=1", "train.lr=0.01", "model.user_tower.max_history=10"), data=data)
    check_resumable(_cfg(tiny_lm, tmp_path / "a", *sets, "train.epochs=3", "train.num_workers=1"), run_dir)

    report = evaluate_checkpoint(p, cfg, ckpt)
    assert report["queries"] == p.split.test["user_id"].nunique()
    assert set(report["metrics"]) >= {"ndcg@10", "recall@10", "mrr@10", "auc", "coverage@10"}
    assert 0.3 < report["metrics"]["auc"] < 1.0

    # resume: the epoch count continues from the checkpoint (epoch 2 of 2), not from zero
    cfg2 = _cfg(tiny_lm, tmp_path / "b", *sets, "train.epochs=2", "train.early_stopping_patience=0")
    second = fit(cfg2, resume=str(ckpt), data=data)
    assert [h["epoch"] for h in second["history"]] == [1, 2]
    assert read_train_state(tmp_path / "b" / "checkpoint").epoch in (1, 2)
