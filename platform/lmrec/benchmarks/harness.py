"""What the drills (``lmrec bench chaos``) and the soak run against: the process tree of their own ``serve run``
(its Serve replicas found by process title, their memory, ``kill -9``), a ``redis-server`` of their own, and
the service's YAML as they run it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import yaml

from lmrec.errors import LmrecError

REPLICA = re.compile(r"^ray::ServeReplica:(?P<app>[^:\s]+):(?P<deployment>[A-Za-z0-9_-]+)")


# ------------------------------------------------------------------------------------------ processes
def _parents() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (children, theirs, ...)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def replicas(root: int, app: str = "lmrec") -> dict[str, list[int]]:
    """The Serve replica processes below ``root`` (a ``serve run``), by deployment name."""
    out: dict[str, list[int]] = {}
    for pid in descendants(root):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        m = REPLICA.match(title)
        if m and m["app"] == app:
            out.setdefault(m["deployment"], []).append(pid)
    return out


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def kill_replicas(root: int, deployment: str, app: str = "lmrec") -> list[int]:
    """``kill -9`` every replica of ``deployment`` below ``root``; the pids killed."""
    pids = replicas(root, app).get(deployment, [])
    if not pids:
        raise LmrecError(f"no replica of {deployment} found under `serve run` (pid {root})")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


# ------------------------------------------------------------------------------------------ redis
class RedisServer:
    """A ``redis-server`` of the benchmark's own on a free port, its append-only file fsynced on every write
    (an acknowledged write is on disk), killed and started again on the same files."""

    def __init__(self, workdir: Path, binary: str = "redis-server"):
        if shutil.which(binary) is None:
            raise LmrecError(f"{binary} not found: install Redis (e.g. apt-get install redis-server) for the redis drill")
        self.binary, self.dir = binary, workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "yes"],
            stdout=(self.dir / "redis.log").open("a"), stderr=subprocess.STDOUT, start_new_session=True)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            with socket.socket() as s, contextlib.suppress(OSError):
                s.settimeout(0.5)
                s.connect(("127.0.0.1", self.port))
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.1)
        raise LmrecError(f"redis-server did not answer on port {self.port}; its log: {self.dir / 'redis.log'}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# ------------------------------------------------------------------------------------------ the benchmark
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_config(config: Path, state_dir: Path, store_url: str | None = None, port: int | None = None) -> tuple[Path, int, dict]:
    """The YAML as the benchmarks run it (a fresh store in ``state_dir``, the benchmark's token), on a Redis
    store at ``store_url`` when given, on ``port`` (default: a free one, not the YAML's 8000 someone may use)."""
    from lmrec.benchmarks.serve import _service_config

    path, _, args = _service_config(config, state_dir, baselines=False)
    spec = yaml.safe_load(path.read_text())
    app = spec["applications"][0]
    if store_url:
        app["args"]["store_url"] = store_url
    port = port or free_port()
    spec["http_options"]["port"] = port
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, port, app["args"]


def wait_port_free(port: int, timeout: float = 60.0) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.5)
    raise LmrecError(f"port {port} still in use {timeout:.0f} s after `serve run` stopped")


def catalog_ids(args: dict) -> list[str]:
    """The item ids of the app's artifact catalog (``args``: the app's args)."""
    import pandas as pd

    from lmrec.artifact import CATALOG, MANIFEST

    manifest = Path(args["artifact"]) / MANIFEST
    if not manifest.is_file():
        raise LmrecError(f"artifact {args['artifact']}: no {MANIFEST}")
    return pd.read_parquet(Path(args["artifact"]) / CATALOG, columns=["item_id"])["item_id"].astype(str).tolist()
