"""The ranking core on a real exported artifact (int8 ONNX, item-kNN), without Ray: kNN fusion ranks as
evaluated, explanations carry each event's exact part, the kNN refits on the store's events, and a new model
on a store an older one filled never mixes their vectors."""

import asyncio

import numpy as np
import pytest

from lmrec.artifact import load_artifact, load_serving_model
from lmrec.errors import LmrecError, RolloutError
from lmrec.ranking.encoder import Encoder
from lmrec.ranking.index import IndexConfig
from lmrec.ranking.local import build_local
from lmrec.ranking.records import Query, UserContext
from lmrec.ranking.retriever import Retriever
from lmrec.store import StoreConfig
from lmrec.store.base import Event, ItemWrite
from lmrec.store.seed import seed_store
from lmrec.store.sqlite import SQLiteStore


def test_retrieval_fuses_the_artifacts_item_knn(artifact, tmp_path):
    """knn_weight > 0: the retriever ranks by model score + weight * item-kNN (as evaluated, computed here from
    the artifact directly); 0 or a model trained without fusion: the model alone. A weight the model cannot
    serve is refused by name."""
    from lmrec.serving.app import AppArgs, build_app

    root, data_file, items, users = artifact
    model = load_serving_model(root / "art")
    store = SQLiteStore(tmp_path / "s.sqlite", model=model.model_version)
    alone = Retriever(model, store, IndexConfig(backend="exact"))
    weight = 3.0
    fused = Retriever(model, store, IndexConfig(backend="exact"), knn_weight=weight)
    assert alone.fusion is None and fused.fusion.weight == weight  # the config trained without: alone by default
    assert fused.ready()["knn_weight"] == weight

    a = load_artifact(root / "art")
    ids = a.catalog["item_id"].astype(str).tolist()
    unit = a.items / np.linalg.norm(a.items, axis=1, keepdims=True)
    hist = ids[:4]
    user = unit[[10, 11]].sum(0)  # a user vector that is not a history item's
    ctx = UserContext("u", 7, tuple((i, "view") for i in hist), user, model.model_version)
    knn = a.knn.sparse_scores([np.arange(4)]).toarray()[0]
    want = unit @ (user / np.linalg.norm(user)) + weight * a.engine.info.temperature * knn / knn.max()
    want[:4] = -np.inf  # exclude_seen
    order = np.argsort(-want, kind="stable")[:5]

    (ranked,) = fused.rank([(Query(5, user_id="u"), ctx)])
    assert [i.item_id for i in ranked.items] == [ids[i] for i in order] and ranked.history_version == 7
    np.testing.assert_allclose([i.score for i in ranked.items], want[order], rtol=1e-4, atol=1e-5)
    (mixed,) = fused.rank([(Query(5, user_id="u"), UserContext("u", 7, ctx.history, user, "another-model"))])
    assert isinstance(mixed, RolloutError)  # one model's user vector is never ranked in another's index
    (plain,) = alone.rank([(Query(5, user_id="u"), ctx)])
    assert [i.item_id for i in plain.items] != [i.item_id for i in ranked.items]  # the fusion changed the ranking

    # explanations: each history event's exact part of each item's kNN boost; the model's part of the score
    # is shared by similarity and added
    (explained,) = fused.rank([(Query(5, user_id="u", explain=True), ctx)])
    assert [i.item_id for i in explained.items] == [i.item_id for i in ranked.items]
    for item in explained.items:
        events = item.explanation.events
        assert events and {e.item_id for e in events} <= set(hist)
        assert sum(e.contribution for e in events) <= 1.0 + 1e-3

    # the kNN refitted on the store's events: a new co-occurrence (five users take items 0 and 50 together)
    pair = (ids[0], ids[50])
    before = fused.fusion.boosts([[pair[0]]])[0]
    assert "skipped" in fused.refit_knn()  # an empty store knows less than the artifact's kNN: it stays
    seed_store(store, None, str(data_file))  # the training data, as a seeded deployment holds it
    store.append_events([Event(f"pair-{u}", i, "purchase") for u in range(5) for i in pair])
    stats = fused.refit_knn()
    assert stats["count"] == 1 and stats["interactions"] >= 10 and fused.ready()["knn_refit"] == stats
    assert "no event appended or deleted" in fused.refit_knn()["skipped"]  # nothing new: no second scan
    store.delete_user("pair-0")
    assert fused.refit_knn()["count"] == 2  # a deletion is news
    after = fused.fusion.boosts([[pair[0]]])[0]
    assert 50 in after[0].tolist() and (before is None or 50 not in before[0].tolist() or not np.allclose(before[1], after[1]))

    torch_model = load_serving_model(root / "ckpt", "torch")
    assert torch_model.knn is None
    with pytest.raises(LmrecError, match="knn_weight=1.0: the model has no item-kNN"):
        Retriever(torch_model, store, IndexConfig(backend="exact"), knn_weight=1.0)
    with pytest.raises(LmrecError, match="args.knn_weight: .* has no item-kNN"):
        build_app(AppArgs(artifact=str(root / "ckpt"), store_path=str(tmp_path / "x.sqlite"), knn_weight=1.0))


def test_a_new_model_on_the_store_never_mixes_in_the_old_models_vectors(artifact, tmp_path):
    """A rollout: a second model (here the checkpoint through torch) serves the store the exported one
    filled. The old model's cached user vectors are misses for it, and the items posted through the old
    scorer get the new model's vectors (the catalog's when the text is the catalog's) before it uses them;
    a user vector computed meanwhile is not cached."""
    root, data_file, items, users = artifact
    path = tmp_path / "s.sqlite"
    text = "a brand new gadget nobody has seen"
    catalog_id = list(items)[5]
    history = [(i, "view") for i in [*list(items)[:3], "fresh"]]
    old = load_serving_model(root / "art")
    with SQLiteStore(path, model=old.model_version) as s:
        encoder = Encoder(old, s)
        s.upsert_items([ItemWrite("fresh", text, {"shelf": "new"}, encoder.encode_items([text])[0]),
                        ItemWrite(catalog_id, items[catalog_id], {"shelf": "old"}, encoder.encode_items([items[catalog_id]])[0])])
        s.append_events([Event("u", i, e, timestamp=float(t)) for t, (i, e) in enumerate(history)])
        out = encoder.user_vectors([history])
        assert out.cacheable == (True,) and out.model == old.model_version
        assert s.put_user_vectors([("u", s.version("u"), out.vectors[0])]) == [True]

    new = load_serving_model(root / "ckpt", "torch")
    assert new.model_version != old.model_version
    with SQLiteStore(path, model=new.model_version) as s:
        assert s.read_users(["u"], 0)[0].vector is None  # the old model's vector is a miss
        encoder = Encoder(new, s)
        encoder.sync()
        assert sorted(encoder.pending) == sorted(["fresh", catalog_id])
        assert encoder.user_vectors([history]).cacheable == (False,)  # "fresh" has no vector of this model yet
        assert encoder.reencode() == 2 and not encoder.pending
        got = {r.item_id: r.vector for r in s.items_since(0)}
        np.testing.assert_allclose(got["fresh"], new.encode_items([text])[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got[catalog_id], new.item_vectors[new.item_ids.index(catalog_id)])  # the catalog's
        assert encoder.user_vectors([history]).cacheable == (True,)

    # the core built in one process on a store an older model filled re-encodes first, then ranks with its vectors
    fresh_store = tmp_path / "p.sqlite"
    with SQLiteStore(fresh_store, model=old.model_version) as s:
        s.upsert_items([ItemWrite("fresh", text, {}, Encoder(old, s).encode_items([text])[0])])
        s.append_events([Event("u", i, e, timestamp=float(t)) for t, (i, e) in enumerate(history)])
    local = build_local(root / "ckpt", StoreConfig(str(fresh_store), model=new.model_version), backend="torch")
    assert local.reencode_all() == 1
    want = new.encode_items([text])[0]
    np.testing.assert_allclose(local.retriever.index.vector("fresh"), want / np.linalg.norm(want) if new.normalize else want,
                               rtol=1e-5, atol=1e-6)
    (ranked,), _ = asyncio.run(local.ranker.rank([Query(5, user_id="u", exclude_seen=False)]))
    assert len(ranked.items) == 5 and not ranked.cold_start
    with SQLiteStore(fresh_store, model=new.model_version) as s:
        out = Encoder(new, s).user_vectors([history])  # from this model's vectors of the history
        assert out.cacheable == (True,)
        np.testing.assert_allclose(s.read_users(["u"], 0)[0].vector, out.vectors[0], rtol=1e-4, atol=1e-5)
    local.close()


def test_a_serving_process_never_imports_torch(artifact, tmp_path):
    """What a serving replica runs — the shell's modules, the artifact loaded, the ranking core built on a store,
    an item encoded through the LM, a ranking — imports neither torch, transformers nor optimum (ONNX Runtime,
    tokenizers, numpy and faiss only): in a fresh interpreter."""
    import subprocess
    import sys

    root, data_file, items, users = artifact
    code = f"""
import asyncio, sys
import lmrec.serving.app, lmrec.serving.ingress
from lmrec.artifact import read_model_version
from lmrec.ranking.local import build_local
from lmrec.ranking.records import Query
from lmrec.store import StoreConfig
art = {str(root / "art")!r}
local = build_local(art, StoreConfig({str(tmp_path / "s.sqlite")!r}, model=read_model_version(art)), seed_config={str(data_file)!r}, knn_weight=1.0)
local.encoder.encode_items(["A new gadget. Tools."])
(ranked,), _ = asyncio.run(local.ranker.rank([Query(5, user_id={users[0]!r}, explain=True)]))
assert len(ranked.items) == 5 and not ranked.cold_start
print(sorted(m for m in ("torch", "transformers", "optimum") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
