"""``lmrec bench``: the benchmarks' options and what each prints; each writes a JSON report (with the machine
it ran on) and a PNG. Argument parsing only at import (``lmrec --help`` stays instant); each benchmark's
module is imported when it runs."""

from __future__ import annotations

from pathlib import Path


def add_bench(sub, command) -> None:
    """The ``bench`` subcommands on ``sub`` (the CLI's subparsers); ``command(parent, name, help, func)`` makes
    one the way every lmrec subcommand is made."""
    p = command(sub, "bench", "benchmarks that write JSON + PNG reports", lambda a: 2)
    bench = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    q = command(bench, "quality", "baselines vs ID-SASRec vs the LM recommender, plus cold start", cmd_bench)
    q.add_argument("--dataset", action="append", metavar="NAME", help="a dataset to run (repeatable; default: scientific, ml-100k)")
    q.add_argument("--configs-dir", default="configs", help="where <dataset>.yaml and <dataset>-sasrec.yaml live")
    q.add_argument("--out", default="reports/quality", help="the report folder")
    q.add_argument("--quick", action="store_true", help="one short epoch per model: checks the pipeline, not quality")
    only = q.add_mutually_exclusive_group()
    only.add_argument("--no-cold-start", action="store_true", help="skip the held-out-items protocol")
    only.add_argument("--cold-start-only", action="store_true",
                      help="the held-out-items protocol only; into a report already in --out, only its cold-start "
                           "section is replaced (else the baselines are scored with it)")
    q.add_argument("--local", action="store_true", help="train in this process, without Ray (as `lmrec train --local`)")
    q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override for every model")
    q = command(bench, "scorer", "text-encoder latency: torch fp32 vs ONNX Runtime fp32 vs int8", cmd_bench)
    q.add_argument("--checkpoint", metavar="DIR", help="time this checkpoint's item text tower (default: --pretrained + identity projection)")
    q.add_argument("--pretrained", default="default", help="the LM when no checkpoint is given (default: the packaged MiniLM)")
    q.add_argument("--recipe", help="the int8 recipe (default: the first `lmrec export` tries; names in lmrec.export.RECIPES)")
    q.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32], metavar="N", help="texts per call")
    q.add_argument("--seq-len", type=int, nargs="+", default=[32, 128], metavar="N", help="tokens per text")
    q.add_argument("--threads", type=int, nargs="+", default=[1, 2], metavar="N",
                   help="intra-op threads, for torch and ONNX Runtime alike")
    q.add_argument("--repeats", type=int, default=100, help="timed calls per engine and cell (fewer when --cell-seconds runs out)")
    q.add_argument("--cell-seconds", type=float, default=30.0, help="time budget per cell for all engines together")
    q.add_argument("--cpu", default="auto", help="int8 kernels to target (see `lmrec export --cpu`)")
    q.add_argument("--out", default="reports/scorer", help="the report folder")
    r = command(bench, "retrieval", "exact vs FAISS candidate retrieval: latency, build time, memory, recall", cmd_bench)
    r.add_argument("--items", type=int, default=1_000_000, help="synthetic catalog size (small for a smoke run)")
    r.add_argument("--dim", type=int, default=128, help="vector dimension")
    r.add_argument("--clusters", type=int, default=1000, help="clusters the synthetic vectors are drawn around")
    r.add_argument("--queries", type=int, default=1000, help="timed queries")
    r.add_argument("--k", type=int, default=100, help="candidates per query")
    r.add_argument("--batch", type=int, default=32, help="queries per batched call")
    r.add_argument("--threads", type=int, metavar="N", help="torch + FAISS threads (default: every core)")
    r.add_argument("--out", default="reports/retrieval", help="the report folder")

    for name, help_ in (("serve", "the ranking graph under HTTP load (`serve run`): qps and latency vs an echo app, a "
                                  "no-op graph of the same shape and one process, per proxy mode, plus freshness"),
                        ("freshness", "event -> next recommendation, and new item -> recommendable, through `serve run`")):
        r = command(bench, name, help_, cmd_bench)
        r.add_argument("--serve-config", action="append", metavar="FILE",
                       help="a Serve YAML to run (repeatable; its artifact must exist; default: deployments/demo.yaml "
                            "and deployments/demo-colocated.yaml)")
        r.add_argument("--mode", action="append", choices=("default", "haproxy"),
                       help="a proxy mode (repeatable; default: both; haproxy = HAProxy + throughput-optimised)")
        if name == "serve":
            r.add_argument("--concurrency", type=int, nargs="+", metavar="N", help="concurrent clients per level (default: 1 16 64)")
            r.add_argument("--duration", type=float, default=15.0, help="seconds per concurrency level")
        r.add_argument("--against", metavar="CHECKOUT",
                       help="another lmrec checkout: each config also runs as that checkout has it (its deployments/ "
                            "file of the same name, its package first on PYTHONPATH), right after this one's")
        r.add_argument("--trials", type=int, default=50, help="freshness trials (events posted) per mode")
        r.add_argument("--k", type=int, default=10, help="recommendations per request")
        r.add_argument("--out", default=f"reports/{name}", help="the report folder")

    r = command(bench, "rollout", "a new model rolled out onto the running service (`serve deploy`) under load: "
                                  "failed requests, time to the new model, posted items re-encoded", cmd_bench)
    r.add_argument("--serve-config", default="deployments/demo.yaml", metavar="FILE", help="the Serve YAML to run (its artifact must exist)")
    nxt = r.add_mutually_exclusive_group(required=True)
    nxt.add_argument("--retrain", metavar="CONFIG.yaml", help="a training config: `lmrec retrain` it on the live store (the nightly loop)")
    nxt.add_argument("--to", metavar="DIR", help="an exported artifact to roll out instead")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="overrides for --retrain")
    r.add_argument("--items-before", type=int, default=200, help="items posted before the next model is made")
    r.add_argument("--items-after", type=int, default=50, help="items posted after it (only the old model encoded them)")
    r.add_argument("--concurrency", type=int, default=4, help="clients asking for recommendations through the switch")
    r.add_argument("--mode", default="haproxy", choices=("default", "haproxy"), help="the proxy mode")
    r.add_argument("--out", default="reports/rollout", help="the report folder")

    from lmrec.benchmarks import chaos, soak  # their options; their code runs when they run

    chaos.add_parser(bench, command)
    soak.add_parser(bench, command)

    r = command(bench, "startup", "seconds from `serve run` to /healthz 200, and each replica's peak RSS (and whether it "
                                  "loaded torch)", cmd_bench)
    r.add_argument("--serve-config", action="append", metavar="FILE",
                   help="a Serve YAML to start (repeatable; default: deployments/demo.yaml and deployments/demo-colocated.yaml)")
    r.add_argument("--against", metavar="CHECKOUT",
                   help="another lmrec checkout: each config also runs as that checkout has it (its deployments/ file of "
                        "the same name, its package first on PYTHONPATH), interleaved with this one")
    r.add_argument("--rounds", type=int, default=3, help="starts per config, interleaved")
    r.add_argument("--out", default="reports/startup", help="the report folder")

    r = command(bench, "loop", "simulated days: popularity, static vs real-time, each exploration policy, nightly "
                               "retraining; and off-policy estimates against online CTR", cmd_bench)
    r.add_argument("--artifact", default="runs/demo/artifact", metavar="DIR", help="an artifact trained on the demo world")
    r.add_argument("--world", default="configs/demo.yaml", metavar="CONFIG.yaml", help="the demo world it was trained on")
    r.add_argument("--days", type=int, default=3, help="simulated days")
    r.add_argument("--users", type=int, metavar="N", help="simulate only the first N users (a short run)")
    r.add_argument("--retrain", metavar="CONFIG.yaml", help="a training config: add the agent retrained every night on what it collected")
    r.add_argument("--pool", type=int, default=50, help="the re-ranked candidates a policy draws from")
    r.add_argument("--seed", type=int, default=0, help="the world's and the users' seed")
    r.add_argument("--out", default="reports/loop", help="the report folder")


def cmd_bench(args) -> int:
    """Run the chosen benchmark, with a progress line, and print its summary."""
    from lmrec.progress import activity

    with activity(f"bench {args.bench}"):
        return _bench(args)


def _bench(args) -> int:
    if args.bench == "scorer":
        from lmrec.benchmarks.scorer import format_report, run_scorer

        report = run_scorer(args.out, checkpoint=args.checkpoint, pretrained=args.pretrained, recipe=args.recipe,
                            batches=args.batch, seqs=args.seq_len, threads=args.threads, repeats=args.repeats,
                            cell_seconds=args.cell_seconds, cpu=args.cpu)
        print(format_report(report))
        print(f"wrote {args.out}/scorer.json, scorer.png")
    elif args.bench == "quality":
        from lmrec.benchmarks.quality import run_quality

        run_quality(args.out, args.configs_dir, args.dataset or None, args.quick, not args.no_cold_start, args.overrides, args.local,
                    trained=not args.cold_start_only)
        print(Path(args.out, "quality.md").read_text())
        print(f"wrote {args.out}/quality.json, quality.md, quality.png")
    elif args.bench in ("serve", "freshness"):
        from lmrec.benchmarks.serve import run_serve_bench, summary

        configs = args.serve_config or ["deployments/demo.yaml", "deployments/demo-colocated.yaml"]
        modes = args.mode or ["default", "haproxy"]
        conc = (args.concurrency or [1, 16, 64]) if args.bench == "serve" else None
        report = run_serve_bench(args.out, configs, modes, conc, args.duration if args.bench == "serve" else 0.0,
                                 k=args.k, trials=args.trials, load=args.bench == "serve", against=args.against)
        print(summary(report))
        print(f"wrote {args.out}/{args.bench}.json, {args.bench}.png")
    elif args.bench == "rollout":
        from lmrec.benchmarks.rollout import run_rollout_bench, summary

        report = run_rollout_bench(args.out, args.serve_config, args.retrain, args.to, args.items_before, args.items_after,
                                   args.concurrency, args.mode, args.overrides)
        print(summary(report))
        print(f"wrote {args.out}/rollout.json, rollout.png")
    elif args.bench == "startup":
        from lmrec.benchmarks.startup import run_startup, summary

        configs = []
        for name in args.serve_config or ["deployments/demo.yaml", "deployments/demo-colocated.yaml"]:
            configs.append((f"this:{Path(name).name}", Path(name), None))
            if args.against:
                other = Path(args.against) / "deployments" / Path(name).name
                configs.append((f"against:{Path(name).name}", other, str((Path(args.against) / "platform").resolve())))
        report = run_startup(args.out, configs, args.rounds)
        print(summary(report))
        print(f"wrote {args.out}/startup.json, startup.png")
    elif args.bench == "loop":
        from lmrec.benchmarks.loop import bench_loop, summary

        report = bench_loop(args.out, args.artifact, args.world, args.days, args.users, args.retrain, args.seed, pool=args.pool)
        print(summary(report))
        print(f"wrote {args.out}/loop.json, loop_days.json, loop_days.png")
    elif args.bench == "retrieval":
        from lmrec.benchmarks.retrieval import run_retrieval, summary

        report = run_retrieval(args.out, args.items, args.dim, args.clusters, args.queries, args.k, args.batch, args.threads)
        print(summary(report))
        print(f"wrote {args.out}/retrieval.json, retrieval.png")
    return 0
