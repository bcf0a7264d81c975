"""The per-client rate limit (lmrec.serving.ratelimit) on a real FastAPI app over ASGI, without Ray: a token
bucket per client, 429 with Retry-After and the API's JSON error body, off by default, reconfigurable."""

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from lmrec.serving.ratelimit import RateLimit, RateLimitConfig, RateLimiter


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _app(limiter: RateLimiter) -> FastAPI:
    app = FastAPI()
    seen = []

    @app.post("/v1/recommend")
    async def recommend(body: dict):
        seen.append(body)
        return {"ok": True}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    app.add_middleware(RateLimit, limiter=limiter)
    app.state.seen = seen
    return app


def _send(app, n: int, client=("10.0.0.1", 5000), path="/v1/recommend", headers=None) -> list[httpx.Response]:
    async def go():
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            out = []
            for _ in range(n):
                if path == "/healthz":
                    out.append(await c.get(path, headers=headers))
                else:
                    out.append(await c.post(path, json={"user_id": "u"}, headers=headers))
            return out

    return asyncio.run(go())


def test_off_by_default_every_request_passes():
    app = _app(RateLimiter())
    assert [r.status_code for r in _send(app, 50)] == [200] * 50


def test_a_client_over_its_burst_gets_429_with_retry_after_and_the_error_body():
    clock = Clock()
    app = _app(RateLimiter({"enabled": True, "rate": 2, "burst": 3}, clock=clock))
    got = _send(app, 5)
    assert [r.status_code for r in got] == [200, 200, 200, 429, 429]
    refused = got[3]
    assert refused.headers["retry-after"] == "1"  # 2/s: the next token in 0.5 s, said in whole seconds
    assert refused.headers["content-type"] == "application/json"
    error = refused.json()["error"]
    assert set(error) == {"code", "message", "fields"} and error["code"] == "rate_limited" and error["fields"] == []
    assert "2/s" in error["message"] and "bursts of 3" in error["message"]
    assert len(app.state.seen) == 3  # refused requests never reached the route

    clock.now += 0.5  # one token back
    assert [r.status_code for r in _send(app, 2)] == [200, 429]
    clock.now += 10  # refilled to the burst, not beyond
    assert [r.status_code for r in _send(app, 4)] == [200, 200, 200, 429]


def test_retry_after_is_the_time_until_the_next_token():
    clock = Clock()
    app = _app(RateLimiter({"enabled": True, "rate": 0.1, "burst": 1}, clock=clock))
    first, second = _send(app, 2)
    assert first.status_code == 200 and second.status_code == 429
    assert second.headers["retry-after"] == "10"
    clock.now += 9.0
    assert _send(app, 1)[0].headers["retry-after"] == "1"
    clock.now += 1.0
    assert _send(app, 1)[0].status_code == 200


def test_clients_have_buckets_of_their_own():
    clock = Clock()
    app = _app(RateLimiter({"enabled": True, "rate": 1, "burst": 2}, clock=clock))
    assert [r.status_code for r in _send(app, 3, client=("10.0.0.1", 1))] == [200, 200, 429]
    assert [r.status_code for r in _send(app, 3, client=("10.0.0.2", 1))] == [200, 200, 429]


def test_behind_a_balancer_the_trusted_headers_last_hop_is_the_client():
    """The last x-forwarded-for entry is what the balancer appended; what a client wrote before it is ignored."""
    clock = Clock()
    app = _app(RateLimiter({"enabled": True, "rate": 1, "burst": 1, "client_header": "X-Forwarded-For"}, clock=clock))
    lb = ("10.9.9.9", 80)  # every request arrives from the balancer
    a = _send(app, 2, client=lb, headers={"x-forwarded-for": "1.1.1.1"})
    b = _send(app, 1, client=lb, headers={"x-forwarded-for": "1.1.1.1, 2.2.2.2"})
    forged = _send(app, 1, client=lb, headers={"x-forwarded-for": "3.3.3.3, 1.1.1.1"})
    assert [r.status_code for r in a] == [200, 429] and b[0].status_code == 200 and forged[0].status_code == 429


def test_health_probes_are_never_limited():
    app = _app(RateLimiter({"enabled": True, "rate": 1, "burst": 1}, clock=Clock()))
    assert [r.status_code for r in _send(app, 5, path="/healthz")] == [200] * 5


def test_reconfigure_applies_at_once_and_unknown_keys_are_errors():
    clock = Clock()
    limiter = RateLimiter({"enabled": True, "rate": 1, "burst": 1}, clock=clock)
    app = _app(limiter)
    assert [r.status_code for r in _send(app, 2)] == [200, 429]
    limiter.configure({"enabled": True, "rate": 1, "burst": 5})
    assert [r.status_code for r in _send(app, 6)] == [200] * 5 + [429]
    limiter.configure(None)  # off again
    assert [r.status_code for r in _send(app, 3)] == [200] * 3
    with pytest.raises(ValueError, match="burts"):
        limiter.configure({"burts": 5})
    with pytest.raises(ValueError, match="rate"):
        RateLimitConfig(rate=0)


def test_buckets_are_bounded_the_longest_idle_goes_first():
    clock = Clock()
    limiter = RateLimiter({"enabled": True, "rate": 1, "burst": 1, "max_clients": 3}, clock=clock)
    for client in ("a", "b", "c", "a", "d"):  # d evicts b, the longest idle
        limiter.take(client)
        clock.now += 0.01
    assert len(limiter) == 3
    assert limiter.take("a") > 0 and limiter.take("c") > 0  # still empty: kept
    assert limiter.take("b") == 0.0  # dropped: a full bucket again
