"""The training-at-scale benchmark command, on a tiny synthetic catalog: every run reports its phases."""

import json


def test_train_scale_writes_phases_for_each_setting(tiny_lm, tmp_path):
    from lmrec.benchmarks.train_scale import main

    out = tmp_path / "scale"
    sets = [f"model.item_tower.pretrained={tiny_lm}", "model.item_tower.dim=16", "data.synthetic.n_users=60",
            "data.synthetic.n_items=40", "train.max_steps_per_epoch=2", "train.valid_users=20"]
    assert main(["--out", str(out), "--cases", "synthetic-50k", *(f"--set={s}" for s in sets)]) == 0
    report = json.loads((out / "train_scale.json").read_text())
    before, after = report["runs"]
    assert (before["setting"], after["setting"]) == ("before", "after")
    assert before["users"] == 60 and before["items"] == 40
    for r in (before, after):
        (epoch,) = r["epochs"]
        assert set(epoch) >= {"train_seconds", "data", "forward", "backward", "validate"}
        assert epoch["valid_users_scored"] == 20 and r["peak_rss_mb"] > 0
    assert "synthetic-50k: training + validation per epoch" in (out / "train_scale.md").read_text()  # before -> after
    assert (out / "train_scale.png").stat().st_size > 1000


def test_gpu_comparison_refuses_to_run_without_a_gpu(tmp_path):
    import pytest
    import torch

    from lmrec.benchmarks.gpu_finetune import main
    from lmrec.errors import LmrecError

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the comparison itself is the check")
    with pytest.raises(LmrecError, match="needs a GPU"):
        main(["--out", str(tmp_path)])
