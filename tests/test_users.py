"""Users' state for ranking (lmrec.ranking.users.UserStates) over a real SQLite store: contexts, user vectors
computed once per history version and cached, the refresh after events, and rollouts."""

import asyncio

import numpy as np

from lmrec.ranking.records import UserVectors
from lmrec.ranking.users import UserStates
from lmrec.store.base import Event
from lmrec.store.sqlite import SQLiteStore


class CountingTower:
    """A user tower whose vector is the history's length, after ``delay``: the tests count its calls (the
    real towers are tested in test_export / test_serving)."""

    def __init__(self, delay: float = 0.0, fail: bool = False, model: str = ""):
        self.calls: list[list[int]] = []
        self.delay, self.fail, self.model = delay, fail, model

    async def user_vectors(self, histories):
        self.calls.append([len(h) for h in histories])
        fail = self.fail  # as it was when the call came
        await asyncio.sleep(self.delay)
        if fail:
            raise RuntimeError("scorer unavailable")
        return UserVectors(tuple(np.full(3, float(len(h)), np.float32) for h in histories), (True,) * len(histories), self.model)


def _stage(tmp_path, tower):
    return UserStates(SQLiteStore(tmp_path / "state.sqlite"), tower, max_history=50)


def _click(user, item):
    return Event(user, item, "click")


def _cached(store, user_id, version):
    record = store.read_users([user_id], 0)[0]
    return record.vector if record.version == version else None


def test_an_event_refreshes_the_users_vector_after_its_acknowledgement(tmp_path):
    tower = CountingTower()
    stage = _stage(tmp_path, tower)

    async def main():
        await stage.append([_click("u", "a"), _click("u", "b"), _click("v", "a")])
        assert tower.calls == []  # acknowledged before any vector work
        await asyncio.gather(*stage._refreshes)
        return await stage.contexts(["u", "v"])

    u, v = asyncio.run(main())
    assert tower.calls == [[2, 1]]  # both users in one call, after the acknowledgement
    np.testing.assert_array_equal(u.vector, [2, 2, 2])
    np.testing.assert_array_equal(v.vector, [1, 1, 1])
    np.testing.assert_array_equal(_cached(stage.store, "u", u.version), [2, 2, 2])  # cached: the read was a hit


def test_a_recommendation_during_the_refresh_waits_for_it_instead_of_computing_again(tmp_path):
    tower = CountingTower(delay=0.05)
    stage = _stage(tmp_path, tower)

    async def main():
        await stage.append([_click("u", "a")])
        await asyncio.sleep(0)  # the refresh starts and reaches the scorer
        return await asyncio.gather(stage.contexts(["u"]), stage.contexts(["u", "u"]))

    (one,), (two, three) = asyncio.run(main())
    assert tower.calls == [[1]]  # one computation served all three reads
    for ctx in (one, two, three):
        np.testing.assert_array_equal(ctx.vector, [1, 1, 1])


def test_bulk_events_leave_vectors_to_the_next_request_and_a_failed_refresh_is_not_fatal(tmp_path):
    from lmrec.ranking.users import REFRESH_MAX_USERS

    tower = CountingTower(fail=True)
    stage = _stage(tmp_path, tower)

    async def main():
        await stage.append([_click(f"u{i}", "a") for i in range(REFRESH_MAX_USERS + 1)])
        assert not stage._refreshes  # a bulk load: no refresh
        await stage.append([_click("u0", "b")])
        await asyncio.gather(*stage._refreshes)  # fails, logged
        assert tower.calls == [[2]] and not stage._computing
        tower.fail = False
        return await stage.contexts(["u0"])

    (ctx,) = asyncio.run(main())
    assert tower.calls == [[2], [2]]
    np.testing.assert_array_equal(ctx.vector, [2, 2, 2])


def test_when_the_refresh_fails_a_waiting_recommendation_computes_the_vector_itself(tmp_path):
    tower = CountingTower(delay=0.05, fail=True)
    stage = _stage(tmp_path, tower)

    async def main():
        await stage.append([_click("u", "a")])
        await asyncio.sleep(0)  # the refresh is under way, and will fail
        waiting = asyncio.ensure_future(stage.contexts(["u"]))
        await asyncio.sleep(0.01)
        tower.fail = False
        return await waiting

    (ctx,) = asyncio.run(main())
    assert tower.calls == [[1], [1]] and not stage._computing
    np.testing.assert_array_equal(ctx.vector, [1, 1, 1])


def test_a_vector_of_another_model_is_used_once_and_never_cached(tmp_path):
    """During a rollout the stage may reach a scorer replica of the other model: that vector answers this
    request, named by its model (retrieval refuses to rank it in another model's index), and is not cached."""
    tower = CountingTower(model="the-other-model")
    stage = _stage(tmp_path, tower)

    async def main():
        await stage.append([_click("u", "a")])
        await asyncio.gather(*stage._refreshes)
        return (await stage.contexts(["u"]))[0]

    u = asyncio.run(main())
    assert u.model == "the-other-model" and _cached(stage.store, "u", u.version) is None
    tower.model = stage.store.model  # this model's scorer: cached, and named by this model
    (u,) = asyncio.run(stage.contexts(["u"]))
    assert u.model == "" and _cached(stage.store, "u", u.version) is not None
    (u,) = asyncio.run(stage.contexts(["u"]))  # a cache hit: this model's
    assert u.model == "" and tower.calls == [[1], [1], [1]]  # refresh, request (not cached), request (cached)
