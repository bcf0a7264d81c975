"""``lmrec tune``: Ray Tune over the same Ray Train job ``lmrec train`` runs.

A search file (``tuning/<name>.yaml``) names the base training config(s), the search space (config key
-> one distribution from :data:`DISTRIBUTIONS`, an explicit table: nothing is evaluated), the scheduler
(ASHA by default), the searcher (random or Optuna), the trial budget and where results go (a local
directory or an object-store URI, through pyarrow filesystems). Each trial builds its lmrec config from
the base + the trial's values and runs :func:`lmrec.training.fit`, whose ``TorchTrainer`` reports every
epoch's valid NDCG@10 to Tune.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmrec.config import Config, dump_config, format_validation_error, load_config, read_yaml
from lmrec.errors import ConfigError, LmrecError

METRIC = "valid_ndcg@10"
log = logging.getLogger("lmrec.tune")

# name -> (ray.tune function, number of arguments, description). Arguments are given as a list.
DISTRIBUTIONS: dict[str, tuple[str, tuple[int, ...], str]] = {
    "uniform": ("uniform", (2,), "[low, high]"),
    "quniform": ("quniform", (3,), "[low, high, q]"),
    "loguniform": ("loguniform", (2,), "[low, high], low > 0"),
    "qloguniform": ("qloguniform", (3,), "[low, high, q]"),
    "randn": ("randn", (2,), "[mean, sd]"),
    "qrandn": ("qrandn", (3,), "[mean, sd, q]"),
    "randint": ("randint", (2,), "[low, high) integers"),
    "qrandint": ("qrandint", (3,), "[low, high, q] integers, high inclusive"),
    "lograndint": ("lograndint", (2,), "[low, high) integers, log scale"),
    "choice": ("choice", (), "[option, option, ...]"),
    "grid": ("grid_search", (), "[value, value, ...]: every value, num_samples times"),
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SchedulerConfig(Strict):
    kind: Literal["asha", "fifo"] = "asha"
    max_t: int = Field(20, ge=1)  # epochs: the most any trial trains
    grace_period: int = Field(2, ge=1)  # epochs every trial gets before it can be stopped
    reduction_factor: float = Field(3, gt=1)


class SearcherConfig(Strict):
    kind: Literal["random", "optuna"] = "random"
    seed: int = 0


class TrialResources(Strict):
    # What the trial's own driver process holds; the Ray Train workers ask for theirs (train.*). The driver
    # only waits on its workers, so by default it holds no CPU (a worker asking for every CPU of a node still
    # fits) and reserves memory instead: Tune needs some resource to place a trial.
    driver_cpus: float = Field(0.0, ge=0)
    driver_memory_mb: int = Field(256, ge=1)

    def request(self) -> dict[str, float]:
        return {"CPU": self.driver_cpus, "memory": self.driver_memory_mb * 2**20}


class TuneSpec(Strict):
    name: str = "lmrec-tune"
    base: list[str] = Field(default_factory=list)  # training config files, relative to this file
    set: list[str] = Field(default_factory=list)  # fixed overrides for every trial
    search: dict[str, dict[str, list]] = Field(default_factory=dict)
    num_samples: int = Field(8, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    searcher: SearcherConfig = Field(default_factory=SearcherConfig)
    resources: TrialResources = Field(default_factory=TrialResources)
    storage_path: str = "runs/tune"  # a directory, or a URI such as s3://bucket/prefix
    # the first trial runs the base config's own values of the searched keys (Tune's points_to_evaluate),
    # so every leaderboard holds the default as its reference; not with grid distributions
    start_from_base: bool = True

    @field_validator("search")
    @classmethod
    def _distributions(cls, space: dict) -> dict:
        for key, spec in space.items():
            if len(spec) != 1:
                raise ValueError(f"{key}: give exactly one distribution, e.g. {{loguniform: [1e-4, 1e-2]}}")
            (kind, args), = spec.items()
            if kind not in DISTRIBUTIONS:
                raise ValueError(f"{key}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}")
            _, arity, usage = DISTRIBUTIONS[kind]
            if not isinstance(args, list) or (arity and len(args) not in arity) or (not arity and not args):
                raise ValueError(f"{key}: {kind} takes {usage}, got {args!r}")
            if kind in ("loguniform", "qloguniform", "lograndint") and not args[0] > 0:
                raise ValueError(f"{key}: {kind} needs a positive lower bound, got {args[0]!r}")
        return space

    @model_validator(mode="after")
    def _asha_needs_epochs(self) -> TuneSpec:
        if self.scheduler.grace_period > self.scheduler.max_t:
            raise ValueError("scheduler.grace_period must not exceed scheduler.max_t")
        return self


def load_spec(path: str | Path, overrides: list[str] | tuple = ()) -> tuple[TuneSpec, Config]:
    """Parse and check a search file; returns it and the base training config (fixed values applied).

    Every searched key is checked against the training config by applying a representative value,
    so a typo or a wrong type fails here, not in trial 5.
    """
    path = Path(path)
    raw = read_yaml(path)
    try:
        spec = TuneSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
    base_files = [(path.parent / b) if not Path(b).is_absolute() else Path(b) for b in spec.base]
    base = load_config(base_files, [*spec.set, *overrides])
    for key, dist in spec.search.items():
        (kind, args), = dist.items()
        sample = args[0] if kind in ("choice", "grid") else (int(args[0]) if "int" in kind else float(args[0]))
        if kind in ("choice", "grid"):
            for option in args:  # every option must be valid
                _with(base, {key: option}, path)
        else:
            _with(base, {key: sample}, path)
    if spec.start_from_base:
        for key, value in base_values(spec, base).items():
            (kind, args), = spec.search[key].items()
            if kind == "choice" and value not in args:
                raise ConfigError(f"{path}: {key}: the base config's value {value!r} is not one of the choices {args!r}; "
                                  "add it, or set start_from_base: false")
    return spec, base


def base_values(spec: TuneSpec, base: Config) -> dict[str, Any]:
    """The base config's value of every searched key (the reference trial's point)."""
    tree = base.model_dump(mode="json")
    values = {}
    for key in spec.search:
        node = tree
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values


def reference_point(spec: TuneSpec, base: Config, quiet: bool = False) -> list[dict[str, Any]]:
    """Tune's ``points_to_evaluate``: the base config first, unless turned off or the space has a grid."""
    if not spec.start_from_base or not spec.search:
        return []
    if any("grid" in dist for dist in spec.search.values()):
        if not quiet:
            log.info("start_from_base is ignored with grid distributions: the grid already fixes the trials")
        return []
    return [base_values(spec, base)]


def _with(base: Config, values: dict[str, Any], source) -> Config:
    overrides = [f"{k}={json.dumps(v)}" for k, v in values.items()]
    try:
        return load_config([], overrides, base=base.model_dump(mode="json"))
    except ConfigError as exc:
        raise ConfigError(f"{source}: search space does not fit the training config: {exc}") from None


def param_space(spec: TuneSpec) -> dict:
    from ray import tune

    space = {}
    for key, dist in spec.search.items():
        (kind, args), = dist.items()
        fn = getattr(tune, DISTRIBUTIONS[kind][0])
        space[key] = fn(args) if kind in ("choice", "grid") else fn(*args)
    return space


def _trial(trial_config: dict, base: dict, spec_json: dict, data) -> None:
    """One trial: the base config + this trial's values, trained by the same Ray Train job."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from lmrec.training import fit

    cfg = load_config([], [f"{k}={json.dumps(v)}" for k, v in trial_config.items()], base=base)
    spec = TuneSpec.model_validate(spec_json)
    ctx = tune.get_context()
    cfg = load_config([], [f"train.epochs={min(cfg.train.epochs, spec.scheduler.max_t)}", "train.early_stopping_patience=0"]
                      if spec.scheduler.kind == "asha" else [], base=cfg.model_dump(mode="json"))
    fit(
        cfg,
        data=data,
        name=f"{ctx.get_trial_id()}-train",
        storage_path=_join(spec.storage_path, spec.name, "train-runs"),
        callbacks=[TuneReportCallback()],
        copy_best=False,
    )


def _join(root: str, *parts: str) -> str:
    if "://" in root:
        return "/".join([root.rstrip("/"), *parts])
    return str(Path(root).resolve().joinpath(*parts))


def run_tune(path: str | Path, overrides: list[str] | tuple = (), resume: bool = False, out: str | None = None,
             storage_path: str | None = None, test: bool = False) -> dict:
    """Run (or resume) the search in ``path``; writes the leaderboard, best config and plots.
    ``storage_path`` replaces the file's (on a cluster: storage every node reaches). ``test`` adds the
    test-split metrics of the best and the base trial (see :func:`write_results`)."""

    import ray
    from ray import tune

    from lmrec.data.examples import prepare_data

    spec, base = load_spec(path, overrides)
    if storage_path:
        spec = spec.model_copy(update={"storage_path": storage_path})
    if not ray.is_initialized():
        from lmrec.training import init_ray

        init_ray()
    concurrent = _fit_concurrency(spec, base)
    data = prepare_data(base)  # once, on the driver; with_parameters ships it through the object store
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=base.model_dump(mode="json"), spec_json=spec.model_dump(mode="json"), data=data),
        spec.resources.request(),
    )
    exp_path = _join(spec.storage_path, spec.name)
    started = time.perf_counter()
    if resume and tune.Tuner.can_restore(exp_path):
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True, restart_errored=False)
    else:
        if resume:
            raise LmrecError(f"--resume: no experiment to restore at {exp_path}")
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                num_samples=spec.num_samples,
                max_concurrent_trials=concurrent,
                scheduler=_scheduler(spec),
                search_alg=_searcher(spec, reference_point(spec, base), concurrent),
            ),
            run_config=tune.RunConfig(name=spec.name, storage_path=spec.storage_path if "://" in spec.storage_path else str(Path(spec.storage_path).resolve())),
        )
    grid = tuner.fit()
    return write_results(grid, spec, base, Path(out or Path("runs") / "tune" / spec.name), time.perf_counter() - started, test)


def _fit_concurrency(spec: TuneSpec, base: Config) -> int:
    """Tune reserves only each trial's driver; its Ray Train workers ask for theirs later. Running more
    trials than the cluster's CPUs can hold would leave workers waiting until they time out, so the
    concurrency is capped to what fits now (an autoscaling cluster may hold more: raise its minimum)."""
    import ray

    per_trial = spec.resources.driver_cpus + base.train.num_workers * base.train.cpus_per_worker
    total = ray.cluster_resources().get("CPU", 0.0)
    fits = max(1, int(total // per_trial)) if per_trial else spec.max_concurrent_trials
    if per_trial > total:
        log.warning("one trial's workers need %.2f CPUs but the cluster has %.2f now: they wait for an autoscaler "
                    "(up to RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S) or fail; lower train.num_workers/cpus_per_worker",
                    per_trial, total)
    if fits < spec.max_concurrent_trials:
        log.warning("max_concurrent_trials=%d needs %.2f CPUs but the cluster has %.2f: running %d at a time",
                    spec.max_concurrent_trials, per_trial * spec.max_concurrent_trials, total, fits)
        return fits
    return spec.max_concurrent_trials


def _scheduler(spec: TuneSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = spec.scheduler
    if s.kind == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=s.max_t, grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def _searcher(spec: TuneSpec, points: list[dict] | None = None, concurrent: int = 0):
    """The search algorithm; ``points`` run first and count toward ``num_samples``."""
    if spec.searcher.kind == "random":
        if not points:
            return None  # Tune's default: random / grid variants
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # a search algorithm, not a Searcher: Tune ignores max_concurrent_trials for it, so it caps itself
        return BasicVariantGenerator(points_to_evaluate=points, max_concurrent=concurrent, random_state=spec.searcher.seed)
    try:
        import optuna  # noqa: F401  (Ray only asserts on it when the searcher is built)
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:
        raise LmrecError("searcher.kind=optuna needs the optuna package: pip install 'lmrec[tune]'") from exc
    return OptunaSearch(seed=spec.searcher.seed, points_to_evaluate=points or None)


def write_results(grid, spec: TuneSpec, base: Config, out: Path, seconds: float, test: bool = False) -> dict:
    """Leaderboard (JSON + Markdown), the best config as a YAML `lmrec train` accepts, and PNG plots.
    With ``test``, the best trial and the base config's trial are also evaluated on the test split (from
    each trial's best-valid checkpoint), the figure to quote; the search itself only ever sees valid."""
    out.mkdir(parents=True, exist_ok=True)
    points = reference_point(spec, base, quiet=True)  # said once already, when the search started
    reference = points[0] if points else None
    rows = []
    for r in grid:
        df = r.metrics_dataframe
        curve, checkpoint = [], None
        if df is not None and METRIC in df:
            curve = [float(v) for v in df[METRIC].tolist()]
            if curve and "checkpoint_path" in df:  # the best epoch's checkpoint (Ray Train keeps the best ones)
                checkpoint = df["checkpoint_path"].iloc[curve.index(max(curve))]
        params = {k: (r.config or {}).get(k) for k in spec.search}
        rows.append({
            "trial": (r.metrics or {}).get("trial_id", Path(r.path).name if r.path else "?"),
            "params": params,
            "base": reference is not None and params == reference,
            "best": max(curve) if curve else None,
            "best_epoch": curve.index(max(curve)) + 1 if curve else None,
            "epochs": len(curve),
            "curve": curve,
            "error": str(r.error) if r.error else None,
            "checkpoint": checkpoint if isinstance(checkpoint, str) else None,
        })
    ranked = sorted(rows, key=lambda x: -1 if x["best"] is None else x["best"], reverse=True)
    if not ranked or ranked[0]["best"] is None:
        raise LmrecError("no trial reported a result; see the trial errors in " + str(out / "leaderboard.json"))
    best = ranked[0]
    best_cfg = _with(base, best["params"], "best trial")
    (out / "best.yaml").write_text(f"# best of {len(rows)} trials of {spec.name}: valid NDCG@10 {best['best']:.4f}\n" + dump_config(best_cfg))
    summary = {"name": spec.name, "trials": len(rows), "seconds": round(seconds, 1), "out": str(out), "best": best,
               "base": next((r for r in ranked if r["base"]), None), "leaderboard": ranked}
    if test:
        summary["test"] = evaluate_on_test(base, [("best", best), ("base", summary["base"])])
    (out / "leaderboard.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "leaderboard.md").write_text(leaderboard_markdown(ranked, spec, summary.get("test")))
    plot_results(ranked, spec, out)
    return summary


def evaluate_on_test(base: Config, trials: list[tuple[str, dict | None]]) -> dict:
    """Test-split metrics of each named trial's best checkpoint (a local path or a storage URI)."""
    from ray.train import Checkpoint

    from lmrec.experiments import checkpoint_scorer, evaluate_checkpoint, prepare

    prepared, results = None, {}
    for label, row in trials:
        if row is None or not row.get("checkpoint"):
            continue
        cfg = _with(base, row["params"], f"{label} trial")
        prepared = prepared or prepare(cfg)
        with Checkpoint(row["checkpoint"]).as_directory() as local:
            scorer = checkpoint_scorer(prepared, local)
        # the search ranks the model alone (valid NDCG@10 during training); a fusion with item-kNN
        # configured in the base is reported beside it
        report = evaluate_checkpoint(prepared, _with(cfg, {"model.knn_weight": 0}, label), scorer, split="test")
        fused = evaluate_checkpoint(prepared, cfg, scorer, split="test") if cfg.model.knn_weight > 0 else None
        results[label] = {"trial": row["trial"], "params": row["params"], "valid_ndcg@10": row["best"],
                          "model": report["model"], "test": report["metrics"]}
        if fused is not None:
            results[label]["fused"] = {"model": fused["model"], "test": fused["metrics"]}
        log.info("%s trial %s: valid NDCG@10 %.4f, test %s", label, row["trial"], row["best"],
                 {k: round(v, 4) for k, v in report["metrics"].items() if k in ("ndcg@10", "recall@10")})
    return results


def leaderboard_markdown(rows: list[dict], spec: TuneSpec, test: dict | None = None) -> str:
    keys = list(spec.search)
    head = "| rank | trial | valid NDCG@10 | best epoch | epochs | " + " | ".join(keys) + " |"
    lines = [head, "|" + "---|" * (5 + len(keys))]
    for i, r in enumerate(rows, 1):
        best = "-" if r["best"] is None else f"{r['best']:.4f}"
        vals = " | ".join(_fmt(r["params"].get(k)) for k in keys)
        name = f"{r['trial']} (base)" if r.get("base") else str(r["trial"])
        lines.append(f"| {i} | {name} | {best} | {r.get('best_epoch') or '-'} | {r['epochs']} | {vals} |")
    if test:
        lines += ["", "| trial | valid NDCG@10 | test NDCG@10 | test Recall@10 |", "|---|---|---|---|"]
        for label, t in test.items():
            lines.append(f"| {label} ({t['trial']}) | {t['valid_ndcg@10']:.4f} | {t['test']['ndcg@10']:.4f} | {t['test']['recall@10']:.4f} |")
            if "fused" in t:
                f = t["fused"]
                lines.append(f"| {label}, {f['model'].rsplit('+', 1)[-1]} fusion | - | {f['test']['ndcg@10']:.4f} | {f['test']['recall@10']:.4f} |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def plot_results(rows: list[dict], spec: TuneSpec, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        if r["curve"]:
            ax.plot(range(1, len(r["curve"]) + 1), r["curve"], marker=".", label=str(r["trial"])[-8:])
    ax.set_xlabel("epoch (training iteration)")
    ax.set_ylabel(METRIC)
    ax.set_title(f"{spec.name}: {METRIC} per trial")
    if len(rows) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "trials.png", dpi=110)
    plt.close(fig)

    keys = list(spec.search)
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
        for ax, k in zip(axes[0], keys):
            pts = [(r["params"].get(k), r["best"]) for r in rows if r["best"] is not None]
            xs = [str(p[0]) if not isinstance(p[0], (int, float)) else p[0] for p in pts]
            ax.scatter(xs, [p[1] for p in pts])
            if "log" in next(iter(spec.search[k])):
                ax.set_xscale("log")
            ax.set_xlabel(k)
            ax.set_ylabel(f"best {METRIC}")
        fig.tight_layout()
        fig.savefig(out / "params.png", dpi=110)
        plt.close(fig)
