import numpy as np
import pandas as pd
import pytest

from lmrec.config import DataConfig, SplitConfig
from lmrec.data.encode import Catalog, build_queries
from lmrec.data.loaders import load_dataset
from lmrec.data.schema import Dataset, canonical_interactions
from lmrec.data.split import apply_filters, kcore, leave_one_out, split_dataset, temporal
from lmrec.errors import DataError


def _frame(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    users, items, ts = zip(*rows)
    return canonical_interactions(list(users), list(items), list(ts), "click")


def _items_of(df: pd.DataFrame, user: str) -> list[str]:
    return df.loc[df["user_id"] == user, "item_id"].tolist()


def _dataset(df: pd.DataFrame, items=None) -> Dataset:
    items = sorted(set(df["item_id"])) if items is None else items
    return Dataset("toy", df, pd.DataFrame({"item_id": items, "text": [""] * len(items)}))


# rows out of time order; equal timestamps (a2/a3 at 20, a4/a5 at 30) must keep file order
TIES = [
    ("A", "a4", 30),
    ("B", "b1", 5),
    ("A", "a1", 10),
    ("A", "a2", 20),
    ("C", "c1", 1),
    ("A", "a3", 20),
    ("A", "a5", 30),
    ("C", "c2", 2),
    ("D", "d2", 9),
    ("D", "d1", 8),
    ("C", "c3", 2),
]


def test_leave_one_out_by_time_with_file_order_ties():
    split = leave_one_out(_frame(TIES))
    assert split.method == "leave_one_out"
    assert _items_of(split.train, "A") == ["a1", "a2", "a3"]
    assert _items_of(split.valid, "A") == ["a4"] and _items_of(split.test, "A") == ["a5"]
    assert _items_of(split.train, "C") == ["c1"]
    assert _items_of(split.valid, "C") == ["c2"] and _items_of(split.test, "C") == ["c3"]
    # fewer than 3 interactions: everything stays in train, nothing to evaluate
    assert _items_of(split.train, "B") == ["b1"] and _items_of(split.train, "D") == ["d1", "d2"]
    assert set(split.valid["user_id"]) == set(split.test["user_id"]) == {"A", "C"}
    assert len(split.train) + len(split.valid) + len(split.test) == len(TIES)


def test_leave_one_out_ties_at_scale():
    """Many users, every timestamp equal: the last row of each user in the file is the test target."""
    rng = np.random.default_rng(0)
    users = rng.integers(0, 300, size=6000).astype(str)
    df = canonical_interactions(users, [f"i{k}" for k in range(len(users))], np.zeros(len(users)), "view")
    split = leave_one_out(df)
    last = df.groupby("user_id").tail(1).set_index("user_id")["item_id"]
    second = df.groupby("user_id").nth(-2).set_index("user_id")["item_id"]
    assert split.test.set_index("user_id")["item_id"].sort_index().equals(last.sort_index())
    assert split.valid.set_index("user_id")["item_id"].sort_index().equals(second.sort_index())


def test_split_is_a_pure_function_of_the_input():
    a, b = leave_one_out(_frame(TIES)), leave_one_out(_frame(TIES))
    for name in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))


def test_history_for():
    split = leave_one_out(_frame(TIES))
    assert split.history_for("valid") is split.train
    test_history = split.history_for("test")
    assert len(test_history) == len(split.train) + len(split.valid)
    assert sorted(_items_of(test_history, "A")) == ["a1", "a2", "a3", "a4"]
    assert split.targets_for("test") is split.test
    with pytest.raises(ValueError, match="'valid' or 'test'"):
        split.history_for("train")


def test_queries_follow_the_split():
    df = _frame(TIES)
    split = leave_one_out(df)
    catalog = Catalog(sorted(set(df["item_id"])), [""] * df["item_id"].nunique())
    q = build_queries(split.history_for("test"), split.test, catalog)
    assert q.user_ids.tolist() == ["A", "C"]
    decode = catalog.item_ids
    assert decode[q.histories[0]].tolist() == ["a1", "a2", "a3", "a4"]  # oldest first
    assert decode[q.targets[0]].tolist() == ["a5"]
    assert decode[q.histories[1]].tolist() == ["c1", "c2"] and decode[q.targets[1]].tolist() == ["c3"]
    assert q.events[0].tolist() == [2, 2, 2, 2]  # "click"


def test_temporal_cut():
    rows = [("u1", f"i{t}", t) for t in (1, 2, 3, 5, 6, 7, 8)] + [
        ("u2", "j4", 4),
        ("u2", "j9", 9),
        ("u2", "j10", 10),
    ]
    split = temporal(_frame(rows), SplitConfig(method="temporal", valid_quantile=0.5, test_quantile=0.8))
    # cut points are quantiles over all timestamps 1..10: 5.5 and 8.2
    assert sorted(split.train["timestamp"]) == [1, 2, 3, 4, 5]
    assert sorted(split.valid["timestamp"]) == [6, 7, 8]
    assert split.test["item_id"].tolist() == ["j9", "j10"]
    assert _items_of(split.history_for("test"), "u2") == ["j4"]
    assert split.method == "temporal"


def test_temporal_needs_distinct_cuts():
    df = _frame([("u", f"i{k}", 5) for k in range(6)])
    with pytest.raises(DataError, match="same timestamp"):
        temporal(df, SplitConfig(method="temporal"))


def test_kcore_iterates_to_a_fixed_point():
    # one pass drops u4; that leaves i3 with 1 user, which drops u3's i3 row, leaving u3 with 1 row.
    rows = [("u1", "i1", 1), ("u1", "i2", 2), ("u2", "i1", 1), ("u2", "i2", 2),
            ("u3", "i2", 1), ("u3", "i3", 2), ("u4", "i3", 1)]  # fmt: skip
    df = _frame(rows)
    out = kcore(df, 2, 2)
    assert sorted(zip(out["user_id"], out["item_id"])) == [
        ("u1", "i1"),
        ("u1", "i2"),
        ("u2", "i1"),
        ("u2", "i2"),
    ]
    assert out["user_id"].value_counts().min() >= 2 and out["item_id"].value_counts().min() >= 2
    pd.testing.assert_frame_equal(kcore(out, 2, 2), out)
    assert kcore(df, 0, 0) is df  # off


def test_apply_filters_min_value_and_kcore_catalog():
    df = canonical_interactions(
        ["u1", "u1", "u1", "u2", "u2", "u3"], ["a", "b", "c", "a", "b", "c"], [1, 2, 3, 1, 2, 1],
        "rating", [5.0, 4.0, 1.0, 4.0, 5.0, 2.0],
    )  # fmt: skip
    ds = _dataset(df, items=["a", "b", "c", "never"])
    kept = apply_filters(ds, DataConfig(min_value=4))
    assert kept.interactions["value"].min() >= 4 and len(kept.interactions) == 4
    assert kept.items["item_id"].tolist() == ["a", "b", "c", "never"]  # no item bound: the catalog stays
    core = apply_filters(ds, DataConfig(min_value=4, min_item_interactions=2, min_user_interactions=2))
    assert sorted(core.interactions["item_id"].unique()) == ["a", "b"]
    assert core.items["item_id"].tolist() == ["a", "b"]  # the item bound holds for the catalog too
    assert core.interactions.index.tolist() == [0, 1, 2, 3]
    assert apply_filters(ds, DataConfig()) is ds
    with pytest.raises(DataError, match="no interactions left"):
        apply_filters(ds, DataConfig(min_value=6))


def test_given_split_is_kept(fixtures_dir):
    ds = load_dataset(DataConfig(path=str(fixtures_dir / "recbole-benchmark"), format="recbole"))
    split = split_dataset(ds, SplitConfig())  # auto -> given
    assert split.method == "given"
    assert _items_of(split.valid, "U_ALPHA") == ["SCALE05"] and _items_of(split.test, "U_ALPHA") == [
        "GLOVE06"
    ]
    assert _items_of(split.train, "U_BETA") == ["FUNNL07"]
    assert _items_of(split.history_for("test"), "U_GAMMA") == [
        "TUBES08", "TONGS04", "SCOPE01", "GLOVE06", "FLASK02", "FUNNL07"]  # fmt: skip
    assert split.test["user_id"].tolist() == ["U_ALPHA", "U_BETA", "U_GAMMA"]
    # filters that would change a given split are refused rather than silently breaking it
    with pytest.raises(DataError, match="given split"):
        load_dataset(
            DataConfig(
                path=str(fixtures_dir / "recbole-benchmark"), format="recbole", min_user_interactions=5
            )
        )
    # the given split can still be ignored on purpose
    assert split_dataset(ds, SplitConfig(method="leave_one_out")).method == "leave_one_out"


def test_given_needs_a_shipped_split():
    with pytest.raises(DataError, match="ships no split"):
        split_dataset(_dataset(_frame(TIES)), SplitConfig(method="given"))
    assert split_dataset(_dataset(_frame(TIES)), SplitConfig()).method == "leave_one_out"
