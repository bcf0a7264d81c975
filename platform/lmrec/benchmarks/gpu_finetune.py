"""GPU against CPU: the Scientific LM model with every LM layer fine-tuned, a few epochs each way.

``python -m lmrec.benchmarks.gpu_finetune --out reports/gpu-finetune [--epochs 3] [--cpu-steps 3]``

On the GPU (``train.use_gpu: true``, bf16/fp16 autocast) the model trains ``--epochs`` full epochs with
``model.item_tower.finetune_layers=-1`` (every item runs all six MiniLM layers in every step: the exact
full softmax, ``train.lm_refresh_steps=0``); on the CPU the same config runs ``--cpu-steps`` steps of one
epoch (a full CPU epoch of it takes hours on two cores), and its epoch time is those steps' mean times the
steps of an epoch. Writes ``gpu_finetune.json`` and ``.md``: seconds per epoch (measured on GPU,
extrapolated on CPU) and valid NDCG@10 after each GPU epoch. Needs a CUDA device; refuses to run without.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CONFIG = "configs/scientific.yaml"
SETS = ["model.item_tower.finetune_layers=-1", "train.probe_first=false", "train.lm_refresh_steps=0",
        "train.early_stopping_patience=0"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lmrec.benchmarks.gpu_finetune", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="reports/gpu-finetune")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--cpu-steps", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    import torch

    from lmrec.config import load_config
    from lmrec.data.examples import SequenceWindows, prepare_data
    from lmrec.errors import LmrecError
    from lmrec.training import fit

    if not torch.cuda.is_available():
        raise LmrecError("no CUDA device: this comparison needs a GPU (run it where `nvidia-smi` lists one)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu_cfg = load_config([CONFIG], [*SETS, "train.use_gpu=true", f"train.epochs={args.epochs}",
                                     f"output_dir={out / 'gpu'}", *args.overrides])
    data = prepare_data(gpu_cfg)
    report: dict = {"config": CONFIG, "overrides": SETS + args.overrides, "device": torch.cuda.get_device_name(0)}
    started = time.perf_counter()
    gpu = fit(gpu_cfg, local=True, data=data)
    report["gpu"] = {
        "wall_seconds": round(time.perf_counter() - started, 1),
        "epochs": [{"epoch": h["epoch"], "train_seconds": h["train_seconds"], "valid_ndcg@10": h["valid_ndcg@10"]}
                   for h in gpu["history"]],
    }
    steps = len(SequenceWindows(data.sequences, gpu_cfg.model.user_tower.max_history)) // gpu_cfg.train.batch_size + 1
    cpu_cfg = load_config([CONFIG], [*SETS, "train.use_gpu=false", "train.epochs=1", f"train.max_steps_per_epoch={args.cpu_steps}",
                                     f"output_dir={out / 'cpu'}", *args.overrides])
    cpu = fit(cpu_cfg, local=True, data=data)
    h = cpu["history"][-1]
    report["cpu"] = {"steps_timed": args.cpu_steps, "steps_per_epoch": steps,
                     "epoch_seconds_extrapolated": round(h["train_seconds"] / args.cpu_steps * steps, 1)}
    gpu_epoch = sum(e["train_seconds"] for e in report["gpu"]["epochs"]) / len(report["gpu"]["epochs"])
    report["speedup"] = round(report["cpu"]["epoch_seconds_extrapolated"] / max(gpu_epoch, 1e-9), 1)
    (out / "gpu_finetune.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Every LM layer fine-tuned on Scientific: {report['device']} against the CPU", "",
             "| epoch | GPU train seconds | valid NDCG@10 |", "|---|---|---|"]
    lines += [f"| {e['epoch']} | {e['train_seconds']} | {e['valid_ndcg@10']:.4f} |" for e in report["gpu"]["epochs"]]
    lines += ["", f"CPU: {report['cpu']['epoch_seconds_extrapolated']} s per epoch ({args.cpu_steps} steps timed of {steps}); "
                  f"GPU {report['speedup']}x faster."]
    (out / "gpu_finetune.md").write_text("\n".join(lines) + "\n")
    print((out / "gpu_finetune.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
