"""Ray Tune: the search-file schema, a 2-trial search on real data, the best config round trip into
`lmrec train`, and the same search submitted as a Ray job to a throwaway head node."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lmrec.config import load_config
from lmrec.errors import ConfigError
from lmrec.tuning import DISTRIBUTIONS, load_spec, param_space

REPO = Path(__file__).resolve().parents[1]


def _spec(tmp_path, search, **extra) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"data": {"dataset": "demo"}, "train": {"epochs": 3}}))
    body = {"name": "t", "base": ["base.yaml"], "search": search, **extra}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_every_distribution_kind_maps_to_a_tune_domain(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    search = {
        "train.lr": {"loguniform": [1e-4, 1e-2]},
        "train.weight_decay": {"uniform": [0.0, 0.1]},
        "model.loss.temperature": {"quniform": [0.05, 0.2, 0.05]},
        "train.lm_lr": {"qloguniform": [1e-5, 1e-3, 1e-5]},
        "model.user_tower.dropout": {"randn": [0.3, 0.05]},
        "eval.batch_size": {"qrandn": [256, 10, 1]},
        "model.user_tower.layers": {"randint": [1, 3]},
        "model.user_tower.max_history": {"qrandint": [10, 50, 10]},
        "model.loss.num_negatives": {"lograndint": [16, 512]},
        "model.user_tower.kind": {"choice": ["gru", "transformer"]},
        "model.item_tower.finetune_layers": {"grid": [0, 1]},
    }
    assert set(k for d in search.values() for k in d) == set(DISTRIBUTIONS)
    spec, base = load_spec(_spec(tmp_path, search))
    space = param_space(spec)
    assert isinstance(space["train.lr"], Float) and isinstance(space["model.user_tower.layers"], Integer)
    assert isinstance(space["model.user_tower.kind"], Categorical)
    assert space["model.item_tower.finetune_layers"] == {"grid_search": [0, 1]}
    assert space["train.lr"].lower == 1e-4 and space["train.lr"].upper == 1e-2
    assert base.train.epochs == 3  # the base file was read


@pytest.mark.parametrize(
    "search, extra, message",
    [
        ({"train.lr": {"loguniform": [1e-4, 1e-2]}}, {"schedular": {}}, "schedular: unknown key"),
        ({"train.lrr": {"loguniform": [1e-4, 1e-2]}}, {}, "train.lrr: unknown key"),
        ({"train.lr": {"lognormal": [1e-4, 1e-2]}}, {}, "unknown distribution 'lognormal'"),
        ({"train.lr": {"uniform": [1e-4]}}, {}, "uniform takes [low, high]"),
        ({"train.lr": {"loguniform": [0, 1]}}, {}, "positive lower bound"),
        ({"train.lr": {"uniform": [1e-4, 1e-2], "choice": [1]}}, {}, "exactly one distribution"),
        ({"model.user_tower.kind": {"choice": ["gru", "lstm"]}}, {}, "model.user_tower.kind"),
        ({"train.epochs": {"uniform": [1.5, 3.5]}}, {}, "train.epochs"),
        ({"model.loss.kind": {"choice": ["bpr"]}}, {}, "base config's value 'softmax' is not one of the choices"),
    ],
)
def test_bad_search_files_are_rejected_with_the_key(tmp_path, search, extra, message):
    with pytest.raises(ConfigError) as exc:
        load_spec(_spec(tmp_path, search, **extra))
    assert message in str(exc.value)


def test_the_base_config_is_the_first_point_unless_a_grid_fixes_the_trials(tmp_path):
    from lmrec.tuning import reference_point

    spec, base = load_spec(_spec(tmp_path, {"train.lr": {"loguniform": [1e-4, 1e-2]}, "model.loss.kind": {"choice": ["bpr", "softmax"]}}))
    assert reference_point(spec, base) == [{"train.lr": base.train.lr, "model.loss.kind": "softmax"}]
    assert reference_point(spec.model_copy(update={"start_from_base": False}), base) == []
    spec, base = load_spec(_spec(tmp_path, {"train.lr": {"grid": [1e-3, 2e-3]}}))
    assert reference_point(spec, base) == []
    # with start_from_base off, the base value need not be one of the choices
    load_spec(_spec(tmp_path, {"model.loss.kind": {"choice": ["bpr"]}}, start_from_base=False))


def _slice_files(ml100k_slice, tmp_path) -> dict:
    """The real-data slice as CSV files, so trial configs can name it by path (any process can read it)."""
    p = ml100k_slice
    inter = p.dataset.interactions[["user_id", "item_id", "timestamp", "value"]]
    inter.to_csv(tmp_path / "ratings.csv", index=False)
    p.dataset.items[["item_id", "title", "genres"]].to_csv(tmp_path / "items.csv", index=False)
    return {
        "data": {"path": str(tmp_path / "ratings.csv"), "format": "csv", "items_path": str(tmp_path / "items.csv"),
                 "text_template": "{title}. {genres}."},
    }


def _search_file(tmp_path, tiny_lm, ml100k_slice, storage: Path, search: dict | None = None) -> Path:
    base = _slice_files(ml100k_slice, tmp_path)
    base["model"] = {"item_tower": {"kind": "hybrid", "pretrained": tiny_lm, "dim": 16, "max_text_length": 16},
                     "user_tower": {"max_history": 10}}
    # two trials at once whose workers take every CPU of the 4-CPU test cluster: a trial's own driver must
    # not hold a CPU, or the second trial's worker never fits
    base["train"] = {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 2, "num_workers": 1, "cpus_per_worker": 2,
                     "lr": 0.001}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {
        "name": "slice",
        "base": ["base.yaml"],
        "search": search or {"train.lr": {"grid": [0.001, 0.003]}},
        "num_samples": 1 if search is None else 2,  # a grid runs every value num_samples times
        "max_concurrent_trials": 2,
        "scheduler": {"kind": "asha", "max_t": 2, "grace_period": 1, "reduction_factor": 2},
        "storage_path": str(storage),
    }
    path = tmp_path / "slice.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _check_results(out: Path, n: int) -> dict:
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["trials"] == n
    assert all(r["error"] is None for r in board["leaderboard"])
    assert all(r["epochs"] >= 1 and 0.0 <= r["best"] <= 1.0 for r in board["leaderboard"])
    assert board["best"]["best"] == max(r["best"] for r in board["leaderboard"])
    assert (out / "trials.png").stat().st_size > 0 and (out / "params.png").stat().st_size > 0
    assert "| 1 |" in (out / "leaderboard.md").read_text()
    return board


@pytest.mark.ray
@pytest.mark.data
def test_searchers_and_trial_resources(tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    from lmrec.tuning import _searcher

    spec, _ = load_spec(_spec(tmp_path, {"train.lr": {"loguniform": [1e-4, 1e-2]}}, searcher={"kind": "optuna", "seed": 3}))
    assert isinstance(_searcher(spec), OptunaSearch)
    random = spec.model_copy(update={"searcher": spec.searcher.model_copy(update={"kind": "random"})})
    assert _searcher(random) is None
    assert _searcher(random, [{"train.lr": 0.002}]) is not None  # the base point goes first
    # the trial driver only waits on its Ray Train workers: no CPU, some memory (Tune needs a resource to place it)
    assert spec.resources.request() == {"CPU": 0.0, "memory": 256 * 2**20}


def test_two_trial_search_and_best_config_round_trip(ray_session, ml100k_slice, tiny_lm, tmp_path):
    from lmrec.cli import main
    from lmrec.tuning import run_tune

    # the first trial is the base config's own point (lr 0.001), the second is sampled
    spec = _search_file(tmp_path, tiny_lm, ml100k_slice, tmp_path / "storage", {"train.lr": {"loguniform": [0.0005, 0.005]}})
    summary = run_tune(spec, out=str(tmp_path / "results"), test=True)
    board = _check_results(tmp_path / "results", 2)
    assert [r["params"]["train.lr"] for r in board["leaderboard"] if r["base"]] == [0.001]
    assert board["base"]["params"] == {"train.lr": 0.001} and "(base) |" in (tmp_path / "results" / "leaderboard.md").read_text()
    assert (tmp_path / "storage" / "slice").is_dir()  # the experiment lives in the configured storage
    assert summary["best"]["checkpoint"]
    # --test: each trial's best-valid checkpoint on the test split, reported beside its valid figure
    assert set(summary["test"]) == {"best", "base"}
    for label, t in summary["test"].items():
        assert t["trial"] == summary[label]["trial"] and t["valid_ndcg@10"] == summary[label]["best"]
        assert 0.0 <= t["test"]["ndcg@10"] <= t["test"]["recall@10"] <= 1.0
    assert "test NDCG@10" in (tmp_path / "results" / "leaderboard.md").read_text()

    # --resume restores the experiment from its storage (Tuner.restore): finished trials stay finished
    again = run_tune(spec, resume=True, out=str(tmp_path / "resumed"))
    assert again["trials"] == 2 and again["best"]["best"] == summary["best"]["best"]

    # best.yaml is a plain training config: `lmrec train` accepts it as is
    best = load_config([tmp_path / "results" / "best.yaml"])
    assert best.train.lr == board["best"]["params"]["train.lr"]
    rc = main(["train", str(tmp_path / "results" / "best.yaml"), "--local", "--set", "train.epochs=1",
               "--set", f"output_dir={tmp_path / 'retrain'}"])
    assert rc == 0 and (tmp_path / "retrain" / "checkpoint" / "model.safetensors").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray
@pytest.mark.data
def test_search_submitted_as_a_job_to_a_throwaway_head_node(ml100k_slice, tiny_lm, tmp_path):
    """`ray job submit --working-dir . -- lmrec tune ...` against a real head node (token auth on)."""
    bindir = Path(sys.executable).parent
    if not (bindir / "ray").exists() or not (bindir / "lmrec").exists():
        pytest.skip("needs the `ray` and `lmrec` console scripts beside this Python")
    spec = _search_file(tmp_path, tiny_lm, ml100k_slice, tmp_path / "storage")
    port, dash = _free_port(), _free_port()
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    temp = Path("/tmp") / f"lmrec-ray-{port}"  # Ray's socket paths must stay short
    # The test session's own Ray runs on this machine too. Ray Train's placement-group cleaner (an actor of
    # this head) asks the state API whether its controller is alive; with two Rays on one machine and no
    # address in its environment it cannot tell which to ask, its monitor dies, and a finished trial's
    # placement group is never released, so the next trial's workers wait forever. Every process of this
    # head inherits these variables from `ray start`.
    head_env = {**env, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dash}"}
    start = [str(bindir / "ray"), "start", "--head", f"--port={port}", "--num-cpus=4", "--include-dashboard=true",
             f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats",
             # every port this head binds, not just the GCS and dashboard: another Ray on this machine (the test
             # session's own) already holds the defaults, e.g. the dashboard agent's 52365
             *(f"--{flag}={_free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                       "runtime-env-agent-port", "metrics-export-port",
                                                       "node-manager-port", "object-manager-port", "ray-client-server-port"))]
    subprocess.run(start, env=head_env, check=True, capture_output=True, timeout=180)
    ray_job = [str(bindir / "ray"), "job"]
    address = f"--address=http://127.0.0.1:{dash}"
    try:
        submit = [*ray_job, "submit", address, "--no-wait", "--working-dir", str(REPO),
                  "--", "lmrec", "tune", str(spec), "--out", str(tmp_path / "job-results")]
        # the head's job agent registers a few seconds after `ray start` returns; until then the
        # dashboard answers 500 "No available agent" and no job is created, so a retry is safe
        deadline = time.monotonic() + 120
        while True:
            done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=120)
            if done.returncode == 0 or "No available agent" not in done.stderr + done.stdout:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(3)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        job_id = re.search(r"raysubmit_\w+", done.stdout + done.stderr).group(0)
        # wait for a terminal state; a job still running after the deadline fails the test with its log
        deadline, status = time.monotonic() + 480, ""
        while time.monotonic() < deadline:
            shown = subprocess.run([*ray_job, "status", address, job_id], env=env, capture_output=True, text=True, timeout=60)
            status = (shown.stdout + shown.stderr).lower()  # "Job '...' succeeded" / "... failed" / "... stopped"
            if any(f"' {s}" in status for s in ("succeeded", "failed", "stopped")):
                break
            time.sleep(5)
        logs = subprocess.run([*ray_job, "logs", address, job_id], env=env, capture_output=True, text=True, timeout=60).stdout
        assert "' succeeded" in status, status[-1000:] + "\n--- job log ---\n" + logs[-6000:]
        _check_results(tmp_path / "job-results", 2)
    finally:
        # stop only this head's processes (their command lines name its temp dir); `ray stop` would
        # also stop the test session's own Ray
        subprocess.run(["pkill", "-TERM", "-f", str(temp)], capture_output=True)
        time.sleep(2)
        subprocess.run(["pkill", "-KILL", "-f", str(temp)], capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)
