"""``lmrec bench quality``: baselines, ID-SASRec and the LM recommender on real datasets, side by side in
one run, plus the cold-start protocol. Writes ``quality.json``, ``quality.md`` and ``quality.png``.

Per dataset the models are: popularity and item-kNN (fitted on train + valid), and every model config
listed for the dataset (trained with Ray Train, early-stopped on valid NDCG@10), all evaluated on the
test split by the same full-ranking evaluator. Cold start: 10% of the catalog is held out of training
entirely; NDCG@10 over test users whose target is a held-out item compares the text model with
popularity and the ID model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lmrec.config import Config, load_config
from lmrec.data.split import hold_out_items
from lmrec.experiments import (
    Prepared,
    checkpoint_scorer,
    evaluate_baseline,
    evaluate_checkpoint,
    model_label,
    prepare,
    select_knn_weight,
)

# dataset -> model configs (relative to the configs directory); the first is the LM model of record
DEFAULT_SUITE: dict[str, list[str]] = {
    "scientific": ["scientific.yaml", "scientific-sasrec.yaml"],
    "ml-100k": ["ml-100k.yaml", "ml-100k-sasrec.yaml"],
}
COLD_FRACTION = 0.1
FUSION_GRID = (1.0, 2.0, 3.0, 5.0, 8.0)  # item-kNN fusion weights tried on valid (with the config's own)


def _train(p: Prepared, cfg: Config, run_dir: Path, quick: bool, groups: dict | None = None) -> list[dict]:
    """Train one config and evaluate it on test; with ``model.knn_weight`` > 0 the model alone is
    reported too, so the fusion's share is visible."""
    import shutil

    from lmrec.training import fit, prepare_data

    shutil.rmtree(run_dir, ignore_errors=True)  # a benchmark trains from scratch, never resumes an earlier run
    sets = [f"output_dir={run_dir}"]
    if quick:  # smoke run: the pipeline end to end, not the quality
        sets += ["train.epochs=1", "train.max_steps_per_epoch=3"]
    cfg = load_config([], sets, base=cfg.model_dump(mode="json"))
    started = time.perf_counter()
    summary = fit(cfg, data=prepare_data(cfg, p.split, p.catalog))
    seconds = time.perf_counter() - started
    alone = load_config([], ["model.knn_weight=0"], base=cfg.model_dump(mode="json"))
    scorer = checkpoint_scorer(p, summary["checkpoint"])  # loaded and its catalog encoded once for every run below
    reports = [evaluate_checkpoint(p, alone, scorer, groups=groups)]
    if cfg.model.knn_weight > 0:
        # the fusion weight is chosen on valid among the config's own and a few around it
        grid = [cfg.model.knn_weight] if quick else sorted({cfg.model.knn_weight, *FUSION_GRID})
        weight, table = select_knn_weight(p, cfg, scorer, grid)
        fused_cfg = load_config([], [f"model.knn_weight={weight}"], base=cfg.model_dump(mode="json"))
        report = evaluate_checkpoint(p, fused_cfg, scorer, groups=groups)
        report["fusion"] = {"weight": weight, "selected_on": "valid ndcg@10", "valid_ndcg@10": table}
        reports.append(report)
    train = {
        "wall_seconds": round(seconds, 1),
        "epochs_run": len(summary["history"]),
        "best_epoch": summary["best_epoch"],
        "workers": cfg.train.num_workers,
        "peak_rss_mb_worker0": max((h.get("peak_rss_mb", 0) for h in summary["history"]), default=None),
        "valid_ndcg@10_per_epoch": [h["valid_ndcg@10"] for h in summary["history"]],
    }
    for r in reports:
        r["train"] = train
    return reports


def run_quality(
    out: str | Path,
    configs_dir: str | Path = "configs",
    datasets: list[str] | None = None,
    quick: bool = False,
    cold_start: bool = True,
    overrides: list[str] | None = None,
) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    configs_dir = Path(configs_dir)
    datasets = datasets or list(DEFAULT_SUITE)
    results: dict = {"datasets": {}, "quick": quick, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for name in datasets:
        files = [configs_dir / f for f in DEFAULT_SUITE.get(name, [f"{name}.yaml"])]
        cfgs = [load_config([f], [f"data.dataset={name}", *(overrides or [])]) for f in files]
        p = prepare(cfgs[0])
        rows = [evaluate_baseline(p, cfgs[0], b) for b in ("popularity", "item-knn")]
        entry = {"models": rows}
        results["datasets"][name] = entry
        for f, cfg in zip(files, cfgs):
            for report in _train(p, cfg, out / "runs" / name / f.stem, quick):
                report["config"] = str(f)
                rows.append(report)
            _write(out, results)  # after each model: a long run leaves its finished part behind
        if cold_start:
            entry["cold_start"] = _cold_start(p, cfgs, out / "runs" / name / "cold", quick)
        results["datasets"][name] = entry
        _write(out, results)  # after each dataset, so a long run leaves its finished part behind
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    _write(out, results)
    return results


def _cold_start(p: Prepared, cfgs: list[Config], run_dir: Path, quick: bool) -> dict:
    split, held = hold_out_items(p.split, p.catalog.item_ids, COLD_FRACTION, seed=0)
    hp = Prepared(p.dataset, split, p.catalog)
    group = {"held_out": set(held)}
    rows = [evaluate_baseline(hp, cfgs[0], "popularity", groups=group)]
    for cfg in cfgs:
        rows.extend(_train(hp, cfg, run_dir / model_label(cfg.model), quick, group))
    out = {"held_out_items": int(len(held)), "fraction": COLD_FRACTION, "models": []}
    for r in rows:
        out["models"].append({"model": r["model"], "held_out": r.get("held_out"), "all": r["metrics"]})
    return out


def _write(out: Path, results: dict) -> None:
    tmp = out / ".quality.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out / "quality.json")
    (out / "quality.md").write_text(markdown(results))
    plot(results, out / "quality.png")


def markdown(results: dict) -> str:
    lines = ["# Quality benchmark (full ranking, test split)", ""]
    for name, entry in results["datasets"].items():
        lines += [f"## {name}", "", "| model | NDCG@10 | Recall@10 | MRR@10 | AUC | coverage@10 | train time (s) | peak RSS worker 0 (MB) |", "|---|---|---|---|---|---|---|---|"]
        for r in entry["models"]:
            m, t = r["metrics"], r.get("train", {})
            lines.append(
                f"| {r['model']} | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} | {m['mrr@10']:.4f} | {m['auc']:.4f} | "
                f"{m['coverage@10']:.4f} | {t.get('wall_seconds', '-')} | {t.get('peak_rss_mb_worker0', '-')} |"
            )
        cs = entry.get("cold_start")
        if cs:
            lines += ["", f"Cold start: {cs['held_out_items']} items ({cs['fraction']:.0%}) held out of training.", "",
                      "| model | held-out targets | NDCG@10 (held-out) | Recall@10 (held-out) | NDCG@10 (all) |", "|---|---|---|---|---|"]
            for r in cs["models"]:
                h = r["held_out"] or {"targets": 0, "metrics": {}}
                lines.append(
                    f"| {r['model']} | {h['targets']} | {h['metrics'].get('ndcg@10', 0):.4f} | "
                    f"{h['metrics'].get('recall@10', 0):.4f} | {r['all']['ndcg@10']:.4f} |"
                )
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(6 * max(1, len(names)), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for r in results["datasets"][name]["models"]:
            curve = r.get("train", {}).get("valid_ndcg@10_per_epoch")
            if curve:
                ax.plot(range(1, len(curve) + 1), curve, marker="o", label=r["model"])
            else:
                ax.axhline(r["metrics"]["ndcg@10"], linestyle="--", linewidth=1, label=f"{r['model']} (test)")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("valid NDCG@10")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
