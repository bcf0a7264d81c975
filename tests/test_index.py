"""Candidate retrieval: exact equals brute force, FAISS recall, filters and exclusions keep k valid results,
live upserts and replacements are searchable at once, and replicas converge through the store."""

import json

import numpy as np
import pytest

from lmrec.benchmarks.retrieval import synthetic_catalog
from lmrec.errors import RetrievalError
from lmrec.ranking.index import IndexConfig, ItemIndex
from lmrec.store.base import ItemWrite
from lmrec.store.sqlite import SQLiteStore


def catalog(n: int, d: int = 16, seed: int = 0, queries: int = 8):
    vectors, q = synthetic_catalog(n, d, 20, queries, seed)
    ids = [f"item{i}" for i in range(n)]
    attrs = [{"category": f"c{i % 5}", "brand": f"b{i % 7}", "in_stock": i % 3 != 0} for i in range(n)]
    return ids, vectors, attrs, q


def brute_force(vectors, ids, q, k, ok=lambda i: True):
    """Reference top-k over the items for which ``ok(index)`` holds."""
    out = []
    for scores in q @ vectors.T:
        order = [i for i in np.argsort(-scores, kind="stable") if ok(i)][:k]
        out.append([(ids[i], float(scores[i])) for i in order])
    return out


BACKENDS = [
    pytest.param({"backend": "exact"}, id="exact"),
    pytest.param({"backend": "exact", "subset_max": 0}, id="exact-masked"),
    pytest.param({"backend": "faiss", "subset_max": 0}, id="faiss"),
]


def test_exact_top_k_equals_brute_force():
    ids, vectors, attrs, q = catalog(3000)
    index = ItemIndex.build(ids, vectors, attrs, IndexConfig(backend="exact"))
    got = index.search(q, 25)
    want = brute_force(vectors, ids, q, 25)
    for g, w in zip(got, want):
        assert [i for i, _ in g] == [i for i, _ in w]
        np.testing.assert_allclose([s for _, s in g], [s for _, s in w], rtol=1e-5, atol=1e-5)
    single = index.search(q[0], 3)[0]  # one query as (D,): a matrix-vector product, equal within float error
    assert [i for i, _ in single] == [i for i, _ in got[0][:3]]
    np.testing.assert_allclose([s for _, s in single], [s for _, s in got[0][:3]], rtol=1e-5)
    assert len(index.search(q, 5000)[0]) == 3000  # k above the catalog: everything, ranked


def test_faiss_recall_at_100_on_a_clustered_catalog():
    vectors, q = synthetic_catalog(6000, 32, 100, queries=50, seed=1)
    ids = [str(i) for i in range(len(vectors))]
    index = ItemIndex.build(ids, vectors, None, IndexConfig(backend="faiss", subset_max=0))
    assert index.kind == "faiss"
    got = index.search(q, 100)
    want = brute_force(vectors, ids, q, 100)
    recall = np.mean([len({i for i, _ in g} & {i for i, _ in w}) / 100 for g, w in zip(got, want)])
    assert recall >= 0.95
    assert all(len(g) == 100 for g in got)


@pytest.mark.parametrize("cfg", BACKENDS)
def test_filters_exclusions_allow_and_deny_keep_k_valid_results(cfg):
    ids, vectors, attrs, q = catalog(4000)
    index = ItemIndex.build(ids, vectors, attrs, IndexConfig(**cfg))
    k = 20
    top = index.search(q, 60)
    exclude = [{i for i, _ in t[:30]} for t in top]  # each query loses its own 30 best
    deny = {i for i, _ in top[0][30:40]}
    allowed_brands = {"b1", "b2"}
    got = index.search(q, k, exclude=exclude, filters={"category": "c3", "brand": ["b1", "b2"]}, deny=deny)
    for b, results in enumerate(got):
        assert len(results) == k
        assert len({i for i, _ in results}) == k
        for item_id, _ in results:
            a = attrs[int(item_id[4:])]
            assert a["category"] == "c3" and a["brand"] in allowed_brands
            assert item_id not in exclude[b] and item_id not in deny
        ok = lambda i, b=b: (attrs[i]["category"] == "c3" and attrs[i]["brand"] in allowed_brands
                             and ids[i] not in exclude[b] and ids[i] not in deny)
        want = {i for i, _ in brute_force(vectors, ids, q[b:b + 1], k, ok)[0]}
        overlap = len(want & {i for i, _ in results}) / k
        assert overlap == 1.0 if cfg["backend"] == "exact" else overlap >= 0.8
        assert [s for _, s in results] == sorted((s for _, s in results), reverse=True)

    assert all(r == [] for r in index.search(q, 5, filters={"category": "no-such-value"}))
    assert all(r == [] for r in index.search(q, 5, filters={"no-such-key": "x"}))
    stock = index.search(q, 10, filters={"in_stock": False})  # True and 1 are different values
    assert all(len(r) == 10 and all(int(i[4:]) % 3 == 0 for i, _ in r) for r in stock)


@pytest.mark.parametrize("cfg", BACKENDS)
def test_allow_lists_and_large_deny_lists(cfg):
    ids, vectors, attrs, q = catalog(4000)
    index = ItemIndex.build(ids, vectors, attrs, IndexConfig(**cfg))
    allow = {f"item{i}" for i in range(0, 4000, 7)}  # 572 items
    deny = {f"item{i}" for i in range(0, 4000, 2)}  # 2000 items: masked, not dropped after the search
    got = index.search(q, 30, allow=allow, deny=deny)
    want = brute_force(vectors, ids, q, 30, lambda i: i % 7 == 0 and i % 2 == 1)
    for g, w in zip(got, want):
        assert len(g) == 30 and all(i in allow and i not in deny for i, _ in g)
        assert len({i for i, _ in g} & {i for i, _ in w}) >= (30 if cfg["backend"] == "exact" else 24)
    tiny = index.search(q, 10, allow=["item3", "item5", "missing"])  # fewer pass than k: all of them
    assert all(sorted(i for i, _ in r) == ["item3", "item5"] for r in tiny)


@pytest.mark.parametrize("cfg", BACKENDS)
def test_a_fixed_ranking_follows_the_rules_of_search(cfg):
    """ranked(): popularity order under the same exclude / filter / allow / deny rules as a vector search."""
    ids, vectors, attrs, _ = catalog(400)
    index = ItemIndex.build(ids, vectors, attrs, IndexConfig(**cfg))
    order = [(f"item{i}", float(400 - i)) for i in range(400)] + [("missing", 0.0)]
    got = index.ranked(order, 5, exclude={"item0"}, filters={"category": ["c0", "c1"], "in_stock": True},
                       deny={"item5"})  # fmt: skip
    want = [i for i in range(1, 400) if i % 5 in (0, 1) and i % 3 != 0 and i != 5][:5]
    assert got == [(f"item{i}", float(400 - i)) for i in want]
    # True is not 1: an attribute filter compares values as search does
    assert index.ranked(order, 3, filters={"in_stock": 1}) == []
    assert index.ranked(order, 10, allow=["item9", "item3", "missing"]) == [("item3", 397.0), ("item9", 391.0)]
    with pytest.raises(RetrievalError, match="filter"):
        index.ranked(order, 3, filters={"category": []})


@pytest.mark.parametrize("cfg", BACKENDS)
def test_upserted_item_is_retrievable_at_once(cfg):
    ids, vectors, attrs, q = catalog(2000)
    index = ItemIndex.build(ids, vectors, attrs, IndexConfig(**cfg))
    assert index.upsert(["fresh"], q[:1] * 2.0, [{"category": "c9"}]) == 1
    first = index.search(q[:1], 5)[0][0]
    assert first[0] == "fresh" and first[1] == pytest.approx(2.0, rel=1e-5)
    assert index.search(q[:1], 1, filters={"category": "c9"})[0][0][0] == "fresh"
    assert index.search(q[:1], 5, exclude=[{"fresh"}])[0][0][0] != "fresh"
    assert len(index) == 2001 and "fresh" in index and index.attributes("fresh") == {"category": "c9"}


@pytest.mark.parametrize("cfg", BACKENDS)
def test_replacing_an_item_moves_it_and_leaves_no_duplicate(cfg):
    ids, vectors, attrs, q = catalog(2000)
    index = ItemIndex.build(ids, vectors, attrs, IndexConfig(**cfg))
    target = index.search(q[1:2], 1)[0][0][0]  # query 1's best item gets query 0's direction
    index.upsert([target], q[:1] * 3.0, [{"category": "moved"}])
    assert index.search(q[:1], 1)[0][0][0] == target
    after = index.search(q[1:2], 2000)[0]
    assert [i for i, _ in after].count(target) == 1 and len(after) == 2000
    assert dict(after)[target] == pytest.approx(float(q[1] @ q[0] * 3.0), rel=1e-4)
    assert index.search(q[1:2], 5, filters={"category": attrs[int(target[4:])]["category"]})[0][0][0] != target
    np.testing.assert_allclose(index.vector(target), q[0] * 3.0, rtol=1e-6)
    assert len(index) == 2000 and index.stats()["dead_rows"] == (1 if cfg["backend"] == "faiss" else 0)
    before = index.search(q, 10)
    index.compact()
    assert index.stats()["dead_rows"] == 0 and len(index) == 2000
    assert [[i for i, _ in r] for r in index.search(q, 10)][0] == [i for i, _ in before[0]]


@pytest.mark.parametrize("cfg", BACKENDS[::2])
def test_gather_returns_vectors_and_only_the_asked_attributes(cfg):
    ids, vectors, attrs, _ = catalog(300)
    index = ItemIndex.build(ids, vectors, attrs, IndexConfig(**cfg))
    known, vecs, got = index.gather(["item7", "nope", "item3"], ["brand", "missing-key"])
    assert known.tolist() == [True, False, True]
    np.testing.assert_allclose(vecs, vectors[[7, 3]], rtol=1e-6)
    assert got == [{"brand": attrs[7]["brand"]}, {"brand": attrs[3]["brand"]}]
    assert index.gather(["item7"], None)[2] == [attrs[7]]  # None: every attribute
    assert index.gather(["item7"], ())[2] is None  # none asked: none gathered
    vecs[:] = 0  # a copy: the index is untouched
    np.testing.assert_allclose(index.vector("item7"), vectors[7], rtol=1e-6)
    empty = index.gather([], None)
    assert empty[0].shape == (0,) and empty[1].shape == (0, 16) and empty[2] == []


def test_auto_switches_to_faiss_past_the_threshold():
    ids, vectors, attrs, q = catalog(1200)
    index = ItemIndex(IndexConfig(backend="auto", exact_max_items=1000, subset_max=0))
    index.upsert(ids[:900], vectors[:900], attrs[:900])
    assert index.kind == "exact"
    index.upsert(ids[900:], vectors[900:], attrs[900:])
    assert index.wait_for_switch(60)
    assert index.kind == "faiss" and len(index) == 1200 and not index.stats()["building_hnsw"]
    want = brute_force(vectors, ids, q, 10)
    got = index.search(q, 10)
    assert np.mean([len({i for i, _ in g} & {i for i, _ in w}) / 10 for g, w in zip(got, want)]) >= 0.95


def test_searches_and_upserts_from_several_threads():
    import threading

    ids, vectors, attrs, q = catalog(2000)
    index = ItemIndex.build(ids, vectors, attrs, IndexConfig(backend="faiss", subset_max=0))
    errors, done = [], threading.Event()

    def searcher():
        try:
            while not done.is_set():
                for results in index.search(q, 10, filters={"category": "c1"}):
                    assert len(results) == 10 and len({i for i, _ in results}) == 10
        except Exception as exc:  # surfaced below: an assertion in a thread would pass silently
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(40):  # new items and replacements while the searchers run
        index.upsert([f"live{i}", ids[i]], np.stack([q[i % 8], vectors[i]]), [{"category": "c1"}, attrs[i]])
    done.set()
    for t in threads:
        t.join()
    assert not errors
    assert len(index) == 2040 and index.stats()["dead_rows"] == 0  # the replacements kept their vectors: no new points
    assert index.search(q[:1], 1, filters={"category": "c1"})[0][0][0].startswith("live")


def test_replicas_converge_through_the_store(tmp_path):
    ids, vectors, attrs, q = catalog(300)
    with SQLiteStore(tmp_path / "state.db") as store:
        store.upsert_items([ItemWrite(i, "text", a, v) for i, a, v in zip(ids, attrs, vectors)])
        a, b = ItemIndex(IndexConfig(backend="exact")), ItemIndex(IndexConfig(backend="faiss"))
        assert a.sync_from(store, page=128) == 300 and b.sync_from(store) == 300
        assert a.synced_version == b.synced_version == store.item_version()
        store.upsert_items([ItemWrite("item7", "moved", {"category": "c0"}, q[0] * 5)])  # replaced
        store.upsert_items([ItemWrite("new", "added", {"category": "c1"}, q[1] * 5)])  # added
        assert a.sync_from(store) == 2 and b.sync_from(store) == 2 and a.sync_from(store) == 0
        for index in (a, b):
            assert index.search(q[:2], 1) == [[("item7", pytest.approx(5.0, rel=1e-5))], [("new", pytest.approx(5.0, rel=1e-5))]]
            assert len(index) == 301 and index.attributes("item7") == {"category": "c0"}
        assert [i for i, _ in a.search(q, 10)[2]] == [i for i, _ in b.search(q, 10)[2]]


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_removed_items_are_never_found_and_come_back_on_upsert(backend):
    ids, vectors, attrs, q = catalog(300)
    index = ItemIndex.build(ids, vectors, attrs, IndexConfig(backend=backend, subset_max=16))
    index.set_keys(ids)
    top = [i for i, _ in index.search(q[:1], 5)[0]]
    assert index.remove([top[0], top[1], "never-indexed"]) == 2 and index.remove([top[0]]) == 0
    assert len(index) == 298 and top[0] not in index and index.stats()["dead_rows"] == 2
    assert [i for i, _ in index.search(q[:1], 3)[0]] == top[2:5]
    assert top[0] not in [i for i, _ in index.search(q[:1], 300)[0]]  # not even as the last resort
    assert index.search(q[:1], 5, allow=top[:2]) == [[]]  # nor through an allow-list
    cat = attrs[ids.index(top[0])]["category"]
    assert top[0] not in [i for i, _ in index.search(q[:1], 300, filters={"category": cat})[0]]
    # a kNN boost on its position is dropped, however large
    pos = np.array([ids.index(top[0]), ids.index(top[4])])
    boosted = index.search(q[:1], 1, boost=[(pos, np.array([1e6, 1e6], dtype=np.float32))])
    assert boosted[0][0][0] == top[4]
    assert index.ranked([(top[0], 1.0), (top[2], 0.5)], 2) == [(top[2], 0.5)]
    index.upsert([top[0]], vectors[ids.index(top[0])][None], [attrs[ids.index(top[0])]])
    assert [i for i, _ in index.search(q[:1], 1, boost=[(pos[:1], np.array([1e6], dtype=np.float32))])[0]] == [top[0]]
    index.compact()
    assert index.stats()["dead_rows"] == 0 and len(index) == 299
    assert [i for i, _ in index.search(q[:1], 4)[0]] == [top[0], *top[2:5]]


def test_faiss_rewrites_attributes_in_place_when_the_vector_is_unchanged():
    ids, vectors, attrs, q = catalog(300)
    index = ItemIndex.build(ids, vectors, attrs, IndexConfig(backend="faiss", subset_max=0))
    index.upsert(ids[:50], vectors[:50], [{"category": "sale"}] * 50)  # a feed refresh: new attributes only
    assert index.stats()["dead_rows"] == 0 and len(index) == 300
    assert sorted(i for i, _ in index.search(q[:1], 100, filters={"category": "sale"})[0]) == sorted(ids[:50])
    index.upsert(ids[:1], vectors[1:2])  # a new vector: HNSW needs a new point
    assert index.stats()["dead_rows"] == 1


def test_exact_index_compacts_itself_past_the_dead_fraction():
    ids, vectors, attrs, q = catalog(200)
    index = ItemIndex.build(ids, vectors, attrs, IndexConfig(backend="exact", compact_min_dead=8, compact_dead_fraction=0.1))
    index.set_keys(ids)
    index.remove(ids[:19])
    assert index.stats()["dead_rows"] == 19  # below 10% of 200 rows
    index.remove(ids[19:20])
    assert index.stats()["dead_rows"] == 0 and len(index) == 180  # compacted at once
    want = brute_force(vectors, ids, q, 10, ok=lambda i: i >= 20)
    assert [[i for i, _ in r] for r in index.search(q, 10)] == [[i for i, _ in r] for r in want]
    pos = np.array([25])  # kNN positions still follow their items
    assert index.search(q[:1], 1, boost=[(pos, np.array([1e6], dtype=np.float32))])[0][0][0] == ids[25]


def test_faiss_compacts_in_the_background_and_keeps_the_writes_made_meanwhile():
    ids, vectors, attrs, q = catalog(1000)
    config = IndexConfig(backend="faiss", compact_min_dead=100, compact_dead_fraction=0.1, subset_max=0)
    index = ItemIndex.build(ids, vectors, attrs, config)
    index.set_keys(ids)
    import threading

    gate = threading.Event()
    build = index._build_compacted
    index._build_compacted = lambda *a: (gate.wait(30), build(*a))  # hold the build until the writes below are in
    rng = np.random.default_rng(1)
    moved = rng.normal(size=(120, vectors.shape[1])).astype(np.float32)
    index.upsert(ids[:120], moved)  # new vectors: 120 dead rows > 10% of 1120 -> a background compaction
    assert index.stats()["building_hnsw"]
    # meanwhile: a removal, a new item, a new vector, new attributes for an item in the snapshot
    index.remove([ids[200]])
    index.upsert(["late"], q[:1] * 3, [{"category": "late"}])
    index.upsert([ids[300]], q[1:2] * 3)
    index.upsert([ids[400]], vectors[400:401], [{"category": "moved"}])
    assert len(index.search(q[:1], 5)[0]) == 5  # searches go on against the current graph
    gate.set()
    assert index.wait_for_switch(60)
    stats = index.stats()
    # the snapshot's rows of ids[200] (removed) and ids[300] (moved) during the build are dead in the new graph
    assert not stats["building_hnsw"] and stats["dead_rows"] == 2 and len(index) == 1000
    final = vectors.copy()
    final[:120] = moved
    final[300] = q[1] * 3
    keep = [i for i in range(1000) if i != 200]
    assert ids[200] not in index and index.attributes(ids[400]) == {"category": "moved"}
    assert index.search(q[:1], 1, filters={"category": "late"})[0][0][0] == "late"
    assert index.search(q[1:2], 1)[0][0][0] == ids[300]
    exact = ItemIndex.build([ids[i] for i in keep] + ["late"], np.concatenate([final[keep], q[:1] * 3]), config=IndexConfig(backend="exact"))
    got, want = index.search(q, 20), exact.search(q, 20)
    recall = np.mean([len({i for i, _ in g} & {i for i, _ in w}) / 20 for g, w in zip(got, want)])
    assert recall >= 0.95, recall
    pos = np.array([ids.index(ids[500])])  # kNN positions follow their items into the new graph
    assert index.search(q[:1], 1, boost=[(pos, np.array([1e6], dtype=np.float32))])[0][0][0] == ids[500]


def test_removals_reach_every_replica_through_the_store(tmp_path):
    ids, vectors, attrs, q = catalog(100)
    with SQLiteStore(tmp_path / "state.db") as store:
        a = ItemIndex.build(ids, vectors, attrs, IndexConfig(backend="exact"))  # the model's catalog
        store.upsert_items([ItemWrite("new", "added", {"category": "c1"}, q[0] * 5)])
        assert a.sync_from(store) == 1
        store.remove_items(["new", ids[3]])  # a posted item and a catalog one
        b = ItemIndex.build(ids, vectors, attrs, IndexConfig(backend="faiss"))  # a replica starting now
        assert a.sync_from(store) == 2 and b.sync_from(store) == 2  # one record per item: its latest state
        for index in (a, b):
            assert "new" not in index and ids[3] not in index and len(index) == 99


def test_bad_input_is_rejected():
    ids, vectors, attrs, q = catalog(50)
    index = ItemIndex.build(ids, vectors, attrs, IndexConfig(backend="exact"))
    with pytest.raises(RetrievalError, match=r"queries must have shape \(B, 16\)"):
        index.search(np.ones((2, 8)), 5)
    with pytest.raises(RetrievalError, match="k must be a positive integer"):
        index.search(q, 0)
    with pytest.raises(RetrievalError, match="exclude has 1 sets for 8 queries"):
        index.search(q, 5, exclude=[{"item1"}])
    with pytest.raises(RetrievalError, match="filter 'brand'"):
        index.search(q, 5, filters={"brand": []})
    with pytest.raises(RetrievalError, match="item vectors have dimension 8, the index has 16"):
        index.upsert(["x"], np.ones((1, 8)))
    with pytest.raises(RetrievalError, match="NaN or infinite"):
        index.upsert(["x"], np.full((1, 16), np.nan))
    with pytest.raises(RetrievalError, match=r"attributes\['tags'\]"):
        index.upsert(["x"], np.ones((1, 16)), [{"tags": ["a"]}])
    with pytest.raises(RetrievalError, match="not one string"):
        index.search(q, 5, allow="item1")
    with pytest.raises(Exception, match="extra"):
        IndexConfig(backnd="faiss")
    assert ItemIndex().search(np.ones((2, 4)), 3) == [[], []]


def test_retrieval_benchmark_smoke(tmp_path, capsys):
    from lmrec.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "retrieval", "--items", "3000", "--dim", "32", "--clusters", "30", "--queries", "64",
                 "--out", str(out)]) == 0
    report = json.loads((out / "retrieval.json").read_text())
    assert report["catalog"]["items"] == 3000 and (out / "retrieval.png").stat().st_size > 0
    assert report["faiss"]["recall@100"] >= 0.95 and report["faiss"]["single"]["n"] == 64
    assert [s["ef_search"] for s in report["faiss"]["sweep"]] == [128, 192, 256, 384, 512]
    assert report["exact"]["batch"]["per_query"]["n"] == 2 and "recall@100" in capsys.readouterr().out
    fused = report["faiss"]["fused"]  # with item-kNN fusion (boosts computed per query, added in the search)
    assert fused["single"]["n"] == 64 and fused["recall@100"] >= 0.95 and report["exact"]["fused"]["batch"]["per_query"]["n"] == 2
    assert main(["bench", "retrieval", "--items", "10", "--out", str(out)]) == 2  # k=100 > 10 items


def test_batched_queries_share_a_product_only_with_the_same_eligible_items():
    from lmrec.ranking.records import Query
    from lmrec.ranking.retriever import _same_candidates

    def key(filters, allow=None, deny=None):
        return _same_candidates(Query(5, user_id="u", filters=filters or {}, allow=allow, deny=deny))

    assert key({"a": 1, "b": [1, 2]}) == key({"b": [1, 2], "a": 1})
    assert key({"a": 1}) != key({"a": True})  # the index tells them apart
    assert key(None) == key({})
    assert key({}, ("x",)) != key({}, None, ("x",))
    odd = {1: "x", "b": 2}  # keys that cannot be sorted: a group of its own (the index then names the bad key)
    assert key(odd) != key(odd)


def random_boosts(n: int, queries: int, seed: int = 3, size: int = 150, scale: float = 2.0):
    """Sparse non-negative boosts per query (positions in the keyed order, values), large enough to reorder."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(queries):
        pos = np.sort(rng.choice(n, size, replace=False))
        out.append((pos, (scale * rng.random(size)).astype(np.float32)))
    return out


@pytest.mark.parametrize("config", BACKENDS)
def test_boosted_search_ranks_by_summed_scores(config):
    """Boosts (e.g. item-kNN) add to the dot products: exact backends return the exact top-k of the sum;
    FAISS scores the boosted items exactly beside the graph's candidates. Exclusions and filters still hold."""
    n = 2000
    ids, vectors, attrs, q = catalog(n)
    index = ItemIndex.build(ids, vectors, attrs, IndexConfig(**config))
    index.set_keys(ids[::-1])  # a keyed order that is not the row order
    boosts = random_boosts(n, len(q))
    dense = q @ vectors.T
    for b, (pos, values) in enumerate(boosts):
        dense[b, n - 1 - pos] += values
    excl = [{ids[int(np.argmax(dense[b]))]} for b in range(len(q))]  # each query's best item, excluded
    got = index.search(q, 20, exclude=excl, boost=boosts, filters={"in_stock": True})
    for b in range(len(q)):
        order = [i for i in np.argsort(-dense[b], kind="stable") if ids[i] not in excl[b] and attrs[i]["in_stock"]][:20]
        assert [i for i, _ in got[b]] == [ids[i] for i in order]
        np.testing.assert_allclose([s for _, s in got[b]], dense[b, order], rtol=1e-5, atol=1e-5)
    boosted = {ids[n - 1 - p] for p in boosts[0][0]}
    assert len(boosted & {i for i, _ in got[0]}) >= 10  # the boosts did reorder
    allow = ids[:300]  # an allow-list: the subset path
    got = index.search(q[:2], 10, allow=allow, boost=boosts[:2])
    for b in range(2):
        order = np.argsort(-dense[b, :300], kind="stable")[:10]
        assert [i for i, _ in got[b]] == [ids[i] for i in order]


def test_boost_positions_follow_their_items_through_replacement_and_compaction():
    n = 500
    ids, vectors, attrs, q = catalog(n)
    index = ItemIndex.build(ids, vectors, attrs, IndexConfig(backend="faiss", subset_max=0))
    index.set_keys(ids)
    far = -vectors[7]  # item7 moves far from every query: only its boost can bring it back
    index.upsert(["item7"], far[None])
    index.compact()
    boost = [(np.array([7]), np.array([100.0], dtype=np.float32))]
    top = index.search(q[0], 1, boost=boost)[0]
    assert top[0][0] == "item7" and top[0][1] == pytest.approx(float(q[0] @ far) + 100.0, rel=1e-5)
    index.upsert(["new"], vectors[:1])  # an item outside the keyed order is searchable, never boosted
    assert index.search(q[0], 1, boost=[None])[0][0][0] != "item7"
    with pytest.raises(RetrievalError, match="positions must lie in"):
        index.search(q[0], 1, boost=[(np.array([n]), np.array([1.0]))])
    with pytest.raises(RetrievalError, match="one per query"):
        index.search(q[:2], 1, boost=boost)
    with pytest.raises(RetrievalError, match="NaN"):
        index.search(q[0], 1, boost=[(np.array([1]), np.array([np.nan]))])


def test_items_posted_after_the_export_are_fused_as_evaluated():
    """KnnFusion.add (serving, item by item) equals ItemKNN.with_text_transfer (evaluation, whole matrix):
    an item without interactions borrows its nearest catalog item's similarities, as candidate and in a
    history; a re-posted item reads like its new text."""
    import pandas as pd
    import scipy.sparse as sp

    from lmrec.baselines import ItemKNN
    from lmrec.data.encode import Catalog
    from lmrec.ranking.fusion import KnnFusion

    rng = np.random.default_rng(0)
    n, extra, d = 80, 5, 8
    ids = [f"i{j}" for j in range(n + extra)]
    inter = pd.DataFrame({"user_id": rng.integers(0, 60, 900), "item_id": [ids[j] for j in rng.integers(0, n, 900)]})
    text = rng.normal(size=(n + extra, d)).astype(np.float32)
    full = ItemKNN(Catalog(ids, ids), 20).fit(inter)  # the last 5 items have no interactions
    want = full.with_text_transfer(text)
    catalog_only = ItemKNN.from_similarity(sp.csr_matrix(full.sim.toarray()[:n, :n]), full.recency)
    fusion = KnnFusion(catalog_only, ids[:n], weight=2.0, temperature=0.5, text_vectors=text[:n])
    assert fusion.add(ids[n:] + ["i3"], np.concatenate([text[n:], text[3:4]])) == ids[n:]  # i3 is the catalog's
    histories = [["i1", "i2"], ["i80", "i7"], ["i84"], []]
    got = fusion.boosts(histories)
    dense = want.sparse_scores([np.array([ids.index(i) for i in h], dtype=np.int64) for h in histories]).toarray()
    for b in range(len(histories)):
        if not dense[b].any():
            assert got[b] is None
            continue
        pos, values = got[b]
        row = np.zeros(n + extra, dtype=np.float32)
        row[pos] = values
        np.testing.assert_allclose(row, 2.0 * 0.5 * dense[b] / dense[b].max(), rtol=1e-5, atol=1e-7)
    # explanations: each history event's part of each item's boost; a row sums to the item's boost
    norms: list[float] = []
    boosts = fusion.boosts(histories[:2], norms)
    for b in range(2):
        pos, values = boosts[b]
        items = [ids[p] for p in pos[:12]]
        parts = fusion.contributions(histories[b], items, norms[b])
        assert parts.shape == (12, len(histories[b])) and (parts >= 0).all()
        np.testing.assert_allclose(parts.sum(1), values[:12], rtol=1e-5, atol=1e-7)
    assert not fusion.contributions(["i1"], ["i2"], 0.0).any()
    # re-posting i80 with i1's text: it now reads like i1
    fusion.add(["i80"], text[1:2])
    assert fusion.alias[0] == 1 and fusion.alias_w[0] == pytest.approx(1.0)


def test_the_switch_to_faiss_builds_in_the_background_and_keeps_what_was_upserted_meanwhile(monkeypatch):
    """Crossing exact_max_items starts the HNSW build in a thread: searches answer (exactly) and upserts go on
    while it runs; at the swap, items appended and replaced meanwhile are in the graph with their new vectors."""
    import threading

    ids, vectors, attrs, q = catalog(1300)
    gate, real = threading.Event(), ItemIndex._new_hnsw

    def held(self):  # the build waits here until the test has upserted and searched
        assert gate.wait(60)
        return real(self)

    monkeypatch.setattr(ItemIndex, "_new_hnsw", held)
    index = ItemIndex(IndexConfig(backend="auto", exact_max_items=1000, subset_max=0))
    index.set_keys(ids[:5])
    index.upsert(ids[:1100], vectors[:1100], attrs[:1100])
    assert index.kind == "exact" and index.stats()["building_hnsw"]
    far = -vectors[0]
    index.upsert(["item0"], far[None], [{"category": "moved"}])  # replaced while the graph is built
    index.upsert(ids[1100:], vectors[1100:], attrs[1100:])  # appended meanwhile
    index.upsert(["item1"], -vectors[1][None])
    index.remove(["item1"])  # replaced, then removed: it must not come back at the swap
    kept = [0, *range(2, 1300)]
    exact = brute_force(np.vstack([far, vectors[2:]]), [ids[j] for j in kept], q[:1], 10)[0]
    assert [i for i, _ in index.search(q[0], 10)[0]] == [i for i, _ in exact]
    gate.set()
    assert index.wait_for_switch(60)
    # the build (held until now) read item0's new vector from the matrix it was replaced in: nothing to
    # tombstone; item1's row is dead
    assert index.kind == "faiss" and len(index) == 1299 and index.stats()["dead_rows"] == 1 and "item1" not in index
    np.testing.assert_allclose(index.vector("item0"), far)
    assert index.attributes("item0") == {"category": "moved"}
    assert [i for i, _ in index.search(far, 1, filters={"category": "moved"})[0]] == ["item0"]
    got = index.search(q, 10)
    want = brute_force(np.vstack([far, vectors[2:]]), [ids[j] for j in kept], q, 10)
    assert np.mean([len({i for i, _ in g} & {i for i, _ in w}) / 10 for g, w in zip(got, want)]) >= 0.95
    assert "item1" not in {i for r in index.search(q, 100) for i, _ in r}
    boost = [(np.array([0]), np.array([100.0], dtype=np.float32))]  # item0's key follows it to its new row
    assert index.search(q[0], 1, boost=boost)[0][0][0] == "item0"


def test_knn_refit_on_the_stores_events_gives_posted_items_their_own_similarities():
    """refit: the similarities of every position (catalog and posted items) refitted on (user, item) pairs,
    as ItemKNN.fit + with_text_transfer would; a posted item with interactions then has its own."""
    import scipy.sparse as sp

    from lmrec.baselines import ItemKNN, similarity
    from lmrec.ranking.fusion import KnnFusion

    rng = np.random.default_rng(1)
    n, d = 40, 6
    ids = [f"i{j}" for j in range(n)]
    text = rng.normal(size=(n + 2, d)).astype(np.float32)
    pairs = [(f"u{rng.integers(30)}", ids[j]) for j in rng.integers(0, n, 300)]
    start = ItemKNN.from_similarity(similarity(np.array([int(u[1:]) for u, _ in pairs]),
                                               np.array([int(i[1:]) for _, i in pairs]), n, 10))
    fusion = KnnFusion(start, ids, weight=1.0, temperature=1.0, text_vectors=text[:n])
    assert fusion.add(["new0", "new1"], text[n:]) == ["new0", "new1"]
    before = fusion.boosts([["new0"]])[0]
    pairs += [(f"v{u}", item) for u in range(5) for item in ("new0", "i3")]  # new0 now co-occurs with i3
    pairs += [("ghost", "unknown-item")]  # an item no position knows: left out
    stats = fusion.refit(pairs)
    assert stats["items"] == n + 2 and stats["interactions"] == len(pairs) - 1 and fusion.n == n + 2
    codes = {u: c for c, u in enumerate(dict.fromkeys(u for u, i in pairs if i != "unknown-item"))}
    pos = {i: p for p, i in enumerate(ids + ["new0", "new1"])}
    kept = [(u, i) for u, i in pairs if i in pos]
    want = ItemKNN.from_similarity(similarity(np.array([codes[u] for u, _ in kept]), np.array([pos[i] for _, i in kept]), n + 2, 10))
    want = want.with_text_transfer(text)  # new1 has no interactions: it borrows from its text neighbour
    np.testing.assert_allclose(fusion.knn.sim.toarray(), want.sim.toarray(), rtol=1e-6)
    after = fusion.boosts([["new0"]])[0]
    assert pos["i3"] in after[0].tolist() and (before is None or not np.array_equal(before[0], after[0]))
    assert isinstance(fusion.knn.sim, sp.csr_matrix) and len(fusion.alias) == 0
    assert fusion.add(["new2"], text[:1]) == ["new2"] and fusion.alias_w[0] == pytest.approx(1.0)  # borrows again


def test_posted_items_take_a_fusion_position_even_with_nothing_to_borrow():
    """A kNN that lends nothing (no similarities yet): posted items still take positions, so the history bias
    reaches them through the index's keys; they borrow nothing, and a refit gives them their own similarities."""
    import scipy.sparse as sp

    from lmrec.baselines import ItemKNN
    from lmrec.ranking.fusion import KnnFusion

    ids = [f"i{j}" for j in range(6)]
    empty = ItemKNN.from_similarity(sp.csr_matrix((6, 6), dtype=np.float32))
    empty.neighbours = 10  # what a refit keeps per item
    text = np.eye(8, 4, dtype=np.float32)
    fusion = KnnFusion(empty, ids, weight=1.0, temperature=1.0, text_vectors=text[:6])
    assert fusion.add(["new0", "new1"], text[6:]) == ["new0", "new1"]
    assert fusion.position["new0"] == 6 and fusion.position["new1"] == 7 and not fusion.alias_w.any()
    assert fusion.boosts([["new0", "i1"]]) == [None]  # nothing co-occurs yet
    fusion.refit([(f"u{u}", item) for u in range(3) for item in ("new0", "i1")])
    pos, values = fusion.boosts([["new0"]])[0]
    assert pos.tolist() == [1] and values[0] > 0  # new0 co-occurs with i1 now
