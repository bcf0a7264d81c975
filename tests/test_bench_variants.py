"""The variants runner (python -m lmrec.benchmarks.variants): each variant trained, scored on valid and test
(alone, fused at the weight valid picks, and with the history left out), one table; a rerun skips what ran."""

import json

import pytest
import yaml

from lmrec.benchmarks.variants import main, run
from lmrec.errors import LmrecError


def test_variants_run_once_each_into_one_table_and_a_rerun_skips_them(tiny_lm, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "data": {"dataset": "demo", "synthetic": {"n_items": 60, "n_users": 50, "events_per_user": 8}},
        "model": {"item_tower": {"kind": "hybrid", "pretrained": tiny_lm, "finetune_layers": 0, "dim": 16, "max_text_length": 24},
                  "user_tower": {"kind": "transformer", "layers": 1, "heads": 2, "max_history": 8}},
        "train": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 3},
    }))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"dataset": "demo", "base": str(base), "fusion_grid": [0, 2], "variants": [
        {"name": "plain", "set": []},
        {"name": "history bias from plain", "set": ["model.history_bias=true", "train.init_from={checkpoint:plain}"]},
    ]}))
    out = tmp_path / "out"
    rows = run(spec, out)
    assert [r["name"] for r in rows] == ["plain", "history bias from plain"]
    for r in rows:
        assert r["fused"]["weight"] in (0.0, 2.0) and set(r["fused"]["valid_ndcg@10_by_weight"]) == {0.0, 2.0}
        assert r["fused"]["valid_ndcg@10_by_weight"][r["fused"]["weight"]] == max(r["fused"]["valid_ndcg@10_by_weight"].values())
        assert {"ndcg@10", "recall@10"} <= set(r["test_history_excluded"]) and r["train"]["epochs_run"] >= 1
    assert rows[1]["train"]["stages"][0] == "init"  # started from plain's checkpoint, scored as epoch 0
    table = (out / "variants.md").read_text()
    assert "| plain |" in table and "| history bias from plain |" in table and "history left out" in table
    lines = (out / "variants.jsonl").read_text().splitlines()
    assert run(spec, out) == [json.loads(x) for x in lines]  # nothing ran again
    assert main([str(spec), "--out", str(out)]) == 0


def test_a_spec_with_unknown_keys_or_an_unrun_checkpoint_is_refused(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"dataset": "demo", "base": "configs/demo.yaml", "variantz": []}))
    with pytest.raises(LmrecError, match="unknown keys"):
        run(spec, tmp_path / "out")
    spec.write_text(yaml.safe_dump({"dataset": "demo", "base": "configs/demo.yaml",
                                    "variants": [{"name": "b", "set": ["train.init_from={checkpoint:a}"]}]}))
    with pytest.raises(LmrecError, match="variant 'a' has no checkpoint"):
        run(spec, tmp_path / "out")
