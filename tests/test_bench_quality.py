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
    assert set(lm["valid_metrics"]) >= {"ndcg@10", "recall@10"} and lm["valid_metrics"] != lm["metrics"]
    # the second protocol (history left out of the ranking) on every row, baselines included
    assert all(set(r["history_excluded_metrics"]) == {"ndcg@10", "recall@10"} for r in rows)
    assert all(0.0 <= r["history_excluded_metrics"]["ndcg@10"] <= 1.0 for r in rows)
    cold = results["datasets"]["demo"]["cold_start"]
    assert cold["held_out_items"] == {"test": 12, "valid": 12}
    pop, text, fused = cold["models"]
    assert pop["model"] == "popularity" and pop["test"]["held_out"]["targets"] > 0 and pop["valid"]["held_out"]["targets"] > 0
    assert pop["test"]["held_out"]["metrics"]["ndcg@10"] == 0.0  # held-out items have no popularity at all
    assert pop["valid"]["held_out"]["metrics"]["ndcg@10"] == 0.0
    assert text["test"]["held_out"]["targets"] == pop["test"]["held_out"]["targets"]
    # the transfer variant is the best on valid held-out targets; its test figure is the one reported
    tv = fused["transfer"]["valid_held_out_ndcg@10"]
    assert set(tv) == {"none", "nearest item, at its cosine"}
    assert tv[fused["transfer"]["chosen"]] == max(tv.values())
    assert fused["valid"]["held_out"]["metrics"]["ndcg@10"] == tv[fused["transfer"]["chosen"]]
    saved = json.loads((out / "quality.json").read_text())
    assert saved["datasets"]["demo"]["models"][0]["metrics"] == rows[0]["metrics"]
    assert "| lm-text-transformer |" in (out / "quality.md").read_text()
    assert "NDCG@10, history left out" in (out / "quality.md").read_text()
    assert (out / "quality.png").stat().st_size > 1000

    # the fusion weight is chosen on valid: the best of the grid, ties to the smaller weight
    from lmrec.config import load_config
    from lmrec.experiments import prepare, select_knn_weight

    cfg = load_config(["configs/demo.yaml"], ["data.dataset=demo", *sets])
    weight, table = select_knn_weight(prepare(cfg), cfg, out / "runs" / "demo" / "0-demo" / "checkpoint", [0, 2, 50])
    assert set(table) == {0.0, 2.0, 50.0} and table[weight] == max(table.values())
    assert all(0.0 <= v <= 1.0 for v in table.values())


def test_cold_start_split_holds_out_two_disjoint_item_sets(ml100k_slice):
    from lmrec.data.split import hold_out_items
    from lmrec.experiments import cold_start_split

    p = ml100k_slice
    split, test_items, valid_items = cold_start_split(p.split, p.catalog.item_ids, 0.1, seed=0)
    assert len(test_items) == len(valid_items) == round(0.1 * len(p.catalog))
    assert not set(test_items) & set(valid_items)
    # the test set is the one the earlier single-set protocol held out (figures stay comparable)
    assert set(test_items) == set(hold_out_items(p.split, p.catalog.item_ids, 0.1, seed=0)[1])
    assert not split.train["item_id"].isin(set(test_items) | set(valid_items)).any()
    assert not split.valid["item_id"].isin(set(test_items)).any()
    assert split.valid["item_id"].isin(set(valid_items)).any()  # valid targets among its own held-out items
    assert split.test.equals(p.split.test)


def test_fidelity_row_divides_ours_by_the_quoted_anchor():
    from lmrec.benchmarks.quality import ANCHORS, _fidelity

    rows = [{"model": "sasrec-id", "metrics": {"ndcg@10": 0.0561 * 0.9, "recall@10": 0.098}}]
    assert _fidelity(rows, ANCHORS["scientific"]) == [
        {"ours": "sasrec-id", "anchor": "RecBole 1.2 SASRec (quoted)", "ndcg@10_ratio": 0.9, "recall@10_ratio": 1.0}
    ]


def test_cold_start_only_runs_the_baselines_and_the_held_out_protocol(tiny_lm, tmp_path, capsys):
    """--cold-start-only: no trained rows on the whole catalog and no fidelity row; the held-out protocol's
    models trained in this process (no Ray). Into a report that is there, it replaces only the cold-start
    section. The flag and --no-cold-start exclude each other."""
    from lmrec.benchmarks.quality import run_quality
    from lmrec.cli import main

    sets = [f"model.item_tower.pretrained={tiny_lm}", "model.item_tower.dim=16", "data.synthetic.n_items=120",
            "data.synthetic.n_users=150", "model.knn_weight=2"]
    results = run_quality(tmp_path / "q", "configs", ["demo"], quick=True, overrides=sets, local=True, trained=False)
    entry = results["datasets"]["demo"]
    assert [r["model"] for r in entry["models"]] == ["popularity", "item-knn"] and "fidelity" not in entry
    assert [r["model"] for r in entry["cold_start"]["models"]][:2] == ["popularity", "lm-text-transformer"]
    assert "Cold start:" in (tmp_path / "q" / "quality.md").read_text()
    # a full report first (--no-cold-start), then the protocol alone into it: its trained rows stay
    full = run_quality(tmp_path / "full", "configs", ["demo"], quick=True, cold_start=False, overrides=sets, local=True)
    rows = [r["model"] for r in full["datasets"]["demo"]["models"]]
    assert "lm-text-transformer" in rows and "cold_start" not in full["datasets"]["demo"]
    merged = run_quality(tmp_path / "full", "configs", ["demo"], quick=True, overrides=sets, local=True, trained=False)
    assert [r["model"] for r in merged["datasets"]["demo"]["models"]] == rows and "cold_start_rerun" in merged
    assert merged["datasets"]["demo"]["cold_start"]["held_out_items"] == {"test": 12, "valid": 12}
    saved = json.loads((tmp_path / "full" / "quality.json").read_text())
    assert [r["model"] for r in saved["datasets"]["demo"]["models"]] == rows and "cold_start" in saved["datasets"]["demo"]
    with pytest.raises(ValueError, match="nothing to run"):
        run_quality(tmp_path / "none", "configs", ["demo"], quick=True, cold_start=False, trained=False)
    with pytest.raises(SystemExit) as exc:
        main(["bench", "quality", "--no-cold-start", "--cold-start-only"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err
