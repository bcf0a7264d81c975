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


def test_health_names_the_stages_that_do_not_answer():
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

    answers, problems = asyncio.run(check_stages({"state": Stage(ok)}, timeout_s=1))
    assert answers == {"state": {"events": 3}} and problems == {}
    answers, problems = asyncio.run(check_stages({"state": Stage(ok), "scorer": Stage(loading), "retrieval": Stage(down)},
                                                 timeout_s=0.2))
    assert answers == {"state": {"events": 3}}
    assert set(problems) == {"scorer", "retrieval"}
    assert "no answer within 0.2 s" in problems["scorer"]
    assert problems["retrieval"] == "StoreUnavailableError: cannot reach Redis at redis://r:6379/0"
