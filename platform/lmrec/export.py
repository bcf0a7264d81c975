"""Export a checkpoint as a served artifact (the format: :mod:`lmrec.artifact`): ONNX graphs, int8
quantization, a parity gate, a manifest.

The gate (run by :func:`export_checkpoint`, recorded in the manifest): the fp32 ONNX graphs match PyTorch
on real inputs (max abs difference); a reduced-precision artifact ranks the valid split like the fp32 one
(relative NDCG@10 loss, mean top-10 overlap). A failing artifact goes to ``<out>.rejected`` for inspection
and never to ``<out>``; :func:`lmrec.artifact.load_artifact` refuses anything ungated or whose files changed.
This module builds; :mod:`lmrec.artifact` loads (and never imports this one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lmrec.artifact import (
    CATALOG,
    CONFIG,
    ENCODE_BATCH,
    FORMAT,
    ID_VECTORS,
    ITEMS,
    KNN,
    MANIFEST,
    TEXT_ENCODER,
    TOKENIZER_DIR,
    USER_TOWER,
    Engine,
    FastTokenizer,
    ModelInfo,
    artifact_files,
    ort_session,
    sha256_file,
    text_vectors,
    token_arrays,
)
from lmrec.errors import LmrecError
from lmrec.quantize import (
    CPU_TARGETS,
    LADDER,
    LADDER_UNCALIBRATED,
    RECIPES,
    convert_fp16,
    cpu_description,
    cpu_target,
    quantize_int8,
    quiet,
)

log = logging.getLogger("lmrec.export")

PRECISIONS = ("int8", "fp16", "none")
CALIBRATION_SAMPLES = 256  # training-set texts for outlier statistics / static ranges


class GateFailed(LmrecError):
    """The exported artifact failed its parity gate; nothing was written where serving loads from."""


@dataclass
class GateConfig:
    parity_atol: float = 1e-4  # fp32 ONNX vs PyTorch, max abs difference of output vectors
    max_ndcg_loss: float = 0.01  # reduced precision vs fp32: relative NDCG@10 loss on the valid split
    min_top10_overlap: float = 0.9  # mean |top10(fp32) & top10(reduced)| / 10 over valid queries
    parity_samples: int = 256  # real item texts / histories compared with PyTorch


# -------------------------------------------------------------------------------------- utilities
def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("lmrec", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "numpy", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ------------------------------------------------------------------------------- graph building
def _export_lm(lm, out_dir: Path) -> Path:
    """The bare LM through Optimum's ONNX exporter (feature-extraction: tokens -> last_hidden_state)."""
    from optimum.exporters.onnx import onnx_export_from_model

    with quiet("optimum", "transformers"):
        onnx_export_from_model(lm.eval(), out_dir, task="feature-extraction", library_name="transformers", do_validation=False)
    path = out_dir / "model.onnx"
    if not path.is_file() or any(out_dir.glob("*.onnx_data")):
        raise LmrecError(f"the ONNX export of the LM in {out_dir} is missing or uses external data (models over 2 GB are not supported)")
    return path


def build_text_encoder(lm, heads: dict, out_path: Path, scratch: Path) -> Path:
    """Optimum-exported LM + mean pooling + one projection per entry of ``heads`` (output name ->
    ``nn.Linear``), as one graph: ``input_ids``, ``attention_mask`` (B, T) -> each head (B, D)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(_export_lm(lm, scratch / "lm")))
    g = model.graph
    if [o.name for o in g.output] != ["last_hidden_state"]:
        raise LmrecError(f"unexpected outputs of the exported LM: {[o.name for o in g.output]}")
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        raise LmrecError(f"the exported LM uses opset {opset}; the pooling graph needs 13 or later")

    def const(name, value):
        g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    # BERT-style LMs take token_type_ids; the towers always pass zeros, so the graph makes them itself
    for inp in list(g.input):
        if inp.name == "token_type_ids":
            g.input.remove(inp)
            g.node.insert(0, helper.make_node("Mul", ["input_ids", const("lmrec/zero", np.int64(0))], ["token_type_ids"], name="lmrec/token_type_ids"))
    if {i.name for i in g.input} != {"input_ids", "attention_mask"}:
        raise LmrecError(f"unexpected inputs of the exported LM: {[i.name for i in g.input]}")
    p = "lmrec/pool/"
    nodes = [
        helper.make_node("Cast", ["attention_mask"], [p + "mask"], to=TensorProto.FLOAT, name=p + "Cast"),
        helper.make_node("Unsqueeze", [p + "mask", const(p + "last", np.array([-1], np.int64))], [p + "mask3"], name=p + "Unsqueeze"),
        helper.make_node("Mul", ["last_hidden_state", p + "mask3"], [p + "masked"], name=p + "Mul"),
        helper.make_node("ReduceSum", [p + "masked", const(p + "tokens", np.array([1], np.int64))], [p + "sum"], keepdims=0, name=p + "Sum"),
        helper.make_node("ReduceSum", [p + "mask", p + "tokens"], [p + "count"], keepdims=1, name=p + "Count"),
        helper.make_node("Max", [p + "count", const(p + "one", np.float32(1.0))], [p + "count1"], name=p + "Max"),
        helper.make_node("Div", [p + "sum", p + "count1"], ["pooled"], name=p + "Div"),
    ]
    del g.output[:]
    for name, head in heads.items():
        head_nodes, dim = _head_nodes(name, head, const)
        nodes += head_nodes
        g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch_size", dim]))
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return out_path


def _head_nodes(name: str, head, const) -> tuple[list, int]:
    """ONNX nodes from ``pooled`` (B, H) to output ``name`` (B, D) for a projection head: an ``nn.Linear``
    (or a ``Sequential`` ending in one, dropout before it), or the UniSRec mixture-of-experts adaptor
    (:class:`lmrec.models.towers.MoEAdaptor`: softmax gate over experts ``(x - b_k) W_k``)."""
    import torch
    from onnx import helper

    from lmrec.models.towers import MoEAdaptor

    p = f"lmrec/{name}/"
    if isinstance(head, MoEAdaptor):
        bias = head.bias.detach().float().cpu().numpy()  # (K, H)
        weight = head.weight.detach().float().cpu().numpy()  # (K, H, D)
        gate = head.gate.weight.detach().float().cpu().numpy().T.copy()  # (H, K)
        nodes = [
            helper.make_node("MatMul", ["pooled", const(p + "gate", gate)], [p + "logits"], name=p + "GateMatMul"),
            helper.make_node("Softmax", [p + "logits"], [p + "g"], axis=-1, name=p + "Softmax"),  # (B, K)
            helper.make_node("Unsqueeze", [p + "g", const(p + "axis2", np.array([2], np.int64))], [p + "g3"], name=p + "UnsqueezeGate"),
            helper.make_node("Unsqueeze", ["pooled", const(p + "axis0", np.array([0], np.int64))], [p + "x3"], name=p + "UnsqueezeX"),
            helper.make_node("Sub", [p + "x3", const(p + "bias", bias[:, None, :])], [p + "xd"], name=p + "Sub"),  # (K, B, H)
            helper.make_node("MatMul", [p + "xd", const(p + "weight", weight)], [p + "experts"], name=p + "MatMul"),  # (K, B, D)
            helper.make_node("Transpose", [p + "experts"], [p + "experts_b"], perm=[1, 0, 2], name=p + "Transpose"),  # (B, K, D)
            helper.make_node("Mul", [p + "experts_b", p + "g3"], [p + "weighted"], name=p + "Mul"),
            helper.make_node("ReduceSum", [p + "weighted", const(p + "axis1", np.array([1], np.int64))], [name], keepdims=0, name=p + "Sum"),
        ]
        return nodes, weight.shape[2]
    if isinstance(head, torch.nn.Sequential):
        head = head[-1]
    w = head.weight.detach().float().cpu().numpy().T.copy()  # (H, D)
    b = head.bias.detach().float().cpu().numpy()
    nodes = [
        helper.make_node("MatMul", ["pooled", const(p + "weight", w)], [p + "mm"], name=p + "MatMul"),
        helper.make_node("Add", [p + "mm", const(p + "bias", b)], [name], name=p + "Add"),
    ]
    return nodes, w.shape[1]


def _user_tower_graph(tower):
    import torch

    class UserTowerGraph(torch.nn.Module):
        """(B, L, D) item vectors, (B, L) event codes, (B, L) mask (1 = event) -> (B, D) final state."""

        def __init__(self):
            super().__init__()
            self.tower = tower

        def forward(self, item_vectors, events, mask):
            keep = mask.unsqueeze(-1).to(item_vectors.dtype)
            return self.tower(item_vectors * keep, events, mask == 0)[:, -1]

    return UserTowerGraph().eval()


def _export_user_tower(tower, dim: int, out_path: Path) -> Path:
    import torch

    wrapper = _user_tower_graph(tower)
    b, length = 2, 5
    args = (torch.randn(b, length, dim), torch.ones(b, length, dtype=torch.long), torch.ones(b, length, dtype=torch.long))
    batch, history = torch.export.Dim("batch", min=1), torch.export.Dim("history", min=1, max=1 << 16)
    with quiet("torch.onnx", "onnxscript", "onnx_ir"):
        program = torch.onnx.export(
            wrapper,
            args,
            input_names=["item_vectors", "events", "mask"],
            output_names=["user_vector"],
            dynamic_shapes=({0: batch, 1: history},) * 3,
            dynamo=True,
            verbose=False,
        )
        program.save(str(out_path))
    return out_path


def _dynamic_axes(path: Path) -> bool:
    """Whether every input of the exported graph keeps symbolic batch and history axes."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return all(all(d.dim_param for d in x.type.tensor_type.shape.dim[:2]) for x in graph.input)


def build_user_tower(tower, dim: int, out_path: Path) -> Path:
    """A GRU / transformer user tower through ``torch.onnx`` (the ``torch.export`` based exporter, which
    keeps the batch and history axes symbolic through the attention reshapes).

    A second export of a GRU in the same process comes out with the history axis fixed to the example's
    length (torch's exporter keeps state between calls); then the export is redone in a fresh process."""
    import multiprocessing

    _export_user_tower(tower, dim, out_path)
    if _dynamic_axes(out_path):
        return out_path
    log.info("the user tower came out with a fixed history length; exporting it again in a fresh process")
    proc = multiprocessing.get_context("spawn").Process(target=_export_user_tower, args=(tower, dim, out_path))
    proc.start()
    proc.join()
    if proc.exitcode != 0 or not _dynamic_axes(out_path):
        raise LmrecError("the user tower could not be exported with dynamic batch and history axes")
    return out_path


def fast_tokenizer_spec(tokenizer, directory: Path, samples: list[tuple[list[str], int]], batch: int = 64) -> dict:
    """``{"engine": "tokenizers", ...}`` when :class:`FastTokenizer` over ``directory`` reproduces
    ``tokenizer`` exactly on every ``(texts, max_length)`` sample (batches padded alike), else
    ``{"engine": "transformers", "why": ...}``."""
    spec = FastTokenizer.spec_of(tokenizer)
    if spec is None or not (directory / "tokenizer.json").is_file():
        return {"engine": "transformers", "why": "not a fast tokenizer with a tokenizer.json and a pad token"}
    try:
        fast = FastTokenizer(directory, spec)
    except Exception as exc:  # noqa: BLE001 - a tokenizer.json this tokenizers version cannot read
        return {"engine": "transformers", "why": f"tokenizers could not load it: {exc}"}
    for texts, max_length in samples:
        for s in range(0, len(texts), batch):
            part = texts[s : s + batch]
            want, got = token_arrays(tokenizer, part, max_length), fast(part, max_length)
            if any(want[k].shape != got[k].shape or not np.array_equal(want[k], got[k]) for k in want):
                return {"engine": "transformers", "why": f"differs from transformers on {part[0][:60]!r}..."}
    return spec


PROBE_TEXTS = ["", " ", "Café crème brûlée — 100% naïve façade!", "日本語のテキストと English mixed", "a" * 2000,
               "UPPER lower MiXeD 12345 $9.99 #tag @user e-mail: x@y.z", "tab\tnew\nline  double  space", "🙂 emoji ✓"]


# ---------------------------------------------------------------------------------------- the gate
def _check(name: str, value: float, threshold: float, ok: bool, detail: str) -> dict:
    return {"name": name, "value": float(value), "threshold": threshold, "passed": bool(ok), "detail": detail}


def parity_checks(model, engine: Engine, texts: list[str], queries, gate: GateConfig) -> list[dict]:
    """fp32 ONNX vs PyTorch on real inputs: item texts of the catalog and valid-split histories."""
    import torch

    from lmrec.data.encode import pad_left
    from lmrec.data.text import history_text
    from lmrec.models.lm import lm_forward, tokenize

    checks = []
    rng = np.random.default_rng(0)
    info = engine.info
    pick = np.sort(rng.choice(len(texts), min(gate.parity_samples, len(texts)), replace=False))
    qpick = np.sort(rng.choice(len(queries), min(gate.parity_samples, len(queries)), replace=False))
    model.eval()
    with torch.no_grad():
        tt = model.text_tower
        if tt is not None:
            diff = 0.0
            for s in range(0, len(pick), ENCODE_BATCH):
                enc = tokenize(model.tokenizer, [texts[i] for i in pick[s : s + ENCODE_BATCH]], info.max_text_length)
                ref = tt.proj(lm_forward(tt.lm, enc["input_ids"], enc["attention_mask"])).numpy()
                got = engine.text_encoder.run(["item_vector"], {k: v.numpy() for k, v in enc.items()})[0]
                diff = max(diff, float(np.abs(ref - got).max()))
            checks.append(_check("parity.text_encoder", diff, gate.parity_atol, diff <= gate.parity_atol,
                                 f"fp32 ONNX vs PyTorch item vectors, {len(pick)} catalog texts"))
        if info.user_tower == "text":
            hist = [history_text(queries.histories[i], texts, info.max_history) for i in qpick]
            diff = 0.0
            for s in range(0, len(hist), ENCODE_BATCH):
                enc = tokenize(model.tokenizer, hist[s : s + ENCODE_BATCH], info.user_max_text_length)
                ref = model.user_states_from_text(enc["input_ids"], enc["attention_mask"])[:, -1].numpy()
                got = engine.text_encoder.run(["user_vector"], {k: v.numpy() for k, v in enc.items()})[0]
                diff = max(diff, float(np.abs(ref - got).max()))
            checks.append(_check("parity.user_text_encoder", diff, gate.parity_atol, diff <= gate.parity_atol,
                                 f"fp32 ONNX vs PyTorch user vectors, {len(qpick)} valid-split history texts"))
        else:
            items_t = torch.as_tensor(pad_left([queries.histories[i] + 1 for i in qpick], info.max_history))
            events_t = torch.as_tensor(pad_left([queries.events[i] for i in qpick], info.max_history))
            ref = model.user_states(items_t, events_t)[:, -1].numpy()
            pad = (items_t == 0).unsqueeze(-1)
            vecs = model.item_vectors((items_t - 1).clamp(min=0)).masked_fill(pad, 0.0).numpy()
            got = engine.user_tower.run(["user_vector"], {"item_vectors": vecs, "events": events_t.numpy(), "mask": (~pad[..., 0]).long().numpy()})[0]
            diff = float(np.abs(ref - got).max())
            checks.append(_check("parity.user_tower", diff, gate.parity_atol, diff <= gate.parity_atol,
                                 f"fp32 ONNX vs PyTorch user vectors, {len(qpick)} valid-split histories"))
    return checks


def _top(scores: np.ndarray, k: int, exclude: list[np.ndarray] | None) -> np.ndarray:
    if exclude is not None:
        scores = scores.copy()
        for r, h in enumerate(exclude):
            scores[r, h] = -np.inf
    k = min(k, scores.shape[1])
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def ranking_report(engine: Engine, queries, n_items: int, cfg) -> tuple[dict, np.ndarray]:
    """Full-ranking metrics of ``engine`` on ``queries`` and its user vectors."""
    from lmrec.evaluation import evaluate

    users = engine.user_vectors(queries.histories, queries.events)
    row = {u: i for i, u in enumerate(queries.user_ids)}
    ks = sorted(set(cfg.eval.ks) | {10})

    def score_fn(batch):
        return engine.scores(users[[row[u] for u in batch.user_ids]], batch.histories)

    rep = evaluate(score_fn, queries, n_items, ks, cfg.eval.exclude_seen, batch_size=cfg.eval.batch_size)
    return rep["metrics"], users


def top10_overlap(ref: Engine, ref_users: np.ndarray, other: Engine, other_users: np.ndarray, queries, exclude_seen: bool) -> float:
    total = 0.0
    for s in range(0, len(queries), 512):
        hist = queries.histories[s : s + 512]
        ex = hist if exclude_seen else None
        a = _top(ref.scores(ref_users[s : s + 512], hist), 10, ex)
        b = _top(other.scores(other_users[s : s + 512], hist), 10, ex)
        total += sum(len(set(x) & set(y)) / a.shape[1] for x, y in zip(a, b))
    return total / max(1, len(queries))


def ranking_checks(fp32_metrics: dict, metrics: dict, overlap: float, gate: GateConfig, label: str) -> list[dict]:
    base, got = fp32_metrics["ndcg@10"], metrics["ndcg@10"]
    loss = (base - got) / base if base > 0 else (0.0 if got >= base else 1.0)
    return [
        _check("ranking.ndcg@10_loss", loss, gate.max_ndcg_loss, loss <= gate.max_ndcg_loss,
               f"{label} NDCG@10 {got:.5f} vs fp32 {base:.5f} on the valid split (relative loss)"),
        _check("ranking.top10_overlap", overlap, gate.min_top10_overlap, overlap >= gate.min_top10_overlap,
               f"{label} vs fp32: mean share of each valid query's top 10 kept"),
    ]


# -------------------------------------------------------------------------------------- the export
def _valid_queries(cfg, catalog_df: pd.DataFrame, data=None):
    from lmrec.data.encode import Catalog, build_queries
    from lmrec.experiments import prepare

    p = data if data is not None else prepare(cfg)
    catalog = Catalog(catalog_df["item_id"].to_numpy(), catalog_df["text"].tolist())
    unknown = set(p.catalog.item_ids) - set(catalog.index)
    if unknown:
        raise LmrecError(f"{len(unknown)} items of dataset {p.dataset.name!r} are not in the checkpoint's catalog "
                         f"(e.g. {sorted(unknown)[0]!r}): export with the data the checkpoint was trained on")
    queries = build_queries(p.split.train, p.split.valid, catalog)
    if len(queries) == 0:
        raise LmrecError(f"the valid split of {p.dataset.name!r} is empty: the ranking gate needs valid queries")
    return p, catalog, queries


def _calibration_samples(p, catalog, info: ModelInfo, tokenizer, n: int, seed: int = 0) -> list[dict]:
    """``n`` training-set inputs of the text encoder: texts of items with training interactions (for the
    text user tower, half of them training histories), all padded to one length (histogram calibrators
    stack their inputs; padding is part of real batches too)."""
    from lmrec.data.encode import user_sequences
    from lmrec.data.text import history_text

    rng = np.random.default_rng(seed)
    seen = np.unique(catalog.encode(p.split.train["item_id"].to_numpy()))
    texts = [catalog.texts[i] for i in rng.choice(seen, min(n, len(seen)), replace=False)]
    length = info.max_text_length
    if info.user_tower == "text":
        seqs = list(user_sequences(p.split.train, catalog).values())
        picks = rng.choice(len(seqs), min(n // 2, len(seqs)), replace=False)
        texts = texts[: n - len(picks)] + [history_text(seqs[i][0], catalog.texts, info.max_history) for i in picks]
        length = max(length, info.user_max_text_length)
    enc = tokenizer([t or " " for t in texts], padding="max_length", truncation=True, max_length=length, return_tensors="np")
    return [{"input_ids": ids.astype(np.int64), "attention_mask": m.astype(np.int64)} for ids, m in zip(enc["input_ids"], enc["attention_mask"])]


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    quantize: str = "int8",
    calibration: int | None = None,
    cpu: str = "auto",
    recipe: str | None = None,
    gate: GateConfig | None = None,
    data=None,
    threads: int | None = None,
) -> dict:
    """Export ``checkpoint`` to ``out`` and gate it; returns the manifest.

    ``quantize``: ``int8`` (CPU serving), ``fp16`` (GPU serving) or ``none`` (fp32). With int8 the recipes
    of :data:`LADDER` are tried fastest first, calibrated on ``calibration`` training-set texts (default
    256; 0 tries :data:`LADDER_UNCALIBRATED`), and the first that passes the gate is served; ``recipe``
    forces one. ``data`` (a :class:`Prepared`) replaces loading the checkpoint's dataset. Raises
    :class:`GateFailed` when the gate fails.
    """
    import torch
    from safetensors.numpy import save_file

    from lmrec.checkpoint import CONFIG as CKPT_CONFIG
    from lmrec.checkpoint import load_checkpoint

    started = time.perf_counter()
    gate = gate or GateConfig()
    if calibration is None:
        calibration = CALIBRATION_SAMPLES
    if quantize not in PRECISIONS:
        raise LmrecError(f"--quantize {quantize!r}: choose one of {', '.join(PRECISIONS)}")
    if calibration < 0:
        raise LmrecError(f"--calibration {calibration}: give a number of training-set samples (0 = no calibration)")
    if recipe is not None and recipe not in RECIPES:
        raise LmrecError(f"--recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    if recipe is not None and (RECIPES[recipe].static or RECIPES[recipe].smooth) and calibration == 0:
        raise LmrecError(f"--recipe {recipe} needs calibration data: give --calibration N (training-set samples)")
    checkpoint, out = Path(checkpoint), Path(out)
    if out.resolve() == checkpoint.resolve():
        raise LmrecError("--out must differ from --checkpoint")
    loaded = load_checkpoint(checkpoint, attach_catalog=False)
    model, cfg = loaded.model.eval(), loaded.config
    info = ModelInfo.from_config(cfg.model, model.history_bias_value)
    if quantize != "none" and model.lm is None:
        raise LmrecError(f"--quantize {quantize} reduces the text encoder, and this checkpoint has an ID item tower "
                         "and no language model: export it with --quantize none")
    target = None
    if quantize == "int8":
        target = cpu_target() if cpu == "auto" else cpu
        if target not in CPU_TARGETS:
            raise LmrecError(f"--cpu {cpu!r}: choose auto or one of {', '.join(CPU_TARGETS)}")
    p, catalog, queries = _valid_queries(cfg, loaded.catalog, data)
    texts = catalog.texts
    model.set_catalog(texts, loaded.catalog["seen"].to_numpy())

    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tokenizer = model.tokenizer
    tokenizer_spec = None  # no LM: no tokenizer
    id_vectors = None
    with tempfile.TemporaryDirectory(prefix="lmrec-export-") as tmp:
        scratch = Path(tmp)
        fp32_encoder = None
        if model.lm is not None:
            heads = {"item_vector": model.text_tower.proj} if model.text_tower is not None else {}
            if info.user_tower == "text":
                heads["user_vector"] = model.user_tower.proj[1]
            log.info("exporting the text encoder (Optimum, feature-extraction) + pooling and projection")
            fp32_encoder = build_text_encoder(model.lm, heads, scratch / "text_encoder.fp32.onnx", scratch)
            tokenizer.save_pretrained(work / TOKENIZER_DIR)
            model.lm.config.save_pretrained(work / TOKENIZER_DIR)
            samples = [(PROBE_TEXTS + texts[:: max(1, len(texts) // 2000)], info.max_text_length)]
            if info.user_tower == "text":
                samples.append((PROBE_TEXTS, info.user_max_text_length))
            tokenizer_spec = fast_tokenizer_spec(tokenizer, work / TOKENIZER_DIR, samples)
            log.info("serving tokenizer: %s%s", tokenizer_spec["engine"], f" ({tokenizer_spec['why']})" if "why" in tokenizer_spec else "")
        if model.sequential:
            log.info("exporting the %s user tower (torch.onnx)", info.user_tower)
            build_user_tower(model.user_tower, info.dim, work / USER_TOWER)
        if model.id_tower is not None:
            with torch.no_grad():
                id_vectors = model.id_tower.all().float().numpy().copy()  # zero rows for items unseen in training
            if info.item_tower == "hybrid":
                save_file({"vectors": id_vectors}, str(work / ID_VECTORS))
        user_tower = ort_session(work / USER_TOWER, threads) if model.sequential else None

        def engine(encoder, providers=None, **served_as) -> Engine:
            session = ort_session(encoder, threads, providers) if encoder is not None else None
            return Engine(replace(info, **served_as), texts, session, user_tower, tokenizer, id_vectors)

        fp32 = engine(fp32_encoder)
        log.info("gate: fp32 ONNX vs PyTorch on real inputs")
        checks = parity_checks(model, fp32, texts, queries, gate)
        log.info("gate: ranking the valid split with the fp32 graphs (%d queries, %d items)", len(queries), len(texts))
        fp32_metrics, fp32_users = ranking_report(fp32, queries, len(texts), cfg)
        metrics = {"fp32": fp32_metrics, "checkpoint_best_valid_ndcg@10": loaded.state.to_json()["best_metric"]}
        tried: list[dict] = []
        served, served_encoder, served_recipe = fp32, fp32_encoder, {"name": "fp32"}
        if quantize != "none" and all(c["passed"] for c in checks):
            if quantize == "fp16":
                candidates = ["fp16"]
            else:
                candidates = [recipe] if recipe else list(LADDER if calibration > 0 else LADDER_UNCALIBRATED)
            calib = _calibration_samples(p, catalog, info, tokenizer, calibration) if calibration > 0 and quantize == "int8" else None
            served = None
            for name in candidates:
                t0 = time.perf_counter()
                path = scratch / f"text_encoder.{name}.onnx"
                if name == "fp16":
                    import onnxruntime as ort

                    described = convert_fp16(fp32_encoder, path)
                    gpu = "CUDAExecutionProvider" in ort.get_available_providers()
                    cand = engine(path, ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else None, precision="fp16")
                else:
                    described = quantize_int8(fp32_encoder, path, RECIPES[name], target, calib, scratch, model.lm.config)
                    cand = engine(path, precision="int8", encode_batch=described["encode_batch"])
                log.info("gate: ranking the valid split with %s", name)
                cand_metrics, cand_users = ranking_report(cand, queries, len(texts), cfg)
                overlap = top10_overlap(fp32, fp32_users, cand, cand_users, queries, cfg.eval.exclude_seen)
                rc = ranking_checks(fp32_metrics, cand_metrics, overlap, gate, name)
                ok = all(c["passed"] for c in rc)
                tried.append({"recipe": described, "metrics": cand_metrics, "checks": rc, "passed": ok, "seconds": round(time.perf_counter() - t0, 1)})
                log.info("%s: %s", name, "; ".join(f"{c['name']} {c['value']:.4f} {'ok' if c['passed'] else 'FAILED'}" for c in rc))
                if ok:
                    served, served_encoder, served_recipe = cand, path, described
                    checks += rc
                    metrics["served"] = cand_metrics
                    break
        passed = served is not None and all(c["passed"] for c in checks)
        failed = [f"{c['name']} = {c['value']:.6g} (threshold {c['threshold']}): {c['detail']}" for c in checks if not c["passed"]]
        if served is None:
            failed += [f"[{t['recipe']['name']}] {c['name']} = {c['value']:.6g} (threshold {c['threshold']}): {c['detail']}"
                       for t in tried for c in t["checks"] if not c["passed"]]
        else:
            metrics.setdefault("served", fp32_metrics)
            if served_encoder is not None:
                shutil.copy(served_encoder, work / TEXT_ENCODER)
            info = served.info
            if served.items is None:
                served.items = served.catalog_vectors()
            save_file({"vectors": np.ascontiguousarray(served.items, dtype=np.float32)}, str(work / ITEMS))
    loaded.catalog.to_parquet(work / CATALOG, index=False)
    shutil.copy(checkpoint / CKPT_CONFIG, work / CONFIG)
    knn = save_knn(p, catalog, cfg, work / KNN, text_vectors(served) if served is not None else None)
    manifest = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": library_versions(),
        "machine": cpu_description(),
        "source": {"checkpoint": str(checkpoint.resolve()), "dataset": p.dataset.name, "train_state": loaded.state.to_json()},
        "config": cfg.model_dump(mode="json"),
        "model": asdict(info),
        "quantization": {"requested": quantize, "cpu_target": target, "served": served_recipe if passed else None, "tried": tried},
        "gate": {"passed": passed, "thresholds": asdict(gate), "checks": checks, "failed": failed},
        "metrics": metrics,
        "knn": knn,
        "tokenizer": tokenizer_spec,
        "export_seconds": round(time.perf_counter() - started, 1),
    }
    manifest["files"] = {f.relative_to(work).as_posix(): sha256_file(f) for f in artifact_files(work)}
    content = hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()[:10]
    epoch = loaded.state.best_epoch or loaded.state.epoch
    manifest["model_version"] = f"onnx-{info.precision}:{checkpoint.name}@epoch{epoch}:{content}"
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if not passed:
        rejected = out.with_name(out.name + ".rejected")
        shutil.rmtree(rejected, ignore_errors=True)
        work.rename(rejected)
        raise GateFailed(f"the export gate failed; nothing was written to {out}:\n  " + "\n  ".join(failed)
                         + f"\nthe rejected artifact (refused by serving) is in {rejected} for inspection")
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    log.info("wrote %s (%s, gate passed) in %.0f s", out, info.precision, manifest["export_seconds"])
    return manifest


def save_knn(p, catalog, cfg, path: Path, text: np.ndarray | None = None) -> dict:
    """Fit item-kNN on every interaction of the dataset (what the served world knows; the store is seeded
    with the same) in the artifact's catalog order, items without interactions taking their text neighbour's
    similarities (``text``: the catalog's text vectors), and save it as CSR arrays; serving adds it to the
    model's scores with ``model.knn_weight`` (see ``lmrec.ranking.fusion.KnnFusion``)."""
    from safetensors.numpy import save_file

    from lmrec.baselines import ItemKNN

    inter = pd.concat([p.split.train, p.split.valid, p.split.test], ignore_index=True)
    knn = ItemKNN(catalog, cfg.model.knn_neighbours).fit(inter)
    if text is not None:
        knn = knn.with_text_transfer(text)
    sim = knn.sim
    save_file({"indptr": sim.indptr.astype(np.int64), "indices": sim.indices.astype(np.int64),
               "data": sim.data.astype(np.float32)}, str(path))
    return {"file": KNN, "neighbours": knn.neighbours, "recency": knn.recency, "weight": cfg.model.knn_weight,
            "interactions": len(inter), "nonzeros": int(sim.nnz)}

