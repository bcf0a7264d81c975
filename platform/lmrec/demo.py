"""``lmrec demo``: the whole offline loop on the embedded synthetic catalog — baselines, Ray Train
fine-tuning of the LM recommender, full-ranking evaluation — with a report at ``<out>/report.json``."""

from __future__ import annotations

import json
from pathlib import Path

from lmrec.config import load_config
from lmrec.evaluation import format_table
from lmrec.experiments import evaluate_baseline, evaluate_checkpoint, prepare


def run_demo(config_files: list[str], out: str, overrides: list[str]) -> dict:
    from lmrec.training import fit, prepare_data

    cfg = load_config(config_files, [f"output_dir={out}", *overrides])
    p = prepare(cfg)
    print(f"demo data ({'synthetic' if p.dataset.synthetic else p.dataset.name}): {json.dumps(p.dataset.summary())}")
    reports = [evaluate_baseline(p, cfg, name) for name in ("popularity", "item-knn")]
    summary = fit(cfg, data=prepare_data(cfg, p.split, p.catalog))
    reports.append(evaluate_checkpoint(p, cfg, summary["checkpoint"]))
    table = format_table(reports)
    print(table)
    report = {"dataset": p.dataset.name, "synthetic": p.dataset.synthetic, "train": summary, "reports": reports}
    path = Path(out) / "report.json"
    tmp = path.with_name(".report.json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)
    print(f"checkpoint: {summary['checkpoint']}\nreport: {path}")
    return report
