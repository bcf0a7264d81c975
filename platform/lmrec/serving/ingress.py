"""The ingress: the HTTP API (FastAPI through Ray Serve) in front of the ranking core.

``POST /v1/recommend`` and ``POST /v1/related`` become :class:`~lmrec.ranking.records.Query` records, batched
(serving/coalesce.py: one call per stage per batch, since a call between replicas costs more than a stage's
work for one request) through a :class:`~lmrec.ranking.ranker.Ranker`. Co-located (``colocate: true``), the
Ranker's parts live in this replica (only the LM is another deployment); separated, they are the UserState and
Retrieval deployments behind ports.

Writes (events, items, deletes) need ``Authorization: Bearer <token>`` (from an environment variable / secret);
reads too when ``auth_reads`` is set. Errors are one JSON shape (serving/http.py), never internals.
(No ``from __future__ import annotations`` here: Serve rewrites the routes' signatures, and FastAPI must see
their real types.)
"""

import logging
import os
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from lmrec.artifact import read_model_version
from lmrec.errors import LmrecError
from lmrec.ranking import records
from lmrec.ranking.experiment import ModelRouter
from lmrec.ranking.local import build_local
from lmrec.ranking.ranker import Ranker, Timing
from lmrec.serving import http
from lmrec.serving.args import AppArgs, IngressConfig
from lmrec.serving.coalesce import Coalescer
from lmrec.serving.metrics import TELEMETRY
from lmrec.serving.ratelimit import RateLimit, RateLimiter
from lmrec.serving.retrieval import RetrievalPort
from lmrec.serving.schemas import (
    MAX_ID_CHARS,
    ErrorResponse,
    EventsAccepted,
    EventsBody,
    EventsIn,
    HistoryLimit,
    HistoryOut,
    ItemIdPath,
    ItemIn,
    ItemOut,
    ItemRemoved,
    ItemsIn,
    ItemsRemove,
    ItemsRemoved,
    ItemsUpserted,
    ItemUpserted,
    PolicyOut,
    RecommendRequest,
    RecommendResponse,
    RelatedRequest,
    RelatedResponse,
    UserDeleted,
    UserIdPath,
    UsersOut,
)
from lmrec.serving.scorer import ScorerPort, replica_cpus
from lmrec.serving.user_state import UserStatePort
from lmrec.store.base import Event, ItemWrite

log = logging.getLogger("lmrec.serve")

api = FastAPI(
    title="lmrec",
    description="Real-time recommendation with pretrained language models.",
    version="1",
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 405: {"model": ErrorResponse},
               413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
               500: {"model": ErrorResponse},
               503: {"model": ErrorResponse}},
)
http.install(api)
WRITE = [Depends(http.require_write)]
READ = [Depends(http.require_read)]
LIMITER = RateLimiter()  # off until user_config.rate_limit says otherwise
api.add_middleware(RateLimit, limiter=LIMITER)
NOT_FOUND = {404: {"model": ErrorResponse}}
_MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".svg": "image/svg+xml"}
# the console's files (lmrec/serving/ui), read once: name -> (bytes, media type)
CONSOLE = {f.name: (f.read_bytes(), _MEDIA[Path(f.name).suffix]) for f in (resources.files("lmrec.serving") / "ui").iterdir()
           if Path(f.name).suffix in _MEDIA}


def query_of(body: RecommendRequest | RelatedRequest) -> records.Query:
    related = isinstance(body, RelatedRequest)
    return records.Query(
        body.k, user_id=None if related else body.user_id, item_id=body.item_id if related else None,
        exclude_seen=body.exclude_seen, filters=body.filters, allow=None if body.allow is None else tuple(body.allow),
        deny=None if body.deny is None else tuple(body.deny), explain=body.explain, diversity=body.diversity,
        fields=tuple(body.fields), recommendation_id=uuid.uuid4().hex)  # fmt: skip


def _server_timing(arrived: float, timing: Timing) -> str:
    """Each part as this request waited for it, for the batch it went in (a separate deployment: its work plus
    the hop); queue: waiting for a free batch slot."""
    queue = max(0.0, time.perf_counter() - arrived - timing.contexts - timing.ranking)
    return (f"queue;dur={queue * 1e3:.3f}, state;dur={timing.contexts * 1e3:.3f}, "
            f"retrieval;dur={timing.ranking * 1e3:.3f}, batch;desc={timing.size}")


def _no_item(item_id: str) -> JSONResponse:
    return http.error(404, "not_found", f"item_id: no item {item_id!r} is recommendable (unknown, or removed)",
                      [{"field": "item_id", "message": "unknown or removed"}])


# Everything the class uses is defined above it: Serve serializes the class where it is declared.
# defaults; deployments/*.yaml override them per environment
@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
@serve.ingress(api)
class Ingress:
    def __init__(self, args: AppArgs, model_version: str, scorer: DeploymentHandle, state: DeploymentHandle | None = None,
                 retrieval: DeploymentHandle | None = None, challengers: dict[str, DeploymentHandle] | None = None):
        self.model_version = model_version
        self.scorer = ScorerPort(scorer)
        self.router, self.challengers = None, {}
        if state is None:  # co-located: the ranking core in this replica; the scorer holds the LM
            def core(artifact: str, version: str, tower: ScorerPort):
                return build_local(artifact, args.store(version), backend=args.backend, index_backend=args.retrieval_backend,
                                   knn_weight=args.knn_weight, knn_refresh_s=args.knn_refresh_s, max_history=args.max_history,
                                   seed_dataset=args.seed_dataset, seed_config=args.seed_config,
                                   threads=replica_cpus(), remote_tower=tower, telemetry=TELEMETRY)

            local = core(args.artifact, model_version, self.scorer)
            self.users, self.ranker, self.retriever = local.users, local.ranker, local.retriever
            self._item, self._texts, self._config = self._local_item, self._local_texts, self._local_config
            self.stages = {"state": self.users.stats, "scorer": self.scorer.ready, "retrieval": self._local_ready}
            # an experiment's challenger models: each its own index and user vectors here, its LM in its Scorer
            for name, handle in (challengers or {}).items():
                port = ScorerPort(handle)
                version = read_model_version(args.models[name], args.backend)
                self.challengers[name] = (core(args.models[name], version, port), port)
                self.stages[f"scorer-{name}"] = port.ready
            if self.challengers:
                self.router = ModelRouter({None: self.ranker, **{n: c.ranker for n, (c, _) in self.challengers.items()}},
                                          lambda: self.retriever.config)
        else:
            self.users = UserStatePort(state)
            port = RetrievalPort(retrieval)
            self.ranker = Ranker(self.users, port, self.scorer)
            self._item, self._texts, self._config = port.item, port.texts, port.config
            self.retriever = None
            self.stages = {"state": self.users.stats, "scorer": self.scorer.ready, "retrieval": port.ready}
        self.batcher = Coalescer(self._rank)  # batch size and concurrency: reconfigure() (user_config)
        token = os.environ.get(args.api_token_env) or None
        api.state.auth = http.Auth(token, args.auth_reads)
        if not token:
            log.warning("no API token in $%s: every write will be refused with 401", args.api_token_env)
        if args.cors_origins:
            from fastapi.middleware.cors import CORSMiddleware

            api.add_middleware(CORSMiddleware, allow_origins=args.cors_origins, allow_methods=["*"],
                               allow_headers=["Authorization", "Content-Type"])
        self._ready = False  # every stage has answered a health check once

    async def _local_ready(self) -> dict:
        return self.retriever.ready()

    async def _local_config(self) -> dict:
        return self.retriever.config.model_dump(mode="json")

    async def _local_item(self, item_id: str):
        return self.retriever.item(item_id)

    async def _local_texts(self, item_ids: list[str]) -> list[str | None]:
        return self.retriever.texts_of(item_ids)

    def reconfigure(self, config: dict) -> None:
        cfg = IngressConfig.model_validate(config or {})
        LIMITER.configure(cfg.rate_limit)
        self.batcher.max_batch_size = cfg.max_batch_size
        self.batcher.max_concurrent_batches = cfg.max_concurrent_batches
        if cfg.ranking is not None:
            if self.retriever is None:
                raise LmrecError("user_config.ranking is for the co-located layout; separated, it is the Retrieval's user_config")
            if self.router is not None:
                self.router.check(cfg.ranking)
            elif cfg.ranking.models():
                raise LmrecError(f"experiment.variants[].model: no challenger model named {', '.join(sorted(cfg.ranking.models()))} "
                                 "(the app's models: args hold none)")
            self.retriever.configure(cfg.ranking)
            for local, _ in self.challengers.values():
                local.retriever.configure(cfg.ranking)

    async def _rank(self, queries: list[records.Query]) -> list:
        ranked, timing = await (self.router or self.ranker).rank(queries)
        TELEMETRY.batch("recommend", len(queries))
        return [r if isinstance(r, Exception) else (r, timing) for r in ranked]

    # ------------------------------------------------------------------------------------------- reads
    @api.get("/", include_in_schema=False)
    async def root(self, request: Request):
        """A browser goes to the console; any other client gets the links."""
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("ui/", status_code=307)
        return {"name": "lmrec", "api_docs": "/docs", "openapi": "/openapi.json", "console": "/ui/", "health": "/healthz",
                "model_version": self.model_version}

    @api.get("/ui", include_in_schema=False)
    async def console_root(self):
        return RedirectResponse("ui/", status_code=307)  # the page's relative links need the slash

    @api.get("/ui/", include_in_schema=False)
    async def console_index(self):
        return await self.console("index.html")

    @api.get("/ui/{name}", include_in_schema=False)
    async def console(self, name: str):
        """The web console's files, shipped in the package (a fixed set: nothing else is served)."""
        found = CONSOLE.get(name or "index.html")
        if found is None:
            return http.error(404, "not_found", f"no console file {name!r}")
        body, media = found
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    @api.get("/healthz")
    async def healthz(self):
        """200 once every stage behind this replica has answered (``status`` ok, or degraded when one is only
        slow), with the store's counts and the model version; 503 while loading (``status: loading``) or when a
        stage fails, naming the stages."""
        answers, problems, slow = await http.check_stages({name: call() for name, call in self.stages.items()})
        status, body = http.health(answers, problems, slow, self._ready)
        if status != 200:
            return JSONResponse(body, status_code=status, headers={"Retry-After": "1"})
        self._ready = True
        served = answers.get("retrieval") or {}
        return {**body, "model_version": self.model_version, "items_served": served.get("items")}

    @api.post("/v1/recommend", response_model=RecommendResponse, response_model_exclude_none=True, dependencies=READ)
    async def recommend(self, body: RecommendRequest, response: Response):
        """The user's top k. The answer's ``recommendation_id`` names it: events that act on it may cite it (and
        the position) so clicks are attributed to what was shown, with the propensity each slot was drawn with."""
        arrived = time.perf_counter()
        ranked, timing = await self.batcher(query_of(body))
        response.headers["Server-Timing"] = _server_timing(arrived, timing)
        TELEMETRY.latency("ingress", time.perf_counter() - arrived)
        return {"user_id": body.user_id, "items": [i.to_dict() for i in ranked.items], "model_version": ranked.model_version,
                "cold_start": ranked.cold_start, "history_version": ranked.history_version,
                "recommendation_id": ranked.recommendation_id, "policy": ranked.policy, "variant": ranked.variant}

    @api.post("/v1/related", response_model=RelatedResponse, response_model_exclude_none=True, responses=NOT_FOUND, dependencies=READ)
    async def related(self, body: RelatedRequest):
        """The items users go on to choose after this one: the user tower over a history of just this item,
        fused with item-kNN like a recommendation, filtered and re-ranked by the same rules; the item itself
        is never among them. Works for an item posted a moment ago and for a removed one (alternatives to what
        is gone). 404 when the model has no vector of the item."""
        started = time.perf_counter()
        ranked, _ = await self.batcher(query_of(body))
        TELEMETRY.latency("related", time.perf_counter() - started)
        return {"item_id": body.item_id, "items": [i.to_dict() for i in ranked.items], "model_version": ranked.model_version,
                "recommendation_id": ranked.recommendation_id, "policy": ranked.policy, "variant": ranked.variant}

    @api.get("/v1/policy", response_model=PolicyOut, dependencies=READ)
    async def policy(self):
        """How the service ranks now: re-rank rules, the exploration policy and its pool, the experiment."""
        return {"model_version": self.model_version, "ranking": await self._config(),
                "models": {name: local.model.model_version for name, (local, _) in self.challengers.items()}}

    @api.get("/v1/items/{item_id}", response_model=ItemOut, responses=NOT_FOUND, dependencies=READ)
    async def get_item(self, item_id: ItemIdPath):
        """The item as it is served now: 404 when it is unknown or was removed."""
        found = await self._item(item_id)
        if found is None:
            return _no_item(item_id)
        return {"item_id": found.item_id, "text": found.text, "attributes": found.attributes, "source": found.source}

    @api.get("/v1/users", response_model=UsersOut, dependencies=READ)
    async def list_users(self, prefix: Annotated[str, Query(max_length=MAX_ID_CHARS)] = "",
                         limit: Annotated[int, Query(ge=1, le=200)] = 20,
                         cursor: Annotated[str, Query(max_length=MAX_ID_CHARS, description="next_cursor of the previous page")] = ""):
        """Users with events whose id starts with ``prefix``, in id order, a page at a time."""
        found = await self.users.list_users(prefix, limit + 1, cursor)
        page = found[:limit]
        return {"users": [{"user_id": u, "events": n} for u, n in page], "next_cursor": page[-1][0] if len(found) > limit else None}

    @api.get("/v1/users/{user_id}/history", response_model=HistoryOut, response_model_exclude_none=True, dependencies=READ)
    async def history(self, user_id: UserIdPath, limit: HistoryLimit = 100,
                      fields: Annotated[list[Literal["text"]] | None, Query(description="text: each event's item text")] = None):
        events = await self.users.history(user_id, limit)
        texts = await self._texts([e.item_id for e in events]) if fields else [None] * len(events)
        return {"user_id": user_id, "events": [{"item_id": e.item_id, "event_type": e.event_type, "value": e.value,
                                                "timestamp": e.timestamp, "text": t} for e, t in zip(events, texts)]}

    # ------------------------------------------------------------------------------------------ writes
    @api.post("/v1/events", status_code=202, response_model=EventsAccepted, dependencies=WRITE)
    async def events(self, body: EventsBody):
        """Durable when answered; the users' next recommendations include them."""
        events = body.events if isinstance(body, EventsIn) else [body]
        accepted = await self.users.append([Event(**e.model_dump(exclude_none=True)) for e in events])
        return {"accepted": accepted}

    @api.put("/v1/items/{item_id}", response_model=ItemUpserted, dependencies=WRITE)
    async def put_item(self, body: ItemIn, item_id: ItemIdPath):
        """Recommendable from the next request on, by its text alone (encoded by the LM)."""
        encoded = await self.scorer.encode_item(body.text)
        version = await self.users.upsert_items([ItemWrite(item_id, body.text, body.attributes, encoded.vectors[0])], encoded.model)
        await self._encode_for_challengers()
        return {"item_id": item_id, "item_version": version}

    @api.post("/v1/items", response_model=ItemsUpserted, dependencies=WRITE)
    async def put_items(self, body: ItemsIn):
        """Many items at once (a catalog feed): encoded through the LM together, written in one atomic store
        call, all recommendable on the next request."""
        encoded = await self.scorer.encode_items([i.text for i in body.items])
        items = [ItemWrite(i.item_id, i.text, i.attributes, v) for i, v in zip(body.items, encoded.vectors)]
        version = await self.users.upsert_items(items, encoded.model)
        await self._encode_for_challengers()
        return {"accepted": len(items), "item_version": version}

    async def _encode_for_challengers(self) -> None:
        """Posted items are recommendable to a challenger's users from the next request on too: its Scorer
        encodes them now (acknowledged already: should that fail, its background loop does it next round)."""
        for name, (_, port) in self.challengers.items():
            try:
                await port.reencode()
            except Exception:  # noqa: BLE001 - the write stands; the challenger catches up in the background
                log.warning("challenger %s could not encode the posted items now; its scorer retries in the background", name,
                            exc_info=True)

    @api.delete("/v1/items/{item_id}", response_model=ItemRemoved, responses=NOT_FOUND, dependencies=WRITE)
    async def remove_item(self, item_id: ItemIdPath):
        """No longer recommended from the next request on, by every replica, and after a restart (a catalog
        item of the model as well as a posted one); PUT brings it back. Histories that hold it keep it."""
        if await self._item(item_id) is None:
            return _no_item(item_id)
        return {"item_id": item_id, "item_version": await self.users.remove_items([item_id])}

    @api.post("/v1/items/remove", response_model=ItemsRemoved, dependencies=WRITE)
    async def remove_items(self, body: ItemsRemove):
        """Many removals at once (a catalog feed's discontinued items), in one atomic store call; ids unknown or
        already removed are accepted as they are (a tombstone each), not refused."""
        ids = list(dict.fromkeys(body.item_ids))
        return {"accepted": len(ids), "item_version": await self.users.remove_items(ids)}

    @api.delete("/v1/users/{user_id}", response_model=UserDeleted, dependencies=WRITE)
    async def delete_user(self, user_id: UserIdPath):
        return {"user_id": user_id, "deleted": await self.users.delete(user_id)}


__all__ = ["Ingress", "api"]
