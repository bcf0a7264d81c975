"""Seeding a new store with a dataset's histories, once, so the users it knows get personalised
recommendations from the first request."""

from __future__ import annotations

import logging

from lmrec.store.base import Event, Store

log = logging.getLogger(__name__)


def seed_store(store: Store, dataset_name: str | None, config_file: str | None, chunk: int = 5000) -> int:
    """Load a dataset's interactions as users' histories, only into an empty store and by one replica of
    several starting together. Returns the events written."""
    if not (dataset_name or config_file) or store.stats()["events"] > 0 or not store.claim("seeded"):
        return 0  # nothing to seed, seeded already, or another replica starting beside this one is seeding it
    from lmrec.config import load_config
    from lmrec.data.loaders import load_dataset

    cfg = load_config([config_file] if config_file else [], [f"data.dataset={dataset_name}"] if dataset_name else [])
    inter = load_dataset(cfg.data).interactions
    total = 0
    rows = inter[["user_id", "item_id", "event", "value", "timestamp"]].itertuples(index=False)
    batch: list[Event] = []
    for user, item, event, value, ts in rows:
        v = None if value != value else float(value)  # NaN -> no value
        batch.append(Event(str(user), str(item), event, v, float(ts)))
        if len(batch) >= chunk:
            total += store.append_events(batch)
            batch = []
    if batch:
        total += store.append_events(batch)
    log.info("seeded the store with %d events of %s", total, dataset_name or config_file)
    return total
