"""Training at scale: where an epoch's time goes, before and after the fixes, on the largest real dataset and
on a synthetic catalog of 50k users / 20k items. Writes ``train_scale.json``, ``.md`` and ``.png``.

``python -m lmrec.benchmarks.train_scale --out reports/train-scale [--cases beauty,synthetic-50k] [--epochs 1]``

Each (case, setting) trains for ``--epochs`` epochs in its own process (``lmrec train --local``'s loop), so
its peak RSS is its own, and reports the loop's per-epoch phase timings: waiting for batches, forward,
backward + optimizer step, LM refreshes, validation, checkpoint. The settings:

- ``before``: every batch padded to the longest history allowed (50), every valid user scored each epoch;
- ``after``: batches of windows of similar length cut to their longest (``train.bucket_by_length``), a fixed
  sample of 5,000 valid users per epoch (``train.valid_users``) with every user scored once at the end;
- ``after+sampled`` (on request): ``after`` with in-batch + 1,024 sampled negatives instead of the full softmax.

Cases: ``beauty`` is Amazon Beauty (22,363 users, 12,101 items, 198,502 interactions; no item text, so the
ID-SASRec of ``configs/scientific-sasrec.yaml``); ``synthetic-50k`` is the embedded synthetic catalog
scaled to 50,000 users, 20,000 items and ~8 events per user (~400k interactions) with the LM model of
``configs/scientific.yaml`` (frozen LM for the scale runs: the text is synthetic). Timings measured on a
shared machine are noisy: compare settings by the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CASES: dict[str, tuple[str, list[str]]] = {
    "beauty": ("configs/scientific-sasrec.yaml", ["data.dataset=beauty"]),
    "synthetic-50k": ("configs/scientific.yaml", [
        "data.dataset=demo", "data.synthetic.n_users=50000", "data.synthetic.n_items=20000",
        "data.synthetic.events_per_user=8", "data.synthetic.n_topics=16", "model.item_tower.finetune_layers=0",
        "train.probe_first=false", "model.knn_weight=0",
    ]),
}
SETTINGS: dict[str, list[str]] = {
    "before": ["train.bucket_by_length=false", "train.valid_users=null"],
    "after": ["train.bucket_by_length=true", "train.valid_users=5000"],
    # not run by default: in-batch + 1,024 sampled negatives (logQ-corrected) instead of the full softmax,
    # whose logits and item projections grow with the catalog
    "after+sampled": ["train.bucket_by_length=true", "train.valid_users=5000", "model.loss.kind=sampled_softmax",
                      "model.loss.num_negatives=1024"],
}
DEFAULT_SETTINGS = ("before", "after")


def run_one(case: str, setting: str, epochs: int, out: Path, overrides: list[str] = ()) -> dict:
    """Train one (case, setting) in this process; the loop's records plus data preparation time."""
    import resource

    from lmrec.config import load_config
    from lmrec.data.examples import prepare_data
    from lmrec.training import fit

    config, sets = CASES[case]
    cfg = load_config([config], [*sets, *SETTINGS[setting], f"train.epochs={epochs}", "train.early_stopping_patience=0",
                                 f"output_dir={out / 'runs' / case / setting}", *overrides])
    started = time.perf_counter()
    data = prepare_data(cfg)
    prepared = time.perf_counter() - started
    summary = fit(cfg, local=True, data=data)
    epochs_ = [h for h in summary["history"] if "train_seconds" in h]
    return {
        "case": case, "setting": setting, "config": config, "overrides": [*sets, *SETTINGS[setting], *overrides],
        "users": len(data.sequences), "items": data.n_items,
        "interactions": int(sum(len(s[0]) for s in data.sequences)), "valid_users": len(data.valid),
        "prepare_seconds": round(prepared, 1),
        "epochs": [{"train_seconds": h["train_seconds"], **h["seconds"], "valid_ndcg@10": h["valid_ndcg@10"],
                    "valid_users_scored": h["valid_users"]} for h in epochs_],
        "valid_all_users_ndcg@10": summary.get("valid_all_users", {}).get("ndcg@10", epochs_[-1]["valid_ndcg@10"]),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run(out: Path, cases: list[str], settings: list[str], epochs: int, overrides: list[str] = ()) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "epochs": epochs, "machine": _machine(), "runs": []}
    for case in cases:
        for setting in settings:
            proc = subprocess.run(
                [sys.executable, "-m", "lmrec.benchmarks.train_scale", "--one", case, setting, "--epochs", str(epochs), "--out", str(out),
                 *(f"--set={o}" for o in overrides)],
                capture_output=True, text=True,
            )
            if proc.returncode != 0:
                report["runs"].append({"case": case, "setting": setting, "error": proc.stderr.strip().splitlines()[-1:]})
            else:
                report["runs"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            _write(out, report)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    _write(out, report)
    return report


def _machine() -> dict:
    import os

    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "load_average_1_5_15": [round(x, 2) for x in load],
            "note": "a shared machine: timings are noisy, compare settings within one run"}


def _epoch(r: dict) -> dict:
    """Mean per-epoch seconds of each phase."""
    keys = ("train_seconds", "data", "forward", "backward", "refresh", "validate")
    return {k: round(sum(e[k] for e in r["epochs"]) / len(r["epochs"]), 1) for k in keys}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# Training at scale", "",
             f"{m['cpus']} CPUs, load average at start {m['load_average_1_5_15']} ({m['note']}); "
             f"{report['epochs']} epoch(s) per run; seconds per epoch.", "",
             "| case | setting | users / items / interactions | epoch: train | data | forward | backward | validate "
             "(users) | valid NDCG@10 (all users) | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['setting']} | error: {' '.join(r['error'])} | | | | | | | |")
            continue
        e = _epoch(r)
        lines.append(
            f"| {r['case']} | {r['setting']} | {r['users']:,} / {r['items']:,} / {r['interactions']:,} | {e['train_seconds']} | "
            f"{e['data']} | {e['forward']} | {e['backward']} | {e['validate']} ({r['epochs'][-1]['valid_users_scored']:,}) | "
            f"{r['valid_all_users_ndcg@10']:.4f} | {r['peak_rss_mb']:,.0f} |"
        )
    by = {(r["case"], r["setting"]): r for r in report["runs"] if "error" not in r}
    for case in sorted({c for c, _ in by}):
        for other in [s for s in SETTINGS if s != "before"]:
            if (case, "before") in by and (case, other) in by:
                b, a = _epoch(by[case, "before"]), _epoch(by[case, other])
                tb, ta = b["train_seconds"] + b["validate"], a["train_seconds"] + a["validate"]
                lines += ["", f"{case}: training + validation per epoch {tb:.0f} s -> {ta:.0f} s ({tb / max(ta, 1e-9):.2f}x, {other})."]
    return "\n".join(lines) + "\n"


def _write(out: Path, report: dict) -> None:
    (out / "train_scale.json").write_text(json.dumps(report, indent=2))
    (out / "train_scale.md").write_text(markdown(report))
    _plot(report, out / "train_scale.png")


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in report["runs"] if "error" not in r]
    if not runs:
        return
    phases = ("data", "forward", "backward", "refresh", "validate")
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(runs) + 1.5))
    labels = [f"{r['case']} / {r['setting']}" for r in runs]
    left = [0.0] * len(runs)
    for ph in phases:
        vals = [_epoch(r)[ph] for r in runs]
        ax.barh(labels, vals, left=left, label=ph)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("seconds per epoch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lmrec.benchmarks.train_scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="reports/train-scale")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--settings", default=",".join(DEFAULT_SETTINGS), help=f"of {', '.join(SETTINGS)}")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="overrides for every run (e.g. a smaller catalog for a smoke run)")
    ap.add_argument("--one", nargs=2, metavar=("CASE", "SETTING"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.one:
        print(json.dumps(run_one(*args.one, args.epochs, out, args.overrides)))
        return 0
    unknown = [c for c in args.cases.split(",") if c not in CASES] + [s for s in args.settings.split(",") if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown case or setting {unknown}; cases: {', '.join(CASES)}; settings: {', '.join(SETTINGS)}")
    run(out, args.cases.split(","), args.settings.split(","), args.epochs, args.overrides)
    print((out / "train_scale.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
