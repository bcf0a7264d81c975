"""``lmrec retrain``: the loop a nightly job runs (the ``lmrec-retrain`` RayCronJob) — collect what a
service's store holds, train on it, export behind the gate — into ``OUT/<UTC time>/{data,run,artifact}``,
then the run retention that keeps ``OUT`` from growing without bound."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from lmrec.errors import LmrecError

RUN_NAME = re.compile(r"\d{8}-\d{6}")  # OUT/<UTC time>/ as retrain names its runs


def retrain(config_files: list[str], overrides: list[str], store: dict, out: str | Path, artifact: str | None = None,
            keep: int = 0, local: bool = False, say=print) -> dict:
    """collect -> train -> export into a new ``out/<UTC time>/``; with ``keep`` > 0, then delete the older runs
    :func:`prune_runs` lets go. ``store`` holds the app's store fields (``store_path``, ``store_url``, ``store_url_env``). Returns
    ``{"run", "artifact", "manifest", "deleted"}``; ``say`` reports each step."""
    from lmrec.collect import collect
    from lmrec.config import load_config
    from lmrec.export import export_checkpoint
    from lmrec.store import StoreConfig
    from lmrec.training import fit

    if keep < 0:
        raise LmrecError(f"--keep {keep}: must be 0 (keep every run) or more")
    run = Path(out) / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    with StoreConfig.from_args(store).open() as s:
        done = collect(s, run / "data", artifact)
    say(f"collected {done['events']} events of {done['users']} users, {done['items']} items into {run / 'data'}")
    cfg = load_config([*config_files, run / "data" / "data.yaml"], [*overrides, f"output_dir={run / 'run'}"])
    summary = fit(cfg, local=local)
    manifest = export_checkpoint(summary["checkpoint"], run / "artifact")
    say(f"wrote {run / 'artifact'} ({manifest['model_version']}): valid NDCG@10 "
        f"{manifest['metrics']['served']['ndcg@10']:.4f}, gate passed; roll it out by pointing the app's `artifact:` at it")
    deleted = prune_runs(Path(out), keep, run, artifact) if keep else []
    for gone in deleted:
        say(f"deleted the older run {gone}")
    return {"run": str(run), "artifact": str(run / "artifact"), "manifest": manifest, "deleted": [str(d) for d in deleted]}


def prune_runs(root: Path, keep: int, current: Path, artifact: str | None = None) -> list[Path]:
    """Delete the runs under ``root`` older than ``current`` except the ``keep`` newest finished ones (with
    an artifact), a run holding a file named ``keep`` (pinned: say, the one being served) and the run the
    served ``artifact`` lies in (resolving links, e.g. ``/models/current``). Only ``<UTC time>`` folders are
    touched; a newer one (another run going on) never is. Returns the deleted folders."""
    protected = {current.resolve()}
    if artifact:
        served = Path(artifact).resolve()
        protected |= {run.resolve() for run in root.iterdir() if served.is_relative_to(run.resolve())}
    runs = sorted((d for d in root.iterdir() if d.is_dir() and RUN_NAME.fullmatch(d.name) and d.name <= current.name),
                  key=lambda d: d.name, reverse=True)
    finished = [d for d in runs if (d / "artifact" / "manifest.json").is_file()]
    protected |= {d.resolve() for d in finished[:keep]} | {d.resolve() for d in runs if (d / "keep").exists()}
    gone = [d for d in runs if d.resolve() not in protected]
    for d in gone:
        shutil.rmtree(d)
    return gone
