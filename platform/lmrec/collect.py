"""What a running service has collected, as a dataset the next model trains on (``lmrec collect``).

The store holds every acknowledged event (the seed data and everything posted since; a deleted user's
events are gone) and every item posted or removed through the API. ``collect`` writes them in the
``parquet`` format the data loaders read:

- ``events.parquet``: ``user_id, item_id, timestamp`` (seconds since the epoch), ``event``, ``value``;
- ``items.parquet``: ``item_id, text`` for the model's catalog and every posted item (a posted text
  replaces the catalog's), ``attributes`` as JSON, ``created`` (when it was first posted) and ``removed`` (a
  removed item stays: the events that name it still teach the model, and the store's tombstone keeps it out
  of serving whatever the next artifact's catalog holds);
- ``data.yaml``: the ``data:`` section pointing at them (``lmrec train CONFIG.yaml OUT/data.yaml``);
- ``logs/``: the logged-bandit dataset (:mod:`lmrec.loop.logs`, the format ``lmrec ope`` and ``lmrec experiment
  report`` read): ``impressions/`` (one row per shown slot, with its propensity) and ``events/`` (every event,
  with the recommendation and position it cites, if any).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import yaml

from lmrec.errors import LmrecError
from lmrec.store.base import Store


def collect(store: Store, out: str | Path, artifact: str | Path | None = None, chunk: int = 1_000_000) -> dict:
    """Write the store's events and the catalog (``artifact``'s, plus the store's posted and removed items)
    under ``out``; returns counts and the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = _catalog(artifact)
    for record in store.items_since(0):
        entry = items.setdefault(record.item_id, {"text": "", "attributes": {}})
        if record.text or not record.removed:  # a catalog item's tombstone carries no text of its own
            entry["text"], entry["attributes"] = record.text, record.attributes
        entry["removed"] = record.removed
        entry["created"] = record.created
    rows: list[tuple] = []
    parts: list[pd.DataFrame] = []
    for e in store.events():
        rows.append((e.user_id, e.item_id, e.timestamp, e.event_type, e.value))
        if len(rows) >= chunk:
            parts.append(_frame(rows))
            rows = []
    events = pd.concat([*parts, _frame(rows)], ignore_index=True)
    if events.empty:
        raise LmrecError("the store holds no events: nothing to train on (seed it, or post events first)")
    unknown = sorted(set(events["item_id"]) - set(items))
    for item_id in unknown:  # events on ids neither the catalog nor the store describes: no text to read
        items[item_id] = {"text": "", "attributes": {}}
    table = pd.DataFrame({
        "item_id": list(items),
        "text": [v["text"] for v in items.values()],
        "attributes": [json.dumps(v["attributes"], sort_keys=True) for v in items.values()],
        "removed": [bool(v.get("removed", False)) for v in items.values()],
        "created": [v.get("created") for v in items.values()],  # first posted here (None: the model's catalog)
    })  # fmt: skip
    events.to_parquet(out / "events.parquet", index=False)
    table.to_parquet(out / "items.parquet", index=False)
    logged = write_bandit_logs(store, out / "logs")
    data = {"path": str((out / "events.parquet").resolve()), "format": "parquet",
            "items_path": str((out / "items.parquet").resolve()), "text_template": "{text}"}
    (out / "data.yaml").write_text("# written by `lmrec collect`: train the next model with\n"
                                   f"#   lmrec train CONFIG.yaml {out / 'data.yaml'}\n" + yaml.safe_dump({"data": data}, sort_keys=False))
    return {"events": len(events), "users": int(events["user_id"].nunique()), "items": len(table),
            "posted_or_removed": sum(1 for v in items.values() if "removed" in v), "removed": int(table["removed"].sum()),
            "items_without_text": len(unknown), "impressions": logged["impressions"], "attributed": logged["attributed"],
            "out": str(out)}


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event", "value"]).astype({"value": "float64"})


def _catalog(artifact: str | Path | None) -> dict[str, dict]:
    """The artifact's catalog as ``{item_id: {"text", "attributes"}}`` (its files checked first)."""
    if artifact is None:
        return {}
    from lmrec.artifact import CATALOG, verify_artifact

    _, blobs = verify_artifact(artifact)
    catalog = pd.read_parquet(io.BytesIO(blobs[CATALOG]), columns=["item_id", "text"])
    return {str(i): {"text": str(t), "attributes": {}} for i, t in zip(catalog["item_id"], catalog["text"])}


def write_bandit_logs(store: Store, out: str | Path, since: float = 0.0, chunk: int = 200_000) -> dict:
    """The store's impressions (served at or after ``since``) and events as a logged-bandit folder
    (:func:`lmrec.loop.logs.write_logs`, in parts of ``chunk`` slots); counts."""
    from lmrec.loop.logs import write_logs

    out = Path(out)
    slots: list[dict] = []
    part = n = 0

    def flush(events: list[dict]) -> None:
        nonlocal slots, part
        if slots or events or part == 0:
            write_logs(out, slots, events, part=f"{part:05d}")
            part += 1
            slots = []

    for imp in store.impressions(since):
        n += 1
        for j, item in enumerate(imp.item_ids):
            slots.append({"recommendation_id": imp.recommendation_id, "user_id": imp.user_id, "context_item_id": imp.context_item_id,
                          "time": imp.time, "position": j, "item_id": item, "score": imp.scores[j], "propensity": imp.propensities[j],
                          "prefix_propensity": imp.prefix_propensities[j] if imp.prefix_propensities else None,
                          "slate_probability": imp.slate_probability, "explored": imp.explored[j], "policy": imp.policy,
                          "policy_params": imp.policy_params, "model_version": imp.model_version, "variant": imp.variant,
                          "surface": imp.surface})
        if len(slots) >= chunk:
            flush([])
    events = [{"recommendation_id": e.recommendation_id, "position": e.position, "user_id": e.user_id, "item_id": e.item_id,
               "event_type": e.event_type, "value": e.value, "time": e.timestamp} for e in store.events() if e.timestamp >= since]
    flush(events)
    return {"impressions": n, "attributed": sum(1 for e in events if e["recommendation_id"]), "events": len(events), "out": str(out)}
