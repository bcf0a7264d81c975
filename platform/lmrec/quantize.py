"""int8 (and fp16) for the text encoder: Optimum's ONNX Runtime quantizer with the recipes the export gate
tries in turn (a recipe is accepted only when the gated artifact ranks like fp32), outlier smoothing from
calibration activations, and the CPU's int8 instruction set."""

from __future__ import annotations

import contextlib
import logging
import platform
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lmrec.artifact import ENCODE_BATCH, ort_session
from lmrec.errors import LmrecError

log = logging.getLogger("lmrec.export")

CPU_TARGETS = ("avx512_vnni", "avx512", "avx2", "arm64")


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


@contextlib.contextmanager
def quiet(*names: str):
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
    with quiet("", "optimum"):
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
