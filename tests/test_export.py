"""Export: ONNX round trip with parity, int8 behind the ranking gate, checksums, refusal of damaged
or tampered artifacts, and ONNX user towers that rank like PyTorch. Tiny BERT, tiny synthetic data."""

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import save_untrained
from lmrec.artifact import MANIFEST, load_artifact, serving_model_from_artifact
from lmrec.checkpoint import load_checkpoint
from lmrec.config import load_config
from lmrec.errors import LmrecError
from lmrec.export import LADDER, GateFailed, export_checkpoint
from lmrec.models.recommender import Scorer

DATA = ["data.dataset=demo", "data.synthetic.n_items=60", "data.synthetic.n_users=40", "data.synthetic.events_per_user=8"]


def _checkpoint(tiny_lm, path, *sets):
    cfg = load_config([], [
        f"model.item_tower.pretrained={tiny_lm}", "model.item_tower.dim=16", "model.item_tower.max_text_length=24",
        "model.user_tower.max_history=8", "model.user_tower.max_text_length=64", "model.user_tower.dropout=0.0", *DATA, *sets,
    ])  # fmt: skip
    p, _ = save_untrained(cfg, path)
    return path, p


def _top10(scores) -> np.ndarray:
    return np.sort(np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :10], axis=1)


@pytest.fixture(scope="module")
def int8_export(tiny_lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ckpt, p = _checkpoint(tiny_lm, root / "ckpt", "model.item_tower.kind=text", "model.user_tower.kind=transformer")
    manifest = export_checkpoint(ckpt, root / "art", quantize="int8", data=p)
    return ckpt, root / "art", manifest, p


def test_int8_export_round_trips_with_parity(int8_export):
    ckpt, art, manifest, _ = int8_export
    gate = {c["name"]: c for c in manifest["gate"]["checks"]}
    assert manifest["gate"]["passed"] and all(c["passed"] for c in gate.values())
    assert gate["parity.text_encoder"]["value"] <= 1e-4 and gate["parity.user_tower"]["value"] <= 1e-4
    assert {"ranking.ndcg@10_loss", "ranking.top10_overlap"} <= set(gate)
    served = manifest["quantization"]["served"]
    assert served["name"] in LADDER and served["calibration_samples"] > 0 and served["smoothing"] is not None
    assert manifest["model"]["precision"] == "int8" and manifest["model"]["encode_batch"] == 1  # dynamic: one text per call
    assert manifest["versions"]["onnxruntime"] and manifest["config"]["model"]["item_tower"]["kind"] == "text"
    # every file is checksummed, and nothing in the artifact needs unpickling
    files = {p.relative_to(art).as_posix() for p in art.rglob("*") if p.is_file()} - {MANIFEST}
    assert files == set(manifest["files"])
    assert all(f.endswith((".onnx", ".safetensors", ".parquet", ".json", ".yaml", ".txt")) for f in files)

    a = load_artifact(art, threads=1)
    model = load_checkpoint(ckpt).model.eval()
    with torch.no_grad():
        ref = model.all_item_vectors().numpy()
    cos = (ref * a.items).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(a.items, axis=1)
    assert a.items.shape == ref.shape and cos.min() > 0.98, cos.min()
    new = a.engine.encode(["Compact Yoga Strap. Fitness. Acme. Great for stretching."])  # zero-shot item
    assert new.shape == (1, 16) and np.isfinite(new).all()
    # what the serving stages load
    sm = serving_model_from_artifact(art)
    assert sm.backend == "onnx" and sm.model_version == manifest["model_version"] and np.array_equal(sm.item_vectors, a.items)
    assert sm.user_vectors_from_item_vectors([(a.items[[0, 3]], ["view", "click"]), (a.items[:0], [])]).shape == (2, 16)


def test_serving_tokenizes_like_transformers_without_loading_it(int8_export):
    """Export checks that the ``tokenizers`` library alone gives transformers' ids and masks; serving then
    tokenizes with it, and loads the text encoder only when text is first encoded."""
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from lmrec.artifact import TOKENIZER_DIR, FastTokenizer, token_arrays
    from lmrec.export import PROBE_TEXTS

    _, art, manifest, p = int8_export
    assert manifest["tokenizer"]["engine"] == "tokenizers" and manifest["tokenizer"]["pad_token"] == "[PAD]"
    a = load_artifact(art, threads=1)
    assert a.engine.has_text and a.engine._text_loader is not None  # nothing loaded yet
    reference = AutoTokenizer.from_pretrained(str(art / TOKENIZER_DIR))
    texts = PROBE_TEXTS + a.catalog["text"].tolist()
    for length in (8, 24):
        got, want = token_arrays(a.engine.tokenizer, texts, length), token_arrays(reference, texts, length)
        assert isinstance(a.engine.tokenizer, FastTokenizer) and got["input_ids"].shape[1] <= length
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    # a serving process encodes a new item without importing transformers
    code = ("import sys; from lmrec.artifact import serving_model_from_artifact as load; m = load(sys.argv[1]); "
            "v = m.encode_items(['Compact Yoga Strap. Fitness.']); print(v.shape, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(art)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "False", out.stdout


def test_artifact_item_knn_is_served_fused_as_evaluated(int8_export):
    """The artifact carries item-kNN fitted on every interaction (items without any read like their text
    neighbour); the serving index with KnnFusion boosts
    ranks exactly like the evaluation's fusion (model score + weight * kNN / the user's max kNN)."""
    import pandas as pd

    from lmrec.baselines import ItemKNN
    from lmrec.data.encode import Catalog, build_queries
    from lmrec.experiments import fused
    from lmrec.ranking.fusion import KnnFusion
    from lmrec.ranking.index import IndexConfig, ItemIndex

    _, art, manifest, p = int8_export
    a = load_artifact(art, threads=1)
    catalog = Catalog(a.catalog["item_id"].to_numpy(), a.catalog["text"].tolist())
    everything = pd.concat([p.split.train, p.split.valid, p.split.test], ignore_index=True)
    assert manifest["knn"]["interactions"] == len(everything) and manifest["knn"]["nonzeros"] > 0
    from lmrec.artifact import text_vectors

    # items without interactions read like their nearest item by text (with_text_transfer)
    want = ItemKNN(catalog, manifest["knn"]["neighbours"]).fit(everything).with_text_transfer(text_vectors(a.engine)).sim
    np.testing.assert_allclose(a.knn.sim.toarray(), want.toarray(), rtol=1e-6)
    assert serving_model_from_artifact(art).knn is not None and a.knn.neighbours == manifest["knn"]["neighbours"]

    queries = build_queries(p.split.train, p.split.valid, catalog)
    users = a.engine.user_vectors(queries.histories, queries.events)
    weight, t = 2.0, a.engine.info.temperature
    dense = fused(lambda batch: a.engine.scores(users), a.knn, weight)(queries).numpy()
    ids = [str(i) for i in catalog.item_ids]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    index = ItemIndex.build(ids, unit(a.items), None, IndexConfig(backend="exact"))
    index.set_keys(ids)
    boosts = KnnFusion(a.knn, ids, weight, t).boosts([[ids[i] for i in h] for h in queries.histories])
    assert sum(b is not None for b in boosts) > len(queries) // 2
    got = index.search(unit(users), 10, boost=boosts)
    for b in range(len(queries)):
        order = np.argsort(-dense[b], kind="stable")[:10]
        assert [i for i, _ in got[b]] == [ids[i] for i in order]
        np.testing.assert_allclose([s for _, s in got[b]], t * dense[b, order], rtol=1e-4, atol=1e-5)


def test_evaluate_an_artifact_as_served(int8_export, tmp_path):
    """`lmrec evaluate --artifact`: the int8 model as served, on the split asked for; on valid it equals the
    gate's figure for the served recipe, and --set model.knn_weight fuses with item-kNN fitted on the history."""
    from lmrec.cli import main

    _, art, manifest, _ = int8_export
    out = tmp_path / "valid.json"
    assert main(["evaluate", "--artifact", str(art), "--split", "valid", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"].endswith("-int8") and report["split"] == "valid"
    assert report["metrics"]["ndcg@10"] == pytest.approx(manifest["metrics"]["served"]["ndcg@10"], abs=1e-6)
    assert main(["evaluate", "--artifact", str(art), "--set", "model.knn_weight=2", "--out", str(out)]) == 0
    fused = json.loads(out.read_text())
    assert fused["model"].endswith("+knn2") and fused["split"] == "test"


def test_onnx_user_tower_gives_the_same_top10_as_pytorch(int8_export):
    ckpt, art, _, p = int8_export
    from lmrec.data.encode import Catalog, build_queries

    loaded = load_checkpoint(ckpt)
    catalog = Catalog(loaded.catalog["item_id"].to_numpy(), loaded.catalog["text"].tolist())
    queries = build_queries(p.split.train, p.split.valid, catalog)
    scorer = Scorer(loaded.model, catalog.texts)
    torch_top = _top10(scorer(queries))
    engine = load_artifact(art).engine
    engine.items = scorer.items.numpy()  # the same item vectors on both sides: only the user tower differs
    onnx_top = _top10(engine.scores(engine.user_vectors(queries.histories, queries.events)))
    assert len(queries) > 10 and np.array_equal(torch_top, onnx_top)


def test_a_modified_file_fails_checksum_verification(int8_export, tmp_path):
    _, art, _, _ = int8_export
    copy = tmp_path / "art"
    shutil.copytree(art, copy)
    items = copy / "items.safetensors"
    blob = bytearray(items.read_bytes())
    blob[-1] ^= 0x01  # one bit of one item vector
    items.write_bytes(bytes(blob))
    with pytest.raises(LmrecError, match="checksum mismatch for items.safetensors"):
        load_artifact(copy)
    # an artifact whose manifest was edited to drop its failed gate is refused too
    shutil.rmtree(copy)
    shutil.copytree(art, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["gate"]["passed"] = False
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(LmrecError, match="did not pass its parity gate"):
        load_artifact(copy)
    (copy / "extra.onnx").write_bytes(b"x")
    manifest["gate"]["passed"] = True
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(LmrecError, match="not in the manifest"):
        load_artifact(copy)


def test_the_gate_rejects_a_damaged_model(tiny_lm, tmp_path, monkeypatch, capsys):
    import onnx
    from onnx import numpy_helper

    import lmrec.export as ex
    from lmrec.cli import main

    # the text user tower: no user-tower graph to export, so this stays quick
    ckpt, p = _checkpoint(tiny_lm, tmp_path / "ckpt", "model.item_tower.kind=text", "model.user_tower.kind=text")
    real = ex.quantize_int8

    def damaged(fp32_path, out_path, *args):
        described = real(fp32_path, out_path, *args)
        model = onnx.load(str(out_path))
        for init in model.graph.initializer:
            if init.name == "lmrec/item_vector/weight":  # scramble the item projection's rows
                w = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array(np.random.default_rng(0).permutation(w), init.name))
        onnx.save(model, str(out_path))
        return described

    monkeypatch.setattr(ex, "quantize_int8", damaged)
    out = tmp_path / "art"
    with pytest.raises(GateFailed, match="ranking.top10_overlap"):
        export_checkpoint(ckpt, out, quantize="int8", data=p, recipe="dynamic-per-channel")
    assert not out.exists()
    rejected = tmp_path / "art.rejected"
    assert json.loads((rejected / MANIFEST).read_text())["gate"]["passed"] is False
    with pytest.raises(LmrecError, match="did not pass its parity gate"):
        load_artifact(rejected)
    # the command exits non-zero and names the failed check (its data comes from the checkpoint's config)
    code = main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--recipe", "dynamic-per-channel"])
    assert code != 0 and "ranking.top10_overlap" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(
    "sets",
    [["model.item_tower.kind=hybrid", "model.user_tower.kind=gru"], ["model.item_tower.kind=text", "model.user_tower.kind=text"],
     ["model.item_tower.kind=hybrid", "model.user_tower.kind=transformer", "model.history_bias=true"]],
    ids=["hybrid-gru", "text-text", "hybrid-transformer-history-bias"],
)
def test_fp32_export_of_other_towers_ranks_like_pytorch(tiny_lm, tmp_path, sets):
    from lmrec.data.encode import Catalog, build_queries

    ckpt, p = _checkpoint(tiny_lm, tmp_path / "ckpt", *sets)
    manifest = export_checkpoint(ckpt, tmp_path / "art", quantize="none", data=p)
    assert manifest["gate"]["passed"] and manifest["model"]["precision"] == "fp32"
    assert all(c["value"] <= 1e-4 for c in manifest["gate"]["checks"] if c["name"].startswith("parity."))
    loaded = load_checkpoint(ckpt)
    catalog = Catalog(loaded.catalog["item_id"].to_numpy(), loaded.catalog["text"].tolist())
    queries = build_queries(p.split.train, p.split.valid, catalog)
    engine = load_artifact(tmp_path / "art").engine
    torch_scores = Scorer(loaded.model, catalog.texts)(queries).numpy()
    onnx_scores = engine.scores(engine.user_vectors(queries.histories, queries.events), queries.histories)
    assert np.abs(torch_scores - onnx_scores).max() < 1e-3 * manifest["model"]["temperature"] ** -1
    assert np.array_equal(_top10(torch_scores), _top10(onnx_scores))
    assert manifest["model"]["history_bias"] == (-1.5 if "model.history_bias=true" in sets else 0.0)


def test_export_refuses_what_it_cannot_do(tiny_lm, tmp_path):
    ckpt, p = _checkpoint(tiny_lm, tmp_path / "ckpt", "model.item_tower.kind=id")
    with pytest.raises(LmrecError, match="no language model"):
        export_checkpoint(ckpt, tmp_path / "art", quantize="int8", data=p)
    with pytest.raises(LmrecError, match="--quantize"):
        export_checkpoint(ckpt, tmp_path / "art", quantize="int4", data=p)
    with pytest.raises(LmrecError, match="not an lmrec artifact"):
        load_artifact(tmp_path)


def test_fp16_export_for_gpus_passes_the_same_gate(tiny_lm, tmp_path):
    """fp16 (GPU serving) is gated like int8; here it runs through ONNX Runtime's CPU kernels."""
    ckpt, p = _checkpoint(tiny_lm, tmp_path / "ckpt", "model.item_tower.kind=text", "model.user_tower.kind=gru")
    manifest = export_checkpoint(ckpt, tmp_path / "art", quantize="fp16", data=p)
    assert manifest["gate"]["passed"] and manifest["model"]["precision"] == "fp16"
    assert manifest["quantization"]["served"]["name"] == "fp16"
    assert {"ranking.ndcg@10_loss", "ranking.top10_overlap"} <= {c["name"] for c in manifest["gate"]["checks"]}
    sm = serving_model_from_artifact(tmp_path / "art")
    vec = sm.encode_items(["a brand new item"])
    assert vec.shape == (1, sm.dim) and vec.dtype == np.float32 and np.isfinite(vec).all()
