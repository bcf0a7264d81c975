"""Training: loss goes down on real data; Ray Train (2 CPU workers) writes checkpoints that load,
evaluate and resume."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrec.checkpoint import read_train_state
from lmrec.config import load_config
from lmrec.data.examples import PrefixExamples, SequenceWindows, prepare_data
from lmrec.errors import LmrecError
from lmrec.experiments import evaluate_checkpoint
from lmrec.training import Objective, check_resumable, fit


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


# ------------------------------------------------------------------------------------- at scale
def test_length_buckets_cover_every_example_once_in_batches_of_similar_length():
    from lmrec.data.examples import LengthBuckets

    lengths = np.random.default_rng(0).integers(1, 51, 1000)
    sampler = LengthBuckets(lengths, batch_size=32, seed=0, pool=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 32
    assert sorted(i for b in batches for i in b) == list(range(1000))
    # batches cut from length-sorted pools: the spread inside a batch is far below the data's (1..50)
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 15, spread  # random batches of 32 span ~47
    sampler.set_epoch(1)
    assert [b for b in sampler] != batches  # another epoch, another order
    # two ranks: disjoint halves of the same draw, equally many batches
    ranks = [list(LengthBuckets(lengths, 32, 0, rank=r, world=2, pool=4)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 16
    assert not set(i for b in ranks[0] for i in b) & set(i for b in ranks[1] for i in b)


def test_windows_are_padded_to_the_longest_in_their_batch():
    seqs = [(np.arange(n), np.ones(n, dtype=np.int64), np.ones(n, dtype=np.float32)) for n in (3, 5, 60)]
    ex = SequenceWindows(seqs, max_history=10)
    short = ex.collate([ex[0], ex[1]])
    assert short["items"].shape == (2, 5)
    assert short["items"][0].tolist() == [0, 0, 1, 2, 3]  # item i is i + 1; left padding
    assert ex.collate([ex[i] for i in range(len(ex))])["items"].shape[1] == 11  # L + 1
    from lmrec.training import _targets

    assert _targets(short) == 2 + 4  # a window of n events holds n - 1 next-item targets
    # a GRU steps through the padding: its windows keep the full length, as evaluation and serving pad them
    assert SequenceWindows(seqs, max_history=10, trim=False).collate([ex[0], ex[1]])["items"].shape == (2, 11)


@pytest.mark.data
def test_probe_then_fine_tune_with_refreshed_catalog_and_a_validation_sample(ml100k_slice, tiny_lm, tmp_path):
    from lmrec.checkpoint import load_checkpoint
    from lmrec.models.lm import load_lm, transformer_layers

    p = ml100k_slice
    cfg = _cfg(tiny_lm, tmp_path, "model.item_tower.kind=hybrid", "model.item_tower.finetune_layers=1",
               "train.probe_first=true", "train.lm_refresh_steps=2", "train.epochs=3", "train.early_stopping_patience=1",
               "train.valid_users=20", "train.lr=1e-12", "train.lm_lr=0.01")
    summary = fit(cfg, local=True, data=prepare_data(cfg, p.split, p.catalog))
    stages = [h["stage"] for h in summary["history"]]
    # lr ~0 everywhere but the LM: the probe cannot improve on its first epoch, so it stops after its second
    assert stages == ["probe", "probe", "finetune"]
    assert all(h["valid_users"] == 20 for h in summary["history"])
    assert set(summary["history"][0]["seconds"]) >= {"data", "forward", "backward", "refresh", "validate"}
    assert summary["valid_all_users"]["ndcg@10"] >= 0 and "valid_all_users" in json.loads((tmp_path / "train_summary.json").read_text())
    # the probe left the LM untouched; the fine-tuning stage moved its top layer only
    pretrained, _ = load_lm(tiny_lm)
    last = load_checkpoint(tmp_path / "checkpoints" / "last").model.lm
    top, top0 = transformer_layers(last)[-1], transformer_layers(pretrained)[-1]
    bottom, bottom0 = transformer_layers(last)[0], transformer_layers(pretrained)[0]
    assert not torch.equal(top.output.dense.weight, top0.output.dense.weight)
    assert torch.equal(bottom.output.dense.weight, bottom0.output.dense.weight)


@pytest.mark.data
def test_init_from_starts_at_a_checkpoint_whose_score_is_epoch_0(ml100k_slice, tiny_lm, tmp_path):
    p = ml100k_slice
    first = _cfg(tiny_lm, tmp_path / "a", "model.item_tower.kind=id", "train.epochs=1")
    data = prepare_data(first, p.split, p.catalog)
    a = fit(first, local=True, data=data)
    cfg = _cfg(tiny_lm, tmp_path / "b", "model.item_tower.kind=id", "train.epochs=1", f"train.init_from={tmp_path / 'a' / 'checkpoint'}",
               "train.lr=1e-12")
    b = fit(cfg, local=True, data=data)
    start, after = b["history"]
    assert start["epoch"] == 0 and start["stage"] == "init"
    assert start["valid_ndcg@10"] == pytest.approx(a["best_valid_ndcg@10"])  # the same weights, the same score
    assert b["best_valid_ndcg@10"] >= start["valid_ndcg@10"] and after["epoch"] == 1
    with pytest.raises(LmrecError, match="another model shape"):
        fit(_cfg(tiny_lm, tmp_path / "c", "model.item_tower.kind=id", "model.item_tower.dim=16",
                 f"train.init_from={tmp_path / 'a' / 'checkpoint'}"), local=True, data=data)


def test_peak_rss_restarts_per_run():
    """A run trained in a process that held more memory before (a --local benchmark's earlier rows) reports
    its own peak: reset_peak_rss starts the count at what the process holds now."""
    from lmrec.training import peak_rss_mb, reset_peak_rss

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs (writable)")

    block = np.ones(400 * 2**20 // 8)  # 400 MB, touched
    held = peak_rss_mb()
    del block
    reset_peak_rss()
    assert peak_rss_mb() < held - 300
