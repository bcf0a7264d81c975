"""The `lmrec` command: one spelling per option, defaults in --help, exit codes, one-line messages that name
what was wrong, reports written whole or not at all, progress on the long steps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmrec.cli import build_parser, exit_status, main

REPO = Path(__file__).resolve().parents[1]


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_help_is_instant_and_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("evaluate", "train", "tune", "demo", "bench", "datasets", "config", "serve", "data", "export"):
        assert cmd in out
    # no heavy import at module top: `lmrec --help` must not pull in torch or ray
    code = ("import sys, lmrec.cli; lmrec.cli.build_parser(); "
            "sys.exit(int(any(m in sys.modules for m in ('torch', 'ray', 'transformers', 'pandas'))))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_version(capsys):
    from lmrec import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"lmrec {__version__}"


def test_verbose_anywhere():
    parser = build_parser()
    assert parser.parse_args(["-v", "datasets"]).verbose is True
    assert parser.parse_args(["datasets", "-v"]).verbose is True
    assert parser.parse_args(["bench", "retrieval", "--items", "5", "-v"]).verbose is True
    assert parser.parse_args(["datasets"]).verbose is False


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # unwrapped


def test_every_subcommand_has_a_description_and_shows_its_defaults(capsys):
    text = _help(capsys, "datasets")
    assert "List the named datasets" in text
    assert "--split {valid,test} the targets to rank (default: test)" in _help(capsys, "evaluate")
    rec = _help(capsys, "recommend")
    assert "recommendations per user (default: 10)" in rec and "users per pass through the stages (default: 256)" in rec
    assert "the report folder (default: reports/quality)" in _help(capsys, "bench", "quality")
    assert "(default: 1 8 32)" in _help(capsys, "bench", "scorer")
    assert "the HTTP port (default: 8000)" in _help(capsys, "serve")


def test_one_spelling_per_option():
    parser = build_parser()
    # lists repeat instead of comma lists
    args = parser.parse_args(["bench", "quality", "--dataset", "scientific", "--dataset", "ml-100k"])
    assert args.dataset == ["scientific", "ml-100k"]
    args = parser.parse_args(["bench", "serve", "--serve-config", "a.yaml", "--serve-config", "b.yaml", "--mode", "haproxy",
                              "--concurrency", "1", "16"])
    assert args.serve_config == ["a.yaml", "b.yaml"] and args.mode == ["haproxy"] and args.concurrency == [1, 16]
    assert parser.parse_args(["bench", "rollout", "--to", "x", "--mode", "default"]).mode == "default"
    assert parser.parse_args(["bench", "scorer", "--batch", "1", "4", "--threads", "2"]).batch == [1, 4]
    # --resume: "continue where it stopped" in train and tune alike (train may name the checkpoint)
    assert parser.parse_args(["train", "c.yaml", "--resume"]).resume == "<last>"
    assert parser.parse_args(["train", "c.yaml", "--resume", "ckpt"]).resume == "ckpt"
    assert parser.parse_args(["tune", "s.yaml", "--resume"]).resume is True
    for old in (["bench", "quality", "--datasets", "a,b"], ["train", "c.yaml", "--dataset", "a", "--dataset", "b"], ["bench", "serve", "--modes", "haproxy"],
                ["bench", "serve", "--config", "a.yaml"], ["collect", "--store-url", "redis://x", "--out", "o"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(old)
        assert exc.value.code == 2


def test_train_needs_a_config_or_an_explicit_choice_of_defaults(capsys):
    assert main(["train"]) == 2
    assert "lmrec train needs a training config" in _err(capsys)
    assert main(["train", "--dataset", "demo"]) == 2
    assert "--defaults" in _err(capsys)


def test_defaults_match_the_shipped_configs():
    """A value most shipped configs set, all alike, is the built-in default (the LM layers fine-tuned:
    tests/test_shipped_configs.py)."""
    from lmrec.config import Config

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
        return out

    shipped = [flat(yaml.safe_load(f.read_text())) for f in sorted((REPO / "configs").glob("*.yaml"))]
    defaults = flat(Config().model_dump(mode="json"))
    checked = 0
    for key, default in defaults.items():
        values = [c[key] for c in shipped if key in c]
        if len(values) > len(shipped) / 2 and len(set(map(str, values))) == 1:
            assert values[0] == default, f"{key}: every shipped config says {values[0]!r}, the default is {default!r}"
            checked += 1
    assert checked >= 3  # the check ran over something


def test_the_default_store_is_where_the_shipped_deployments_keep_it():
    """No store flag: the SQLite file beside the artifact, as every shipped deployment YAML has it."""
    from lmrec.service import store_args

    seen = 0
    for f in sorted((REPO / "deployments").glob("*.yaml")):
        args = yaml.safe_load(f.read_text())["applications"][0]["args"]
        if args.get("store_url_env") or str(args["artifact"]).startswith("/"):
            continue  # Redis (prod)
        got = store_args(None, (REPO / args["artifact"]).resolve())
        assert Path(got["store_path"]) == (REPO / args["store_path"]).resolve(), f.name
        seen += 1
    assert seen >= 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "--model", "popularity", "--set", "data.datset=demo"], "data.datset: unknown key"),
        (["evaluate", "--model", "popularity", "--set", "eval.ks=[0]"], "eval.ks"),
        (["evaluate", "--model", "popularity", "--set", "train.epochs"], "bad override 'train.epochs'"),
        (["evaluate", "--model", "popularity", "--dataset", "no-such-set"], "unknown dataset 'no-such-set'"),
        (["config", "--dataset", "movielens"], "data.dataset: unknown dataset 'movielens'"),
        (["config", "missing.yaml"], "config file not found: missing.yaml"),
        (["evaluate", "--checkpoint", "/nonexistent/ckpt"], "--checkpoint /nonexistent/ckpt: no such checkpoint directory"),
        (["evaluate", "--artifact", "/nonexistent/art"], "--artifact /nonexistent/art: no such artifact directory"),
        (["export", "--checkpoint", "/nonexistent/ckpt", "--out", "x"], "--checkpoint /nonexistent/ckpt: no such checkpoint"),
        (["recommend", "--artifact", "/nonexistent/art", "--all", "--out", "x.parquet"],
         "--artifact /nonexistent/art: no such artifact directory"),
        (["serve", "--artifact", "/nonexistent/art"], "--artifact /nonexistent/art: no such artifact directory"),
        (["train", "configs/demo.yaml", "--resume", "/nonexistent/ckpt"], "--resume /nonexistent/ckpt: no such checkpoint directory"),
        (["tune", "/nonexistent/spec.yaml"], "/nonexistent/spec.yaml: no such search file"),
        (["collect", "--out", "x"], "--store is required"),
        (["evaluate"], "exactly one of --model"),
    ],
)
def test_bad_input_is_one_line_naming_the_problem_exit_2(capsys, monkeypatch, argv, message):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("LMREC_REDIS_URL", raising=False)
    assert main(argv) == 2
    err = _err(capsys)
    assert err.startswith("lmrec: error:") and message in err
    if "invalid config" not in err:  # a config error lists each bad key on a line of its own
        assert err.count("\n") == 1


def test_a_file_that_is_not_a_sqlite_store_is_named(tmp_path, capsys):
    art = tmp_path / "art"
    art.mkdir()
    (art / "manifest.json").write_text("{}")
    bad = tmp_path / "events.csv"
    bad.write_text("user,item\nu1,i1\n")
    assert main(["recommend", "--artifact", str(art), "--store", str(bad), "--all", "--out", str(tmp_path / "r.parquet")]) == 2
    assert f"--store {bad}: not a SQLite database" in _err(capsys)
    assert main(["collect", "--store", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "a directory" in _err(capsys)
    art2 = tmp_path / "not-art"
    art2.mkdir()
    assert main(["recommend", "--artifact", str(art2), "--all", "--out", "x.parquet"]) == 2
    assert "not an artifact (manifest.json is missing" in _err(capsys)


def test_k8s_validate_outside_the_checkout_says_where_it_looked(tmp_path, capsys, monkeypatch):
    pytest.importorskip("jsonpatch")
    pytest.importorskip("kubernetes_validate")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LMREC_K8S_SCHEMAS", raising=False)
    assert main(["k8s", "validate", "--serve-config", str(REPO / "deployments" / "prod.yaml")]) == 2
    assert "--root k8s: no base/ there; run from the lmrec checkout or pass --root" in _err(capsys)
    assert main(["k8s", "validate", "--root", str(REPO / "k8s"), "--serve-config", str(REPO / "deployments" / "prod.yaml")]) == 2
    err = _err(capsys)
    assert "KubeRay CRD JSON schemas not found" in err and "$LMREC_K8S_SCHEMAS" in err and "--schemas DIR" in err
    assert main(["k8s", "validate"]) == 2
    assert "--serve-config deployments/prod.yaml: no such file" in _err(capsys)


def test_failures_exit_1_bad_input_2():
    from lmrec.errors import ConfigError, DataError, Failure, LmrecError, StoreUnavailableError

    assert exit_status(Failure("the service did not start")) == 1
    assert exit_status(StoreUnavailableError("redis down")) == 1
    for bad in (LmrecError("x"), ConfigError("x"), DataError("x")):
        assert exit_status(bad) == 2


def test_malformed_data_file_is_named_and_no_report_is_left(tmp_path, capsys):
    bad = tmp_path / "ratings.csv"
    bad.write_text("user,item,ts\nu1,i1,100\nu2,i2,not-a-time\n")
    out = tmp_path / "report.json"
    rc = main(["evaluate", "--model", "popularity", "--set", f"data.path={bad}", "--set", "data.format=csv",
               "--set", "data.columns={timestamp: ts, user_id: user, item_id: item}", "--out", str(out)])
    assert rc == 2
    err = _err(capsys)
    assert str(bad) in err and "not-a-time" in err
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


def test_missing_column_is_named(tmp_path, capsys):
    f = tmp_path / "events.csv"
    f.write_text("customer,sku\nc1,s1\n")
    rc = main(["data", "--set", f"data.path={f}", "--set", "data.format=csv", "--set", "data.columns={user_id: user}"])
    assert rc == 2
    assert "'user'" in _err(capsys)


def test_data_says_what_it_read_as_what(fixtures_dir, tmp_path, capsys, monkeypatch):
    """`lmrec data` prints the columns used for each field and the conventions that filled in the rest, items
    without text, filterable attributes, and users that only train; with a progress line on stderr."""
    monkeypatch.setenv("LMREC_PROGRESS", "1")
    tab = fixtures_dir / "tabular"
    (tmp_path / "shop.yaml").write_text(yaml.safe_dump({"data": {
        "path": str(tab / "events.csv"), "format": "csv", "items_path": str(tab / "items.csv"),
        "columns": {"user_id": "uid", "item_id": "sku", "timestamp": "when"}}}))
    assert main(["data", str(tmp_path / "shop.yaml")]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "columns   user_id <- uid, item_id <- sku, timestamp <- when, event <- (none: every event is a click), value <- (none)" in out
    assert "not read: action, score" in out
    assert "id column 'sku'" in out and "with text: 3; without: 0" in out
    assert "without events: 1 (recommended from their text alone" in out  # 0099, in the items file only
    assert "filterable attributes when served: name, brand, category" in out
    assert "users with valid/test targets: 1; training only: 1 (fewer than 3 events)" in out  # u-2 has one event
    assert "loading the data: done in" in captured.err
    assert main(["data", str(tmp_path / "shop.yaml"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["split"]["users_train_only"] == 1 and rep["items_without_text"] == 0


def test_evaluate_writes_the_documented_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LMREC_PROGRESS", "1")  # as on a terminal
    out = tmp_path / "pop.json"
    assert main(["evaluate", "--model", "popularity", "--dataset", "demo", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["dataset"] == "demo" and rep["model"] == "popularity" and rep["split"] == "test"
    assert {"ndcg@10", "recall@10", "mrr@10", "auc", "coverage@10"} <= set(rep["metrics"])
    assert rep["exclude_seen"] is False
    captured = capsys.readouterr()
    assert "popularity" in captured.out and f"{rep['metrics']['ndcg@10']:.4f}" in captured.out
    assert "evaluating on the test split: done in" in captured.err


def test_serve_writes_and_prints_the_colocated_config(tmp_path, capsys, monkeypatch):
    """`lmrec serve --print-config`: the co-located layout of deployments/demo-colocated.yaml, absolute paths, the
    store beside the artifact, seeded from the data the artifact was trained on; nothing started."""
    monkeypatch.delenv("LMREC_REDIS_URL", raising=False)
    art = tmp_path / "run" / "artifact"
    art.mkdir(parents=True)
    (art / "manifest.json").write_text(json.dumps({"config": {"data": {"dataset": "demo"}}}))
    assert main(["serve", "--artifact", str(art), "--port", "8123", "--print-config"]) == 0
    printed = capsys.readouterr().out
    written = tmp_path / "run" / "serve" / "serve.yaml"
    spec = yaml.safe_load(written.read_text())
    assert yaml.safe_load(printed) == spec
    args = spec["applications"][0]["args"]
    assert args["artifact"] == str(art) and args["store_path"] == str(tmp_path / "run" / "serve" / "state.sqlite")
    assert args["colocate"] is True and spec["http_options"]["port"] == 8123
    assert "store_url_env" in args and args["store_url_env"] is None  # a set $LMREC_REDIS_URL must not override it
    assert yaml.safe_load(Path(args["seed_config"]).read_text()) == {"data": {"dataset": "demo"}}
    assert spec["logging_config"]["log_level"] == "WARNING"
    # the same deployments as the shipped co-located YAML (a change to one is a change to both)
    shipped = yaml.safe_load((REPO / "deployments" / "demo-colocated.yaml").read_text())["applications"][0]
    assert spec["applications"][0]["deployments"] == shipped["deployments"]
    assert args["colocate"] is shipped["args"]["colocate"] is True
    assert "serve run" in printed
    # a Redis URL from the environment is named in the config, never copied into it (a secret)
    monkeypatch.setenv("LMREC_REDIS_URL", "redis://:secret@redis:6379/0")
    assert main(["serve", "--artifact", str(art), "--print-config", "--out", str(tmp_path / "k8s")]) == 0
    assert "secret" not in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "k8s" / "serve.yaml").read_text())["applications"][0]["args"]["store_url_env"] == "LMREC_REDIS_URL"
    # an explicit --store path wins over the variable
    store = tmp_path / "mine.sqlite"
    assert main(["serve", "--artifact", str(art), "--store", str(store), "--print-config", "--out", str(tmp_path / "p")]) == 0
    args = yaml.safe_load((tmp_path / "p" / "serve.yaml").read_text())["applications"][0]["args"]
    assert args["store_path"] == str(store) and args["store_url_env"] is None
    # --ranking replaces the Ingress's ranking config; a bad one is refused naming the field
    ranking = tmp_path / "ranking.yaml"
    ranking.write_text("policy: {kind: epsilon, epsilon: 0.2}\npool: 30\n")
    assert main(["serve", "--artifact", str(art), "--ranking", str(ranking), "--print-config", "--out", str(tmp_path / "r")]) == 0
    ingress = yaml.safe_load((tmp_path / "r" / "serve.yaml").read_text())["applications"][0]["deployments"][0]
    assert ingress["name"] == "Ingress" and ingress["user_config"]["ranking"] == {"policy": {"kind": "epsilon", "epsilon": 0.2}, "pool": 30}
    capsys.readouterr()
    ranking.write_text("policy: {kind: epsilon, epsilon: 2}\n")
    assert main(["serve", "--artifact", str(art), "--ranking", str(ranking), "--print-config", "--out", str(tmp_path / "r2")]) == 2
    assert "--ranking" in (err := _err(capsys)) and "epsilon" in err and "Traceback" not in err
    # --model NAME=ARTIFACT: a challenger in the app's models: args; a missing one is named
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text("{}")
    assert main(["serve", "--artifact", str(art), "--model", f"next={other}", "--print-config", "--out", str(tmp_path / "m")]) == 0
    assert yaml.safe_load((tmp_path / "m" / "serve.yaml").read_text())["applications"][0]["args"]["models"] == {"next": str(other)}
    capsys.readouterr()
    assert main(["serve", "--artifact", str(art), "--model", f"next={tmp_path / 'nothing'}", "--print-config"]) == 2
    assert "--model" in (err := _err(capsys)) and "no such artifact directory" in err
    assert main(["serve", "--artifact", str(art), "--model", "next", "--print-config"]) == 2
    assert "NAME=ARTIFACT" in _err(capsys)


def test_serve_refuses_an_artifact_serving_would_refuse_before_ray_starts(tmp_path, capsys):
    art = tmp_path / "artifact"
    art.mkdir()
    (art / "manifest.json").write_text(json.dumps({"format": "lmrec-artifact", "gate": {"passed": False, "failed": ["x"]}}))
    assert main(["serve", "--artifact", str(art), "--port", "8123"]) == 2
    err = _err(capsys)
    assert f"lmrec: error: {art}" in err and ("gate" in err or "format" in err)
    assert not (tmp_path / "serve" / "serve.yaml").exists()  # nothing written, nothing started


def test_serve_refuses_a_port_in_use(tmp_path, capsys):
    import socket

    art = tmp_path / "artifact"
    art.mkdir()
    (art / "manifest.json").write_text("{}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--artifact", str(art), "--port", str(port)]) == 2
    assert f"--port {port}: something already answers there" in _err(capsys)


def test_retrain_refuses_a_negative_keep(capsys):
    assert main(["retrain", "configs/demo.yaml", "--out", "x", "--keep", "-1"]) == 2
    assert "--keep -1" in _err(capsys)


def test_retrain_retention_keeps_the_newest_the_pinned_and_the_served_runs(tmp_path):
    from lmrec.retrain import prune_runs

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


def test_write_json_is_atomic(tmp_path):
    from lmrec.reports import write_json

    path = write_json(tmp_path / "deep" / "r.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and not list(path.parent.glob(".*tmp"))
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1} and not list(path.parent.glob(".*tmp"))  # the old one intact


def test_a_reader_that_leaves_early_is_no_error():
    """`lmrec data ... | head`: the reader is gone before lmrec writes; no BrokenPipeError traceback, status 0."""
    code = "from lmrec.cli import main; raise SystemExit(main(['data', '--dataset', 'demo']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # gone before the dataset is loaded, so the first print meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(120) == 0 and "Traceback" not in err and "BrokenPipe" not in err
