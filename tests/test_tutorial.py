"""docs/tutorial.md, run as written: CSV files shaped like the page's -> its shop.yaml -> its `lmrec` commands ->
`lmrec serve` -> its curl requests answered. Test-sized: the 2-layer BERT (`tiny_lm`), one epoch, `train --local`."""

import csv
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from lmrec.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
TOKEN = "tutorial-token"


def _blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block."""
    return re.findall(r"^```([^\n]*)\n(.*?)^```", text, flags=re.S | re.M)


def _page():
    blocks = _blocks(PAGE.read_text())
    config = next(body for info, body in blocks if 'title="shop.yaml"' in info)
    commands = [line.strip() for info, body in blocks if info.strip() == "bash" for line in body.splitlines()]
    return yaml.safe_load(config), commands


def write_shop(folder: Path, users: int = 64, seed: int = 0) -> None:
    """events.csv and products.csv with the page's columns: 36 products in 3 categories, users who mostly stay
    in one, a few users with fewer than 3 events, one product nobody chose and one event of an unlisted SKU."""
    rng = random.Random(seed)
    cats = {"Running": ["Trail Shoe", "Running Vest", "Race Belt", "Soft Flask"],
            "Kitchen": ["Trail Mug", "Pour-over Kettle", "Knife Roll", "Spice Tin"],
            "Camping": ["Camp Stool", "Tent Footprint", "Head Torch", "Dry Bag"]}
    kinds = [(c, n, b) for c, ns in cats.items() for n in ns for b in ("Kestrel", "Ridgeline", "Northwind")]
    products = [(f"SKU-{i:03d}", f"{b} {n}", c, b) for i, (c, n, b) in enumerate(kinds)]
    with open(folder / "products.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sku", "title", "category", "brand"])
        w.writerows(products + [("SKU-900", "Gift Card", "Gifts", "")])
    t = 1_717_200_000
    with open(folder / "events.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["customer", "sku", "ts", "action"])
        for u in range(users):
            fav = rng.choice(list(cats))
            for j in range(rng.randint(1, 2) if u % 16 == 15 else rng.randint(3, 9)):
                pool = [p for p in products if p[2] == fav] if rng.random() < 0.8 else products
                t += rng.randint(1, 600)
                sku = "SKU-999" if (u, j) == (3, 0) else rng.choice(pool)[0]
                w.writerow([f"C{u:03d}", sku, datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                            rng.choice(["view", "view", "click", "purchase"])])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_shows_five_commands_from_data_to_serve():
    config, commands = _page()
    lmrec = [c.split()[1] for c in commands if c.startswith("lmrec ")]
    assert lmrec == ["data", "train", "evaluate", "export", "serve"]
    assert config["data"]["path"] == "events.csv" and not Path(config["data"]["items_path"]).is_absolute()


@pytest.mark.ray
def test_the_tutorial_from_csv_files_to_an_answered_recommendation(tiny_lm, tmp_path, monkeypatch, capsys):
    config, commands = _page()
    shop = tmp_path / "shop"
    shop.mkdir()
    write_shop(shop)
    (shop / "shop.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.chdir(shop)
    test_size = {"train": ["--local", "--set", f"model.item_tower.pretrained={tiny_lm}", "--set", "train.epochs=1"]}
    port = _free_port()
    serve_cmd = None
    for line in commands:
        if not line.startswith("lmrec "):
            continue
        argv = shlex.split(line)[1:]
        if argv[0] == "serve":
            serve_cmd = argv
            break
        assert main([*argv, *test_size.get(argv[0], [])]) == 0, line
        out = capsys.readouterr().out
        if argv[0] == "data":  # what the page says lmrec data prints about these files
            assert "columns   user_id <- customer, item_id <- sku, timestamp <- ts, event <- action" in out
            assert "without: 1 (in the events, not in the items file: 1)" in out
            assert "filterable attributes when served: category, brand" in out
            assert "training only: 4 (fewer than 3 events)" in out
        if argv[0] == "export":
            assert "gate passed" in out
    assert serve_cmd is not None and Path("runs/shop/artifact/manifest.json").is_file()

    env = {**os.environ, "LMREC_API_TOKEN": TOKEN, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(__file__).resolve().parents[1] / "platform"), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "lmrec", *serve_cmd, "--port", str(port)], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while "lmrec is serving" not in log.read_text():
            assert proc.poll() is None, f"lmrec serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        assert f"http://127.0.0.1:{port}/docs" in log.read_text()
        _requests(port, commands)
        _tour_twice(port)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # lmrec serve stops `serve run` and its Ray
            proc.wait(90)
        except ProcessLookupError:  # it had exited (a failed start: the assertion above says why)
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert "stopping the service" in log.read_text()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing left answering


def _requests(port: int, commands: list[str]) -> None:
    """The page's curl requests, in order, against the service."""
    import requests

    curls = [shlex.split(c.replace("$LMREC_API_TOKEN", TOKEN)) for c in commands if c.startswith("curl ")]
    assert len(curls) == 3
    answers = []
    for argv in curls:
        url = argv[argv.index("-X") + 2].replace("localhost:8000", f"127.0.0.1:{port}")
        url = url if url.startswith("http") else f"http://{url}"
        headers = dict(h.split(": ", 1) for i, h in enumerate(argv) if i and argv[i - 1] == "-H")
        body = json.loads(argv[argv.index("-d") + 1])
        r = requests.post(url, data=json.dumps(body), headers=headers, timeout=60)
        answers.append((body, r))
    (ask, first), (event, posted), (filtered_ask, filtered) = answers
    assert first.status_code == 200, first.text
    got = first.json()
    assert got["user_id"] == ask["user_id"] and len(got["items"]) == ask["k"] and got["cold_start"] is False
    assert posted.status_code == 202, posted.text
    assert filtered.status_code == 200, filtered.text
    items = filtered.json()["items"]
    assert len(items) == filtered_ask["k"]
    categories = {row["sku"]: row["category"] for row in csv.DictReader(open("products.csv"))}
    assert {categories[i["item_id"]] for i in items} == {"Running"}  # the products file's column, as a filter
    assert event["item_id"] not in {i["item_id"] for i in items}  # just bought: excluded as seen


def _tour_twice(port: int) -> None:
    """deployments/demo-requests.sh (make demo's tour of the API) on the same service twice: the same answers,
    personal from its third request on (it works on a user and an item of its own)."""
    script = Path(__file__).resolve().parents[1] / "deployments" / "demo-requests.sh"
    env = {**os.environ, "LMREC_URL": f"http://127.0.0.1:{port}", "LMREC_API_TOKEN": TOKEN,
           "LMREC_TOUR_ITEMS": "SKU-000 SKU-001 SKU-004"}
    runs = [subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stdout + run.stderr
    first, second = (r.stdout.splitlines() for r in runs)
    answers = [json.loads(line) for line in first if line.startswith("{")]
    recs = [a for a in answers if "cold_start" in a]
    assert recs[0]["cold_start"] is True and recs[1]["cold_start"] is False and "explanation" in recs[1]["items"][0]
    assert [i["item_id"] for i in recs[2]["items"]] == ["tour-vest"] and recs[3]["items"] == []  # the new item, then gone
    # what differs between runs is only the store's counters (/healthz's rows, a write's item_version, a user's
    # history_version) and each answer's own recommendation_id
    def drop(lines):
        kept = []
        for line in lines:
            if '"status"' in line or '"item_version"' in line:
                continue
            if line.startswith("{"):
                answer = json.loads(line)
                answer.pop("recommendation_id", None), answer.pop("history_version", None)
                line = json.dumps(answer, sort_keys=True)
            kept.append(line)
        return kept

    assert drop(first) == drop(second)
