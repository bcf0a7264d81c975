"""``lmrec demo``: the whole offline loop on the embedded synthetic catalog — baselines, Ray Train
fine-tuning of the LM recommender, full-ranking evaluation — with a report at ``<out>/report.json`` and the
training curve (train loss and valid NDCG@10 per epoch, beside the baselines' NDCG@10) at
``<out>/training.png``."""

from __future__ import annotations

import json
from pathlib import Path

from lmrec.config import load_config
from lmrec.evaluation import format_table
from lmrec.experiments import evaluate_baseline, evaluate_checkpoint, prepare
from lmrec.progress import activity
from lmrec.reports import write_json


def run_demo(config_files: list[str], out: str, overrides: list[str]) -> dict:
    from lmrec.data.examples import prepare_data
    from lmrec.training import fit

    cfg = load_config(config_files, [f"output_dir={out}", *overrides])
    with activity("generating the demo data"):
        p = prepare(cfg)
    print(f"demo data ({'synthetic' if p.dataset.synthetic else p.dataset.name}): {json.dumps(p.dataset.summary())}")
    with activity("evaluating the baselines"):
        reports = [evaluate_baseline(p, cfg, name) for name in ("popularity", "item-knn")]
    summary = fit(cfg, data=prepare_data(cfg, p.split, p.catalog))
    with activity("evaluating the trained model"):
        reports.append(evaluate_checkpoint(p, cfg, summary["checkpoint"]))
    print(format_table(reports))
    curve = plot_training(summary.get("history") or [], reports[:2], Path(out) / "training.png")
    report = {"dataset": p.dataset.name, "synthetic": p.dataset.synthetic, "train": summary, "reports": reports,
              "training_curve": str(curve) if curve else None}
    path = write_json(Path(out) / "report.json", report)
    print(f"checkpoint: {summary['checkpoint']}\nreport: {path}" + (f"\ntraining curve: {curve}" if curve else ""))
    return report


def plot_training(history: list[dict], baselines: list[dict], path: Path) -> Path | None:
    """Train loss and valid NDCG@10 per epoch (the best epoch marked), the baselines' test NDCG@10 as lines
    for scale. None when there is no epoch to draw."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, ndcg_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="train loss", title="training loss")
    ndcg_ax.plot(epochs, [h["valid_ndcg@10"] for h in history], marker="o", label="LM recommender (valid)")
    best = history[-1].get("best_epoch")
    if best in epochs:
        ndcg_ax.plot([best], [history[epochs.index(best)]["valid_ndcg@10"]], "*", markersize=14, label=f"best epoch ({best})")
    for r, style in zip(baselines, (":", "--")):
        ndcg_ax.axhline(r["metrics"]["ndcg@10"], linestyle=style, color="grey", label=f"{r['model']} (test)")
    ndcg_ax.set(xlabel="epoch", ylabel="NDCG@10", title="ranking quality")
    ndcg_ax.legend(fontsize=8)
    for ax in (loss_ax, ndcg_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
