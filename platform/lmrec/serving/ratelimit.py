"""Per-client rate limits for the HTTP API: a token bucket per client, as a plain ASGI middleware.

A client may send ``burst`` requests at once and ``rate`` per second after that; a request over its budget gets
``429`` with ``Retry-After`` (whole seconds until a token is back) and the API's JSON error body, and never
reaches the ranking graph. Off by default (the demo): turn it on with ``rate_limit`` in the Ingress
``user_config``; ``reconfigure()`` applies a change to a running replica without a restart.

Wiring (the ingress)::

    LIMITER = RateLimiter()                      # off until configured
    api.add_middleware(RateLimit, limiter=LIMITER)
    ...
    def reconfigure(self, config): LIMITER.configure(config.get("rate_limit"))

A client is its address as this server sees it, or, behind a load balancer that sets it (and strips what a
client sent), the last value of ``client_header`` (e.g. ``x-forwarded-for``: the address the balancer saw).
Never the bearer token: a client could make up a new one per request for a fresh bucket.

Each Ingress replica keeps its own buckets (no round trip per request): with N replicas behind the proxy a
client gets up to N times ``rate``; set ``rate`` per replica accordingly. At most ``max_clients`` buckets are
kept; the longest idle goes first (it would be full again by now unless the client is very slow).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RateLimit", "RateLimitConfig", "RateLimiter"]


class RateLimitConfig(BaseModel):
    """``rate_limit`` in the Ingress ``user_config``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    rate: float = Field(20.0, gt=0, description="requests per second per client, sustained")
    burst: int = Field(40, ge=1, description="requests a client may send at once (the bucket's size)")
    # a header set by a trusted load balancer (its last value: the address the balancer saw), else the peer address
    client_header: str | None = None
    exempt_paths: tuple[str, ...] = ("/healthz",)  # probes of load balancers and Kubernetes are never limited
    max_clients: int = Field(100_000, ge=1, description="buckets kept; the longest idle is dropped first")


class RateLimiter:
    """The buckets, shared by the middleware and whoever configures it; thread-safe."""

    def __init__(self, config: RateLimitConfig | dict | None = None, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)
        self.configure(config)

    def configure(self, config: RateLimitConfig | dict | None) -> None:
        """Apply a config (a dict from YAML is validated: an unknown key is an error that names it)."""
        cfg = config if isinstance(config, RateLimitConfig) else RateLimitConfig.model_validate(config or {})
        with self._lock:
            self.config = cfg
            self._buckets.clear()  # new sizes and rates: every client starts with a full bucket

    def take(self, client: str) -> float:
        """Take a token for ``client``: 0 when it had one, else the seconds until it will."""
        cfg = self.config
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(client, (float(cfg.burst), now))
            tokens = min(float(cfg.burst), tokens + (now - at) * cfg.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / cfg.rate
            self._buckets[client] = (tokens - 1.0 if wait == 0.0 else tokens, now)  # most recent last
            while len(self._buckets) > cfg.max_clients:
                self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimit:
    """ASGI middleware: ``app.add_middleware(RateLimit, limiter=RateLimiter(...))``. Reads no request body."""

    def __init__(self, app, limiter: RateLimiter | None = None):
        self.app = app
        self.limiter = limiter if limiter is not None else RateLimiter()

    async def __call__(self, scope, receive, send):
        cfg = self.limiter.config
        if scope["type"] != "http" or not cfg.enabled or scope.get("path") in cfg.exempt_paths:
            return await self.app(scope, receive, send)
        wait = self.limiter.take(_client(scope, cfg.client_header))
        if wait == 0.0:
            return await self.app(scope, receive, send)
        retry = max(1, math.ceil(wait))  # Retry-After takes whole seconds
        body = json.dumps({"error": {
            "code": "rate_limited",
            "message": f"too many requests from this client (at most {cfg.rate:g}/s, bursts of {cfg.burst}): retry after {retry} s",
            "fields": [],
        }}).encode()  # fmt: skip
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(retry).encode()),
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


def _client(scope, header: str | None) -> str:
    if header:
        name = header.lower().encode()
        values = [v for k, v in scope.get("headers", ()) if k == name]
        if values:  # the last hop: what the trusted balancer appended
            last = values[-1].decode("latin-1").rsplit(",", 1)[-1].strip()
            if last:
                return last
    client = scope.get("client")
    return client[0] if client else "unknown"
