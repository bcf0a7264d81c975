"""`lmrec demo`'s report: the training curve drawn from the epochs training recorded."""

from lmrec.demo import plot_training


def test_the_training_curve_is_drawn_from_the_history(tmp_path):
    history = [{"epoch": e, "train_loss": 6.0 - e, "valid_ndcg@10": 0.1 + 0.02 * e, "best_epoch": 3} for e in (1, 2, 3)]
    baselines = [{"model": "popularity", "metrics": {"ndcg@10": 0.08}}, {"model": "item-knn", "metrics": {"ndcg@10": 0.2}}]
    path = plot_training(history, baselines, tmp_path / "runs" / "training.png")
    assert path == tmp_path / "runs" / "training.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1100, 396)  # two panels, 10 x 3.6 in at 110 dpi
    assert plot_training([], baselines, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
