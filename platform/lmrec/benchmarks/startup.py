"""``lmrec bench startup``: how fast a service comes up and how much memory its replicas hold. ``serve run``
of each YAML, in turn, ``rounds`` times (interleaved, so a busy moment hurts every config alike): seconds from
the start until ``/healthz`` answers 200, then each replica process's resident and peak memory (VmRSS, VmHWM
from /proc) and whether it imported torch. JSON + PNG.

``--against CHECKOUT`` also runs each config as another checkout has it, that checkout's package first on the
path (``serve run`` and its replicas inherit it): an earlier version of lmrec measured beside this one, on the
same machine, in one run.
"""

from __future__ import annotations

import time
from pathlib import Path

from lmrec.errors import LmrecError


def _memory(pid: int) -> dict:
    """Resident and peak resident set (MB) of a process, and whether it loaded torch (its maps name libtorch)."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = {line.split(":")[0]: line.split(":")[1].strip() for line in status.splitlines() if ":" in line}
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {"rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1), "peak_rss_mb": round(int(fields["VmHWM"].split()[0]) / 1024, 1),
            "torch_loaded": "libtorch" in maps}


def run_startup(out: str | Path, configs: list[tuple[str, Path, str | None]], rounds: int = 3, timeout: float = 600) -> dict:
    """``configs``: (label, Serve YAML, PYTHONPATH or None). Each run starts, measures and stops its service."""
    import yaml

    from lmrec.benchmarks.harness import replicas, service_config
    from lmrec.benchmarks.serve import Service
    from lmrec.loop.bench import machine
    from lmrec.reports import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in configs}
    for r in range(rounds):
        for label, config, pythonpath in configs:
            state = out / f"state-{label.replace(':', '-')}-{r}"
            state.mkdir(parents=True, exist_ok=True)
            path, port, _ = service_config(Path(config), state)
            env = {"PYTHONPATH": pythonpath} if pythonpath else {}
            started = time.monotonic()
            service = Service(path, port, env, state / "serve.log")
            try:
                ready = service.wait_ready(timeout)
                # this service's replicas only (below its `serve run`): another Ray on the machine is not measured
                found = replicas(service.proc.pid)
                measured = {name if len(pids) == 1 else f"{name}-{i}": _memory(pid)
                            for name, pids in found.items() for i, pid in enumerate(pids)}
            finally:
                service.stop()
            if not measured:
                raise LmrecError(f"{config}: no Serve replica found below `serve run`; its log: {state / 'serve.log'}")
            runs[label].append({"round": r, "seconds_to_healthz_200": round(ready or time.monotonic() - started, 2), "replicas": measured})
    summary = {}
    for label, rows in runs.items():
        names = sorted({n for row in rows for n in row["replicas"]})
        summary[label] = {
            "seconds_to_healthz_200": sorted(row["seconds_to_healthz_200"] for row in rows),
            "peak_rss_mb": {n: sorted(row["replicas"][n]["peak_rss_mb"] for row in rows if n in row["replicas"]) for n in names},
            "torch_loaded": {n: any(row["replicas"].get(n, {}).get("torch_loaded") for row in rows) for n in names},
        }
    report = {"benchmark": "startup", "configs": [{"label": lbl, "config": str(c), "pythonpath": p} for lbl, c, p in configs],
              "rounds": rounds, "runs": runs, "summary": summary, "machine": machine(),
              "yaml": {lbl: yaml.safe_load(Path(c).read_text()) for lbl, c, _ in configs}}
    write_json(out / "startup.json", report)
    _plot(summary, out / "startup.png")
    return report


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = list(summary)
    a.boxplot([summary[lbl]["seconds_to_healthz_200"] for lbl in labels], tick_labels=labels)
    a.set_ylabel("seconds to /healthz 200")
    names = sorted({n for s in summary.values() for n in s["peak_rss_mb"]})
    width = 0.8 / max(1, len(labels))
    for j, lbl in enumerate(labels):
        xs = [i + j * width for i in range(len(names))]
        ys = [min(summary[lbl]["peak_rss_mb"].get(n, [0])) for n in names]
        b.bar(xs, ys, width, label=lbl)
    b.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(names))], names, fontsize=8)
    b.set_ylabel("peak RSS per replica (MB, lowest of the rounds)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(report: dict) -> str:
    lines = []
    for label, s in report["summary"].items():
        lines.append(f"{label}: /healthz 200 after {s['seconds_to_healthz_200']} s")
        for name, peaks in s["peak_rss_mb"].items():
            lines.append(f"  {name:10s} peak RSS {peaks} MB{'  (torch loaded)' if s['torch_loaded'][name] else ''}")
    return "\n".join(lines)
