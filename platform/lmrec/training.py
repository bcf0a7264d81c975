"""Fine-tuning: the per-worker loop and the Ray Train launcher (the examples it trains on: lmrec.data.examples).

``train_loop_per_worker`` is ordinary PyTorch: it runs inside a Ray Train worker (DDP through
``prepare_model``/``prepare_data_loader``, metrics and checkpoints through ``ray.train.report``) and,
with ``ray_train=False``, in a plain process (unit tests, quick local runs).
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from lmrec.checkpoint import TrainState, load_checkpoint, load_optimizer_state, read_train_state, save_checkpoint
from lmrec.config import Config
from lmrec.data.encode import Queries
from lmrec.data.examples import LengthBuckets, PrefixExamples, SequenceWindows, TrainData, prepare_data
from lmrec.errors import LmrecError
from lmrec.evaluation import evaluate
from lmrec.models import losses
from lmrec.models.lm import cached_encode, embedding_key, encode_texts, load_cached, store_cached, tokenize
from lmrec.models.recommender import Recommender, Scorer, build_model, history_text

log = logging.getLogger("lmrec.train")
TARGET_METRIC = "ndcg@10"


# ---------------------------------------------------------------------------------- distributed bits
def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def shard_encode(lm, tokenizer, texts: list[str], max_length: int, use_cache: bool = True) -> torch.Tensor:
    """Frozen-LM vectors for ``texts``: from the on-disk cache when every worker has them, else each
    worker encodes a contiguous share and the shares are all-gathered (and cached)."""
    key = embedding_key(lm, texts, max_length) if use_cache else None
    cached = load_cached(key) if key else None
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return cached_encode(lm, tokenizer, texts, max_length) if use_cache else encode_texts(lm, tokenizer, texts, max_length)
    everyone = torch.tensor([1 if cached is not None else 0])
    dist.all_reduce(everyone, op=dist.ReduceOp.MIN)
    if int(everyone) == 1:
        return cached
    world, rank = dist.get_world_size(), dist.get_rank()
    per = math.ceil(len(texts) / world)
    mine = encode_texts(lm, tokenizer, texts[rank * per : (rank + 1) * per], max_length)
    buf = torch.zeros(per, mine.shape[1])
    buf[: len(mine)] = mine
    parts = [torch.zeros_like(buf) for _ in range(world)]
    dist.all_gather(parts, buf)
    out = torch.cat(parts)[: len(texts)]
    if key:
        store_cached(key, out)
    return out


def _broadcast_object(obj, src: int = 0):
    dist = _dist()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ---------------------------------------------------------------------------------------- the loop
def _param_groups(model: Recommender, cfg: Config, lr: float | None = None) -> list[dict]:
    lm = model.lm
    lm_ids = {id(p) for p in lm.parameters()} if lm is not None else set()
    lm_params = [p for p in model.parameters() if p.requires_grad and id(p) in lm_ids]
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in lm_ids]
    groups = [{"params": other, "lr": cfg.train.lr if lr is None else lr}]
    if lm_params:
        groups.append({"params": lm_params, "lr": cfg.train.lm_lr})
    return groups


def _loss(model: Recommender, batch: dict, data: TrainData, cfg: Config, allowed, log_pop, pooled_hist, gen):
    """One batch's loss; ``model`` is the unwrapped module (DDP syncs gradients of the wrapper's params)."""
    lc = cfg.model.loss
    tt = model.text_tower
    catalog = None
    if lc.kind == "softmax" and model.sequential:
        # the full softmax needs every item's vector: computed once, the history reads from it too; with a
        # fine-tuned LM between refreshes only the batch's items run it (TextItemTower.all)
        live = None
        if tt is not None and not tt.frozen and tt.stale is not None:
            live = torch.unique(batch["items"][batch["items"] > 0] - 1)
        catalog = model.all_item_vectors(live)
    elif lc.kind == "softmax" and tt is not None and not tt.frozen:
        catalog = model.all_item_vectors()
    if model.sequential:
        items, events = batch["items"], batch["events"]
        states = model.user_states(items[:, :-1], events[:, :-1], catalog)
        target = items[:, 1:]
        keep = (target > 0) & (items[:, :-1] > 0)
        t = target[keep] - 1
        if lc.kind == "softmax":  # the next item (and, with future_targets, the later ones) of every position
            loss = losses.sequence_softmax(states, items, catalog, model.scoring, allowed, model.history_bias,
                                           lc.future_targets, lc.future_decay)
            return loss + _align(model, t, allowed, lc)
        h, value = states[keep], batch["values"][:, 1:][keep]
    else:
        ex = batch["example"]
        if pooled_hist is not None:
            h = model.user_tower.from_pooled(pooled_hist[ex])[:, 0]
        else:
            texts = [history_text(batch["histories"][i], data.texts, cfg.model.user_tower.max_history) for i in range(len(ex))]
            enc = tokenize(model.tokenizer, texts, cfg.model.user_tower.max_text_length)
            h = model.user_states_from_text(enc["input_ids"].to(allowed.device), enc["attention_mask"].to(allowed.device))[:, 0]
        t, value = batch["target"], batch["value"]
    if lc.kind == "softmax":
        loss = losses.full_softmax(h, t, model.all_item_vectors() if catalog is None else catalog, model.scoring, allowed)
    elif lc.kind == "sampled_softmax":
        loss = losses.sampled_softmax(
            h, t, model.item_vectors, model.scoring, allowed, lc.num_negatives, log_pop if lc.logq_correction else None, gen
        )
    elif lc.kind == "bpr":
        loss = losses.bpr(h, t, model.item_vectors, model.scoring, allowed, gen)
    else:
        loss = losses.squared_error(h, t, value, model.item_vectors, allowed, lc.num_negatives, gen)
    return loss + _align(model, t, allowed, lc)


def _align(model: Recommender, t: torch.Tensor, allowed: torch.Tensor, lc) -> torch.Tensor | float:
    """The text-ID alignment term of the batch's target items (0 when off)."""
    tt = model.text_tower
    if lc.align_weight <= 0 or model.id_tower is None or tt is None:
        return 0.0
    items = torch.unique(t)
    items = items[allowed[items]]  # items with training interactions: the others have no ID vector
    return lc.align_weight * losses.alignment(tt(items), model.id_tower(items), lc.temperature)


class Objective(torch.nn.Module):
    """The training loss as a module, so the DDP wrapper's forward runs (and all-reduces gradients)."""

    def __init__(self, model: Recommender, data: TrainData, cfg: Config, allowed, log_pop, pooled_hist, gen):
        super().__init__()
        self.model = model
        self.data, self.cfg, self.gen = data, cfg, gen
        self.register_buffer("allowed", allowed, persistent=False)
        self.register_buffer("log_pop", log_pop, persistent=False)
        self.pooled_hist = pooled_hist

    def forward(self, batch: dict) -> torch.Tensor:
        return _loss(self.model, batch, self.data, self.cfg, self.allowed, self.log_pop, self.pooled_hist, self.gen)


def _to(batch: dict, device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _optimizer(model: Recommender, cfg: Config, lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; ``lr`` replaces ``train.lr`` (everything but the LM)."""
    return torch.optim.AdamW(_param_groups(model, cfg, lr), weight_decay=cfg.train.weight_decay)


def _subset(q: Queries, idx: np.ndarray) -> Queries:
    return Queries(q.user_ids[idx], [q.histories[i] for i in idx], [q.events[i] for i in idx], [q.targets[i] for i in idx])


def valid_sample(data: TrainData, cfg: Config) -> Queries:
    """The valid users scored after every epoch: all of them, or a fixed random ``train.valid_users``."""
    n = cfg.train.valid_users
    if n is None or n >= len(data.valid):
        return data.valid
    idx = np.sort(np.random.default_rng(cfg.train.seed).choice(len(data.valid), n, replace=False))
    return _subset(data.valid, idx)


def reset_peak_rss() -> None:
    """Start the process's peak-RSS count afresh (Linux: clear_refs 5), so a run trained in a process that
    trained others before (``--local`` benchmarks) reports its own peak; elsewhere nothing happens."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """The process's peak resident memory since the start or :func:`reset_peak_rss` (VmHWM), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def train_loop_per_worker(loop_config: dict) -> None:
    """The training loop. ``loop_config``: ``config`` (dict), ``data`` (TrainData), ``ray_train`` (bool),
    ``resume`` (checkpoint dir or None), ``output_dir`` (local runs).

    Each epoch's record holds where its time went (``seconds``: waiting for batches, forward, backward and
    optimizer step, LM refreshes, validation, checkpoint) and the peak RSS of the process."""
    reset_peak_rss()
    cfg = Config.model_validate(loop_config["config"])
    data: TrainData = loop_config["data"]
    use_ray = loop_config.get("ray_train", False)
    world = 1
    if use_ray:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        device = ray.train.torch.get_device()
    else:
        rank, device = 0, torch.device("cuda" if cfg.train.use_gpu and torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed + rank)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed + 1000 * rank)

    resume_dir = None
    if use_ray and ray.train.get_checkpoint() is not None:
        resume_ckpt = ray.train.get_checkpoint()
        resume_dir = resume_ckpt.to_directory()
    elif loop_config.get("resume"):
        resume_dir = loop_config["resume"]

    state = TrainState()
    if resume_dir is not None:
        loaded = load_checkpoint(resume_dir, attach_catalog=False)
        model = loaded.model
        state = loaded.state
    else:
        model = build_model(cfg.model, data.n_items)
        if cfg.train.init_from:
            _init_weights(model, cfg.train.init_from, data)
    tt = model.text_tower
    # train.probe_first: the LM stays frozen until the probing stage stops improving
    staged = bool(cfg.train.probe_first and tt is not None and tt.finetune_layers != 0)  # probe, then fine-tune
    probing = staged and (not state.history or state.history[-1].get("stage") == "probe")
    if probing and state.history and 0 < cfg.train.early_stopping_patience <= state.bad_epochs:
        probing, state.bad_epochs = False, 0  # resumed right where the probe had converged
    if probing:
        tt.hold_lm(True)
    features = shard_encode(tt.lm, model.tokenizer, data.texts, cfg.model.item_tower.max_text_length) if tt is not None and tt.frozen else None
    model.set_catalog(data.texts, data.seen, features)
    model.to(device)

    ut = cfg.model.user_tower
    sampler = None
    if model.sequential:
        examples: TorchDataset = SequenceWindows(data.sequences, ut.max_history, getattr(model.user_tower, "padding_invariant", False))
        collate = examples.collate
        pooled_hist = None
        if cfg.train.bucket_by_length:
            sampler = LengthBuckets(examples.lengths(), cfg.train.batch_size, cfg.train.seed, rank, world)
    else:
        examples = PrefixExamples(data.sequences, ut.max_history)
        frozen_user_lm = cfg.model.item_tower.finetune_layers == 0
        pooled_hist = None
        if frozen_user_lm:  # the siamese LM is frozen: encode every history text once
            texts = [history_text(examples.history(i), data.texts, ut.max_history) for i in range(len(examples))]
            pooled_hist = shard_encode(model.lm, model.tokenizer, texts, ut.max_text_length).to(device)

        def collate(idx, _ex=examples):
            out = _ex.collate(idx)
            out["histories"] = [_ex.history(i) for i in idx]
            return out

    if len(examples) == 0:
        raise LmrecError("no training examples: every user needs at least two training interactions")
    if sampler is not None:
        loader = DataLoader(examples, batch_sampler=sampler, collate_fn=collate)
    else:
        loader = DataLoader(examples, batch_size=cfg.train.batch_size, shuffle=True, collate_fn=collate, drop_last=False)
    optimizer = _optimizer(model, cfg)
    if resume_dir is not None:
        load_optimizer_state(resume_dir, optimizer)
    allowed = torch.as_tensor(np.array(data.seen, copy=True), device=device)  # Ray's object store hands out read-only arrays
    share = data.counts / max(1, data.counts.sum())
    log_pop = torch.as_tensor(np.log(np.maximum(share, 1e-12)), dtype=torch.float32, device=device)
    inner = model
    objective: torch.nn.Module = Objective(model, data, cfg, allowed, log_pop, pooled_hist, gen)
    if use_ray:
        wrapped = ray.train.torch.prepare_model(objective, parallel_strategy_kwargs={"find_unused_parameters": True})
        # our sampler shards the batches itself; a DistributedSampler would replace it
        loader = ray.train.torch.prepare_data_loader(loader, add_dist_sampler=sampler is None)
    else:
        wrapped = objective
    amp = cfg.train.mixed_precision and device.type == "cuda"
    amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    per_batch = None  # targets in a batch on average, when length buckets make them uneven
    if sampler is not None:
        per_batch = float(np.maximum(examples.lengths() - 1, 0).sum()) / max(1, len(sampler) * world)
    refresh_every = cfg.train.lm_refresh_steps if cfg.model.loss.kind == "softmax" and model.sequential else 0
    valid = valid_sample(data, cfg)
    best_weights = None  # the probing stage's best, to fine-tune from

    if cfg.train.init_from and resume_dir is None:  # the starting weights' score is the one to beat
        metrics = _broadcast_object(_validate(inner, data, cfg, device, valid) if rank == 0 else None)
        state.best_metric, state.best_epoch = metrics[TARGET_METRIC], 0
        record = {"epoch": 0, **{f"valid_{k}": v for k, v in metrics.items()}, "valid_users": len(valid),
                  "best_valid_ndcg@10": state.best_metric, "best_epoch": 0, "stage": "init"}
        state.history.append(record)
        _report(record, inner, cfg, data, state, optimizer, rank, use_ray, loop_config.get("output_dir"))

    for epoch in range(state.epoch, cfg.train.epochs):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        wrapped.train()
        started = time.perf_counter()
        spent = dict.fromkeys(("data", "forward", "backward", "refresh", "validate", "checkpoint"), 0.0)
        total, steps = 0.0, 0
        n_steps = len(loader) if cfg.train.max_steps_per_epoch is None else min(len(loader), cfg.train.max_steps_per_epoch)
        bar = _progress(n_steps, f"epoch {epoch + 1}/{cfg.train.epochs}", rank == 0)
        tick = time.perf_counter()
        for batch in loader:
            if steps >= n_steps:
                break
            batch = _to(batch, device)
            now = time.perf_counter()
            spent["data"] += now - tick
            if refresh_every and tt is not None and not tt.frozen and steps % refresh_every == 0:
                # every step: the batch's own items are about to run the LM with gradients, skip them here
                tt.refresh(skip=torch.unique(batch["items"][batch["items"] > 0] - 1) if refresh_every == 1 else None)
                now, before = time.perf_counter(), now
                spent["refresh"] += now - before
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                loss = wrapped(batch)
            mid = time.perf_counter()
            spent["forward"] += mid - now
            optimizer.zero_grad(set_to_none=True)
            # length buckets put long windows (many targets) together: the batch's mean loss would weigh
            # their targets far below those of short windows. Scaled to (sum over targets) / (the mean
            # number a batch holds), every target weighs what it weighs in randomly drawn batches.
            (loss * (_targets(batch) / per_batch) if per_batch else loss).backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
            tick = time.perf_counter()
            spent["backward"] += tick - mid
            bar.update(1)
            bar.set_postfix(loss=f"{total / steps:.4f}")
        bar.close()
        train_seconds = time.perf_counter() - started

        tick = time.perf_counter()
        metrics = None
        if rank == 0:
            metrics = _validate(inner, data, cfg, device, valid)
        metrics = _broadcast_object(metrics)
        spent["validate"] = time.perf_counter() - tick
        state.epoch = epoch + 1
        score = metrics[TARGET_METRIC]
        if score > state.best_metric:
            state.best_metric, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
            if probing:
                best_weights = {k: v.detach().clone() for k, v in inner.state_dict().items()}
        else:
            state.bad_epochs += 1
        record = {
            "epoch": epoch + 1,
            "train_loss": total / max(1, steps),
            "train_seconds": round(train_seconds, 2),
            "peak_rss_mb": peak_rss_mb(),
            **{f"valid_{k}": v for k, v in metrics.items()},
            "valid_users": len(valid),
            "best_valid_ndcg@10": state.best_metric,
            "best_epoch": state.best_epoch,
            **({"stage": "probe" if probing else "finetune"} if staged else {}),
        }
        stop = cfg.train.early_stopping_patience > 0 and state.bad_epochs >= cfg.train.early_stopping_patience
        record["seconds"] = {k: round(v, 2) for k, v in spent.items() if k != "checkpoint"}
        tick = time.perf_counter()
        state.history.append(record)
        _report(record, inner, cfg, data, state, optimizer, rank, use_ray, loop_config.get("output_dir"))
        if rank == 0:
            log.info(json.dumps({**record, "checkpoint_seconds": round(time.perf_counter() - tick, 2)}))
        if probing and (stop or (cfg.train.early_stopping_patience == 0 and epoch + 1 >= cfg.train.epochs // 2)):
            # the probe has converged: fine-tune the top layers from its best weights, against its best score
            if rank == 0:
                log.info("probing stopped at epoch %d (best %d): fine-tuning the top %s LM layers", epoch + 1,
                         state.best_epoch, tt.finetune_layers)
            if best_weights is not None:
                inner.load_state_dict(best_weights, strict=False)
            probing, best_weights, state.bad_epochs = False, None, 0
            tt.hold_lm(False)
            optimizer = _optimizer(inner, cfg, cfg.train.finetune_lr)
            if use_ray:  # DDP fixes the parameters it syncs when it wraps the module: wrap again
                wrapped = ray.train.torch.prepare_model(objective, parallel_strategy_kwargs={"find_unused_parameters": True})
            continue
        if stop:
            if rank == 0:
                log.info("early stopping: no valid %s gain for %d epochs", TARGET_METRIC, state.bad_epochs)
            break


def _init_weights(model: Recommender, path: str, data: TrainData) -> None:
    """Start from a checkpoint's weights (``train.init_from``): same architecture, same catalog order."""
    import pandas as pd
    from safetensors.torch import load_file

    from lmrec.checkpoint import CATALOG, WEIGHTS

    path = Path(path)
    if not (path / WEIGHTS).is_file():
        raise LmrecError(f"train.init_from: {path} is not an lmrec checkpoint ({WEIGHTS} is missing)")
    ids = pd.read_parquet(path / CATALOG, columns=["item_id"])["item_id"].astype(str).to_numpy()
    if len(ids) != data.n_items or not np.array_equal(ids, np.asarray(data.item_ids, dtype=str)):
        raise LmrecError(f"train.init_from: the catalog of {path} is not this dataset's ({len(ids)} items vs {data.n_items})")
    try:
        missing, unexpected = model.load_state_dict(load_file(str(path / WEIGHTS)), strict=False)
    except RuntimeError as exc:  # a tensor of another size
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise LmrecError(f"train.init_from: {path} holds another model shape ({first})") from None
    # a history bias new to these weights starts at 0, where the checkpoint's own scores are unchanged
    missing = [m for m in missing if not m.endswith((".input_ids", ".attention_mask", ".features")) and m != "history_bias"]
    if missing or unexpected:
        raise LmrecError(f"train.init_from: {path} holds another model shape (missing {missing[:3]}, unexpected {unexpected[:3]})")


def _targets(batch: dict) -> int:
    """Next-item targets in a batch of windows (as :func:`_loss` counts them)."""
    items = batch["items"]
    return int(((items[:, 1:] > 0) & (items[:, :-1] > 0)).sum())


def _validate(model: Recommender, data: TrainData, cfg: Config, device, queries: Queries | None = None) -> dict:
    scorer = Scorer(model, data.texts, device)
    queries = data.valid if queries is None else queries
    report = evaluate(scorer, queries, data.n_items, ks=[10, 20], exclude_seen=cfg.eval.exclude_seen, batch_size=cfg.eval.batch_size)
    model.train()
    return report["metrics"]


def _validate_checkpoint(path: Path, data: TrainData, cfg: Config) -> dict:
    """The best checkpoint scored on every valid user (the epochs saw a sample of them)."""
    loaded = load_checkpoint(path)
    return _validate(loaded.model, data, cfg, "cpu")


def _report(record, model, cfg, data, state, optimizer, rank, use_ray, output_dir) -> None:
    if use_ray:
        import ray.train

        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(Path(tmp) / "ckpt", model, cfg, data.item_ids, data.texts, data.counts, state, optimizer)
                ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(str(Path(tmp) / "ckpt")))
        else:
            ray.train.report(record)
        return
    out = Path(output_dir or cfg.output_dir)
    save_checkpoint(out / "checkpoints" / "last", model, cfg, data.item_ids, data.texts, data.counts, state, optimizer)
    if state.best_epoch == record["epoch"]:
        save_checkpoint(out / "checkpoint", model, cfg, data.item_ids, data.texts, data.counts, state, None)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=5.0, leave=False)


# -------------------------------------------------------------------------------------- the launcher
def _run_name(cfg: Config) -> str:
    return f"lmrec-{cfg.data.dataset or Path(cfg.data.path or 'data').stem}-{cfg.model.item_tower.kind}-{cfg.model.user_tower.kind}"


def init_ray(**kwargs) -> None:
    """Join ``RAY_ADDRESS`` or start a local Ray. A local Ray gets its own dashboard (on a free port,
    localhost only) and its processes are told where it is: Ray Train's placement-group cleaner asks the
    state API whether the controller is alive, and when another Ray runs on this machine an actor with no
    address in its environment cannot tell which to ask; its monitor dies and a finished run's placement
    group is never released (the next run's workers then wait for CPUs that never free up)."""
    import socket

    import ray

    address = os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=True, **kwargs)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the local Ray's processes are started from this one and inherit its environment at start
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    try:
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, log_to_driver=True, **kwargs)
    finally:
        if saved is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved


# what may differ between an interrupted run and the config that resumes it: where things live, how long
# and on what it runs; anything else (model, data, loss, batch size, learning rates, seed) makes another run
RESUME_MAY_CHANGE = frozenset({
    "output_dir", "data.path", "data.items_path", "train.epochs", "train.early_stopping_patience",
    "train.num_workers", "train.cpus_per_worker", "train.use_gpu", "train.mixed_precision",
    "train.max_steps_per_epoch", "eval.batch_size",
})


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(cfg: Config, run_dir: Path) -> None:
    """Ray Train resumes a run from its latest checkpoint when it finds one under the run's storage; refuse
    when that checkpoint was trained with a different config, instead of silently continuing its weights
    under new settings."""
    from lmrec.checkpoint import CONFIG
    from lmrec.config import load_config

    latest = max(run_dir.glob("checkpoint_*/" + CONFIG), default=None, key=lambda p: p.parent.name)
    if latest is None:
        return
    stored, wanted = _flat(load_config([latest]).model_dump(mode="json")), _flat(cfg.model_dump(mode="json"))
    changed = sorted(k for k in stored.keys() | wanted.keys() if k not in RESUME_MAY_CHANGE and stored.get(k) != wanted.get(k))
    if changed:
        listed = ", ".join(f"{k}: {stored.get(k)!r} -> {wanted.get(k)!r}" for k in changed[:6])
        raise LmrecError(
            f"{run_dir} holds an earlier run of a different config ({listed}{', ...' if len(changed) > 6 else ''}); "
            f"Ray Train would resume it. Delete {run_dir} or set another output_dir to start afresh."
        )


def fit(
    cfg: Config,
    resume: str | None = None,
    local: bool = False,
    data: TrainData | None = None,
    name: str | None = None,
    storage_path: str | None = None,
    callbacks: list | tuple = (),
    copy_best: bool = True,
) -> dict:
    """Train ``cfg``; the best checkpoint (valid NDCG@10) ends up in ``<output_dir>/checkpoint``.

    With Ray (default) a ``TorchTrainer`` runs ``cfg.train.num_workers`` workers; it joins the cluster
    at ``RAY_ADDRESS`` when set, else starts a local Ray. A run interrupted midway resumes from its
    latest checkpoint when started again with the same output dir. ``storage_path`` (a directory or
    an object-store URI) and ``callbacks`` pass through to Ray Train (Ray Tune drives trials this way);
    with ``copy_best=False`` the best checkpoint stays where Ray Train stored it.
    """
    import shutil

    started = time.perf_counter()
    out = Path(cfg.output_dir).resolve()
    data = data if data is not None else prepare_data(cfg)
    if resume is not None and not Path(resume).is_dir():
        raise LmrecError(f"--resume {resume}: no such checkpoint directory")
    loop_config = {"config": cfg.model_dump(mode="json"), "data": data, "resume": resume, "output_dir": str(out)}
    if local:
        train_loop_per_worker(loop_config)
        state = read_train_state(out / "checkpoint")
        history = read_train_state(out / "checkpoints" / "last").history
    else:
        import ray
        from ray.train import CheckpointConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        if not ray.is_initialized():
            init_ray()
        loop_config["ray_train"] = True
        run_name = name or _run_name(cfg)
        if storage_path is None:  # our own local storage (Tune passes its own and restores trials itself)
            check_resumable(cfg, out / "ray" / run_name)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(
                num_workers=cfg.train.num_workers,
                use_gpu=cfg.train.use_gpu,
                resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if cfg.train.use_gpu else {})},
            ),
            run_config=RunConfig(
                name=run_name,
                storage_path=storage_path or str(out / "ray"),
                callbacks=list(callbacks),
                checkpoint_config=CheckpointConfig(
                    num_to_keep=2, checkpoint_score_attribute=f"valid_{TARGET_METRIC}", checkpoint_score_order="max"
                ),
            ),
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        best = result.get_best_checkpoint(metric=f"valid_{TARGET_METRIC}", mode="max")
        if best is None:
            raise LmrecError("training reported no checkpoint")
        if not copy_best:
            return {"dataset": data.dataset, "checkpoint": best.path, "seconds": round(time.perf_counter() - started, 1)}
        tmp = out / "checkpoint.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        best.to_directory(str(tmp))
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
        tmp.rename(out / "checkpoint")
        state = read_train_state(out / "checkpoint")
        latest = result.checkpoint
        history = read_train_state(latest.to_directory()).history if latest else state.history
    summary = {
        "dataset": data.dataset,
        "best_epoch": state.best_epoch,
        f"best_valid_{TARGET_METRIC}": state.best_metric,
        **({"valid_all_users": _validate_checkpoint(out / "checkpoint", data, cfg)} if cfg.train.valid_users else {}),
        "checkpoint": str(out / "checkpoint"),
        "history": history,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
