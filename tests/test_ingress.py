"""The ingress's HTTP layer without Ray: the body limit refuses oversized bodies, declared or chunked, with
a 413 JSON error and hands smaller ones on intact; store outages are 503s."""

import asyncio

import httpx
from fastapi import Body, FastAPI

from lmrec.serving.ingress import BodyLimit


def _app(limit: int) -> FastAPI:
    app = FastAPI()
    app.add_middleware(BodyLimit, max_bytes=limit)

    @app.post("/echo")
    async def echo(body: dict = Body(...)) -> dict:  # noqa: B008 (FastAPI's idiom)
        return body

    return app


def _post(app: FastAPI, **kwargs) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.post("/echo", **kwargs)

    return asyncio.run(go())


def test_bodies_within_the_limit_pass_intact():
    r = _post(_app(64), json={"user_id": "u1", "k": 3})
    assert r.status_code == 200 and r.json() == {"user_id": "u1", "k": 3}


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    r = _post(_app(64), content=b'{"x": "' + b"a" * 100 + b'"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large" and "64 bytes" in r.json()["error"]["message"]


def test_a_chunked_body_is_counted_as_it_streams():
    def chunks(n: int):
        yield b'{"x": "'
        for _ in range(n):
            yield b"a" * 16
        yield b'"}'

    async def stream(n: int):  # an async iterator: httpx sends it chunked, with no Content-Length
        for c in chunks(n):
            yield c

    big = _post(_app(64), content=stream(10), headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    small = _post(_app(64), content=stream(2), headers={"Content-Type": "application/json"})
    assert small.status_code == 200 and small.json() == {"x": "a" * 32}


def test_an_unreachable_store_is_a_503_to_retry_not_a_400():
    """A store error caused by the store (down, locked) is not the client's fault: 503 + Retry-After; a store
    error caused by the input stays a 400."""
    from lmrec.errors import StoreError, StoreUnavailableError
    from lmrec.serving.ingress import api

    async def handle(exc):
        handler = next(api.exception_handlers[cls] for cls in type(exc).__mro__ if cls in api.exception_handlers)
        return await handler(None, exc)

    down = asyncio.run(handle(StoreUnavailableError("cannot reach Redis at redis://r:6379/0: refused")))
    assert down.status_code == 503 and down.headers["retry-after"] == "1"
    assert b'"store_unavailable"' in down.body and b"cannot reach Redis" in down.body
    bad = asyncio.run(handle(StoreError("user_id must be a non-empty string")))
    assert bad.status_code == 400 and b'"invalid_request"' in bad.body


def test_health_checks_name_the_stages_that_do_not_answer():
    """/healthz asks every stage at once: one still loading (no answer in time) or failing is named, and the
    answers of the others are kept."""
    from lmrec.errors import StoreUnavailableError
    from lmrec.serving.ingress import check_stages

    class Stage:
        def __init__(self, fn):
            self.fn = fn

        def remote(self):
            return self.fn()

    async def ok():
        return {"events": 3}

    async def loading():
        await asyncio.sleep(30)

    async def down():
        raise StoreUnavailableError("cannot reach Redis at redis://r:6379/0")

    answers, problems, slow = asyncio.run(check_stages({"state": Stage(ok)}, timeout_s=1))
    assert answers == {"state": {"events": 3}} and problems == {} and slow == set()
    answers, problems, slow = asyncio.run(check_stages({"state": Stage(ok), "scorer": Stage(loading), "retrieval": Stage(down)},
                                                       timeout_s=0.2))
    assert answers == {"state": {"events": 3}}
    assert set(problems) == {"scorer", "retrieval"} and slow == {"scorer"}
    assert "no answer within 0.2 s" in problems["scorer"]
    assert problems["retrieval"] == "StoreUnavailableError: cannot reach Redis at redis://r:6379/0"


def test_health_is_503_while_starting_or_failing_but_not_when_only_busy():
    """Until every stage has answered once the graph is starting (503); afterwards a failing stage is a 503
    but a slow one only "degraded" (200): taking busy replicas out of a load balancer would add to the load."""
    from lmrec.serving.ingress import health

    store = {"events": 3}
    slow_msg = {"scorer": "no answer within 2 s (starting, or overloaded)"}
    status, body = health({"state": store}, slow_msg, {"scorer"}, was_ready=False)
    assert status == 503 and body["error"]["code"] == "not_ready" and "scorer" in body["error"]["message"]
    assert body["error"]["fields"] == [{"field": "scorer", "message": slow_msg["scorer"]}]
    assert health({"state": store}, {}, set(), was_ready=False) == (200, {"status": "ok", "store": store})
    status, body = health({"state": store}, slow_msg, {"scorer"}, was_ready=True)
    assert status == 200 and body["status"] == "degraded" and body["slow"][0]["field"] == "scorer"
    status, body = health({}, {"state": "StoreUnavailableError: locked"}, set(), was_ready=True)
    assert status == 503 and body["error"]["fields"] == [{"field": "state", "message": "StoreUnavailableError: locked"}]
