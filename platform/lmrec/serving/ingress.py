"""The ingress: the HTTP API (FastAPI through Ray Serve) in front of the ranking graph.

``POST /v1/recommend``: user state (history, cached or fresh user vector) -> retrieval -> re-rank through
deployment handles. Concurrent requests go through the stages in batches (serving/batching.py): one call
per stage per batch, since a call between replicas costs more than a stage's work for one request.

Writes (events, items, deletes) need ``Authorization: Bearer <token>`` (the token comes from an environment
variable / secret); reads too when ``auth_reads`` is set. Bad input always gets a 4xx JSON error naming the
offending field; a store that cannot be reached, a 503.
"""

import asyncio
import hmac
import logging
import os
import time

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmrec.errors import LmrecError, RolloutError, StoreUnavailableError
from lmrec.serving.batching import BatchConfig, Coalescer
from lmrec.serving.metrics import observe_batch
from lmrec.serving.rerank import Plan, RulesCopy, StalePlanError
from lmrec.serving.schemas import (
    MAX_K,
    UNION_TAGS,
    ErrorResponse,
    EventsAccepted,
    EventsBody,
    EventsIn,
    HistoryOut,
    ItemIn,
    ItemOut,
    ItemRemoved,
    ItemsIn,
    ItemsRemove,
    ItemsRemoved,
    ItemsUpserted,
    ItemUpserted,
    RecommendRequest,
    RecommendResponse,
    RelatedRequest,
    RelatedResponse,
    UserDeleted,
)

log = logging.getLogger("lmrec.serve")
MAX_BODY_BYTES = 1 << 20  # 1 MiB: 1000 events fit with room to spare
# passes through the stages again for a request that met replicas of two models (a rollout); after them it
# gets the answer for a user without history (cold_start: true) rather than an error
ROLLOUT_RETRIES = 3

api = FastAPI(
    title="lmrec",
    description="Real-time recommendation with pretrained language models.",
    version="1",
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
               503: {"model": ErrorResponse}},
)


def error_body(code: str, message: str, fields: list[dict] | None = None) -> dict:
    return {"error": {"code": code, "message": message, "fields": fields or []}}


def error(status: int, code: str, message: str, fields: list[dict] | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, fields), status_code=status, headers=headers)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError):
    fields = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ()) if p != "body" and p not in UNION_TAGS]
        fields.append({"field": ".".join(loc) or "body", "message": e.get("msg", "invalid")})
    if any(e.get("type") == "json_invalid" for e in exc.errors()):
        return error(400, "invalid_json", "the request body is not valid JSON", fields)
    return error(422, "invalid_request", "; ".join(f"{f['field']}: {f['message']}" for f in fields), fields)


@api.exception_handler(StarletteHTTPException)
async def _http(request: Request, exc: StarletteHTTPException):
    return error(exc.status_code, "not_found" if exc.status_code == 404 else "http_error", str(exc.detail))


@api.exception_handler(LmrecError)
async def _lmrec(request: Request, exc: LmrecError):
    return error(400, "invalid_request", str(exc))


@api.exception_handler(StalePlanError)
async def _stale(request: Request, exc: StalePlanError):
    return error(503, "rules_changed", str(exc), headers={"Retry-After": "0"})


@api.exception_handler(RolloutError)
async def _rollout(request: Request, exc: RolloutError):
    return error(503, "model_rollout", str(exc), headers={"Retry-After": "0"})


@api.exception_handler(StoreUnavailableError)
async def _unavailable(request: Request, exc: StoreUnavailableError):
    log.error("store unavailable: %s", exc)
    return error(503, "store_unavailable", str(exc), headers={"Retry-After": "1"})


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with a 413 JSON error, as a plain ASGI middleware (Starlette's
    ``BaseHTTPMiddleware`` cost ~0.5 ms per request here, more than the ranking stages themselves).

    A declared ``Content-Length`` is checked before anything is read; a chunked body is read up to the limit
    and handed on in one piece."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await self._too_large(scope, receive, send)
        elif b"transfer-encoding" in headers:  # chunked: count it as it streams
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.max_bytes:
                    return await self._too_large(scope, receive, send)
                if not message.get("more_body"):
                    break
            receive = _replay(b"".join(chunks), receive)
        await self.app(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        response = error(413, "body_too_large", f"request body over {self.max_bytes} bytes; send events in batches of at most 1000")
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


api.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)


def _authorized(request: Request, token: str | None) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


HEALTH_TIMEOUT_S = 2.0


async def check_stages(stages: dict, timeout_s: float = HEALTH_TIMEOUT_S) -> tuple[dict, dict[str, str], set[str]]:
    """Call every stage's cheap method at once (``{name: method}``, each ``method.remote()`` awaitable):
    the answers by stage, what went wrong by stage, and which of those only did not answer within
    ``timeout_s`` (still starting: no replica yet; or overloaded)."""
    calls = {name: method.remote() for name, method in stages.items()}
    tasks = {name: asyncio.ensure_future(call) for name, call in calls.items()}
    await asyncio.wait(tasks.values(), timeout=timeout_s)
    answers, problems, slow = {}, {}, set()
    for name, task in tasks.items():
        if not task.done():
            task.cancel()
            if hasattr(calls[name], "cancel"):
                calls[name].cancel()  # a deployment response: drop the queued request too
            # it ends with the response's RequestCancelledError rather than CancelledError: read it, or asyncio
            # logs "Task exception was never retrieved" with a traceback for every probe of a starting stage
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            problems[name] = f"no answer within {timeout_s:g} s (starting, or overloaded)"
            slow.add(name)
        elif task.exception() is not None:
            problems[name] = f"{type(task.exception()).__name__}: {task.exception()}"
        else:
            answers[name] = task.result()
    return answers, problems, slow


def health(answers: dict, problems: dict[str, str], slow: set[str], was_ready: bool) -> tuple[int, dict]:
    """The health answer: 503 until every stage has answered once (the graph is starting) and whenever a
    stage fails; once ready, a stage that is only slow makes it 200 "degraded" — a load balancer must not
    take replicas out of service because the graph is busy, which would only add to the load."""
    failed = {name: msg for name, msg in problems.items() if name not in slow or not was_ready}
    fields = [{"field": name, "message": msg} for name, msg in sorted(problems.items())]
    if failed:
        return 503, error_body("not_ready", "stages not ready: " + ", ".join(sorted(failed)), fields)
    body = {"status": "degraded" if problems else "ok", "store": answers.get("state")}
    return 200, {**body, **({"slow": fields} if problems else {})}


def _unauthorized(token: str | None) -> JSONResponse:
    msg = "missing or wrong bearer token" if token else "writes are disabled: the service has no API token configured"
    return error(401, "unauthorized", msg, headers={"WWW-Authenticate": "Bearer"})


try:  # the deployment needs Ray Serve; the FastAPI app above is importable without it
    from ray import serve
    from ray.serve.handle import DeploymentHandle
except ImportError:  # pragma: no cover
    serve = None


class _LocalMethod:
    def __init__(self, fn):
        self._fn = fn

    def remote(self, *args, **kwargs):
        return self._fn(*args, **kwargs)  # a coroutine, awaited like a deployment response


class _Local:
    """A stage living in this replica, called like a deployment handle: ``await stage.method.remote(...)``."""

    def __init__(self, stage):
        self._stage = stage

    def __getattr__(self, name: str) -> _LocalMethod:
        return _LocalMethod(getattr(self._stage, name))


class _LocalUserTower:
    """The scorer's ``user_vectors`` computed in this replica, from the model retrieval already holds."""

    def __init__(self, core):
        self.core = core

    async def user_vectors(self, histories: list[list[tuple[str, str]]]):
        return self.core.user_vectors(histories)

    async def item_queries(self, item_ids: list[str]):
        return self.core.item_queries(item_ids), self.core.model.model_version


def _local_stages(scorer, local: dict) -> tuple[_Local, _Local, _Local]:
    """Co-located mode: user state, retrieval and re-rank in the ingress replica, no hop between them.
    A sequence user tower (GRU / transformer over item vectors, well under a millisecond) runs here too,
    so an event's effect needs no hop at all; the LM (new items' text, a text user tower) stays in the
    batched scorer deployment. ``scorer=None``: every user tower runs here, the LM too (one process)."""
    from lmrec.serving.rerank import RerankerStage
    from lmrec.serving.retrieval import RetrievalStage
    from lmrec.serving.scorer import ScorerCore
    from lmrec.serving.user_state import UserStateStage

    rerank = RerankerStage()
    rerank.reconfigure(local.get("rerank") or {})
    retrieval = RetrievalStage(**local["retrieval"], keep_model=True)
    users = scorer
    if scorer is None or retrieval.model.user_tower_kind != "text":
        users = _Local(_LocalUserTower(ScorerCore(retrieval.model, retrieval.store)))
    return (_Local(UserStateStage(users, **local["state"])), _Local(retrieval), _Local(rerank))


def _ingress_class():
    # defaults; deployments/*.yaml override them per environment
    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
    @serve.ingress(api)
    class Ingress:
        def __init__(self, state: DeploymentHandle | None, scorer: DeploymentHandle, retrieval: DeploymentHandle | None,
                     rerank: DeploymentHandle | None, api_token_env: str, auth_reads: bool, model_version: str,
                     local: dict | None = None):
            self.local_rerank = None
            self.rules = RulesCopy()  # a separate Reranker's rules, as far as this replica knows them
            self._learning: asyncio.Task | None = None
            self._ready = False  # every stage has answered a health check once
            self.tower = scorer  # the user tower (related items' queries)
            if local is not None:  # co-located: the light stages run here
                state, retrieval, rerank = _local_stages(scorer, local)
                self.local_rerank = rerank._stage
                self.tower = state._stage.scorer  # a sequence tower runs here too
            self.state, self.scorer, self.retrieval, self.rerank = state, scorer, retrieval, rerank
            self.token = os.environ.get(api_token_env) or None
            self.auth_reads = auth_reads
            self.model_version = model_version
            self.ranker = Coalescer(self._rank)  # batch size and concurrency: reconfigure() (user_config)
            if not self.token:
                log.warning("no API token in $%s: every write will be refused with 401", api_token_env)

        @api.get("/healthz")
        async def healthz(self):
            """Ready once every stage behind this replica has answered (a replica still loading its model is
            not ready): 200 with the store's counts, else 503 naming the stages (see ``health``)."""
            stages = {"state": self.state.stats, "scorer": self.scorer.ready}
            if self.local_rerank is None:
                stages.update(retrieval=self.retrieval.ready, rerank=self.rerank.ready)
            answers, problems, slow = await check_stages(stages)
            if "rerank" in answers:
                self.rules.learn(answers["rerank"])  # the Reranker's rules in force
            status, body = health(answers, problems, slow, self._ready)
            if status != 200:
                return JSONResponse(body, status_code=status, headers={"Retry-After": "1"})
            self._ready = True
            return {**body, "model_version": self.model_version}

        def reconfigure(self, config: dict) -> None:
            cfg = BatchConfig.model_validate(config or {})
            self.ranker.max_batch_size = cfg.max_batch_size
            self.ranker.max_concurrent_batches = cfg.max_concurrent_batches

        @api.post("/v1/recommend", response_model=RecommendResponse, response_model_exclude_none=True)
        async def recommend(self, body: RecommendRequest, request: Request, response: Response):
            if self.auth_reads and not _authorized(request, self.token):
                return _unauthorized(self.token)
            arrived = time.perf_counter()
            ranked, (t0, t1, t2, t3, size) = await self.ranker(body)
            ranked["user_id"] = body.user_id
            ranked["model_version"] = self.model_version
            # each stage as the ingress waited for it (a separate deployment: its work plus the hop), for the
            # batch this request went in; queue: waiting for a free batch slot
            response.headers["Server-Timing"] = (
                f"queue;dur={(t0 - arrived) * 1e3:.3f}, state;dur={(t1 - t0) * 1e3:.3f}, "
                f"retrieval;dur={(t2 - t1) * 1e3:.3f}, rerank;dur={(t3 - t2) * 1e3:.3f}, batch;desc={size}"
            )
            _observe("ingress", arrived)
            return ranked

        async def _rank(self, bodies: list[RecommendRequest]) -> list[tuple[dict, tuple] | Exception]:
            """A batch of requests through the stages: one call per stage, awaited in turn (the payloads are
            small, and plain values travel faster between replicas than responses chained as references).
            A request whose stage failed gets that error; the others go on."""
            t0 = time.perf_counter()
            out: list = await self.state.contexts.remote([b.user_id for b in bodies])  # history + user vector
            t1 = time.perf_counter()
            live = [j for j, ctx in enumerate(out) if not isinstance(ctx, Exception)]
            plans = {j: self._plan(bodies[j]) for j in live}
            ranked, t2 = await self._rank_contexts(
                bodies, out, plans, lambda js: self.state.contexts.remote([bodies[j].user_id for j in js]))
            t3 = time.perf_counter()
            timing = (t0, t1, t2, t3, len(bodies))
            for j, result in ranked.items():
                out[j] = result if isinstance(result, Exception) else (result, timing)
            observe_batch("recommend", len(bodies))
            if self.local_rerank is None and self.rules.due() and self._learning is None:
                self._learning = asyncio.ensure_future(self._learn_rules())  # off the request path
            return out

        async def _rank_contexts(self, bodies: list[RecommendRequest | RelatedRequest], ctxs: list, plans: dict[int, Plan],
                                 refresh) -> tuple[dict, float]:
            """:meth:`_retrieve_and_rerank`, through a rollout and a change of the Reranker's rules: a request
            that met replicas of two models gets fresh contexts (``await refresh(positions)``) and goes through
            the stages again, ROLLOUT_RETRIES times, then without the user vector; one planned for outdated
            rules goes once more with the rules the Reranker sent. ``ctxs`` is updated in place."""
            ranked, t2 = await self._retrieve_and_rerank(bodies, ctxs, plans)
            for attempt in range(ROLLOUT_RETRIES + 1):
                mixed = [j for j, r in ranked.items() if isinstance(r, RolloutError)]
                if not mixed:
                    break
                if attempt < ROLLOUT_RETRIES:
                    for j, ctx in zip(mixed, await refresh(mixed)):
                        ctxs[j] = ranked[j] = ctx
                else:  # no consistent path yet (one stage switched, the next not): the non-personal answer, said so
                    log.info("%d request(s) met two models %d times: answered without the user vector", len(mixed), 1 + ROLLOUT_RETRIES)
                    for j in mixed:
                        ctxs[j] = {**ctxs[j], "vector": None}
                again, _ = await self._retrieve_and_rerank(bodies, ctxs, {j: plans[j] for j in mixed if not isinstance(ctxs[j], Exception)})
                ranked.update(again)
            stale = [j for j, r in ranked.items() if isinstance(r, StalePlanError)]
            if stale:  # the Reranker's rules changed: plan with the ones it sent, covering the old ones too, once more
                self.rules.learn(ranked[stale[0]].rules)
                again, _ = await self._retrieve_and_rerank(bodies, ctxs, {j: plans[j].union(self._plan(bodies[j])) for j in stale})
                ranked.update(again)
            return ranked, t2

        async def _retrieve_and_rerank(self, bodies: list[RecommendRequest | RelatedRequest], ctxs: list, plans: dict[int, Plan]) -> tuple[dict, float]:
            """Retrieval, then re-rank, for the requests ``plans`` names (by position in the batch): their
            results or errors by position, and when retrieval answered."""
            live = list(plans)
            searches = [(ctxs[j], bodies[j].k, bodies[j].exclude_seen, bodies[j].filters, bodies[j].allow, bodies[j].deny,
                         plans[j]) for j in live]  # fmt: skip
            found = await self.retrieval.search_many.remote(searches) if live else []
            t2 = time.perf_counter()
            results: dict = {}
            reranks = []
            for j, cands in zip(live, found):
                if isinstance(cands, Exception):
                    results[j] = cands
                    continue
                ctx = ctxs[j] if bodies[j].explain else {**ctxs[j], "history": []}  # history travels only for explanations
                reranks.append((j, (cands, ctx, bodies[j].k, bodies[j].diversity, bodies[j].explain, plans[j])))
            ranked = await self.rerank.rerank_many.remote([r for _, r in reranks]) if reranks else []
            results.update((j, result) for (j, _), result in zip(reranks, ranked))
            return results, t2

        async def _learn_rules(self) -> None:
            try:
                self.rules.learn(await self.rerank.ready.remote())
            except Exception as exc:  # keep the copy (and the Reranker's refusals) until the next try
                log.warning("could not read the Reranker's rules: %s", exc)
                self.rules.postpone()
            finally:
                self._learning = None

        def _plan(self, body: RecommendRequest | RelatedRequest) -> Plan:
            """What retrieval fetches for re-ranking: exactly what the rules need (co-located: they are known
            here; separate Reranker: this replica's copy of its rules, conservative until learnt)."""
            if self.local_rerank is not None:
                return self.local_rerank.plan(body.k, body.diversity, body.explain)
            return self.rules.plan(body.k, body.diversity, body.explain)

        @api.post("/v1/related", response_model=RelatedResponse, response_model_exclude_none=True, responses={404: {"model": ErrorResponse}})
        async def related(self, body: RelatedRequest, request: Request):
            """The items users go on to choose after this one: the user tower over a history of just this item,
            fused with item-kNN like a recommendation, filtered and re-ranked by the same rules; the item itself
            is never among them. Works for an item posted a moment ago (its LM vector) and for a removed one
            (alternatives to what is gone). 404 when the model has no vector of the item."""
            if self.auth_reads and not _authorized(request, self.token):
                return _unauthorized(self.token)
            started = time.perf_counter()

            async def query(_positions=None) -> list[dict]:  # a history of the one item, through the user tower
                (vector,), model = await self.tower.item_queries.remote([body.item_id])
                if vector is None:
                    raise _UnknownItem
                return [{"user_id": None, "history": [(body.item_id, "view")], "vector": vector, "version": 0, "model": model}]

            try:
                ranked, _ = await self._rank_contexts([body], await query(), {0: self._plan(body)}, query)
            except _UnknownItem:
                return _no_item(body.item_id, related=True)
            if isinstance(ranked[0], Exception):
                raise ranked[0]
            _observe("related", started)
            return {"item_id": body.item_id, "items": ranked[0]["items"], "model_version": self.model_version}

        @api.post("/v1/events", status_code=202, response_model=EventsAccepted)
        async def events(self, body: EventsBody, request: Request):
            if not _authorized(request, self.token):
                return _unauthorized(self.token)
            events = body.events if isinstance(body, EventsIn) else [body]
            accepted = await self.state.append.remote([e.model_dump() for e in events])  # durable on return
            return {"accepted": accepted}

        @api.put("/v1/items/{item_id}", response_model=ItemUpserted)
        async def put_item(self, item_id: str, body: ItemIn, request: Request):
            if not _authorized(request, self.token):
                return _unauthorized(self.token)
            if (bad := _bad_item_id(item_id)) is not None:
                return bad
            vector, model = await self.scorer.encode_item.remote(body.text)
            version = await self.state.upsert_items.remote([(item_id, body.text, body.attributes, vector)], model)
            return {"item_id": item_id, "item_version": version}

        @api.post("/v1/items", response_model=ItemsUpserted)
        async def put_items(self, body: ItemsIn, request: Request):
            """Many items at once (a catalog feed): encoded through the LM together, written in one atomic
            store call, all recommendable on the next request."""
            if not _authorized(request, self.token):
                return _unauthorized(self.token)
            vectors, model = await self.scorer.encode_items.remote([i.text for i in body.items])
            version = await self.state.upsert_items.remote(
                [(i.item_id, i.text, i.attributes, v) for i, v in zip(body.items, vectors)], model)
            return {"accepted": len(body.items), "item_version": version}

        @api.get("/v1/items/{item_id}", response_model=ItemOut, responses={404: {"model": ErrorResponse}})
        async def get_item(self, item_id: str, request: Request):
            """The item as it is served now: 404 when it is unknown or was removed."""
            if self.auth_reads and not _authorized(request, self.token):
                return _unauthorized(self.token)
            if (bad := _bad_item_id(item_id)) is not None:
                return bad
            found = await self.retrieval.item.remote(item_id)
            return found if found is not None else _no_item(item_id)

        @api.delete("/v1/items/{item_id}", response_model=ItemRemoved, responses={404: {"model": ErrorResponse}})
        async def remove_item(self, item_id: str, request: Request):
            """No longer recommended from the next request on, by every replica, and after a restart (a catalog
            item of the model as well as a posted one); PUT brings it back. Histories that hold it keep it."""
            if not _authorized(request, self.token):
                return _unauthorized(self.token)
            if (bad := _bad_item_id(item_id)) is not None:
                return bad
            if await self.retrieval.item.remote(item_id) is None:
                return _no_item(item_id)
            return {"item_id": item_id, "item_version": await self.state.remove_items.remote([item_id])}

        @api.post("/v1/items/remove", response_model=ItemsRemoved)
        async def remove_items(self, body: ItemsRemove, request: Request):
            """Many removals at once (a catalog feed's discontinued items), in one atomic store call; ids
            unknown or already removed are accepted as they are (a tombstone each), not refused."""
            if not _authorized(request, self.token):
                return _unauthorized(self.token)
            ids = list(dict.fromkeys(body.item_ids))
            return {"accepted": len(ids), "item_version": await self.state.remove_items.remote(ids)}

        @api.get("/v1/users/{user_id}/history", response_model=HistoryOut)
        async def history(self, user_id: str, request: Request, limit: int = 100):
            if self.auth_reads and not _authorized(request, self.token):
                return _unauthorized(self.token)
            if not 1 <= limit <= 1000:
                return error(422, "invalid_request", "limit: between 1 and 1000", [{"field": "limit", "message": "between 1 and 1000"}])
            return {"user_id": user_id, "events": await self.state.history.remote(user_id, limit)}

        @api.delete("/v1/users/{user_id}", response_model=UserDeleted)
        async def delete_user(self, user_id: str, request: Request):
            if not _authorized(request, self.token):
                return _unauthorized(self.token)
            return {"user_id": user_id, "deleted": await self.state.delete.remote(user_id)}

    return Ingress


class _UnknownItem(Exception):
    """The model has no vector of the item asked about (``/v1/related``: a 404)."""


def _bad_item_id(item_id: str) -> JSONResponse | None:
    if 1 <= len(item_id) <= 256:
        return None
    return error(422, "invalid_request", "item_id: 1 to 256 characters", [{"field": "item_id", "message": "1 to 256 characters"}])


def _no_item(item_id: str, related: bool = False) -> JSONResponse:
    if related:
        return error(404, "not_found", f"item_id: the model has no vector of item {item_id!r} (unknown to it)",
                     [{"field": "item_id", "message": "unknown"}])
    return error(404, "not_found", f"item_id: no item {item_id!r} is recommendable (unknown, or removed)",
                 [{"field": "item_id", "message": "unknown or removed"}])


def _observe(stage: str, started: float) -> None:
    from lmrec.serving.metrics import observe_latency

    observe_latency(stage, time.perf_counter() - started)


Ingress = _ingress_class() if serve is not None else None
__all__ = ["Ingress", "api", "MAX_K"]
