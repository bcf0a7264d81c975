"""The simulator's users sharded over Ray actors (the one module of ``lmrec.loop`` that uses Ray, imported
lazily): each actor builds the same world from the config and simulates its share of the users against its
own agent, so a run scales out to a cluster.

Every user's sessions, times and coin flips are the same however the users are split; what an agent learns
is not: in-process agents see only their shard's events (popularity per shard), while HTTP agents share the
service's state (one shard posts the arriving items). An agent whose choices depend only on the user (the
oracle) gives exactly the unsharded run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from lmrec.loop.simulator import Agent, SimConfig, SimResult, Simulator, World

AgentFactory = Callable[[World, Simulator], Agent]


def _run_shard(config: SimConfig, users: np.ndarray, make_agent: AgentFactory, post_items: bool, shard: int) -> SimResult:
    world = World.build(config)
    sim = Simulator(world, None, users=users, post_items=post_items)
    sim.shard = f"s{shard}"  # for agents that name their recommendations: unique across shards
    sim.agent = make_agent(world, sim)
    return sim.run()


def run_sharded(
    config: SimConfig,
    make_agent: AgentFactory,
    shards: int,
    num_cpus: float = 1.0,
    shared_service: bool = False,
) -> SimResult:
    """Simulate ``config`` with users split round-robin over ``shards`` Ray actors (on the Ray cluster this
    process is connected to, or a local one). ``shared_service``: the agents drive one service, so only
    shard 0 posts new items. Frames are merged in time order; ``seconds`` is the wall time of the whole run."""
    import ray

    if not ray.is_initialized():
        ray.init()
    remote = ray.remote(num_cpus=num_cpus)(_run_shard)
    n_users = config.world.n_users
    started = time.perf_counter()
    refs = [
        remote.remote(config, np.arange(s, n_users, shards), make_agent, not shared_service or s == 0, s)
        for s in range(shards)
    ]
    parts: list[SimResult] = ray.get(refs)
    seconds = time.perf_counter() - started

    def merge(name: str, by: list[str]) -> pd.DataFrame:
        frames = [getattr(p, name) for p in parts if len(getattr(p, name))]
        if not frames:
            return getattr(parts[0], name)
        return pd.concat(frames, ignore_index=True).sort_values(by, kind="stable").reset_index(drop=True)

    return SimResult(
        steps=merge("steps", ["time", "user_id"]),
        shown=merge("shown", ["time", "user_id", "position"]),
        events=merge("events", ["time", "user_id"]),
        impressions=merge("impressions", ["time", "recommendation_id", "position"]),
        new_items=parts[0].new_items,
        catalog_size=parts[0].catalog_size,
        seconds=seconds,
    )
