"""The API's HTTP layer without Ray (lmrec.serving.http): the body limit, one error shape with no internals
(a stage's own message for a user's mistake; a request id and nothing else for the unexpected), 405 with
Allow, auth, and health answers."""

import asyncio

import httpx
import pytest
from fastapi import Body, Depends, FastAPI

from lmrec.errors import RolloutError, StoreError, StoreUnavailableError, UnknownItemError
from lmrec.serving import http


def _app(limit: int = http.MAX_BODY_BYTES, token: str | None = "t0k", reads: bool = False) -> FastAPI:
    app = FastAPI()
    http.install(app)
    app.user_middleware.clear()  # the limit under test instead of the default one
    app.add_middleware(http.BodyLimit, max_bytes=limit)
    app.state.auth = http.Auth(token, reads)

    @app.post("/echo")
    async def echo(body: dict = Body(...)) -> dict:  # noqa: B008 (FastAPI's idiom)
        return body

    @app.post("/raise", dependencies=[Depends(http.require_write)])
    async def raise_(body: dict = Body(...)) -> dict:  # noqa: B008
        raise _ERRORS[body["kind"]]

    @app.get("/thing/{thing_id}", dependencies=[Depends(http.require_read)])
    async def get_thing(thing_id: str) -> dict:
        return {"thing_id": thing_id}

    @app.delete("/thing/{thing_id}")
    async def delete_thing(thing_id: str) -> dict:
        return {}

    return app


def _remote(exc: Exception) -> Exception:
    """``exc`` as a Ray hop delivers it: a RayTaskError that is also the original class, whose text carries
    the remote traceback, the pid and the node."""
    from ray.exceptions import RayTaskError

    trace = 'Traceback (most recent call last):\n  File "/site-packages/lmrec/x.py", line 3\nray::ServeReplica:lmrec:UserState pid=4242, ip=10.0.0.7'
    return RayTaskError("UserState.append", trace, exc).as_instanceof_cause()


_ERRORS = {
    "user": StoreError("user_id must be 1 to 256 characters"),
    "remote-user": _remote(StoreError("event_type must be one of view, click")),
    "down": StoreUnavailableError("cannot reach Redis at redis://secret-host:6379/0: refused"),
    "rollout": RolloutError("a vector of m1 reached the index of m2"),
    "unknown-item": UnknownItemError("item_id: the model has no vector of item 'x'"),
    "bug": ZeroDivisionError("division by zero in /site-packages/lmrec/ranking/x.py"),
    "remote-bug": _remote(KeyError("internal key")),
}


def _call(app: FastAPI, method: str, path: str, **kwargs) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def _raise(kind: str) -> httpx.Response:
    return _call(_app(), "POST", "/raise", json={"kind": kind}, headers={"Authorization": "Bearer t0k"})


# --------------------------------------------------------------------------------------------- errors
def test_a_users_mistake_reaches_the_client_as_the_stages_own_message():
    for kind, text in (("user", "user_id must be 1 to 256 characters"), ("remote-user", "event_type must be one of view, click")):
        r = _raise(kind)
        assert r.status_code == 400 and r.json() == {"error": {"code": "invalid_request", "message": text, "fields": []}}


@pytest.mark.parametrize("kind, status, code", [("down", 503, "store_unavailable"), ("rollout", 503, "model_rollout"),
                                                ("bug", 500, "internal_error"), ("remote-bug", 500, "internal_error")])
def test_unexpected_errors_carry_a_request_id_and_no_internals(kind, status, code, caplog):
    r = _raise(kind)
    assert r.status_code == status and r.json()["error"]["code"] == code
    text = r.text
    for leak in ("Traceback", "site-packages", "pid=", "10.0.0.7", "secret-host", "ray::", "division", "internal key"):
        assert leak not in text, (kind, leak, text)
    if status == 503:
        assert r.headers["retry-after"] in ("0", "1")
    if code in ("internal_error", "store_unavailable"):
        request_id = r.json()["error"]["request_id"]
        assert len(request_id) == 16 and request_id in caplog.text  # the detail is in the log, under that id


def test_an_item_the_model_does_not_know_is_a_404():
    r = _raise("unknown-item")
    assert r.status_code == 404 and r.json()["error"]["fields"] == [{"field": "item_id", "message": "unknown"}]


def test_a_method_not_allowed_says_which_are():
    r = _call(_app(), "PUT", "/thing/7")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, HEAD"
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_writes_need_the_token_and_reads_only_when_configured():
    app = _app()
    assert _call(app, "POST", "/raise", json={"kind": "user"}).status_code == 401
    assert _call(app, "POST", "/raise", json={"kind": "user"}, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert _call(app, "GET", "/thing/1").status_code == 200
    locked = _app(reads=True)
    r = _call(locked, "GET", "/thing/1")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert _call(locked, "GET", "/thing/1", headers={"Authorization": "Bearer t0k"}).status_code == 200
    off = _call(_app(token=None), "POST", "/raise", json={"kind": "user"}, headers={"Authorization": "Bearer "})
    assert off.status_code == 401 and "no API token configured" in off.json()["error"]["message"]


def test_invalid_json_and_invalid_fields():
    r = _call(_app(), "POST", "/echo", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


# ----------------------------------------------------------------------------------------- body limit
def test_bodies_within_the_limit_pass_intact():
    r = _call(_app(64), "POST", "/echo", json={"user_id": "u1", "k": 3})
    assert r.status_code == 200 and r.json() == {"user_id": "u1", "k": 3}


def test_a_declared_length_over_the_limit_is_a_413_json_error():
    r = _call(_app(64), "POST", "/echo", content=b'{"x": "' + b"a" * 100 + b'"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.headers["connection"] == "close"
    assert r.json()["error"]["code"] == "body_too_large" and "64 bytes" in r.json()["error"]["message"]


def test_a_chunked_body_is_counted_as_it_streams():
    async def stream(n: int):  # an async iterator: httpx sends it chunked, with no Content-Length
        yield b'{"x": "'
        for _ in range(n):
            yield b"a" * 16
        yield b'"}'

    big = _call(_app(64), "POST", "/echo", content=stream(10), headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    small = _call(_app(64), "POST", "/echo", content=stream(2), headers={"Content-Type": "application/json"})
    assert small.status_code == 200 and small.json() == {"x": "a" * 32}


# --------------------------------------------------------------------------------------------- health
def test_health_checks_name_the_stages_that_do_not_answer():
    async def ok():
        return {"events": 3}

    async def loading():
        await asyncio.sleep(30)

    async def down():
        raise StoreUnavailableError("cannot reach Redis at redis://r:6379/0")

    async def check(stages, timeout_s):
        return await http.check_stages({name: fn() for name, fn in stages.items()}, timeout_s=timeout_s)

    answers, problems, slow = asyncio.run(check({"state": ok}, 1))
    assert answers == {"state": {"events": 3}} and problems == {} and slow == set()
    answers, problems, slow = asyncio.run(check({"state": ok, "scorer": loading, "retrieval": down}, 0.2))
    assert answers == {"state": {"events": 3}}
    assert set(problems) == {"scorer", "retrieval"} and slow == {"scorer"}
    assert "no answer within 0.2 s" in problems["scorer"]
    assert problems["retrieval"] == "StoreUnavailableError: cannot reach Redis at redis://r:6379/0"


def test_health_is_503_while_loading_or_failing_but_not_when_only_busy():
    """Until every stage has answered once the graph is loading (503); afterwards a failing stage is a 503 but
    a slow one only "degraded" (200): taking busy replicas out of a load balancer would add to the load."""
    store = {"events": 3}
    slow_msg = {"scorer": "no answer within 2 s (starting, or overloaded)"}
    status, body = http.health({"state": store}, slow_msg, {"scorer"}, was_ready=False)
    assert status == 503 and body["status"] == "loading" and "scorer" in body["error"]["message"]
    assert body["error"]["fields"] == [{"field": "scorer", "message": slow_msg["scorer"]}]
    assert body["stages"] == {"state": "ok", "scorer": "slow"}
    assert http.health({"state": store}, {}, set(), was_ready=False) == (200, {"status": "ok", "store": store, "stages": {"state": "ok"}})
    status, body = http.health({"state": store}, slow_msg, {"scorer"}, was_ready=True)
    assert status == 200 and body["status"] == "degraded" and body["slow"][0]["field"] == "scorer"
    status, body = http.health({}, {"state": "StoreUnavailableError: locked"}, set(), was_ready=True)
    assert status == 503 and body["status"] == "failing" and body["stages"] == {"state": "failed"}

