"""The freshness benchmark's judgement, against small HTTP services that behave in known ways (a real server,
without Ray): an event counts as seen only when the next answer's user vector was computed after it (its
history_version went up) and the scores moved; a stale answer whose scores moved for another reason is not
seen; an answer without history_version is reported as unknown, never guessed."""

import asyncio
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI

from lmrec.benchmarks.freshness import measure_freshness, scores_changed


def _service(behaviour: str) -> FastAPI:
    app = FastAPI()
    state = {"version": 0, "calls": 0}

    @app.post("/v1/events", status_code=202)
    async def events(body: dict):
        state["version"] += 1
        return {"accepted": 1}

    @app.post("/v1/recommend")
    async def recommend(body: dict):
        assert body["exclude_seen"] is False
        state["calls"] += 1
        if behaviour == "fresh":  # the vector follows the history
            version, shift = state["version"], state["version"]
        elif behaviour == "stale":  # scores move (e.g. exploration noise) but the vector is an old one
            version, shift = 0, state["calls"]
        else:  # "fresh" without telling which history answered
            version, shift = None, state["version"]
        items = [{"item_id": f"i{j}", "score": 1.0 - 0.1 * j + 0.01 * shift} for j in range(5)]
        return {"user_id": body["user_id"], "items": items, **({} if version is None else {"history_version": version})}

    return app


@pytest.fixture
def serve_app():
    servers = []

    def start(app: FastAPI) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.01)
        servers.append(server)
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.should_exit = True


def test_an_event_is_seen_only_from_a_vector_computed_after_it(serve_app):
    fresh = asyncio.run(measure_freshness(serve_app(_service("fresh")), ["u1", "u2"], 4, 5, 0, "t"))
    assert fresh["seen_fraction"] == 1.0 and fresh["version_advanced_fraction"] == 1.0
    assert fresh["event_to_updated_ranking"]["n"] == 4

    stale = asyncio.run(measure_freshness(serve_app(_service("stale")), ["u1"], 4, 5, 0, "t"))
    assert stale["changed_fraction"] == 1.0  # the scores did move ...
    assert stale["seen_fraction"] == 0.0 and stale["event_to_updated_ranking"]["n"] == 0  # ... but not from the event


def test_without_history_version_the_report_says_so_rather_than_guess(serve_app):
    r = asyncio.run(measure_freshness(serve_app(_service("silent")), ["u1"], 3, 5, 0, "t"))
    assert r["seen_fraction"] is None and "history_version" in r["missing"]
    assert r["changed_fraction"] == 1.0


def test_scores_changed():
    a = [{"item_id": "x", "score": 0.5}, {"item_id": "y", "score": 0.4}]
    assert not scores_changed(a, [dict(i) for i in a])
    assert scores_changed(a, [{"item_id": "x", "score": 0.5}, {"item_id": "y", "score": 0.41}])
    assert scores_changed(a, list(reversed(a)))
