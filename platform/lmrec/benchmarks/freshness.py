"""Freshness through the HTTP API, measured strictly: ``lmrec bench freshness`` (and the freshness part of
``lmrec bench serve``).

Events: for each trial a seeded user's recommendations (``exclude_seen: false``, so that a clicked item does
not vanish from the answer by filtering alone), then a click on one of them, then the very next
recommendations. The event counts as seen only when the answer after it comes from a user vector computed
after the event — its ``history_version`` (the store's version of the user's history the vector was
computed from, which every append raises) is above the one before the event — and the scores changed. A
service whose answers carry no ``history_version`` cannot be judged: the report says so (``seen_fraction``
None) instead of guessing from the ranking.

New items: an item posted with a shelf of its own, then a recommendation filtered to that shelf (found?);
then the item removed and the same recommendation (gone?).
"""

from __future__ import annotations

import random
import time
import uuid

import numpy as np

from lmrec.errors import LmrecError

VERSION = "history_version"
SCORE_TOL = 1e-6  # scores are float32 dot products: below this a "change" is rounding


def percentiles(ms: list[float]) -> dict:
    """p50 / p95 / p99 of latencies in ms (None without any), and how many."""
    if not ms:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "n": 0}
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "n": len(ms)}


def _client():
    import aiohttp

    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))


def scores_changed(before: list[dict], after: list[dict]) -> bool:
    """Whether two answers' scores differ: another ranking, or a score of an item both hold moved."""
    a = {i["item_id"]: i["score"] for i in before}
    b = {i["item_id"]: i["score"] for i in after}
    if [i["item_id"] for i in before] != [i["item_id"] for i in after]:
        return True
    return any(abs(a[i] - b[i]) > SCORE_TOL for i in a.keys() & b.keys())


async def measure_freshness(base: str, users: list[str], trials: int, k: int, seed: int, token: str) -> dict:
    """``trials`` events, each followed by the very next recommendation (see the module docstring)."""
    rng = random.Random(seed + 1)
    auth = {"Authorization": f"Bearer {token}"}
    seen = changed = advanced = 0
    missing = False
    visible, event_ms, rec_ms = [], [], []

    async def recommend(s, user: str) -> dict:
        async with s.post(base + "/v1/recommend", json={"user_id": user, "k": k, "exclude_seen": False}, headers=auth) as r:
            if r.status != 200:
                raise LmrecError(f"recommendation refused: {r.status} {(await r.text())[:300]}")
            return await r.json()

    async with _client() as s:
        for _ in range(trials):
            user = rng.choice(users)
            before = await recommend(s, user)
            item = before["items"][-1]["item_id"]  # one it was not about to show first
            t0 = time.perf_counter()
            async with s.post(base + "/v1/events", json={"user_id": user, "item_id": item, "event_type": "click"}, headers=auth) as r:
                await r.read()
                if r.status != 202:
                    raise LmrecError(f"event refused: {r.status} {(await r.text())[:300]}")
            t1 = time.perf_counter()
            after = await recommend(s, user)
            t2 = time.perf_counter()
            moved = scores_changed(before["items"], after["items"])
            changed += moved
            event_ms.append((t1 - t0) * 1000)
            rec_ms.append((t2 - t1) * 1000)
            if VERSION not in before or VERSION not in after:
                missing = True
                continue
            newer = after[VERSION] > before[VERSION]
            advanced += newer
            if newer and moved:
                seen += 1
                visible.append((t2 - t0) * 1000)
    out = {"trials": trials, "exclude_seen": False, "changed_fraction": changed / trials,
           "event_post": percentiles(event_ms), "next_recommend": percentiles(rec_ms)}
    if missing:
        return {**out, "seen_fraction": None, "event_to_updated_ranking": percentiles([]),
                "missing": f"the service's answers carry no {VERSION!r}: which user vector answered cannot be told, so no "
                           "event is counted as seen (changed_fraction says only that the scores moved)"}
    return {**out, "seen_fraction": seen / trials, "version_advanced_fraction": advanced / trials,
            # from sending the event to holding an answer computed from it (seen trials only)
            "event_to_updated_ranking": percentiles(visible)}


async def measure_new_items(base: str, trials: int, token: str) -> dict:
    """Each trial posts an item with a shelf of its own and asks for that shelf (found?), then removes it
    and asks again (gone?)."""
    auth = {"Authorization": f"Bearer {token}"}
    found, gone, ms, removal_ms = 0, 0, [], []
    async with _client() as s:

        async def shelf_items(shelf: str) -> list[str]:
            async with s.post(base + "/v1/recommend", json={"user_id": "bench-user", "k": 1, "filters": {"shelf": shelf}}) as r:
                return [i["item_id"] for i in (await r.json())["items"]]

        for n in range(trials):
            item, shelf = f"bench-new-{uuid.uuid4().hex[:8]}", f"bench-{n}"
            body = {"text": f"A brand new product number {n}: a lightweight waterproof field notebook.", "attributes": {"shelf": shelf}}
            t0 = time.perf_counter()
            async with s.put(f"{base}/v1/items/{item}", json=body, headers=auth) as r:
                await r.read()
                if r.status != 200:
                    raise LmrecError(f"item refused: {r.status} {await r.text()}")
            items = await shelf_items(shelf)
            ms.append((time.perf_counter() - t0) * 1000)
            found += int(items == [item])
            t0 = time.perf_counter()
            async with s.delete(f"{base}/v1/items/{item}", headers=auth) as r:
                await r.read()
                if r.status != 200:
                    raise LmrecError(f"item removal refused: {r.status} {await r.text()}")
            items = await shelf_items(shelf)
            removal_ms.append((time.perf_counter() - t0) * 1000)
            gone += int(items == [])
    return {"trials": trials, "found_fraction": found / trials, "post_to_recommendable": percentiles(ms),
            "removed_fraction": gone / trials, "remove_to_gone": percentiles(removal_ms)}
