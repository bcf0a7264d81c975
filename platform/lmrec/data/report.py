"""What ``lmrec data`` says of a dataset: which columns were read as what, what each convention decided
(file order as time, every event a click, ...), how many items lack text, which users only train.

The conventions themselves live in the loaders (``lmrec.data.loaders.load_tabular``); this module only
reports what they did, so a user sees it before training on it.
"""

from __future__ import annotations

from lmrec.data.schema import Dataset
from lmrec.data.split import Split

# item table columns that never become filterable attributes in serving (lmrec.serving.retrieval.catalog_attributes)
NOT_ATTRIBUTES = ("item_id", "text", "text_field", "description", "title")


def describe(ds: Dataset, split: Split) -> dict:
    """A JSON-able description of ``ds`` and its ``split``."""
    inter, items = ds.interactions, ds.items
    has_text = items["text"].str.len() > 0
    in_events = items["item_id"].isin(set(inter["item_id"]))
    targets = set(split.valid["user_id"]) | set(split.test["user_id"])
    users = inter["user_id"].unique()
    train_only = [u for u in users if u not in targets]
    report = {
        **ds.summary(),
        "source": ds.source,
        **ds.info,
        "items_without_text": int((~has_text).sum()),
        "items_without_events": int((~in_events).sum()),
        "attributes": [c for c in items.columns if c not in NOT_ATTRIBUTES],
        "split": {**split.summary(), "users_with_targets": len(targets), "users_train_only": len(train_only)},
    }
    return report


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in d.items())


def format_report(r: dict) -> str:
    """The description as a few aligned lines for a terminal."""
    source = r["source"] if "/" in r["source"] else ""  # a path (the embedded demo has none)
    lines = [f"dataset   {r['dataset']} ({r.get('format', 'synthetic' if r.get('synthetic') else '?')}) {source}".rstrip()]
    cols = r.get("columns")
    if cols:
        lines.append("columns   " + ", ".join(f"{k} <- {v}" for k, v in cols.items()))
        if r.get("ignored_columns"):
            lines.append(f"          not read: {', '.join(r['ignored_columns'])}")
    lines.append(f"events    {r['interactions']:,} ({_counts(r['events'])}) of {r['users']:,} users")
    where = r.get("items_file")
    item_line = f"items     {r['items']:,}"
    if where:
        item_line += f" (items file {where['path']}, id column {where['id_column']!r})"
    lines.append(item_line)
    lines.append(f"          text template: {r.get('text_template') or '(none: no item text)'}")
    lacking = f"          with text: {r['items_with_text']:,}; without: {r['items_without_text']:,}"
    if r.get("items_not_in_items_file"):
        lacking += f" (in the events, not in the items file: {r['items_not_in_items_file']:,})"
    lines.append(lacking + (": ranked by ID and co-occurrence only" if r["items_without_text"] else ""))
    if r["items_without_events"]:
        lines.append(f"          without events: {r['items_without_events']:,} (recommended from their text alone: cold start)")
    lines.append(f"          filterable attributes when served: {', '.join(r['attributes']) or '(none)'}")
    s = r["split"]
    lines.append(f"split     {s['method']}: train {s['train_interactions']:,}, valid {s['valid_interactions']:,}, "
                 f"test {s['test_interactions']:,} events")
    why = " (fewer than 3 events)" if s["method"] == "leave_one_out" else " (no valid or test event)"
    lines.append(f"          users with valid/test targets: {s['users_with_targets']:,}; training only: {s['users_train_only']:,}{why}")
    return "\n".join(lines)
