"""Variants of a model config, trained one after another and scored on valid and test in one table.

``python -m lmrec.benchmarks.variants tuning/variants-scientific.yaml --out reports/variants-scientific``

The spec names a dataset, a base config and the variants (a name and ``--set`` overrides each). Every
variant is trained in this process (the ``--local`` loop, early-stopped on valid NDCG@10), then its best
checkpoint is scored on valid and test, alone and fused with item-kNN at the weight the valid split picks
from ``fusion_grid``. Selection reads only the valid columns; test is in the table for reporting once.
Rows are appended to ``variants.jsonl`` as each variant finishes (a rerun skips the variants already
there, so an interrupted sweep continues), and ``variants.md`` is rewritten from them.

An override may name an earlier variant's best checkpoint as ``{checkpoint:NAME}``, e.g.
``train.init_from={checkpoint:frozen LM}``: fine-tuning variants then start from the frozen model instead
of training that stage again (what ``train.probe_first`` does in one run).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from lmrec.config import load_config, read_yaml
from lmrec.errors import LmrecError

FUSION_GRID = (1.0, 2.0, 3.0, 5.0, 8.0)
METRICS = ("ndcg@10", "recall@10", "ndcg@50")


def load_spec(path: str | Path) -> dict:
    spec = read_yaml(path)
    unknown = set(spec) - {"dataset", "base", "fusion_grid", "variants"}
    if unknown:
        raise LmrecError(f"{path}: unknown keys {sorted(unknown)} (dataset, base, fusion_grid, variants)")
    if not spec.get("variants"):
        raise LmrecError(f"{path}: no variants")
    names = [v.get("name") for v in spec["variants"]]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise LmrecError(f"{path}: every variant needs a distinct name")
    return spec


def run_variant(p, base: str | Path, dataset: str, sets: list[str], run_dir: Path, grid=FUSION_GRID) -> dict:
    """Train one variant and score its best checkpoint: valid and test, alone and fused."""
    import shutil

    from lmrec.data.examples import prepare_data
    from lmrec.experiments import checkpoint_scorer, evaluate_checkpoint, select_knn_weight
    from lmrec.training import fit

    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config([base], [f"data.dataset={dataset}", *sets, f"output_dir={run_dir}"])
    started = time.perf_counter()
    summary = fit(cfg, local=True, data=prepare_data(cfg, p.split, p.catalog))
    seconds = time.perf_counter() - started
    scorer = checkpoint_scorer(p, summary["checkpoint"])
    alone = load_config([], ["model.knn_weight=0"], base=cfg.model_dump(mode="json"))
    row = {
        "valid": evaluate_checkpoint(p, alone, scorer, split="valid")["metrics"],
        "test": evaluate_checkpoint(p, alone, scorer, split="test")["metrics"],
        # the second protocol: the user's history left out of the ranking (serving's default)
        "test_history_excluded": evaluate_checkpoint(p, alone, scorer, split="test", exclude_seen=True)["metrics"],
    }
    weight, table = select_knn_weight(p, alone, scorer, list(grid))
    fused = load_config([], [f"model.knn_weight={weight}"], base=cfg.model_dump(mode="json"))
    row["fused"] = {
        "weight": weight,
        "valid_ndcg@10_by_weight": table,
        "valid": evaluate_checkpoint(p, fused, scorer, split="valid")["metrics"] if weight > 0 else row["valid"],
        "test": evaluate_checkpoint(p, fused, scorer, split="test")["metrics"] if weight > 0 else row["test"],
    }
    history = [h for h in summary["history"] if "train_seconds" in h]  # not the starting weights' epoch 0
    row["train"] = {
        "wall_seconds": round(seconds, 1),
        "epochs_run": len(history),
        "best_epoch": summary["best_epoch"],
        "seconds_per_epoch": round(sum(h["train_seconds"] for h in history) / max(1, len(history)), 1),
        "peak_rss_mb": max((h.get("peak_rss_mb", 0) for h in history), default=None),
        "valid_ndcg@10_per_epoch": [h["valid_ndcg@10"] for h in summary["history"]],
        "stages": [h.get("stage") for h in summary["history"]] if any("stage" in h for h in summary["history"]) else None,
    }
    return row


def markdown(rows: list[dict], title: str) -> str:
    head = ("| variant | valid NDCG@10 | test NDCG@10 | test Recall@10 | test NDCG@10, history left out | fused: weight | "
            "fused valid NDCG@10 | fused test NDCG@10 | fused test Recall@10 | epochs (best) | s/epoch |")
    lines = [f"# {title}", "", "Selection reads the valid columns only; test is reported once.", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r.get("stopped"):  # stopped early by hand when valid clearly lagged: no test figures
            curve = ", ".join(f"{v:.4f}" for v in r["valid_ndcg@10_per_epoch"])
            lines.append(f"| {r['name']} | stopped: {r['stopped']} (valid per epoch from epoch 0: {curve}) | | | | | | | | | |")
            continue
        f, t = r["fused"], r["train"]
        lines.append(
            f"| {r['name']} | {r['valid']['ndcg@10']:.4f} | {r['test']['ndcg@10']:.4f} | {r['test']['recall@10']:.4f} | "
            f"{_excluded(r)} | {f['weight']:g} | {f['valid']['ndcg@10']:.4f} | {f['test']['ndcg@10']:.4f} | {f['test']['recall@10']:.4f} | "
            f"{t['epochs_run']} ({t['best_epoch']}) | {t['seconds_per_epoch']} |"
        )
    if rows:
        done = [r for r in rows if not r.get("stopped")]
        best = max(done, key=lambda r: r["valid"]["ndcg@10"])
        best_f = max(done, key=lambda r: r["fused"]["valid"]["ndcg@10"])
        lines += ["", f"Best on valid, alone: **{best['name']}**; fused: **{best_f['name']}**."]
    return "\n".join(lines) + "\n"


def _excluded(row: dict) -> str:
    m = row.get("test_history_excluded")
    return f"{m['ndcg@10']:.4f}" if m else "not scored"


def run(spec_path: str | Path, out: str | Path, only: list[str] | None = None) -> list[dict]:
    from lmrec.experiments import prepare

    spec = load_spec(spec_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done_file = out / "variants.jsonl"
    rows = [json.loads(x) for x in done_file.read_text().splitlines() if x.strip()] if done_file.exists() else []
    done = {r["name"] for r in rows}
    dataset, base = spec["dataset"], spec["base"]
    p = prepare(load_config([base], [f"data.dataset={dataset}"]))
    for v in spec["variants"]:
        if v["name"] in done or (only and v["name"] not in only):
            continue
        row = {"name": v["name"], "set": list(v.get("set", [])), "dataset": dataset, "base": str(base),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        sets = [_resolve(x, out) for x in row["set"]]
        row.update(run_variant(p, base, dataset, sets, out / "runs" / _slug(v["name"]), spec.get("fusion_grid", FUSION_GRID)))
        rows.append(row)
        with done_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        (out / "variants.md").write_text(markdown(rows, f"Variants on {dataset} (base {base})"))
    (out / "variants.md").write_text(markdown(rows, f"Variants on {dataset} (base {base})"))
    return rows


def _resolve(override: str, out: Path) -> str:
    """``{checkpoint:NAME}`` -> the best checkpoint of the variant NAME of this sweep (which must have run)."""
    def checkpoint(m: re.Match) -> str:
        path = out / "runs" / _slug(m.group(1)) / "checkpoint"
        if not path.is_dir():
            raise LmrecError(f"{override}: variant {m.group(1)!r} has no checkpoint in {out} yet (list it earlier in the spec)")
        return str(path)

    return re.sub(r"\{checkpoint:([^}]+)\}", checkpoint, override)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:60]


def main(argv: list[str] | None = None) -> int:
    import logging

    ap = argparse.ArgumentParser(prog="python -m lmrec.benchmarks.variants", description=__doc__.split("\n\n")[0])
    ap.add_argument("spec")
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", action="append", help="run only this variant (repeatable)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(args.spec, args.out, args.only)
    print((Path(args.out) / "variants.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
