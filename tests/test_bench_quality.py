"""The quality benchmark command, end to end in its quick form (one short epoch per model)."""

import json

import pytest


@pytest.mark.ray
def test_quality_bench_quick_writes_json_markdown_png(ray_session, tiny_lm, tmp_path):
    from lmrec.benchmarks.quality import run_quality

    out = tmp_path / "quality"
    sets = [f"model.item_tower.pretrained={tiny_lm}", "model.item_tower.dim=16", "train.num_workers=1",
            "data.synthetic.n_items=120", "data.synthetic.n_users=150", "model.knn_weight=2"]
    results = run_quality(out, "configs", ["demo"], quick=True, cold_start=True, overrides=sets)
    rows = results["datasets"]["demo"]["models"]
    assert [r["model"] for r in rows] == ["popularity", "item-knn", "lm-text-transformer", "lm-text-transformer+knn2"]
    assert rows[-1]["fusion"]["weight"] == 2.0 and set(rows[-1]["fusion"]["valid_ndcg@10"]) == {2.0}
    lm = rows[-2]
    assert lm["train"]["epochs_run"] == 1 and lm["train"]["wall_seconds"] > 0
    assert len(lm["train"]["valid_ndcg@10_per_epoch"]) == 1
    cold = results["datasets"]["demo"]["cold_start"]
    assert cold["held_out_items"] == 12
    pop, text = cold["models"][0], cold["models"][1]
    assert pop["model"] == "popularity" and pop["held_out"]["targets"] > 0
    assert pop["held_out"]["metrics"]["ndcg@10"] == 0.0  # held-out items have no popularity at all
    assert text["held_out"]["targets"] == pop["held_out"]["targets"]
    saved = json.loads((out / "quality.json").read_text())
    assert saved["datasets"]["demo"]["models"][0]["metrics"] == rows[0]["metrics"]
    assert "| lm-text-transformer |" in (out / "quality.md").read_text()
    assert (out / "quality.png").stat().st_size > 1000

    # the fusion weight is chosen on valid: the best of the grid, ties to the smaller weight
    from lmrec.config import load_config
    from lmrec.experiments import prepare, select_knn_weight

    cfg = load_config(["configs/demo.yaml"], ["data.dataset=demo", *sets])
    weight, table = select_knn_weight(prepare(cfg), cfg, out / "runs" / "demo" / "demo" / "checkpoint", [0, 2, 50])
    assert set(table) == {0.0, 2.0, 50.0} and table[weight] == max(table.values())
    assert all(0.0 <= v <= 1.0 for v in table.values())
