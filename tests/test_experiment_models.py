"""Model experiments in the ranking core, without Ray: two models (each its own index and user vectors) over
one SQLite store, an experiment whose variants name them, and the router sending each user to their variant's
model. The expected answers are each model's own Ranker asked directly (brute-force-checked in test_ranker)."""

import asyncio

import numpy as np
import pytest

from lmrec.artifact import ServingModel
from lmrec.errors import LmrecError
from lmrec.ranking.config import RankingConfig
from lmrec.ranking.encoder import Encoder
from lmrec.ranking.experiment import ModelRouter
from lmrec.ranking.index import IndexConfig
from lmrec.ranking.ranker import Ranker
from lmrec.ranking.records import Query
from lmrec.ranking.retriever import Retriever
from lmrec.ranking.users import LocalTower, UserStates
from lmrec.store.base import Event
from lmrec.store.sqlite import SQLiteStore

IDS = ["a", "b", "c", "d", "e", "f"]
VECS = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.1, 0.9, 0], [0, 0, 1], [0.7, 0.7, 0]], dtype=np.float32)
EXPERIMENT = {"name": "two-models", "variants": [{"name": "control", "share": 1.0},
                                                 {"name": "challenger", "share": 1.0, "model": "next"}]}


def model(version: str, vectors: np.ndarray) -> ServingModel:
    return ServingModel(
        model_version=version, item_ids=list(IDS), item_texts=[f"item {i}" for i in IDS], item_vectors=vectors.copy(),
        normalize=False, max_history=10, user_tower_kind="gru", backend="test", item_counts=np.arange(len(IDS)),
        _user_fn=lambda vecs, events, pad: np.stack([v[~p].mean(0) if (~p).any() else np.zeros(3) for v, p in zip(vecs, pad)]),
        _item_fn=lambda texts: np.ones((len(texts), 3), dtype=np.float32),
    )


def ranker(path, version: str, vectors: np.ndarray, config: RankingConfig) -> tuple[Ranker, Retriever, SQLiteStore]:
    store = SQLiteStore(path, model=version)
    m = model(version, vectors)
    tower = LocalTower(Encoder(m, store))
    retriever = Retriever(m, store, IndexConfig(backend="exact"), config=config)
    return Ranker(UserStates(store, tower, max_history=10), retriever, tower), retriever, store


@pytest.fixture
def two(tmp_path):
    config = RankingConfig.model_validate({"experiment": EXPERIMENT})
    served, served_retriever, store = ranker(tmp_path / "state.sqlite", "m1", VECS, config)
    # the challenger sees the items the other way round: its answers differ from the served model's
    challenger, _, _ = ranker(tmp_path / "state.sqlite", "m2", VECS[::-1].copy(), config)
    users = [f"u{i}" for i in range(24)]
    store.append_events([Event(u, IDS[i % 6], "click", timestamp=float(i)) for i, u in enumerate(users)])
    router = ModelRouter({None: served, "next": challenger}, lambda: served_retriever.config)
    return router, served, challenger, config, users, store


def test_each_user_is_ranked_by_their_variants_model_in_order(two):
    router, served, challenger, config, users, store = two
    queries = [Query(3, user_id=u, recommendation_id=f"r-{u}") for u in users]
    ranked, timing = asyncio.run(router.rank(queries))
    assert timing.size == len(users)
    models = {config.variant_of(u) for u in users}
    assert models == {"control", "challenger"}  # both arms have users
    for u, r in zip(users, ranked):
        variant = config.variant_of(u)
        own = served if variant == "control" else challenger
        (alone,), _ = asyncio.run(own.rank([Query(3, user_id=u)]))
        assert r.variant == variant and r.model_version == ("m1" if variant == "control" else "m2")
        assert [i.item_id for i in r.items] == [i.item_id for i in alone.items]
    # the two models really differ for the challenger's users (a router sending everyone to m1 would fail above)
    moved = [u for u in users if config.variant_of(u) == "challenger"]
    mine, _ = asyncio.run(served.rank([Query(3, user_id=u) for u in moved]))
    assert any([i.item_id for i in a.items] != [i.item_id for i in r.items]
               for a, r in zip(mine, (r for u, r in zip(users, ranked) if u in moved)))
    # the impressions name the variant and the model that ranked each slate
    logged = {i.recommendation_id: i for i in store.impressions()}
    for u in users:
        assert (logged[f"r-{u}"].variant, logged[f"r-{u}"].model_version) == (
            ("control", "m1") if config.variant_of(u) == "control" else ("challenger", "m2"))


def test_a_related_query_goes_to_the_first_variants_model(two):
    router, *_ = two
    ranked, _ = asyncio.run(router.rank([Query(2, item_id="a")]))
    assert ranked[0].model_version == "m1" and ranked[0].variant == "control"


def test_a_variant_naming_a_model_the_router_lacks_is_refused(two):
    router, *_ = two
    bad = RankingConfig.model_validate({"experiment": {"name": "x", "variants": [{"name": "a", "share": 1, "model": "other"}]}})
    with pytest.raises(LmrecError, match="no challenger model named other"):
        router.check(bad)
    router.check(RankingConfig.model_validate({"experiment": EXPERIMENT}))  # the one it holds: accepted
    assert RankingConfig.model_validate({"experiment": EXPERIMENT}).models() == {"next"}
    with pytest.raises(LmrecError, match="served artifact"):
        ModelRouter({"next": router.rankers["next"]}, lambda: None)
