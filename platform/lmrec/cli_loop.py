"""The closed loop's commands: ``lmrec ope`` (a candidate's value estimated from a service's logs before it is
rolled out), ``lmrec experiment report`` (an experiment's online result, per variant) and ``lmrec simulate``
(simulated users against a running service, or the ranking core in process). Parsing only at import; the work
is imported when a command runs."""

from __future__ import annotations

import json
from pathlib import Path

from lmrec.errors import LmrecError

ESTIMATORS = ("ips", "snips", "dm", "dr", "iips", "rips")


def _reward(spec: list[str] | None) -> dict | None:
    """``--reward click=1 --reward purchase=5`` -> a RewardConfig's weights."""
    if not spec:
        return None
    weights = {}
    for item in spec:
        name, _, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise LmrecError(f"--reward {item}: give EVENT_TYPE=WEIGHT, e.g. click=1 or purchase=5") from None
    return {"weights": weights}


def _data_dir(value: str) -> Path:
    path = Path(value)
    if not (path / "logs" / "impressions").is_dir():
        raise LmrecError(f"--data {value}: no logs/impressions/ in it (`lmrec collect --out DIR` writes one from a service's store)")
    return path


def cmd_ope(args) -> int:
    from lmrec.progress import activity
    from lmrec.replay import run_ope
    from lmrec.reports import write_json

    with activity("replaying the candidate on the logged contexts"):
        report = run_ope(_data_dir(args.data), args.policy, args.artifact, _reward(args.reward), tuple(args.estimator or ESTIMATORS),
                         args.bootstrap, args.surface)
    rep = report["report"]
    print(f"candidate {rep['policy']} on {rep['recommendations']} logged recommendations ({rep['slots']} slots); "
          f"the loggers' own reward per slot {rep['logged_value']:.4f}; effective sample size {rep['effective_sample_size']:.0f}")
    for name, iv in rep["estimates"].items():
        print(f"  {name:6s} {iv['estimate']:.4f}  95% [{iv['lower']:.4f}, {iv['upper']:.4f}]")
    for name, why in rep["refused"].items():
        print(f"  {name:6s} refused: {why}")
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0


def cmd_experiment(args) -> int:
    from lmrec.loop.experiment import experiment_report
    from lmrec.loop.logs import RewardConfig, read_logs
    from lmrec.reports import write_json

    logged = read_logs(_data_dir(args.data) / "logs", RewardConfig(**(_reward(args.reward) or {})))
    ope = {}
    for item in args.ope or []:
        variant, _, path = item.partition("=")
        if not path or not Path(path).is_file():
            raise LmrecError(f"--ope {item}: give VARIANT=REPORT.json, the `lmrec ope --out` report made for that variant")
        ope[variant] = json.loads(Path(path).read_text())
    report = experiment_report(logged, ope, args.control, surface=args.surface)
    for name, row in report["variants"].items():
        line = (f"{name:16s} {'+'.join(row['models'])} {'+'.join(row['policies'])}  users {row['users']:6d}  "
                f"CTR {row['ctr']:.4f}  95% [{row['ctr_95'][0]:.4f}, {row['ctr_95'][1]:.4f}]")
        if "vs_control" in row:
            line += f"  vs {report['control']}: {row['vs_control']['difference']:+.4f} (p = {row['vs_control']['p_value']:.3f})"
        if "ope_before" in row:
            line += "  OPE before: " + ", ".join(f"{k} {v['estimate']:.4f}" for k, v in row["ope_before"].items())
        print(line)
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0


def cmd_simulate(args) -> int:
    from lmrec.config import load_config
    from lmrec.loop.logs import write_logs
    from lmrec.loop.simulator import HttpAgent, SimConfig, Simulator, World
    from lmrec.progress import activity
    from lmrec.reports import write_json

    world_config = args.world
    if args.artifact and not world_config:  # the world the artifact was trained on, its users seeding the store
        from lmrec.service import seed_from_artifact

        world_config = seed_from_artifact(Path(args.artifact), Path(args.out))
        if world_config is None:
            raise LmrecError(f"--artifact {args.artifact}: its manifest names no training data; give --world CONFIG.yaml")
        world_config = str(world_config)
    cfg = load_config([world_config] if world_config else [], [] if world_config else ["data.dataset=demo"])
    if cfg.data.dataset != "demo":
        raise LmrecError(f"{'--world ' + args.world if args.world else '--artifact ' + str(args.artifact)}: the simulator "
                         "runs the demo world (data.dataset: demo)")
    sim = SimConfig(world=cfg.data.synthetic, days=args.days, k=args.k, seed=args.seed)
    policy = None
    if args.policy:
        import yaml

        policy = yaml.safe_load(Path(args.policy).read_text())
    if args.url:
        import os

        token = os.environ.get(args.token_env) if args.token_env else None

        def make(world, simulator):
            return HttpAgent(args.url, token)
    else:
        from lmrec.benchmarks.loop import RankerAgent

        # the run's own store, fresh: one left by an earlier run in this folder would carry its events on
        for leftover in Path(args.out).glob("store.sqlite*"):
            leftover.unlink()

        def make(world, simulator):
            # sharded, every shard's recommendations go to the one store: their ids name the shard
            name = f"realtime-{simulator.shard}" if simulator.shard else "realtime"
            return RankerAgent(args.artifact, Path(args.out) / "store.sqlite", world_config, policy, args.pool, name=name)
    with activity(f"simulating {args.days} day(s)"):
        if args.shards > 1:
            from lmrec.loop.distributed import run_sharded

            result = run_sharded(sim, make, args.shards, shared_service=bool(args.url))
        else:
            world = World.build(sim)
            simulator = Simulator(world, None, users=range(args.users) if args.users else None)
            simulator.agent = make(world, simulator)
            result = simulator.run()
    out = Path(args.out)
    write_logs(out / "logs", result.impressions, result.events)
    summary = {"steps": len(result.steps), "slots": len(result.shown), "ctr": float(result.shown["clicked"].mean()) if len(result.shown) else None,
               "steps_per_second": round(result.steps_per_second, 1), "seconds": round(result.seconds, 1),
               "agent": args.url or str(args.artifact), "config": sim.model_dump()}
    write_json(out / "simulate.json", summary)
    print(f"{summary['steps']} recommendations, CTR {summary['ctr']:.4f}, {summary['steps_per_second']} steps/s; "
          f"wrote {out}/simulate.json and the logs in {out}/logs")
    return 0


def add_loop_commands(sub, command) -> None:
    """``ope``, ``experiment`` and ``simulate`` on the CLI's subparsers (``command`` makes each one)."""
    p = command(sub, "ope", "estimate a candidate policy or model from a service's logs, before rolling it out", cmd_ope,
                "Off-policy evaluation: replay the candidate (an artifact, or a ranking config on --artifact) on every "
                "logged recommendation's context and estimate its click-through from the logged propensities: IPS, "
                "SNIPS, DM, DR, and the slate estimators IIPS and RIPS, each with a bootstrap 95 percent interval, or the "
                "reason it refused (propensities missing, or the candidate puts mass where the logger never did).")
    p.add_argument("--data", required=True, metavar="DIR", help="`lmrec collect`'s output: logs/ and the events")
    p.add_argument("--policy", required=True, metavar="ARTIFACT|CONFIG.yaml",
                   help="the candidate: an exported artifact, or a ranking config / policy YAML (on --artifact)")
    p.add_argument("--artifact", metavar="DIR", help="the model a CONFIG.yaml candidate ranks with (usually the served one)")
    p.add_argument("--reward", action="append", metavar="TYPE=W", help="event weights (repeatable; default: click=1)")
    p.add_argument("--estimator", action="append", choices=ESTIMATORS, help="estimators to run (repeatable; default: all)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per interval")
    p.add_argument("--surface", choices=("recommend", "related"), default="recommend", help="which logged answers")
    p.add_argument("--out", metavar="FILE.json", help="also write the report here")

    p = command(sub, "experiment", "an experiment's online result from a service's logs", lambda a: 2)
    e = p.add_subparsers(dest="experiment", required=True, metavar="ACTION")
    q = command(e, "report", "per variant: CTR with its 95 percent interval, the difference to the control with a "
                             "permutation test, and the OPE estimate made beforehand", cmd_experiment)
    q.add_argument("--data", required=True, metavar="DIR", help="`lmrec collect`'s output: logs/")
    q.add_argument("--ope", action="append", metavar="VARIANT=REPORT.json", help="an `lmrec ope` report made for a variant")
    q.add_argument("--control", metavar="VARIANT", help="the variant the others are compared with (default: control, else the first)")
    q.add_argument("--reward", action="append", metavar="TYPE=W", help="event weights (repeatable; default: click=1)")
    q.add_argument("--surface", choices=("recommend", "related"), default="recommend", help="which logged answers")
    q.add_argument("--out", metavar="FILE.json", help="also write the report here")

    p = command(sub, "simulate", "simulated users (the demo world) against a running service or the ranking core", cmd_simulate,
                "Simulated users with drifting tastes, position-biased clicks, returning sessions and new items "
                "arriving, against a running service (--url) or the ranking core in process (--artifact); "
                "--shards N splits the users over N Ray actors. Writes the logged-bandit logs and a summary.")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--url", help="a running service, e.g. http://127.0.0.1:8000")
    who.add_argument("--artifact", metavar="DIR", help="an artifact trained on the demo world, ranked in process")
    p.add_argument("--token-env", default="LMREC_API_TOKEN", metavar="VAR", help="the variable holding the service's token")
    p.add_argument("--world", metavar="CONFIG.yaml", help="the demo world's config (default: with --artifact, the data it was trained on; else the demo's defaults)")
    p.add_argument("--policy", metavar="POLICY.yaml", help="in process: the exploration policy (default: greedy)")
    p.add_argument("--pool", type=int, default=50, help="in process: the re-ranked candidates a policy draws from")
    p.add_argument("--days", type=int, default=1, help="simulated days")
    p.add_argument("--users", type=int, metavar="N", help="simulate only the first N users")
    p.add_argument("--k", type=int, default=10, help="recommendations per request")
    p.add_argument("--shards", type=int, default=1, help="Ray actors to split the users over")
    p.add_argument("--seed", type=int, default=0, help="the world's and the users' seed")
    p.add_argument("--out", required=True, metavar="DIR", help="simulate.json and logs/")
