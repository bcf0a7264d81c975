"""Reports written whole or not at all: a reader (a dashboard, a CI step, the next command) never sees a
half-written file. One helper for every command and benchmark that writes JSON."""

from __future__ import annotations

import json
from pathlib import Path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file beside it, then a rename); creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, obj) -> Path:
    """``obj`` as indented JSON at ``path``, atomically (see :func:`write_text`)."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")
