"""Item text from a template over the item table's fields, e.g. ``"{title}. {genres}. {brand}"``.

A field that is empty for an item drops the literal text just before it, so a missing brand gives
``"Drill. Tools"`` rather than ``"Drill. Tools. "``. Lists (categories, genres) are joined with ", ".
"""

from __future__ import annotations

import math
import string

import numpy as np
import pandas as pd

from lmrec.errors import DataError


def template_fields(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise DataError(f"text template {template!r} is malformed: {exc}") from None
    fields = []
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if not name or spec or conv or not name.isidentifier():
            raise DataError(
                f"text template {template!r}: use plain field names like {{title}}, got {{{name or ''}}}"
            )
        fields.append(name)
    if not fields:
        raise DataError(f"text template {template!r} names no field; e.g. '{{title}}. {{genres}}'")
    return fields


def _as_text(value) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(t for t in (_as_text(v) for v in list(value)) if t)
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        if float(value).is_integer():  # a year read into a column with gaps: 1995.0 -> "1995"
            return str(int(value))
    return " ".join(str(value).split())


def render_text(items: pd.DataFrame, template: str, source: str = "items") -> pd.Series:
    """Render ``template`` for every row of ``items``; unknown fields raise a :class:`DataError`."""
    fields = template_fields(template)
    missing = [f for f in fields if f not in items.columns]
    if missing:
        raise DataError(
            f"{source}: text template {template!r} uses unknown field(s) {missing}; "
            f"available: {[c for c in items.columns if c != 'text']}"
        )
    parts = list(string.Formatter().parse(template))
    columns = {f: [_as_text(v) for v in items[f].tolist()] for f in set(fields)}
    out = []
    for row in range(len(items)):
        pieces: list[str] = []
        for literal, name, _, _ in parts:
            if name is None:
                pieces.append(literal)
                continue
            value = columns[name][row]
            if value:
                pieces.append(literal if pieces else literal.lstrip(" .,;:|-"))
                pieces.append(value)
        text = "".join(pieces).strip()
        out.append(text if any(columns[f][row] for f in fields) else "")
    return pd.Series(out, index=items.index, dtype=object)


HISTORY_SEPARATOR = " ; "  # between item texts in a text user tower's input


def history_text(history: np.ndarray, texts: list[str], max_items: int) -> str:
    """The text user tower's input: item texts of the history (catalog positions), most recent first."""
    return HISTORY_SEPARATOR.join(texts[i] for i in history[::-1][:max_items])
