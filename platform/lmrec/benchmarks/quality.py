"""``lmrec bench quality``: baselines, ID-SASRec and the LM recommender on real datasets, side by side in
one run, plus the cold-start protocol. Writes ``quality.json``, ``quality.md`` and ``quality.png``.

Per dataset the models are: popularity and item-kNN (fitted on train + valid), and every model config
listed for the dataset (trained in this process's Ray Train job, early-stopped on valid NDCG@10), all
scored on valid and test by the same full-ranking evaluator. Choices (the fusion weight, the cold-start
transfer) read only valid figures; test is reported once. Published or separately measured figures for
the same files are listed as quoted anchors (the baseline-fidelity row), never recomputed here.

Cold start: two disjoint random sets of 10% of the catalog each leave training entirely
(:func:`lmrec.experiments.cold_start_split`). Each model trains once on what is left. On valid, users
whose target is a valid-set item pick the kNN text-transfer variant of the fused model; on test, users
whose target is a test-set item measure every model once, the fused one with the variant valid picked.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmrec.config import Config, load_config
from lmrec.experiments import (
    Prepared,
    checkpoint_scorer,
    cold_start_split,
    evaluate_baseline,
    evaluate_checkpoint,
    prepare,
    select_knn_weight,
)
from lmrec.reports import write_json, write_text


@dataclass(frozen=True)
class Entry:
    """One trained row: a config file (relative to the configs directory) and overrides on top of it."""

    config: str
    overrides: tuple[str, ...] = ()
    note: str = ""
    cold_start: bool = True  # also trained in the cold-start protocol


# dataset -> trained rows; the first is the LM model of record
DEFAULT_SUITE: dict[str, list[Entry]] = {
    "scientific": [
        Entry("scientific.yaml", note="LM model of record"),
        # no fine-tuned row here: on 2 cores an epoch with the top LM layer released takes 7+ min (every step
        # re-encodes the 4,385 item texts), and both fine-tuning variants in tuning/variants-scientific.yaml
        # lost valid NDCG@10 from the frozen start. --set model.item_tower.finetune_layers=1 runs it.
        Entry("scientific-sasrec.yaml", note="ID-SASRec, RecBole's SASRec settings"),
        Entry("scientific-sasrec.yaml", ("model.history_bias=true",), "the same + the LM model's learned history bias", cold_start=False),
    ],
    "ml-100k": [
        Entry("ml-100k.yaml", note="LM model of record: the top LM layer fine-tuned after a frozen probe"),
        Entry("ml-100k.yaml", ("model.item_tower.finetune_layers=0",), "the same, the LM frozen", cold_start=False),
        Entry("ml-100k-sasrec.yaml", note="ID-SASRec"),
        Entry("ml-100k-sasrec.yaml", ("model.history_bias=true",), "the same + the LM model's learned history bias", cold_start=False),
    ],
}

# figures measured elsewhere on the same files, quoted as they are (never recomputed by this command)
ANCHORS: dict[str, list[dict]] = {
    "scientific": [{
        "model": "RecBole 1.2 SASRec (quoted)",
        "metrics": {"ndcg@10": 0.0561, "recall@10": 0.098, "ndcg@50": 0.077, "recall@50": 0.194},
        "source": "RecBole 1.2 SASRec on these files (CE loss, max_seq_length 50, defaults otherwise), "
                  "2 CPU cores, 31 min; see the data folder's README",
        "compare_to": "sasrec-id",
    }],
}

COLD_FRACTION = 0.1
FUSION_GRID = (1.0, 2.0, 3.0, 5.0, 8.0)  # item-kNN fusion weights tried on valid (with the config's own)
# the kNN text-transfer variants for items without interactions: (neighbours, cosine power)
TRANSFER_VARIANTS: dict[str, tuple[int, float]] = {
    "none": (0, 1.0),
    "nearest item, at its cosine": (1, 1.0),
    "nearest item, at its squared cosine": (1, 2.0),
    "mean of the 5 nearest": (5, 1.0),
    "mean of the 20 nearest": (20, 1.0),
}


@dataclass
class Trained:
    cfg: Config
    checkpoint: str
    train: dict = field(default_factory=dict)


def _fit(p: Prepared, cfg: Config, run_dir: Path, quick: bool, local: bool = False) -> Trained:
    import shutil

    from lmrec.data.examples import prepare_data
    from lmrec.training import fit

    shutil.rmtree(run_dir, ignore_errors=True)  # a benchmark trains from scratch, never resumes an earlier run
    sets = [f"output_dir={run_dir}"]
    if quick:  # smoke run: the pipeline end to end, not the quality
        sets += ["train.epochs=1", "train.max_steps_per_epoch=3", "train.probe_first=false"]
    cfg = load_config([], sets, base=cfg.model_dump(mode="json"))
    started = time.perf_counter()
    summary = fit(cfg, data=prepare_data(cfg, p.split, p.catalog), local=local)
    history = summary["history"]
    train = {
        "wall_seconds": round(time.perf_counter() - started, 1),
        "epochs_run": len(history),
        "best_epoch": summary["best_epoch"],
        "workers": cfg.train.num_workers,
        "peak_rss_mb_worker0": max((h.get("peak_rss_mb", 0) for h in history), default=None),
        "valid_ndcg@10_per_epoch": [h["valid_ndcg@10"] for h in history],
    }
    if any("stage" in h for h in history):
        train["stages"] = [h.get("stage") for h in history]
    return Trained(cfg, summary["checkpoint"], train)


def _train(p: Prepared, cfg: Config, run_dir: Path, quick: bool, local: bool = False) -> list[dict]:
    """Train one config and score it on valid and test; with ``model.knn_weight`` > 0 the model alone is
    reported too, so the fusion's share is visible."""
    t = _fit(p, cfg, run_dir, quick, local)
    cfg = t.cfg
    alone = load_config([], ["model.knn_weight=0"], base=cfg.model_dump(mode="json"))
    scorer = checkpoint_scorer(p, t.checkpoint)  # loaded and its catalog encoded once for every run below
    reports = [_both(p, alone, scorer)]
    if cfg.model.knn_weight > 0:
        # the fusion weight is chosen on valid among the config's own and a few around it
        grid = [cfg.model.knn_weight] if quick else sorted({cfg.model.knn_weight, *FUSION_GRID})
        weight, table = select_knn_weight(p, cfg, scorer, grid)
        fused_cfg = load_config([], [f"model.knn_weight={weight}"], base=cfg.model_dump(mode="json"))
        report = _both(p, fused_cfg, scorer)
        report["fusion"] = {"weight": weight, "selected_on": "valid ndcg@10", "valid_ndcg@10": table}
        reports.append(report)
    for r in reports:
        r["train"] = t.train
        r["checkpoint"] = str(t.checkpoint)
    return reports


def _both(p: Prepared, cfg: Config, scorer) -> dict:
    report = evaluate_checkpoint(p, cfg, scorer, split="test")
    report["valid_metrics"] = evaluate_checkpoint(p, cfg, scorer, split="valid")["metrics"]
    report["history_excluded_metrics"] = _headline(evaluate_checkpoint(p, cfg, scorer, split="test", exclude_seen=True))
    return report


def _headline(report: dict) -> dict:
    """The figures the table shows of a second protocol (the user's history left out of the ranking, as
    serving answers by default and RecBole evaluates)."""
    return {m: report["metrics"][m] for m in ("ndcg@10", "recall@10")}


def run_quality(
    out: str | Path,
    configs_dir: str | Path = "configs",
    datasets: list[str] | None = None,
    quick: bool = False,
    cold_start: bool = True,
    overrides: list[str] | None = None,
    local: bool = False,
    trained: bool = True,
) -> dict:
    """``local``: train in this process without Ray (``lmrec train --local``'s loop), else with Ray Train.
    ``trained`` False: the baselines and the cold-start protocol only (no trained rows, no fidelity row);
    a report already in ``out`` keeps its rows, only each dataset's cold-start section is replaced."""
    if not (trained or cold_start):
        raise ValueError("nothing to run: the trained rows and the cold-start protocol are both off")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    configs_dir = Path(configs_dir)
    datasets = datasets or list(DEFAULT_SUITE)
    results: dict = {"datasets": {}, "quick": quick, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if not trained and (out / "quality.json").exists():  # rerun the protocol into the report that is there
        results = json.loads((out / "quality.json").read_text())
        results["cold_start_rerun"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    for name in datasets:
        entries = DEFAULT_SUITE.get(name, [Entry(f"{name}.yaml")])
        cfgs = [load_config([configs_dir / e.config], [f"data.dataset={name}", *e.overrides, *(overrides or [])]) for e in entries]
        p = prepare(cfgs[0])
        if name in results["datasets"]:
            entry = results["datasets"][name]
            rows = entry["models"]
        else:
            rows = [evaluate_baseline(p, cfgs[0], b) for b in ("popularity", "item-knn")]
            for r, b in zip(rows, ("popularity", "item-knn")):
                r["valid_metrics"] = evaluate_baseline(p, cfgs[0], b, split="valid")["metrics"]
                r["history_excluded_metrics"] = _headline(evaluate_baseline(p, cfgs[0], b, exclude_seen=True))
            entry = {"models": rows, "anchors": ANCHORS.get(name, [])}
            results["datasets"][name] = entry
        for i, (e, cfg) in enumerate(zip(entries, cfgs) if trained else ()):
            for report in _train(p, cfg, out / "runs" / name / f"{i}-{Path(e.config).stem}", quick, local):
                report["config"] = " ".join([str(configs_dir / e.config), *(f"--set {o}" for o in e.overrides)])
                report["note"] = e.note
                rows.append(report)
            _write(out, results)  # after each model: a long run leaves its finished part behind
        if trained:
            entry["fidelity"] = _fidelity(rows, entry["anchors"], p, cfgs[0])
        if cold_start:
            kept = [c for c, e in zip(cfgs, entries) if e.cold_start]
            entry["cold_start"] = _cold_start(p, kept, out / "runs" / name / "cold", quick, local)
        _write(out, results)  # after each dataset, so a long run leaves its finished part behind
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    _write(out, results)
    return results


def _fidelity(rows: list[dict], anchors: list[dict], p: Prepared | None = None, cfg: Config | None = None) -> list[dict]:
    """Our baseline against the quoted figure for the same model on the same files: as we rank (every item)
    and, with ``p`` and the row's checkpoint, with the user's history left out of the ranking as RecBole's
    full-sort evaluation does by default (its ``history_index`` items scored -inf)."""
    out = []
    for a in anchors:
        ours = next((r for r in rows if r["model"] == a["compare_to"]), None)
        if ours is None:
            continue
        row = {
            "ours": ours["model"], "anchor": a["model"],
            **{f"{m}_ratio": round(ours["metrics"][m] / a["metrics"][m], 3) for m in ("ndcg@10", "recall@10") if m in ours["metrics"]},
        }
        if p is not None and ours.get("checkpoint"):
            alone = load_config([], ["model.knn_weight=0"], base=cfg.model_dump(mode="json"))  # the baseline alone, unfused
            masked = evaluate_checkpoint(p, alone, ours["checkpoint"], split="test", exclude_seen=True)["metrics"]
            row["ours_history_excluded"] = {m: masked[m] for m in ("ndcg@10", "recall@10")}
            row.update({f"{m}_ratio_history_excluded": round(masked[m] / a["metrics"][m], 3) for m in ("ndcg@10", "recall@10")})
        out.append(row)
    return out


def _cold_start(p: Prepared, cfgs: list[Config], run_dir: Path, quick: bool, local: bool = False) -> dict:
    split, held_test, held_valid = cold_start_split(p.split, p.catalog.item_ids, COLD_FRACTION, seed=0)
    hp = Prepared(p.dataset, split, p.catalog)
    groups = {"valid": {"held_out": set(held_valid)}, "test": {"held_out": set(held_test)}}

    def scored(cfg, model, split_name) -> dict:
        if isinstance(model, str):
            r = evaluate_baseline(hp, cfg, model, split=split_name, groups=groups[split_name])
        else:
            r = evaluate_checkpoint(hp, cfg, model, split=split_name, groups=groups[split_name])
        return {"held_out": r.get("held_out"), "all": r["metrics"], "model": r["model"]}

    rows = [{"model": "popularity", "valid": scored(cfgs[0], "popularity", "valid"), "test": scored(cfgs[0], "popularity", "test")}]
    for i, cfg in enumerate(cfgs):
        t = _fit(hp, cfg, run_dir / f"{i}", quick, local)
        scorer = checkpoint_scorer(hp, t.checkpoint)
        alone = load_config([], ["model.knn_weight=0"], base=t.cfg.model_dump(mode="json"))
        v, te = scored(alone, scorer, "valid"), scored(alone, scorer, "test")
        rows.append({"model": v["model"], "valid": v, "test": te})
        if t.cfg.model.knn_weight > 0 and scorer.text_vectors is not None:
            rows.append(_transfer_choice(hp, t.cfg, scorer, scored, quick))
    return {
        "held_out_items": {"test": int(len(held_test)), "valid": int(len(held_valid))},
        "fraction": COLD_FRACTION,
        "selected_on": "valid: NDCG@10 of the users whose target is a valid-set item",
        "models": rows,
    }


def _transfer_choice(p: Prepared, cfg: Config, scorer, scored, quick: bool) -> dict:
    """The fused model's text-transfer variant picked on valid (held-out targets' NDCG@10, ties to the
    simpler variant), then scored on test once."""
    variants = dict(list(TRANSFER_VARIANTS.items())[:2]) if quick else TRANSFER_VARIANTS
    valid = {}
    for label, (k, power) in variants.items():
        c = load_config([], [f"model.knn_transfer_neighbours={k}", f"model.knn_transfer_power={power}"], base=cfg.model_dump(mode="json"))
        valid[label] = scored(c, scorer, "valid")
    order = list(variants)
    best = max(order, key=lambda lb: (_held(valid[lb]), -order.index(lb)))
    k, power = variants[best]
    chosen = load_config([], [f"model.knn_transfer_neighbours={k}", f"model.knn_transfer_power={power}"], base=cfg.model_dump(mode="json"))
    test = scored(chosen, scorer, "test")
    return {
        "model": test["model"],
        "transfer": {"chosen": best, "neighbours": k, "power": power,
                     "valid_held_out_ndcg@10": {lb: _held(r) for lb, r in valid.items()},
                     "valid_all_ndcg@10": {lb: r["all"]["ndcg@10"] for lb, r in valid.items()}},
        "valid": valid[best],
        "test": test,
    }


def _held(r: dict) -> float:
    return (r.get("held_out") or {}).get("metrics", {}).get("ndcg@10", 0.0)


def _write(out: Path, results: dict) -> None:
    write_json(out / "quality.json", results)
    write_text(out / "quality.md", markdown(results))
    plot(results, out / "quality.png")


def markdown(results: dict) -> str:
    lines = ["# Quality benchmark (full ranking)", "",
             "Valid figures pick the fusion weight and the cold-start transfer; test is reported once. Every item is "
             "ranked; the history-left-out columns rank all but the user's history (serving's default, RecBole's "
             "protocol).", ""]
    for name, entry in results["datasets"].items():
        lines += [f"## {name}", "",
                  "| model | valid NDCG@10 | NDCG@10 | Recall@10 | MRR@10 | AUC | coverage@10 | NDCG@10, history left out | "
                  "Recall@10, history left out | train time (s) | epochs (best) | peak RSS worker 0 (MB) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in entry["models"]:
            m, t, v, h = r["metrics"], r.get("train", {}), r.get("valid_metrics", {}), r.get("history_excluded_metrics", {})
            label = r["model"] + (f" ({r['note']})" if r.get("note") else "")
            epochs = f"{t['epochs_run']} ({t['best_epoch']})" if t else ""
            lines.append(
                f"| {label} | {_f(v.get('ndcg@10'))} | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} | {m['mrr@10']:.4f} | {m['auc']:.4f} | "
                f"{m['coverage@10']:.4f} | {_f(h.get('ndcg@10'))} | {_f(h.get('recall@10'))} | {t.get('wall_seconds', '')} | {epochs} | "
                f"{t.get('peak_rss_mb_worker0', '')} |"
            )
        for a in entry.get("anchors", []):
            m = a["metrics"]
            lines.append(f"| {a['model']} | | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} | | | | | | | | |")
        for f in entry.get("fidelity", []):
            lines += ["", f"Baseline fidelity: {f['ours']} / {f['anchor']} = {f.get('ndcg@10_ratio')} (NDCG@10), "
                          f"{f.get('recall@10_ratio')} (Recall@10)"
                      + (f"; with the history left out of the ranking (RecBole's default full-sort protocol): "
                         f"{f['ours_history_excluded']['ndcg@10']:.4f} / {f['ours_history_excluded']['recall@10']:.4f}, "
                         f"{f['ndcg@10_ratio_history_excluded']} / {f['recall@10_ratio_history_excluded']}"
                         if "ours_history_excluded" in f else "") + "."]
        for a in entry.get("anchors", []):
            lines += ["", f"Quoted: {a['model']}: {a['source']}."]
        cs = entry.get("cold_start")
        if cs:
            held = cs["held_out_items"]
            lines += ["", f"Cold start: {held['test']} items held out for test and {held['valid']} others for valid "
                          f"({cs['fraction']:.0%} each), out of training entirely; transfer chosen on {cs['selected_on']}.", "",
                      "| model | valid held-out targets | valid NDCG@10 (held-out) | test held-out targets | test NDCG@10 (held-out) | "
                      "test Recall@10 (held-out) | test NDCG@10 (all) |", "|---|---|---|---|---|---|---|"]
            for r in cs["models"]:
                vh, th = r["valid"]["held_out"] or {"targets": 0, "metrics": {}}, r["test"]["held_out"] or {"targets": 0, "metrics": {}}
                label = r["model"] + (f" (transfer: {r['transfer']['chosen']})" if "transfer" in r else "")
                lines.append(
                    f"| {label} | {vh['targets']} | {vh['metrics'].get('ndcg@10', 0):.4f} | {th['targets']} | "
                    f"{th['metrics'].get('ndcg@10', 0):.4f} | {th['metrics'].get('recall@10', 0):.4f} | {r['test']['all']['ndcg@10']:.4f} |"
                )
            for r in cs["models"]:
                if "transfer" in r:
                    tv = r["transfer"]["valid_held_out_ndcg@10"]
                    lines += ["", f"Transfer variants of {r['model']}, valid NDCG@10 of the held-out targets: "
                              + ", ".join(f"{lb} {v:.4f}" for lb, v in tv.items()) + "."]
        lines.append("")
    return "\n".join(lines)


def _f(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ""


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(6 * max(1, len(names)), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for r in results["datasets"][name]["models"]:
            curve = r.get("train", {}).get("valid_ndcg@10_per_epoch")
            if curve and "fusion" not in r:
                ax.plot(range(1, len(curve) + 1), curve, marker="o", label=r["model"])
            elif not curve:
                ax.axhline(r["metrics"]["ndcg@10"], linestyle="--", linewidth=1, label=f"{r['model']} (test)")
        for a in results["datasets"][name].get("anchors", []):
            ax.axhline(a["metrics"]["ndcg@10"], linestyle=":", linewidth=1, color="black", label=f"{a['model']} (test)")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("valid NDCG@10 (per epoch) / test NDCG@10 (lines)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
