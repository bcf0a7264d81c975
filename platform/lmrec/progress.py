"""Progress on stderr for the steps of a command that take more than a few seconds.

Two shapes: :func:`bar` counts known work (batches, users); :func:`activity` is for a step whose size is
unknown beforehand (loading a dataset, an export and its gate, starting Ray): it shows the time so far and
the latest message the ``lmrec`` loggers wrote, refreshed every second. Both draw only when stderr is a
terminal (tqdm's ``disable=None``) unless ``LMREC_PROGRESS=1`` forces them on (``0`` turns them off), so
logs in CI and in files stay clean.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


def _disabled() -> bool | None:
    forced = os.environ.get("LMREC_PROGRESS")
    if forced is not None:
        return forced.strip() in ("", "0", "false", "no")
    return None  # tqdm: off when stderr is not a terminal


def bar(iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "it") -> Iterator:
    """``iterable`` with a progress bar of ``total`` steps."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=_disabled(), file=sys.stderr, leave=False,
                dynamic_ncols=True, mininterval=0.5)


class _Latest(logging.Handler):
    """Keeps the latest message of the ``lmrec`` loggers, for the activity line."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.message = record.getMessage().splitlines()[0][:80]
        except Exception:  # a message that cannot be formatted never breaks the step it reports on
            pass


@contextmanager
def activity(desc: str):
    """A line ``desc: <latest lmrec log message> [elapsed]`` while the block runs; on success it ends with
    the time taken (``desc: done in 12.3 s``)."""
    from tqdm.auto import tqdm

    disabled = _disabled()
    line = tqdm(total=None, desc=desc, disable=disabled, file=sys.stderr, leave=False, dynamic_ncols=True,
                bar_format="{desc}{postfix} [{elapsed}]")
    latest = _Latest()
    logger = logging.getLogger("lmrec")
    logger.addHandler(latest)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(1.0):
            line.set_postfix_str(latest.message, refresh=False)
            line.refresh()

    ticker = threading.Thread(target=tick, name="lmrec-progress", daemon=True)
    shown = not line.disable  # (closing the line disables it)
    if shown:
        ticker.start()
    started = time.perf_counter()
    try:
        yield line
    finally:
        stop.set()
        if ticker.is_alive():
            ticker.join()
        logger.removeHandler(latest)
        line.close()
    if shown:
        print(f"{desc}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
