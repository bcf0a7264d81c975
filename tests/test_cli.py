"""The `lmrec` command: exit codes, messages that name what was wrong, reports written whole or not at all."""

import json
import subprocess
import sys

import pytest

from lmrec.cli import main


def test_help_is_instant_and_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("evaluate", "train", "tune", "demo", "bench", "datasets", "config"):
        assert cmd in out
    # no heavy import at module top: `lmrec --help` must not pull in torch or ray
    code = "import sys, lmrec.cli; sys.exit(int(any(m in sys.modules for m in ('torch', 'ray', 'transformers'))))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "--model", "popularity", "--set", "data.datset=demo"], "data.datset: unknown key"),
        (["evaluate", "--model", "popularity", "--set", "eval.ks=[0]"], "eval.ks"),
        (["evaluate", "--model", "popularity", "--set", "train.epochs"], "bad override 'train.epochs'"),
        (["evaluate", "--model", "popularity", "--dataset", "no-such-set"], "unknown dataset 'no-such-set'"),
        (["config", "missing.yaml"], "config file not found: missing.yaml"),
        (["evaluate", "--checkpoint", "/nonexistent/ckpt"], "config file not found"),
        (["evaluate"], "exactly one of --model"),
    ],
)
def test_bad_input_exits_nonzero_naming_the_problem(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmrec: error:") and message in err
    assert "Traceback" not in err


def test_malformed_data_file_is_named_and_no_report_is_left(tmp_path, capsys):
    bad = tmp_path / "ratings.csv"
    bad.write_text("user,item,ts\nu1,i1,100\nu2,i2,not-a-time\n")
    out = tmp_path / "report.json"
    rc = main(["evaluate", "--model", "popularity", "--set", f"data.path={bad}", "--set", "data.format=csv",
               "--set", "data.columns={timestamp: ts, user_id: user, item_id: item}", "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not-a-time" in err
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


def test_missing_column_is_named(tmp_path, capsys):
    f = tmp_path / "events.csv"
    f.write_text("customer,sku\nc1,s1\n")
    rc = main(["data", "--set", f"data.path={f}", "--set", "data.format=csv", "--set", "data.columns={user_id: user}"])
    assert rc == 2
    assert "'user'" in capsys.readouterr().err


def test_evaluate_writes_the_documented_report(tmp_path, capsys):
    out = tmp_path / "pop.json"
    assert main(["evaluate", "--model", "popularity", "--dataset", "demo", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["dataset"] == "demo" and rep["model"] == "popularity" and rep["split"] == "test"
    assert {"ndcg@10", "recall@10", "mrr@10", "auc", "coverage@10"} <= set(rep["metrics"])
    assert rep["exclude_seen"] is False
    printed = capsys.readouterr().out
    assert "popularity" in printed and f"{rep['metrics']['ndcg@10']:.4f}" in printed


def test_retrain_retention_keeps_the_newest_the_pinned_and_the_served_runs(tmp_path):
    from lmrec.cli import prune_runs

    def run(name, finished=True, pin=False):
        d = tmp_path / name
        (d / "artifact").mkdir(parents=True)
        if finished:
            (d / "artifact" / "manifest.json").write_text("{}")
        if pin:
            (d / "keep").write_text("")
        return d

    served = run("20261101-030000")
    pinned = run("20261102-030000", pin=True)
    old = [run(f"202611{day:02d}-030000") for day in range(3, 7)]
    failed = run("20261107-030000", finished=False)
    current = run("20261108-030000")
    later = run("20261109-030000")  # another run going on: newer than this one, never touched
    (tmp_path / "notes").mkdir()  # not a run: never touched
    (tmp_path / "current").symlink_to(served / "artifact")
    gone = prune_runs(tmp_path, 2, current, str(tmp_path / "current"))
    assert sorted(gone) == [*old[:3], failed]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([served.name, pinned.name, old[3].name, current.name, later.name, "notes", "current"])
    assert prune_runs(tmp_path, 2, current, str(tmp_path / "current")) == []


def test_retrain_refuses_a_negative_keep(capsys):
    assert main(["retrain", "configs/demo.yaml", "--out", "x", "--keep", "-1"]) == 2
    assert "--keep -1" in capsys.readouterr().err
