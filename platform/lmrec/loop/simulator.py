"""An online environment on the demo catalog: users come back day after day, are shown slates by an agent,
click with position bias, and new items arrive over time.

RecSim's split, on :mod:`lmrec.data.synthetic`'s world (the same seed gives the same catalog and users as
the demo dataset a service was trained on, so item and user ids match):

- **documents**: the demo catalog, plus ``new_items_per_day`` items a day, written by the same generator
  (text, category, brand; :func:`~lmrec.data.synthetic.build_catalog` with its own seed), arriving at random
  times and posted to the agent when they arrive. An item's *quality* is its within-topic popularity
  relative to its topic's most popular item, to the power ``quality_exponent`` (a new item gets a random
  demo item's of its topic).
- **users**: the demo's :class:`~lmrec.data.synthetic.UserModel`, continuing from their logged history: a
  current topic that drifts each step, long-term tastes that drift each day towards a fresh draw
  (``taste_drift_per_day``), and ``sessions_per_day`` returning sessions (Poisson) at random times. A session
  is a run of steps (continuing with ``continue_after_click`` / ``continue_otherwise``); each step the user
  may first browse on their own (``organic_rate``: the demo's own next-event model, over the demo catalog),
  then asks for ``k`` recommendations.
- **choice**: the *attraction* of item ``i`` for user ``u`` is ``max_attraction * a_u[topic_i] / max(a_u) *
  quality_i``, with ``a_u`` the user's next-topic distribution (:meth:`UserModel.topic_affinity`). A
  position-based click model (``pbm``) clicks slot ``j`` with ``examination[j] * attraction``
  (``examination[j] = 1 / (j + 1) ** examination_decay``); the ``cascade`` model scans from the top and
  clicks the first item it finds attractive. A click moves the user's current topic to the item's; a click
  becomes a purchase too with the user's own purchase-to-click odds.

Every step also records the expected clicks of the slate shown and of the best slate from the items
available then (the oracle), so regret needs no second run. All randomness comes from generators seeded by
``(seed, purpose, day, user, session)``: a run is a function of its config and its agent, and two agents
run on the same seed meet the same users, at the same times, with the same coin flips where they can.

Agents implement :class:`Agent` (``recommend`` / ``events`` / ``post_items``): :class:`PopularityAgent` and
:class:`OracleAgent` run in process; :class:`HttpAgent` drives a running service over its HTTP API.
"""

from __future__ import annotations

import copy
import http.client
import json
import math
import time as _time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from lmrec.config import SyntheticConfig
from lmrec.data.synthetic import (
    EPOCH,
    TASTE_CONCENTRATION,
    SimCatalog,
    UserModel,
    build_catalog,
    demo_world,
)
from lmrec.errors import LmrecError
from lmrec.loop.logs import EVENT_COLUMNS, IMPRESSION_COLUMNS, impression_rows
from lmrec.loop.ope import CandidatePool
from lmrec.loop.policies import EpsilonPolicy, ExplorationPolicy, GreedyPolicy, Slate, SoftmaxPolicy

DAY = 86_400.0
_START = float(EPOCH + 60 * DAY)  # the simulated clock starts after the demo history's last possible event


class SimulatorError(LmrecError):
    """The agent (e.g. a service over HTTP) refused or failed a request."""


class SimConfig(BaseModel):
    """One simulated world and how its users behave."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    world: SyntheticConfig = Field(default_factory=SyntheticConfig)  # the demo catalog and users
    days: int = Field(3, ge=1)
    k: int = Field(10, ge=1, le=100)
    sessions_per_day: float = Field(1.0, gt=0)  # per user (Poisson)
    continue_after_click: float = Field(0.8, ge=0, lt=1)
    continue_otherwise: float = Field(0.5, ge=0, lt=1)
    step_gap_s: float = Field(30.0, gt=0)  # mean seconds between a session's steps
    organic_rate: float = Field(0.5, ge=0, le=1)  # chance a step starts with the user browsing on their own
    click_model: Literal["pbm", "cascade"] = "pbm"
    examination_decay: float = Field(1.0, ge=0)  # pbm: slot j is examined with 1 / (j + 1) ** decay
    max_attraction: float = Field(0.5, gt=0, le=1)  # attraction of the best item of the most wanted topic
    quality_exponent: float = Field(0.5, ge=0)  # quality = (popularity / topic's best) ** exponent
    taste_drift_per_day: float = Field(0.1, ge=0, le=1)  # long-term tastes move this far to a fresh draw daily
    new_items_per_day: int = Field(10, ge=0)
    new_item_age_s: float = Field(7 * DAY, gt=0)  # items younger than this count as new (metrics, item ages)
    seed: int = 0


# ------------------------------------------------------------------------------------------- protocol
@dataclass(frozen=True)
class Recommendation:
    """An agent's answer. ``slate`` carries the policy's propensities when the agent has them (else None)."""

    recommendation_id: str
    item_ids: tuple[str, ...]
    slate: Slate | None = None
    model_version: str = ""


@dataclass(frozen=True)
class SimEvent:
    user_id: str
    item_id: str
    event_type: str
    time: float
    recommendation_id: str | None = None
    position: int | None = None


@dataclass(frozen=True)
class SimItem:
    item_id: str
    text: str
    attributes: dict[str, Any]
    time: float  # when it arrived


class Agent(Protocol):
    """What the simulator drives: an in-process recommender or a service."""

    def recommend(self, user_id: str, k: int, now: float) -> Recommendation: ...

    def events(self, events: Sequence[SimEvent]) -> None: ...

    def post_items(self, items: Sequence[SimItem]) -> None: ...


# ---------------------------------------------------------------------------------------------- world
@dataclass
class World:
    """The catalog (demo items, then the items still to arrive) and the users in their post-history state."""

    config: SimConfig
    items: pd.DataFrame  # item_id, title, category, brand, description, topic, text; demo rows first
    topic: np.ndarray  # (N,)
    quality: np.ndarray  # (N,) in (0, 1]
    arrival: np.ndarray  # (N,) seconds; -inf for the demo catalog
    catalog: SimCatalog  # the demo catalog (organic browsing)
    users: list[UserModel]
    user_ids: list[str]
    history: pd.DataFrame  # the demo dataset's logged interactions (user_id, item_id, timestamp, event, value)

    def __post_init__(self):
        self.row_of = {i: r for r, i in enumerate(self.items["item_id"])}
        self.user_row = {u: r for r, u in enumerate(self.user_ids)}

    @classmethod
    def build(cls, config: SimConfig) -> World:
        catalog, users, demo = demo_world(config.world)
        n_new = config.new_items_per_day * config.days
        best = np.zeros(config.world.n_topics)
        np.maximum.at(best, catalog.topic, catalog.popularity)
        quality = [(catalog.popularity / best[catalog.topic]) ** config.quality_exponent]
        items, topic = [catalog.items], [catalog.topic]
        arrival = [np.full(len(catalog.items), -np.inf)]
        if n_new:
            rng = np.random.default_rng([config.seed, 1])
            n_topics = config.world.n_topics
            fresh = build_catalog(max(n_new, n_topics), n_topics, rng)  # build_catalog needs >= 1 item per topic
            keep = np.sort(rng.choice(len(fresh.items), n_new, replace=False))
            new = fresh.items.iloc[keep].reset_index(drop=True)
            width = max(4, len(str(config.world.n_items)))
            new["item_id"] = [f"i{config.world.n_items + r + 1:0{width}d}" for r in range(n_new)]
            items.append(new)
            topic.append(fresh.topic[keep])
            # a new item is as good as a random demo item of its topic: new items are neither better nor worse
            quality.append(np.array([quality[0][rng.choice(catalog.members[t])] for t in fresh.topic[keep]]))
            day = np.repeat(np.arange(config.days), config.new_items_per_day)
            arrival.append(_START + (day + rng.random(n_new)) * DAY)
        items_df = pd.concat(items, ignore_index=True)
        topics, quality = np.concatenate(topic), np.concatenate(quality)
        width = max(4, len(str(config.world.n_users)))
        user_ids = [f"u{u + 1:0{width}d}" for u in range(len(users))]
        arrival_all = np.concatenate(arrival)
        return cls(config, items_df, topics, quality, arrival_all, catalog, users, user_ids, demo.interactions)

    @property
    def item_ids(self) -> np.ndarray:
        return self.items["item_id"].to_numpy()

    def examination(self, k: int) -> np.ndarray:
        return 1.0 / np.arange(1, k + 1) ** self.config.examination_decay

    def attraction(self, user: UserModel) -> np.ndarray:
        """(N,) the user's attraction to every item (available or not)."""
        aff = user.topic_affinity()
        return self.config.max_attraction * (aff / aff.max())[self.topic] * self.quality

    def expected_clicks(self, attraction: np.ndarray) -> float:
        """Expected clicks of a slate whose items have these attractions, in slot order."""
        if self.config.click_model == "cascade":
            return float(1.0 - np.prod(1.0 - attraction))
        return float((self.examination(len(attraction)) * attraction).sum())


# ------------------------------------------------------------------------------------------ simulator
@dataclass
class SimResult:
    """What a run produced. ``steps``: one row per recommendation; ``shown``: one row per slot shown;
    ``events`` / ``impressions``: the logged-bandit frames (:mod:`lmrec.loop.logs`; impressions only for
    agents that return propensities); ``new_items``: item_id, arrival time, day."""

    steps: pd.DataFrame
    shown: pd.DataFrame
    events: pd.DataFrame
    impressions: pd.DataFrame
    new_items: pd.DataFrame
    catalog_size: pd.Series  # items available by the end of each day
    seconds: float = 0.0

    @property
    def steps_per_second(self) -> float:
        return len(self.steps) / self.seconds if self.seconds > 0 else float("nan")


class Simulator:
    """Runs ``config.days`` simulated days of a :class:`World` against one agent.

    ``users``: simulate only these user indices (a shard; the others' sessions are skipped, and every user's
    sessions, times and coin flips are the same as in a full run). ``post_items``: post arriving items to the
    agent (a shard driving a shared service leaves that to one shard).
    """

    def __init__(self, world: World, agent: Agent, users: Sequence[int] | None = None, post_items: bool = True):
        self.world = world
        self.agent = agent
        self.users = copy.deepcopy(world.users)  # the world stays as built: side-by-side runs start equal
        self.shard = ""  # which share of the users this is, when sharded (lmrec.loop.distributed): "s0", "s1", ...
        self.simulated = np.ones(len(self.users), dtype=bool)
        if users is not None:
            self.simulated[:] = False
            self.simulated[np.asarray(users, dtype=np.int64)] = True
        self.post_items = post_items
        self._posted = 0

    def run(self) -> SimResult:
        cfg, w = self.world.config, self.world
        started = _time.perf_counter()
        steps, shown, events, impressions = [], [], [], []
        order = np.argsort(w.arrival, kind="stable")
        arrivals = order[np.isfinite(w.arrival[order])]
        for day in range(cfg.days):
            rng = np.random.default_rng([cfg.seed, 2, day])
            if day > 0 and cfg.taste_drift_per_day > 0:
                fresh = rng.dirichlet(np.full(cfg.world.n_topics, TASTE_CONCENTRATION), size=len(self.users))
                for user, f in zip(self.users, fresh):
                    pref = (1 - cfg.taste_drift_per_day) * user.preference + cfg.taste_drift_per_day * f
                    user.preference = pref / pref.sum()
            counts = rng.poisson(cfg.sessions_per_day, size=len(self.users))
            who = np.repeat(np.arange(len(self.users)), counts)
            nth = np.arange(len(who)) - np.repeat(np.cumsum(counts) - counts, counts)  # the user's n-th session
            starts = _START + (day + rng.random(len(who))) * DAY
            for s in np.argsort(starts, kind="stable"):
                u, now = int(who[s]), float(starts[s])
                if not self.simulated[u]:
                    continue
                self._post_arrived(arrivals, now)
                srng = np.random.default_rng([cfg.seed, 3, day, u, int(nth[s])])
                self._session(day, u, now, srng, steps, shown, events, impressions)
            self._post_arrived(arrivals, _START + (day + 1) * DAY)
        result = SimResult(
            steps=pd.DataFrame(steps),
            shown=pd.DataFrame(shown),
            events=pd.DataFrame(events, columns=[c.name for c in EVENT_COLUMNS]),
            impressions=pd.DataFrame(impressions, columns=[c.name for c in IMPRESSION_COLUMNS]),
            new_items=pd.DataFrame(
                {
                    "item_id": w.item_ids[arrivals],
                    "arrival": w.arrival[arrivals],
                    "day": ((w.arrival[arrivals] - _START) // DAY).astype(np.int64),
                }
            ),
            catalog_size=pd.Series(
                [int((w.arrival < _START + (d + 1) * DAY).sum()) for d in range(cfg.days)], name="catalog_size"
            ),
            seconds=_time.perf_counter() - started,
        )
        return result

    def _post_arrived(self, arrivals: np.ndarray, now: float) -> None:
        w = self.world
        due = arrivals[self._posted :][w.arrival[arrivals[self._posted :]] <= now]
        if len(due) and self.post_items:
            rows = w.items.iloc[due]
            self.agent.post_items(
                [
                    SimItem(r.item_id, r.text, {"category": r.category, "brand": r.brand, "title": r.title}, float(t))
                    for r, t in zip(rows.itertuples(), w.arrival[due])
                ]
            )
        self._posted += len(due)

    def _session(self, day, u, now, rng, steps, shown, events, impressions) -> None:
        cfg, w = self.world.config, self.world
        user, uid = self.users[u], self.world.user_ids[u]
        item_ids = w.item_ids
        purchase_odds = user.event_probs[2] / (user.event_probs[1] + user.event_probs[2])
        while True:
            batch: list[SimEvent] = []
            if rng.random() < cfg.organic_rate:
                item, kind = user.next_event(rng, w.catalog)  # demo catalog rows come first: same index
                batch.append(SimEvent(uid, str(item_ids[item]), kind, now))
            if batch:
                self.agent.events(batch)
                events += [_event_row(e) for e in batch]
                batch = []
                now += 1.0
            rec = self.agent.recommend(uid, cfg.k, now)
            attr_all = w.attraction(user)
            available = w.arrival <= now
            idx = np.array([w.row_of.get(i, -1) for i in rec.item_ids], dtype=np.int64)
            # an item this world does not hold (a service's own from before this run) or not arrived yet: shown,
            # never clicked (nobody in this world wants what does not exist in it), counted in `foreign`
            real = (idx >= 0) & available[np.maximum(idx, 0)]
            attr = np.where(real, attr_all[np.maximum(idx, 0)], 0.0)
            best = np.sort(attr_all[available])[::-1][: len(idx)]
            draws = rng.random(cfg.k)[: len(idx)]
            if cfg.click_model == "cascade":
                hit = np.flatnonzero(draws < attr)
                clicked = np.zeros(len(idx), dtype=bool)
                clicked[hit[:1]] = True
            else:
                clicked = draws < w.examination(len(idx)) * attr
            buys = rng.random(len(idx)) < purchase_odds
            steps.append(
                {
                    "day": day,
                    "time": now,
                    "user_id": uid,
                    "recommendation_id": rec.recommendation_id,
                    "expected_clicks": w.expected_clicks(attr),
                    "oracle_expected_clicks": w.expected_clicks(best),
                    "clicks": int(clicked.sum()),
                    "foreign": int((~real).sum()),
                }
            )
            age = np.where(real, now - w.arrival[np.maximum(idx, 0)], np.inf)
            for j in range(len(idx)):
                shown.append(
                    {
                        "day": day,
                        "time": now,
                        "user_id": uid,
                        "recommendation_id": rec.recommendation_id,
                        "position": j,
                        "item_id": rec.item_ids[j],
                        "item_age_s": age[j],
                        "is_new": bool(age[j] < cfg.new_item_age_s),
                        "clicked": bool(clicked[j]),
                    }
                )
            if rec.slate is not None:
                impressions += impression_rows(rec.slate, rec.recommendation_id, now, rec.model_version, uid)
            for j in np.flatnonzero(clicked):
                t = now + 5.0 + j
                item = str(item_ids[idx[j]])
                batch.append(SimEvent(uid, item, "click", t, rec.recommendation_id, int(j)))
                if buys[j]:
                    batch.append(SimEvent(uid, item, "purchase", t + 60.0, rec.recommendation_id, int(j)))
                user.topic = int(w.topic[idx[j]])
            if batch:
                self.agent.events(batch)
                events += [_event_row(e) for e in batch]
            keep = cfg.continue_after_click if clicked.any() else cfg.continue_otherwise
            if rng.random() >= keep:
                return
            now += 1.0 + rng.exponential(cfg.step_gap_s) + (65.0 + cfg.k if clicked.any() else 0.0)


def _event_row(e: SimEvent) -> dict[str, Any]:
    return {
        "recommendation_id": e.recommendation_id,
        "position": e.position,
        "user_id": e.user_id,
        "item_id": e.item_id,
        "event_type": e.event_type,
        "value": None,
        "time": e.time,
    }


# --------------------------------------------------------------------------------------------- agents
@dataclass
class PopularityAgent:
    """Ranks items by their clicks and purchases so far (log(1 + count), ties by id), over a pool of the
    ``pool_size`` best, with an exploration policy on top. The pool also holds every item younger than
    ``fresh_s`` (or a ``new_items`` policy's age cutoff, if longer), after the others, as a retriever that
    indexes new items would: a policy can only explore what is in the pool. The agent counts each item's
    impressions (``new_items``' default order). Keeps each recommendation's pool in ``pools`` when
    ``keep_pools``."""

    policy: GreedyPolicy | EpsilonPolicy | SoftmaxPolicy | dict = field(default_factory=GreedyPolicy)
    pool_size: int = 50
    fresh_s: float = 7 * DAY
    model_version: str = "popularity"
    keep_pools: bool = False
    pools: dict[str, CandidatePool] = field(default_factory=dict)  # by recommendation id, with keep_pools

    def __post_init__(self):
        self._policy = ExplorationPolicy(self.policy)
        self._n = 0
        self._ids = np.zeros(0, dtype=object)  # sorted: ties in popularity go to the smaller id
        self._arrival = np.zeros(0)
        self._count = np.zeros(0)
        self._shown = np.zeros(0)  # impressions so far
        self._row: dict[str, int] = {}

    def _add(self, item_ids: Sequence[str], arrival: Sequence[float]) -> None:
        old = {i: (t, c, v) for i, t, c, v in zip(self._ids, self._arrival, self._count, self._shown)}
        for i, t in zip(item_ids, arrival):
            old[i] = (t, *old.get(i, (t, 0.0, 0.0))[1:])
        self._ids = np.array(sorted(old), dtype=object)
        self._arrival, self._count, self._shown = (
            np.array([old[i][f] for i in self._ids], dtype=np.float64) for f in range(3)
        )
        self._row = {i: r for r, i in enumerate(self._ids)}

    def known(self, item_ids: Sequence[str], counts: dict[str, float] | None = None) -> None:
        """The items that exist at the start (a service knows its catalog), with their counts so far."""
        self._add(item_ids, [-math.inf] * len(item_ids))
        for i, c in (counts or {}).items():
            if i in self._row:
                self._count[self._row[i]] += c

    def count(self, item_id: str) -> float:
        return float(self._count[self._row[item_id]]) if item_id in self._row else 0.0

    def arrival(self, item_id: str) -> float:
        return float(self._arrival[self._row[item_id]])

    def recommend(self, user_id, k, now):
        score = np.log1p(self._count)
        order = np.argsort(-score, kind="stable")
        top, rest = order[: self.pool_size], order[self.pool_size :]
        new = self._policy.config.new_items
        fresh = max(self.fresh_s, new.age_cutoff_s if new is not None else 0.0)
        top = np.concatenate([top, rest[now - self._arrival[rest] < fresh]])
        pool_ids, pool_scores, age = self._ids[top].tolist(), score[top], now - self._arrival[top]
        shown = self._shown[top]
        self._n += 1
        rid = f"{self.model_version}-{self._n}"
        slate = self._policy.select(pool_ids, pool_scores, k, rid, item_age_s=age, item_impressions=shown)
        self._shown[[self._row[i] for i in slate.item_ids]] += 1.0
        if self.keep_pools:
            self.pools[rid] = CandidatePool(tuple(pool_ids), pool_scores, age, shown)
        return Recommendation(rid, slate.item_ids, slate, self.model_version)

    def events(self, events):
        for e in events:
            if e.event_type in ("click", "purchase") and e.item_id in self._row:
                self._count[self._row[e.item_id]] += 1.0

    def post_items(self, items):
        self._add([it.item_id for it in items], [it.time for it in items])


class OracleAgent:
    """Shows the ``k`` items the user finds most attractive right now (the simulator's own state): the best
    slate for both click models, so its expected regret is 0."""

    def __init__(self, simulator: Simulator):
        self.sim = simulator
        self._n = 0

    def recommend(self, user_id, k, now):
        w = self.sim.world
        user = self.sim.users[w.user_row[user_id]]
        attr = np.where(w.arrival <= now, w.attraction(user), -1.0)
        top = np.argsort(-attr, kind="stable")[:k]
        self._n += 1
        return Recommendation(f"oracle-{self._n}", tuple(w.item_ids[top].tolist()), None, "oracle")

    def events(self, events):
        pass

    def post_items(self, items):
        pass


def oracle_agent(world: World, simulator: Simulator) -> OracleAgent:
    """An agent factory (for :func:`lmrec.loop.distributed.run_sharded` and side-by-side runs)."""
    return OracleAgent(simulator)


class HttpAgent:
    """Drives a running lmrec service: POST /v1/recommend, /v1/events and /v1/items (writes send
    ``Authorization: Bearer TOKEN``). Events carry ``recommendation_id`` and ``position`` when the service
    returned a ``recommendation_id`` (attribution), and are sent as soon as they happen (real time)."""

    MAX_EVENTS = 1000  # the API's bounds (lmrec.serving.schemas)
    MAX_ITEMS = 256

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SimulatorError(f"--url must look like http://HOST:PORT, got {url!r}")
        conn = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._conn = conn(parts.hostname, parts.port, timeout=timeout_s)
        self._prefix = parts.path.rstrip("/")
        self.token = token
        self._n = 0
        self._attribution: set[str] = set()  # recommendation ids the service issued

    RETRY_STATUS = (429, 503)  # overloaded, or a request that met two models during a rollout: retry
    RETRIES = 3

    def _post(self, path: str, body: dict, write: bool) -> dict:
        headers = {"Content-Type": "application/json"}
        if write and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = json.dumps(body).encode()
        for attempt in range(self.RETRIES + 1):
            status, data = self._send(path, payload, headers)
            if status not in self.RETRY_STATUS or attempt == self.RETRIES:
                break
            _time.sleep(0.1 * 2**attempt)
        try:
            doc = json.loads(data) if data else {}
        except ValueError:
            doc = {}
        if status >= 300:
            msg = (doc.get("error") or {}).get("message") if isinstance(doc, dict) else None
            raise SimulatorError(f"POST {path}: the service answered {status}: {msg or repr(data[:200])}")
        return doc

    def _send(self, path: str, payload: bytes, headers: dict) -> tuple[int, bytes]:
        for attempt in range(2):  # one reconnect if the service closed an idle keep-alive connection
            try:
                self._conn.request("POST", self._prefix + path, payload, headers)
                resp = self._conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                self._conn.close()
                if attempt:
                    raise SimulatorError(f"POST {path}: cannot reach the service ({type(e).__name__})") from None
        raise AssertionError("unreachable")

    def recommend(self, user_id, k, now):
        doc = self._post("/v1/recommend", {"user_id": user_id, "k": k}, write=False)
        items = tuple(it["item_id"] for it in doc.get("items", []))
        rid = doc.get("recommendation_id")
        if rid:
            self._attribution.add(rid)
        else:
            self._n += 1
            rid = f"sim-{self._n}"  # the service does not attribute: a local id for the simulator's records
        return Recommendation(rid, items, None, str(doc.get("model_version", "")))

    def events(self, events):
        body = []
        for e in events:
            # no timestamp: the service stamps each event with its own clock, the clock its impressions carry, so
            # the logs it collects attribute clicks to what it showed (the simulated clock stays in the simulator)
            row = {"user_id": e.user_id, "item_id": e.item_id, "event_type": e.event_type}
            if e.recommendation_id in self._attribution:
                row.update(recommendation_id=e.recommendation_id, position=e.position)
            body.append(row)
        for start in range(0, len(body), self.MAX_EVENTS):
            self._post("/v1/events", {"events": body[start : start + self.MAX_EVENTS]}, write=True)

    def post_items(self, items):
        body = [{"item_id": it.item_id, "text": it.text, "attributes": it.attributes} for it in items]
        for start in range(0, len(body), self.MAX_ITEMS):
            self._post("/v1/items", {"items": body[start : start + self.MAX_ITEMS]}, write=True)


def popularity_agent(world: World, **kw) -> PopularityAgent:
    """A :class:`PopularityAgent` that knows the demo catalog and counts its logged history's interactions."""
    agent = PopularityAgent(**kw)
    counts = {str(i): float(c) for i, c in world.history["item_id"].value_counts().items()}
    agent.known(world.item_ids[~np.isfinite(world.arrival)].tolist(), counts)
    return agent
