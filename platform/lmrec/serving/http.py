"""HTTP concerns of the API, apart from the routes: one JSON error shape, the mapping from errors to status
codes, the body-size limit, bearer-token auth as FastAPI dependencies, and health answers.

Errors never carry internals. A user's mistake reaches the client as the message the stage that found it
wrote (a Ray hop wraps it in a ``RayTaskError`` carrying the remote traceback: the original is unwrapped first);
anything unexpected becomes a 500 (503 when a stage is unavailable) with a generic message and a request id,
the detail only in the server log under that id.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmrec.errors import LmrecError, RolloutError, StoreUnavailableError, UnknownItemError

log = logging.getLogger("lmrec.serve")

MAX_BODY_BYTES = 1 << 20  # 1 MiB: 1000 events fit with room to spare
# a body over the limit is read (and dropped) up to this size before the 413 goes out, so a client that sends
# its whole body before reading the answer (most do) reads the 413 instead of a reset connection
DRAIN_MAX_BYTES = 64 << 20
UNION_TAGS = ("one", "batch", "action", "rating")  # discriminated-union tags FastAPI puts in validation error locations


def error_body(code: str, message: str, fields: list[dict] | None = None, request_id: str | None = None) -> dict:
    body = {"code": code, "message": message, "fields": fields or []}
    if request_id:
        body["request_id"] = request_id
    return {"error": body}


def error(status: int, code: str, message: str, fields: list[dict] | None = None, headers: dict | None = None,
          request_id: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, fields, request_id), status_code=status, headers=headers)


def field_error(status: int, field: str, message: str, code: str = "invalid_request") -> JSONResponse:
    return error(status, code, f"{field}: {message}", [{"field": field, "message": message}])


class Unauthorized(Exception):
    def __init__(self, configured: bool):
        self.configured = configured


def unwrap(exc: BaseException) -> BaseException:
    """The exception a stage raised, out of Ray's wrapper (which carries the remote traceback in its text)."""
    for _ in range(4):
        cause = getattr(exc, "cause", None)
        if type(exc).__name__.startswith("RayTaskError") and isinstance(cause, BaseException):
            exc = cause
        else:
            break
    return exc


def error_response(exc: BaseException) -> JSONResponse:
    """The answer to an error raised while serving a request."""
    exc = unwrap(exc)
    if isinstance(exc, UnknownItemError):
        return error(404, "not_found", str(exc), [{"field": "item_id", "message": "unknown"}])
    if isinstance(exc, RolloutError):
        return error(503, "model_rollout", "a new model is rolling out; retry", headers={"Retry-After": "0"})
    if isinstance(exc, StoreUnavailableError):
        request_id = uuid.uuid4().hex[:16]
        log.error("store unavailable [%s]: %s", request_id, exc)
        return error(503, "store_unavailable", "the store cannot be reached; retry shortly", headers={"Retry-After": "1"},
                     request_id=request_id)
    if isinstance(exc, LmrecError):
        return error(400, "invalid_request", str(exc))
    request_id = uuid.uuid4().hex[:16]
    if _unavailable(exc):  # a replica died, is restarting or shedding load: nothing was wrong with the request
        log.warning("stage unavailable [%s]: %s: %s", request_id, type(exc).__name__, exc)
        return error(503, "unavailable", "a serving stage is restarting or overloaded; retry shortly",
                     headers={"Retry-After": "1"}, request_id=request_id)
    log.error("internal error [%s]", request_id, exc_info=(type(exc), exc, exc.__traceback__))
    return error(500, "internal_error", "internal error; the server log has the details under this request id",
                 request_id=request_id)


def _unavailable(exc: BaseException) -> bool:
    names = {type(exc).__name__, *(c.__name__ for c in type(exc).__mro__)}
    return bool(names & {"ActorDiedError", "ActorUnavailableError", "RayActorError", "BackPressureError",
                         "DeploymentUnavailableError", "RequestCancelledError", "TimeoutError", "GetTimeoutError"})


def install(api: FastAPI) -> None:
    """The error handlers, the body limit and guarded routes on ``api`` (before its routes are declared)."""
    api.router.route_class = GuardedRoute

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        fields = []
        for e in exc.errors():
            loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path") and p not in UNION_TAGS]
            fields.append({"field": ".".join(loc) or "body", "message": e.get("msg", "invalid")})
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return error(400, "invalid_json", "the request body is not valid JSON", fields)
        return error(422, "invalid_request", "; ".join(f"{f['field']}: {f['message']}" for f in fields), fields)

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 405:
            allow = ", ".join(allowed_methods(request.app, request.url.path))
            return error(405, "method_not_allowed", f"{request.method} is not allowed here; allowed: {allow}", headers={"Allow": allow})
        code = "not_found" if exc.status_code == 404 else "http_error"
        return error(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @api.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized):
        msg = "missing or wrong bearer token" if exc.configured else "writes are disabled: the service has no API token configured"
        return error(401, "unauthorized", msg, headers={"WWW-Authenticate": "Bearer"})

    api.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)


class GuardedRoute(APIRoute):
    """A route whose errors become answers (:func:`error_response`) inside the route, not in Starlette's
    last-resort handler (which answers and then raises again, into the server's error log)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def guarded(request: Request):
            try:
                return await handler(request)
            except (RequestValidationError, StarletteHTTPException, Unauthorized):
                raise  # the handlers installed above answer these
            except Exception as exc:  # noqa: BLE001 - every other error becomes a clean answer
                return error_response(exc)

        return guarded


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the API declares for ``path`` (the ``Allow`` header of a 405)."""
    from starlette.routing import Match

    methods: set[str] = set()
    scope = {"type": "http", "path": path, "method": "GET", "root_path": ""}
    for route in app.router.routes:
        if getattr(route, "methods", None) and route.matches(scope)[0] != Match.NONE:
            methods |= set(route.methods)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


# -------------------------------------------------------------------------------------------- auth
class Auth:
    """The bearer token writes need (and reads too with ``reads``); compared in constant time, never logged."""

    def __init__(self, token: str | None, reads: bool):
        self.token, self.reads = token or None, reads

    def check(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        ok = bool(self.token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())
        if not ok:
            raise Unauthorized(bool(self.token))


async def require_write(request: Request) -> None:
    """FastAPI dependency of every write route (async: FastAPI runs a plain function in its thread pool, a
    hop per request)."""
    request.app.state.auth.check(request)


async def require_read(request: Request) -> None:
    """FastAPI dependency of every read route: checks the token only when the service is configured so."""
    auth: Auth = request.app.state.auth
    if auth.reads:
        auth.check(request)


# ---------------------------------------------------------------------------------------- body limit
class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with a 413 JSON error, as a plain ASGI middleware (Starlette's
    ``BaseHTTPMiddleware`` cost ~0.5 ms per request here, more than the ranking stages themselves).

    A declared ``Content-Length`` is checked before anything is read; a chunked body is counted as it streams.
    Either way the rest of an oversized body is read and dropped (up to DRAIN_MAX_BYTES) before the answer, so
    clients that read only after sending everything (requests, aiohttp) get the 413 rather than a reset."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await self._too_large(scope, receive, send, 0)
        elif b"transfer-encoding" in headers:  # chunked: count it as it streams
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.max_bytes:
                    if not message.get("more_body"):
                        size = -1  # all read
                    return await self._too_large(scope, receive, send, size)
                if not message.get("more_body"):
                    break
            receive = _replay(b"".join(chunks), receive)
        await self.app(scope, receive, send)

    async def _too_large(self, scope, receive, send, read: int):
        """Drain what the client still sends (``read``: bytes taken so far; -1: all of it), then answer."""
        while 0 <= read <= DRAIN_MAX_BYTES:
            try:
                message = await asyncio.wait_for(receive(), timeout=5.0)
            except asyncio.TimeoutError:
                break
            if message["type"] != "http.request":
                return  # the client went away
            read += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        response = error(413, "body_too_large", f"request body over {self.max_bytes} bytes; send events in batches of at most 1000",
                         headers={"Connection": "close"})
        await response(scope, receive, send)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# ------------------------------------------------------------------------------------------- health
HEALTH_TIMEOUT_S = 2.0


async def check_stages(stages: dict, timeout_s: float = HEALTH_TIMEOUT_S) -> tuple[dict, dict[str, str], set[str]]:
    """Await every stage's cheap call at once (``{name: awaitable}``): the answers by stage, what went wrong by
    stage, and which of those only did not answer within ``timeout_s`` (still starting, or overloaded)."""
    tasks = {name: asyncio.ensure_future(call) for name, call in stages.items()}
    if tasks:
        await asyncio.wait(tasks.values(), timeout=timeout_s)
    answers, problems, slow = {}, {}, set()
    for name, task in tasks.items():
        if not task.done():
            task.cancel()
            # read its end (a deployment response ends in RequestCancelledError): else asyncio logs "Task
            # exception was never retrieved" with a traceback for every probe of a starting stage
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            problems[name] = f"no answer within {timeout_s:g} s (starting, or overloaded)"
            slow.add(name)
        elif task.exception() is not None:
            exc = unwrap(task.exception())
            problems[name] = f"{type(exc).__name__}: {exc}" if isinstance(exc, LmrecError) else f"{type(exc).__name__}"
        else:
            answers[name] = task.result()
    return answers, problems, slow


def health(answers: dict, problems: dict[str, str], slow: set[str], was_ready: bool) -> tuple[int, dict]:
    """The health answer: 503 until every stage has answered once (the graph is starting: "loading") and
    whenever a stage fails; once ready, a stage that is only slow makes it 200 "degraded" — a load balancer
    must not take replicas out of service because the graph is busy, which would only add to the load."""
    failed = {name: msg for name, msg in problems.items() if name not in slow or not was_ready}
    stages = {name: ("ok" if name in answers else ("slow" if name in slow else "failed")) for name in (*answers, *problems)}
    if failed:
        fields = [{"field": name, "message": msg} for name, msg in sorted(problems.items())]
        status = "loading" if not was_ready and set(failed) <= slow else "failing"
        body = error_body("not_ready", f"{status}: stages not ready: " + ", ".join(sorted(failed)), fields)
        return 503, {**body, "status": status, "stages": stages}
    body = {"status": "degraded" if problems else "ok", "store": answers.get("state"), "stages": stages}
    return 200, {**body, **({"slow": [{"field": n, "message": m} for n, m in sorted(problems.items())]} if problems else {})}
