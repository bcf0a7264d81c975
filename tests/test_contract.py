"""The OpenAPI schema is the API's contract, proved against a real `serve run` of the demo's graph (a tiny model):

- schemathesis 4 (>= 1,000 generated requests: examples, coverage, fuzzing and the stateful phase over the links
  it infers, ``--checks all`` but use_after_free (users are implicit, below) with the bearer token) finds no failure — a schema-valid request is accepted, a
  schema-invalid one gets a 4xx, every status and body is the documented one, undeclared methods get 405 with
  ``Allow`` — plus our own checks (tests/contract_checks.py): no response body names the server's internals,
  every error has the one JSON shape, 503/429 say when to retry;
- ids in URL paths with path tricks or control characters get a 4xx with the JSON error body, nothing else.
"""

import http.client
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from contract_checks import INTERNALS
from service_helpers import demo_yaml, free_port

pytestmark = pytest.mark.ray
TESTS = Path(__file__).resolve().parent
MIN_CASES = 1000


@pytest.fixture(scope="module")
def service(tiny_artifact, tmp_path_factory):
    from lmrec.benchmarks.serve import TOKEN, Service

    art, data_file, _, _ = tiny_artifact
    root = tmp_path_factory.mktemp("contract")
    port = free_port()
    config = demo_yaml(root, art, data_file, port, api_token_env="LMREC_BENCH_TOKEN")
    svc = Service(config, port, {}, root / "serve.log")
    try:
        svc.wait_ready(timeout=300)
        yield SimpleNamespace(base=f"http://127.0.0.1:{port}", token=TOKEN, root=root, port=port, pid=svc.proc.pid)
    finally:
        svc.stop()


def _schemathesis() -> str:
    path = Path(sys.executable).with_name("schemathesis")
    if not path.exists():
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    return str(path)


def test_schemathesis_finds_no_failure(service):
    base, token, root = service.base, service.token, service.root
    report = root / "schemathesis.json"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "contract_checks",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([
        _schemathesis(), "run", f"{base}/openapi.json", "--checks", "all", "-H", f"Authorization: Bearer {token}",
        # one worker: with two, hypothesis's lambda descriptions parse source in two threads at once and CPython's
        # ast module now and then fails with "AST constructor recursion depth mismatch" (a Runtime Error)
        # users are implicit: any id has a history (empty until its first event) and a cold-start answer, and
        # DELETE /v1/users/{id} erases what the service holds about it, not the id; so a deleted user's history
        # is a 200 with no events (tests/test_api.py), where use_after_free expects a 404
        "--exclude-checks", "use_after_free",
        "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", "40", "--seed", "0", "--workers", "1",
        "--continue-on-failure", "--request-timeout", "30", "--generation-database", "none", "--no-color",
        "--report", "json", "--report-json-path", str(report),
    ], capture_output=True, text=True, timeout=900, env=env, cwd=root)  # fmt: skip
    assert report.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["operations"]["tested"] == result["operations"]["total"] >= 11
    assert result["test_cases"]["generated"] >= MIN_CASES, result["test_cases"]
    assert result["phases"]["stateful"]["status"] in ("success", "failure"), result["phases"]  # it ran
    assert not result["errors"], result["errors"]
    found = sorted({(f["code"], op) for f in result["failures"] for op in f["operations"]})
    assert not found, f"schemathesis failures {found}:\n" + run.stdout[-12000:]


# "/" decoded from %2F ends the path segment: no route matches, whatever the method
TRAVERSAL = ["/v1/items/..%2F..%2Fetc%2Fpasswd", "/v1/users/..%2F..%2Fetc%2Fpasswd/history", "/v1/items/%2e%2e%2f%2e%2e%2fmanifest.json",
             "/v1/users/a%2F..%2F..%2Fb"]
CONTROL = ["/v1/users/%00/history", "/v1/users/%0a/history", "/v1/users/a%0d%0aSet-Cookie:%20x=1/history", "/v1/users/%20/history",
           "/v1/items/%E2%80%A8", "/v1/items/%09", "/v1/items/%2e%2e", "/v1/users/%2e%2e/history"]


def _raw(base: str, method: str, path: str, token: str, body: bytes | None = None) -> tuple[int, dict, str]:
    """The path sent as written (http.client leaves dot segments and escapes alone; curl would need --path-as-is)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode(errors="replace")
    finally:
        conn.close()


def _refused(status: int, headers: dict, text: str) -> None:
    assert 400 <= status < 500, (status, text[:300])
    assert not [m for m in INTERNALS if m in text], text[:300]
    assert set(json.loads(text)["error"]) == {"code", "message", "fields"}
    assert "set-cookie" not in headers


@pytest.mark.parametrize("path", TRAVERSAL)
def test_path_traversal_in_ids_reaches_nothing(service, path):
    base, token = service.base, service.token
    for method, body in (("GET", None), ("DELETE", None), ("PUT", b'{"text": "a thing"}')):
        _refused(*_raw(base, method, path, token, body))


@pytest.mark.parametrize("path", CONTROL)
def test_ids_with_control_characters_or_blank_are_refused_by_name(service, path):
    base, token = service.base, service.token
    for method, body in (("GET", None), ("DELETE", None), ("PUT", b'{"text": "a thing"}')):
        if path.endswith("/history") and method != "GET":
            continue
        status, headers, text = _raw(base, method, path, token, body)
        _refused(status, headers, text)
        assert status == 422 and "id" in json.loads(text)["error"]["fields"][0]["field"], text[:300]


def _listening(pid: int) -> set[tuple[str, int]]:
    """The (address, port) pairs process ``pid`` listens on (TCP, IPv4 and IPv6), from /proc."""
    import ipaddress

    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone meanwhile (Ray starts and stops idle workers all the time)
        return set()
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    out = set()
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hex_ip, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_ip)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))  # each 32-bit word in host order
            out.add((str(ipaddress.ip_address(raw)), int(hex_port, 16)))
    return out


def test_the_dashboard_job_api_and_http_proxy_listen_on_localhost_only(service):
    """`serve run` of a local config (deployments/demo.yaml's http_options): the Ray dashboard, which serves the
    Jobs API, and Serve's HTTP proxy are reachable from this machine only."""
    from lmrec.benchmarks.harness import descendants

    tree = descendants(service.pid)
    cmdlines = {}
    for pid in tree:
        try:
            cmdlines[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
    dashboards = [pid for pid, cmd in cmdlines.items() if b"dashboard/dashboard.py" in cmd]
    assert dashboards, "no Ray dashboard process under `serve run`"
    for pid in dashboards:
        args = cmdlines[pid].decode().split("\0")
        dash_port = int(next(a for a in args if a.startswith("--port=")).split("=")[1])
        bound = {addr for addr, p in _listening(pid) if p == dash_port}
        assert bound == {"127.0.0.1"}, bound
    proxy = {(pid, addr) for pid in tree for addr, p in _listening(pid) if p == service.port}
    assert {addr for _, addr in proxy} == {"127.0.0.1"}, [(addr, cmdlines.get(pid, b"")[:60]) for pid, addr in proxy]
