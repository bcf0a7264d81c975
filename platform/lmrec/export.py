"""Export a checkpoint as a served artifact: ONNX graphs, int8 quantization, a parity gate, a manifest.

An artifact directory holds:

- ``text_encoder.onnx`` — tokens ``(B, T)`` -> ``item_vector`` ``(B, D)`` (and ``user_vector`` for the text
  user tower, which shares the LM): the LM exported by Optimum (feature-extraction), with mean pooling and
  the projection(s) appended to the graph. Absent for an ID item tower. Used for new items, zero-shot.
- ``user_tower.onnx`` — GRU / transformer user tower: ``item_vectors`` ``(B, L, D)``, ``events`` ``(B, L)``
  and ``mask`` ``(B, L)`` (1 = event, 0 = left padding) -> ``user_vector`` ``(B, D)``. Exported with
  ``torch.onnx`` (Optimum has no architecture for it), dynamic batch and history axes.
- ``items.safetensors`` — the catalog's item matrix ``(N, D)`` as this artifact's own encoder computes it;
  ``id_vectors.safetensors`` — hybrid towers: the ID part ``(N, D)``, added outside ONNX (zero for items
  unseen in training, so a new item is its text vector alone).
- ``catalog.parquet``, ``config.yaml`` (the training config), ``tokenizer/``, and ``manifest.json``:
  library versions, the quantization recipe, gate results, metrics and the sha256 of every file.

The gate (run by :func:`export_checkpoint`, recorded in the manifest): the fp32 ONNX graphs match PyTorch
on real inputs (max abs difference); a reduced-precision artifact ranks the valid split like the fp32 one
(relative NDCG@10 loss, mean top-10 overlap). A failing artifact goes to ``<out>.rejected`` for inspection
and never to ``<out>``; :func:`load_artifact` refuses anything ungated or whose files changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import platform
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lmrec.errors import LmrecError

log = logging.getLogger("lmrec.export")

FORMAT = "lmrec-artifact/1"
MANIFEST = "manifest.json"
TEXT_ENCODER = "text_encoder.onnx"
USER_TOWER = "user_tower.onnx"
ITEMS = "items.safetensors"
ID_VECTORS = "id_vectors.safetensors"
KNN = "knn.safetensors"  # item-kNN similarity (CSR) for ranking-time fusion (model.knn_weight)
CATALOG = "catalog.parquet"
CONFIG = "config.yaml"
TOKENIZER_DIR = "tokenizer"
PRECISIONS = ("int8", "fp16", "none")
CPU_TARGETS = ("avx512_vnni", "avx512", "avx2", "arm64")
ENCODE_BATCH = 32  # texts per text-encoder call (fp32, fp16, static int8), sorted by length
CALIBRATION_SAMPLES = 256  # training-set texts for outlier statistics / static ranges
USER_BATCH = 256


class GateFailed(LmrecError):
    """The exported artifact failed its parity gate; nothing was written where serving loads from."""


# ---------------------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class Int8Recipe:
    """How the text encoder is quantized by Optimum's ``ORTQuantizer``.

    Only the LM's weight MatMuls are quantized: attention's activation x activation MatMuls, the embedding
    Gathers and the appended pooling/projection stay fp32 (they cost little time and much accuracy).
    """

    name: str
    per_channel: bool = True  # one weight scale per output column: pooled-vector cosine 0.947 -> 0.993
    smooth: bool = False  # shrink outlier activation channels first (see smooth_outliers): 0.993 -> 0.997
    fp32_down_proj: bool = False  # keep FFN output MatMuls (intermediate -> hidden) in fp32: the most sensitive
    static: bool = False  # activation ranges from calibration data instead of per call
    calibration_method: str = "minmax"  # static only: minmax | percentile | entropy
    percentile: float = 99.999

    def describe(self) -> dict:
        return asdict(self)


RECIPES: dict[str, Int8Recipe] = {
    r.name: r
    for r in (
        Int8Recipe("dynamic-per-tensor", per_channel=False),  # the naive baseline, kept for comparison
        Int8Recipe("dynamic-per-channel"),
        Int8Recipe("dynamic-per-channel-ffn-fp32", fp32_down_proj=True),
        Int8Recipe("smooth-dynamic-per-channel", smooth=True),
        Int8Recipe("smooth-dynamic-per-channel-ffn-fp32", smooth=True, fp32_down_proj=True),
        Int8Recipe("static-per-channel", static=True),
        Int8Recipe("static-per-channel-percentile", static=True, calibration_method="percentile"),
    )
}
# tried in order, fastest first; the first that passes the gate is served. Measured on a MiniLM text
# model (ml-100k valid split, top-10 overlap with fp32): per-tensor 0.65, per-channel 0.81, per-channel
# with fp32 FFN outputs 0.86, static per-channel 0.49 (min-max) / 0.50 (percentile).
LADDER = ("smooth-dynamic-per-channel", "smooth-dynamic-per-channel-ffn-fp32")
LADDER_UNCALIBRATED = ("dynamic-per-channel", "dynamic-per-channel-ffn-fp32")
SMOOTH_THRESHOLD = 3.0  # a channel is an outlier when its max |activation| exceeds 3x the median channel's
SMOOTH_ALPHA = 1.0  # and is scaled down all the way to that threshold (0.5-1.0 measured alike)


@dataclass
class GateConfig:
    parity_atol: float = 1e-4  # fp32 ONNX vs PyTorch, max abs difference of output vectors
    max_ndcg_loss: float = 0.01  # reduced precision vs fp32: relative NDCG@10 loss on the valid split
    min_top10_overlap: float = 0.9  # mean |top10(fp32) & top10(reduced)| / 10 over valid queries
    parity_samples: int = 256  # real item texts / histories compared with PyTorch


# -------------------------------------------------------------------------------------- utilities
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p != root / MANIFEST)


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_target() -> str:
    """The int8 kernel family of this CPU: avx512_vnni, avx512, avx2 or arm64."""
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    flags = cpu_flags()
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags and "avx512bw" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    raise LmrecError(f"cannot tell the int8 instruction set of this {machine} CPU; pass --cpu one of {', '.join(CPU_TARGETS)}")


def cpu_description() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    flags = cpu_flags()
    return {
        "model": model or platform.processor(),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "int8_flags": sorted(f for f in flags if f.startswith(("avx512", "avx2", "avx_vnni", "amx"))),
    }


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("lmrec", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "numpy", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


@contextlib.contextmanager
def _quiet(*names: str):
    """Silence chatty third-party loggers (``""`` = the root logger, which ONNX Runtime's quantizer uses)."""
    loggers = [logging.getLogger(n) if n else logging.getLogger() for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def ort_session(model: str | Path | bytes, threads: int | None = None, providers: list[str] | None = None):
    """An ONNX Runtime session; ``threads`` = intra-op threads (set it to the replica's CPUs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=providers or ["CPUExecutionProvider"])


# ------------------------------------------------------------------------------- graph building
def _export_lm(lm, out_dir: Path) -> Path:
    """The bare LM through Optimum's ONNX exporter (feature-extraction: tokens -> last_hidden_state)."""
    from optimum.exporters.onnx import onnx_export_from_model

    with _quiet("optimum", "transformers"):
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
    with _quiet("torch.onnx", "onnxscript", "onnx_ir"):
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


# -------------------------------------------------------------------------------- quantization
def _quant_config(recipe: Int8Recipe, target: str, nodes_to_exclude: list[str]):
    from optimum.onnxruntime import AutoQuantizationConfig

    kw = {"is_static": recipe.static, "per_channel": recipe.per_channel, "operators_to_quantize": ["MatMul"], "nodes_to_exclude": nodes_to_exclude}
    if target == "avx512_vnni":
        return AutoQuantizationConfig.avx512_vnni(**kw)
    if target == "avx512":  # no VNNI: u8 x s8 products can saturate in 16 bits, so 7-bit weights
        return AutoQuantizationConfig.avx512(reduce_range=True, **kw)
    if target == "avx2":
        return AutoQuantizationConfig.avx2(reduce_range=True, **kw)
    if target == "arm64":
        return AutoQuantizationConfig.arm64(**kw)
    raise LmrecError(f"--cpu {target!r}: choose one of {', '.join(CPU_TARGETS)}")


def excluded_nodes(path: Path, recipe: Int8Recipe) -> list[str]:
    """Nodes left in fp32: our pooling/projection, activation x activation MatMuls (attention), and with
    ``fp32_down_proj`` the FFN output MatMuls (weights of shape (intermediate, hidden), K > N)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        shape = weights.get(node.input[1])
        if node.name.startswith("lmrec/") or shape is None:
            out.append(node.name)
        elif recipe.fp32_down_proj and len(shape) == 2 and shape[0] > shape[1]:
            out.append(node.name)
    return out


def smooth_outliers(src: Path, dst: Path, samples: list[dict], skip: set[str],
                    threshold: float = SMOOTH_THRESHOLD, alpha: float = SMOOTH_ALPHA) -> dict:
    """An equivalent fp32 graph whose quantized MatMuls see no outlier activation channels.

    MiniLM's residual stream carries a few channels 10-30x larger than the rest (channel 99 after every
    attention LayerNorm, one GELU unit per FFN); with one activation scale per tensor they waste the int8
    range of everything else. For each input ``X`` of the MatMuls to be quantized, channels whose max
    ``|X|`` over the calibration tokens exceeds ``threshold`` x the median channel's are divided by
    ``s = (max / (threshold * median)) ** alpha`` (one Mul node) and the matching weight rows multiplied
    by ``s``: ``X W = (X / s)(s W)`` exactly in fp32. Returns what was scaled.
    """
    from collections import Counter

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    uses = Counter(name for n in g.node for name in n.input)
    groups: dict[str, list] = {}
    for n in g.node:  # weight MatMuls to be quantized whose weight nothing else reads
        if n.op_type == "MatMul" and n.name not in skip and n.input[1] in inits and uses[n.input[1]] == 1:
            groups.setdefault(n.input[0], []).append(n)
    probe = onnx.load(str(src))
    for x in groups:
        probe.graph.output.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, None))
    session = ort_session(probe.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    cmax: dict[str, np.ndarray] = {}
    for b in range(0, len(samples), 16):
        feed = {k: np.stack([x[k] for x in samples[b : b + 16]]) for k in ("input_ids", "attention_mask")}
        keep = feed["attention_mask"].astype(bool)  # real tokens only
        for name, value in zip(names, session.run(None, feed)):
            if name in groups and value.ndim == 3:
                cmax[name] = np.maximum(cmax.get(name, 0.0), np.abs(value[keep]).max(0))
    inserted, scaled, worst = {}, 0, 1.0
    for x, nodes in groups.items():
        if x not in cmax:
            continue
        limit = threshold * float(np.median(cmax[x]))
        scale = np.where(cmax[x] > limit, (cmax[x] / max(limit, 1e-12)) ** alpha, 1.0).astype(np.float32)
        if (scale == 1.0).all():
            continue
        scaled += int((scale > 1.0).sum())
        worst = max(worst, float(cmax[x].max() / max(limit / threshold, 1e-12)))
        inv = f"lmrec/smooth/{x}/inverse_scale"
        g.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inv))
        inserted[x] = helper.make_node("Mul", [x, inv], [f"lmrec/smooth/{x}"], name=f"lmrec/smooth/{x}/Mul")
        for n in nodes:
            w = numpy_helper.to_array(inits[n.input[1]])
            inits[n.input[1]].CopyFrom(numpy_helper.from_array((w * scale[:, None]).astype(np.float32), n.input[1]))
            n.input[0] = f"lmrec/smooth/{x}"
    ordered, placed = [], set()
    for n in g.node:  # each Mul goes right before the first MatMul that reads it
        for x in n.input:
            if x.startswith("lmrec/smooth/") and x not in placed:
                ordered.append(inserted[x[len("lmrec/smooth/") :]])
                placed.add(x)
        ordered.append(n)
    del g.node[:]
    g.node.extend(ordered)
    onnx.save(model, str(dst))
    return {"threshold": threshold, "alpha": alpha, "tensors": len(inserted), "channels_scaled": scaled,
            "largest_outlier_vs_median": round(worst, 1), "calibration_samples": len(samples)}


def quantize_int8(fp32_path: Path, out_path: Path, recipe: Int8Recipe, target: str, calibration: list[dict] | None,
                  scratch: Path, lm_config=None) -> dict:
    """Quantize the text encoder with Optimum's ``ORTQuantizer`` (after outlier smoothing when the recipe
    asks); ``calibration``: training-set encoder inputs. Returns the recipe as recorded."""
    from optimum.onnxruntime import ORTQuantizer

    if (recipe.static or recipe.smooth) and not calibration:
        raise LmrecError(f"int8 recipe {recipe.name!r} needs calibration data: give --calibration N (training-set samples)")
    work = scratch / f"quant-{recipe.name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    exclude = excluded_nodes(fp32_path, recipe)
    smoothing = None
    if recipe.smooth:
        smoothing = smooth_outliers(fp32_path, work / "model.onnx", calibration, set(exclude))
    else:
        shutil.copy(fp32_path, work / "model.onnx")
    qconfig = _quant_config(recipe, target, exclude)
    quantizer = ORTQuantizer(work / "model.onnx", config=lm_config)
    ranges = None
    with _quiet("", "optimum"):
        if recipe.static:
            ranges = quantizer.fit(
                calibration,
                _calibration_config(recipe, len(calibration)),
                onnx_augmented_model_name=str(work / "augmented.onnx"),
                operators_to_quantize=qconfig.operators_to_quantize,
            )
        quantizer.quantize(qconfig, work / "out", file_suffix="int8", calibration_tensors_range=ranges)
    shutil.copy(work / "out" / "model_int8.onnx", out_path)
    shutil.rmtree(work, ignore_errors=True)
    return {
        **recipe.describe(),
        "cpu_target": target,
        "smoothing": smoothing,
        "optimum_config": {
            "format": str(qconfig.format.name),
            "mode": str(qconfig.mode.name),
            "weights_dtype": str(qconfig.weights_dtype.name),
            "activations_dtype": str(qconfig.activations_dtype.name),
            "weights_symmetric": qconfig.weights_symmetric,
            "activations_symmetric": qconfig.activations_symmetric,
            "per_channel": qconfig.per_channel,
            "reduce_range": qconfig.reduce_range,
            "operators_to_quantize": list(qconfig.operators_to_quantize),
            "nodes_to_exclude": exclude,
        },
        "calibration_samples": len(calibration or []) if (recipe.static or recipe.smooth) else 0,
        # dynamic scales are computed per call: one text per call keeps a vector independent of batch-mates
        "encode_batch": ENCODE_BATCH if recipe.static else 1,
    }


def _calibration_config(recipe: Int8Recipe, n: int):
    from onnxruntime.quantization import CalibrationMethod
    from optimum.onnxruntime.configuration import CalibrationConfig

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}
    extra = {"percentile": recipe.percentile, "num_bins": 2048} if recipe.calibration_method == "percentile" else {}
    if recipe.calibration_method == "entropy":
        extra = {"num_bins": 128, "num_quantized_bins": 128}
    return CalibrationConfig(
        dataset_name="lmrec-train-split",
        dataset_config_name="item-and-history-text",
        dataset_split="train",
        dataset_num_samples=n,
        method=method[recipe.calibration_method],
        **extra,
    )


def convert_fp16(fp32_path: Path, out_path: Path) -> dict:
    """fp16 weights and compute (for GPUs); inputs, outputs and our pooling/projection stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    blocked = [n.name for n in model.graph.node if n.name.startswith("lmrec/")]
    onnx.save(convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked), str(out_path))
    return {"name": "fp16", "kept_fp32": blocked}


# ------------------------------------------------------------------------------------- inference
@dataclass
class ModelInfo:
    """What serving needs to know about the towers (the manifest's ``model`` section)."""

    item_tower: str
    user_tower: str
    dim: int
    normalize: bool
    temperature: float
    max_text_length: int
    max_history: int
    user_max_text_length: int
    history_separator: str
    precision: str = "fp32"
    encode_batch: int = ENCODE_BATCH  # texts per text-encoder call (1 for dynamic int8: see quantize_int8)

    @classmethod
    def from_config(cls, mc) -> ModelInfo:
        from lmrec.models.recommender import HISTORY_SEPARATOR

        it, ut = mc.item_tower, mc.user_tower
        return cls(it.kind, ut.kind, it.dim, mc.loss.normalize, mc.loss.temperature, it.max_text_length, ut.max_history,
                   ut.max_text_length, HISTORY_SEPARATOR)


class FastTokenizer:
    """The artifact's tokenizer through the ``tokenizers`` library alone (its ``tokenizer.json``): what
    transformers' fast tokenizer runs underneath, without importing transformers (~6 s and a few hundred
    MB per serving process here). Export uses it only after checking that it gives exactly the ids and
    masks transformers gives on the catalog (``manifest["tokenizer"]``); otherwise serving loads
    transformers as before."""

    def __init__(self, directory: str | Path, spec: dict):
        from tokenizers import Tokenizer

        self.spec = spec
        self._tok = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
        self._tok.enable_padding(direction=spec["padding_side"], pad_id=spec["pad_id"], pad_type_id=spec["pad_type_id"],
                                 pad_token=spec["pad_token"])
        self._length: int | None = None

    @staticmethod
    def spec_of(tokenizer) -> dict | None:
        """What :class:`FastTokenizer` needs of a transformers tokenizer (None: not a fast one, or no pad token)."""
        if not getattr(tokenizer, "is_fast", False) or tokenizer.pad_token is None:
            return None
        return {"engine": "tokenizers", "pad_id": int(tokenizer.pad_token_id), "pad_token": str(tokenizer.pad_token),
                "pad_type_id": int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
                "padding_side": tokenizer.padding_side, "truncation_side": tokenizer.truncation_side}

    def __call__(self, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
        """(B, T) int64 ``input_ids`` and ``attention_mask``: padded to the longest, truncated at ``max_length``."""
        if self._length != max_length:
            self._tok.enable_truncation(max_length, direction=self.spec["truncation_side"])
            self._length = max_length
        enc = self._tok.encode_batch([t if t else " " for t in texts])
        return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}


def token_arrays(tokenizer, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """``lmrec.models.lm.tokenize`` as numpy arrays, for a transformers tokenizer or a :class:`FastTokenizer`."""
    if isinstance(tokenizer, FastTokenizer):
        return tokenizer(texts, max_length)
    from lmrec.models.lm import tokenize

    return {k: v.numpy() for k, v in tokenize(tokenizer, texts, max_length).items()}


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


class Engine:
    """ONNX Runtime sessions of one artifact: item vectors from text, user vectors from histories, scores.
    The text encoder (and its tokenizer) may be given as ``text_loader``, called on first use: stages that
    never encode text (retrieval, user state) do not pay for loading the LM.

    Histories are catalog indices, oldest first, with their event codes (as in :class:`Queries`).
    """

    def __init__(self, info: ModelInfo, texts: list[str], text_encoder=None, user_tower=None, tokenizer=None,
                 id_vectors: np.ndarray | None = None, items: np.ndarray | None = None, text_loader=None):
        self.info = info
        self.texts = texts
        self._text_encoder, self._tokenizer, self._text_loader = text_encoder, tokenizer, text_loader
        self._text_lock = threading.Lock()
        self.user_tower = user_tower
        self.id_vectors = id_vectors
        self.items = items  # (N, D) catalog matrix; computed by catalog_vectors() when None

    @property
    def has_text(self) -> bool:
        """Whether there is a text encoder (loaded or not yet)."""
        return self._text_encoder is not None or self._text_loader is not None

    @property
    def text_encoder(self):
        self._load_text()
        return self._text_encoder

    @property
    def tokenizer(self):
        self._load_text()
        return self._tokenizer

    def _load_text(self) -> None:
        if self._text_loader is None:
            return
        with self._text_lock:
            if self._text_loader is not None:
                started = time.perf_counter()
                self._text_encoder, self._tokenizer = self._text_loader()
                self._text_loader = None
                log.info("loaded the text encoder in %.1f s (%s tokenizer)", time.perf_counter() - started,
                         "tokenizers" if isinstance(self._tokenizer, FastTokenizer) else "transformers")

    def encode(self, texts: list[str], output: str = "item_vector", max_length: int | None = None) -> np.ndarray:
        """Text -> (K, D) vectors through the text encoder (the text part only for hybrid items), in calls
        of ``info.encode_batch`` texts of similar length."""
        if not self.has_text:
            raise LmrecError("this artifact has no text encoder (an ID item tower): it cannot encode new items")
        max_length = max_length or self.info.max_text_length
        batch_size = self.info.encode_batch
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.info.dim), dtype=np.float32)
        encoder, tokenizer = self.text_encoder, self.tokenizer
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            out[idx] = encoder.run([output], token_arrays(tokenizer, [texts[i] for i in idx], max_length))[0]
        return out

    def catalog_vectors(self) -> np.ndarray:
        """(N, D) item matrix: text vectors (+ ID vectors for hybrid), or the ID table."""
        if self.info.item_tower == "id":
            return self.id_vectors
        vecs = self.encode(self.texts)
        return vecs + self.id_vectors if self.id_vectors is not None else vecs

    def user_vectors(self, histories: list[np.ndarray], events: list[np.ndarray]) -> np.ndarray:
        """(B, D): the user state after the whole history."""
        from lmrec.data.encode import pad_left
        from lmrec.models.recommender import history_text

        if self.items is None:
            self.items = self.catalog_vectors()
        info = self.info
        if info.user_tower == "text":
            texts = [history_text(h, self.texts, info.max_history) for h in histories]
            return self.encode(texts, "user_vector", info.user_max_text_length)
        out = []
        for s in range(0, len(histories), USER_BATCH):
            items = pad_left([h + 1 for h in histories[s : s + USER_BATCH]], info.max_history)
            ev = pad_left(events[s : s + USER_BATCH], info.max_history)
            mask = (items > 0).astype(np.int64)
            vecs = self.items[np.maximum(items - 1, 0)].astype(np.float32)
            out.append(self.user_tower.run(["user_vector"], {"item_vectors": vecs, "events": ev, "mask": mask})[0])
        return np.concatenate(out) if out else np.zeros((0, info.dim), np.float32)

    def scores(self, users: np.ndarray) -> np.ndarray:
        """(B, D) user vectors -> (B, N) scores against the catalog (cosine / temperature when normalised)."""
        if self.items is None:
            self.items = self.catalog_vectors()
        u, e = users, self.items
        if self.info.normalize:
            u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
            e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return (u @ e.T) / self.info.temperature


# ---------------------------------------------------------------------------------------- the gate
def _check(name: str, value: float, threshold: float, ok: bool, detail: str) -> dict:
    return {"name": name, "value": float(value), "threshold": threshold, "passed": bool(ok), "detail": detail}


def parity_checks(model, engine: Engine, texts: list[str], queries, gate: GateConfig) -> list[dict]:
    """fp32 ONNX vs PyTorch on real inputs: item texts of the catalog and valid-split histories."""
    import torch

    from lmrec.data.encode import pad_left
    from lmrec.models.lm import lm_forward, tokenize
    from lmrec.models.recommender import history_text

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
        return engine.scores(users[[row[u] for u in batch.user_ids]])

    rep = evaluate(score_fn, queries, n_items, ks, cfg.eval.exclude_seen, batch_size=cfg.eval.batch_size)
    return rep["metrics"], users


def top10_overlap(ref: Engine, ref_users: np.ndarray, other: Engine, other_users: np.ndarray, queries, exclude_seen: bool) -> float:
    total = 0.0
    for s in range(0, len(queries), 512):
        ex = queries.histories[s : s + 512] if exclude_seen else None
        a = _top(ref.scores(ref_users[s : s + 512]), 10, ex)
        b = _top(other.scores(other_users[s : s + 512]), 10, ex)
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
    from lmrec.models.recommender import history_text

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
    info = ModelInfo.from_config(cfg.model)
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
    manifest["files"] = {f.relative_to(work).as_posix(): sha256_file(f) for f in _files(work)}
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


def text_part(items: np.ndarray, id_vectors: np.ndarray | None) -> np.ndarray:
    """Item vectors without a hybrid tower's learned ID parts: what the text tower says of each item."""
    return items - id_vectors if id_vectors is not None else items


def text_vectors(engine: Engine) -> np.ndarray | None:
    """The catalog's text-tower vectors (see :func:`text_part`); None without a text tower."""
    if engine.info.item_tower == "id":
        return None
    return text_part(engine.items if engine.items is not None else engine.catalog_vectors(), engine.id_vectors)


def save_knn(p, catalog, cfg, path: Path, text: np.ndarray | None = None) -> dict:
    """Fit item-kNN on every interaction of the dataset (what the served world knows; the store is seeded
    with the same) in the artifact's catalog order, items without interactions taking their text neighbour's
    similarities (``text``: the catalog's text vectors), and save it as CSR arrays; serving adds it to the
    model's scores with ``model.knn_weight`` (see ``lmrec.serving.retrieval.KnnFusion``)."""
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


def load_knn(blob: bytes, n_items: int, recency: float, neighbours: int):
    """The artifact's item-kNN (:class:`lmrec.baselines.ItemKNN` over catalog positions; ``neighbours``
    per item when it is refitted)."""
    import scipy.sparse as sp
    from safetensors.numpy import load as load_st

    from lmrec.baselines import ItemKNN

    a = load_st(blob)
    sim = sp.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=(n_items, n_items))
    knn = ItemKNN.from_similarity(sim, recency)
    knn.neighbours = neighbours  # from_similarity counts the stored ones, text transfers included
    return knn


# ------------------------------------------------------------------------------------------ loading
@dataclass
class Artifact:
    """A verified, gated artifact: ONNX Runtime sessions, the item matrix, the catalog."""

    path: Path
    manifest: dict
    engine: Engine
    catalog: pd.DataFrame = field(repr=False)
    knn: object | None = field(default=None, repr=False)  # ItemKNN over catalog positions (older artifacts: None)

    @property
    def items(self) -> np.ndarray:
        return self.engine.items

    @property
    def text_encoder(self):
        return self.engine.text_encoder

    @property
    def user_tower(self):
        return self.engine.user_tower


def verify_artifact(path: str | Path) -> tuple[dict, dict[str, bytes]]:
    """Check the manifest, the gate flag and the sha256 of every file; returns the manifest and the
    verified bytes of the files read directly (ONNX, safetensors, parquet)."""
    path = Path(path)
    f = path / MANIFEST
    if not f.is_file():
        raise LmrecError(f"{path} is not an lmrec artifact: {MANIFEST} is missing (create one with `lmrec export`)")
    try:
        manifest = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise LmrecError(f"{f}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise LmrecError(f"{path}: unsupported artifact format {manifest.get('format')!r} (expected {FORMAT})")
    if not manifest.get("gate", {}).get("passed"):
        why = "; ".join(manifest.get("gate", {}).get("failed", [])) or "no gate result"
        raise LmrecError(f"{path}: refusing an artifact that did not pass its parity gate ({why})")
    listed = manifest.get("files") or {}
    present = {p.relative_to(path).as_posix() for p in _files(path)}
    if present - set(listed):
        raise LmrecError(f"{path}: files not in the manifest: {sorted(present - set(listed))[:3]}")
    blobs = {}
    for rel, digest in listed.items():
        fp = path / rel
        if not fp.is_file():
            raise LmrecError(f"{path}: {rel} is listed in the manifest but missing")
        data = fp.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise LmrecError(f"{path}: checksum mismatch for {rel}: the file was modified after export; re-export the checkpoint")
        if rel.endswith((".onnx", ".safetensors", ".parquet")):
            blobs[rel] = data
    return manifest, blobs


def load_artifact(path: str | Path, threads: int | None = None, providers: list[str] | None = None) -> Artifact:
    """Verify and open an exported artifact (sha256 of every file, the gate flag); ``threads`` sets ONNX
    Runtime's intra-op threads (the replica's CPUs)."""
    from safetensors.numpy import load as load_st

    path = Path(path)
    manifest, blobs = verify_artifact(path)
    info = ModelInfo(**manifest["model"])
    catalog = pd.read_parquet(io.BytesIO(blobs[CATALOG]))
    if providers is None and info.precision == "fp16":
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]

    encoder = blobs.get(TEXT_ENCODER)  # verified bytes, kept (not the other blobs) until first use

    def text_loader():  # on first use: the ONNX session and the tokenizer export checked
        spec = manifest.get("tokenizer") or {}
        if spec.get("engine") == "tokenizers":
            tokenizer = FastTokenizer(path / TOKENIZER_DIR, spec)
        else:  # an artifact from before the check, or a tokenizer it refused
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path / TOKENIZER_DIR))
        return ort_session(encoder, threads, providers), tokenizer

    engine = Engine(
        info,
        catalog["text"].tolist(),
        user_tower=ort_session(blobs[USER_TOWER], threads) if USER_TOWER in blobs else None,
        id_vectors=load_st(blobs[ID_VECTORS])["vectors"] if ID_VECTORS in blobs else None,
        items=load_st(blobs[ITEMS])["vectors"],
        text_loader=text_loader if encoder is not None else None,
    )
    spec = manifest.get("knn") or {}
    knn = load_knn(blobs[KNN], len(catalog), spec["recency"], spec["neighbours"]) if KNN in blobs else None
    return Artifact(path, manifest, engine, catalog, knn)


def serving_model_from_artifact(path: str | Path, threads: int = 1):
    """The serving stages' view of a verified artifact (:class:`lmrec.serving.scorer.ServingModel`)."""
    from lmrec.serving.scorer import ServingModel

    art = load_artifact(path, threads=threads)
    eng, info, catalog = art.engine, art.engine.info, art.catalog

    def user_fn(vecs, events, pad):
        mask = (~np.asarray(pad, dtype=bool)).astype(np.int64)
        feed = {"item_vectors": np.asarray(vecs, np.float32), "events": np.asarray(events, np.int64), "mask": mask}
        return eng.user_tower.run(["user_vector"], feed)[0]

    return ServingModel(
        model_version=art.manifest["model_version"],
        item_ids=catalog["item_id"].astype(str).tolist(),
        item_texts=catalog["text"].astype(str).tolist(),
        item_vectors=art.items,
        normalize=info.normalize,
        max_history=info.max_history,
        user_tower_kind=info.user_tower,
        backend="onnx",
        item_counts=catalog["count"].to_numpy() if "count" in catalog else None,
        temperature=info.temperature,
        knn=art.knn,
        item_id_vectors=eng.id_vectors,
        knn_interactions=(art.manifest.get("knn") or {}).get("interactions", 0),
        knn_weight=art.manifest.get("config", {}).get("model", {}).get("knn_weight", 0.0),
        _user_fn=user_fn if eng.user_tower is not None else None,
        _text_user_fn=(lambda texts: eng.encode(texts, "user_vector", info.user_max_text_length)) if info.user_tower == "text" else None,
        _item_fn=eng.encode if eng.has_text else None,
    )
