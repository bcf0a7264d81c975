"""Per-day metrics of `lmrec bench loop`, on hand-made frames, and on a short simulated run."""

import numpy as np
import pandas as pd
import pytest

from lmrec.config import SyntheticConfig
from lmrec.errors import DataError
from lmrec.loop.metrics import (
    coverage,
    ctr_ratio,
    daily_ctr,
    daily_regret,
    daily_report,
    km_median,
    new_item_share,
    time_to_first_click,
)
from lmrec.loop.simulator import SimConfig, Simulator, World, popularity_agent


def shown_frame():
    rows = [  # day, time, user, rec, position, item, is_new, clicked
        (0, 10.0, "u1", "r1", 0, "a", False, True),
        (0, 10.0, "u1", "r1", 1, "b", False, False),
        (0, 20.0, "u2", "r2", 0, "a", False, False),
        (0, 20.0, "u2", "r2", 1, "c", False, False),
        (1, 200.0, "u1", "r3", 0, "n1", True, True),
        (1, 200.0, "u1", "r3", 1, "b", False, False),
    ]
    cols = ["day", "time", "user_id", "recommendation_id", "position", "item_id", "is_new", "clicked"]
    return pd.DataFrame(rows, columns=cols)


STEPS = pd.DataFrame({"day": [0, 0, 1], "expected_clicks": [0.5, 0.3, 0.2], "oracle_expected_clicks": [0.6, 0.6, 0.4]})
NEW = pd.DataFrame({"item_id": ["n1", "n2"], "arrival": [150.0, 160.0], "day": [1, 1]})


def test_per_day_metrics_by_hand():
    shown = shown_frame()
    ctr = daily_ctr(shown)
    assert ctr["ctr"].tolist() == [0.25, 0.5] and ctr["slots"].tolist() == [4, 2]
    reg = daily_regret(STEPS)
    np.testing.assert_allclose(reg["regret"], [0.2, 0.2])
    np.testing.assert_allclose(reg["relative_regret"], [0.2 / 0.6, 0.5])
    assert new_item_share(shown).tolist() == [0.0, 0.5]
    cov = coverage(shown, [10, 12])
    np.testing.assert_allclose(cov["coverage"], [3 / 10, 2 / 12])
    ttfc = time_to_first_click(shown, NEW, end_time=200.0)
    assert ttfc["clicked"].tolist() == [True, False] and ttfc["duration"].tolist() == [50.0, 40.0]
    report = daily_report(STEPS, shown, NEW, [10, 12])
    assert report.loc[1, "new_item_median_s_to_first_click"] == 50.0
    assert report.loc[1, "new_items_clicked"] == 0.5 and np.isnan(report.loc[0, "new_item_median_s_to_first_click"])


def test_kaplan_meier_median_handles_censoring():
    # events at 10, 30, 40; one item censored at 20: S(10) = 3/4, S(30) = 3/4 * 1/2
    assert km_median([10, 20, 30, 40], [True, False, True, True]) == 30.0
    assert km_median([10, 20, 30], [True, False, False]) == float("inf")  # never below 1/2
    assert km_median([5, 5, 7], [True, True, True]) == 5.0


def test_ctr_ratio_paired_bootstrap():
    a = shown_frame()
    b = a.assign(clicked=[False, False, True, False, False, False])
    iv = ctr_ratio(a, b, n_bootstrap=500)
    assert iv.estimate == pytest.approx((2 / 6) / (1 / 6))
    assert iv.lower <= iv.estimate <= iv.upper
    # identical users: every resample has the same ratio
    same = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u2"], "clicked": [True, False, True, False]})
    other = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u2"], "clicked": [True, True, True, True]})
    iv = ctr_ratio(same, other, n_bootstrap=200)
    assert (iv.estimate, iv.lower, iv.upper) == pytest.approx((0.5, 0.5, 0.5))
    with pytest.raises(DataError, match="at least one click in the second"):
        ctr_ratio(same, same.assign(clicked=False))
    with pytest.raises(DataError, match=r"shown lacks column\(s\) \['clicked'\]"):
        daily_ctr(same.drop(columns="clicked").assign(day=0))


def test_exploration_for_new_items_shows_them_on_a_simulated_run():
    cfg = SimConfig(
        world=SyntheticConfig(n_items=60, n_users=40, n_topics=6, events_per_user=8, seed=5),
        days=2,
        k=5,
        sessions_per_day=2.0,
        new_items_per_day=5,
        seed=2,
    )
    world = World.build(cfg)
    rows = {}
    for name, policy in (
        ("greedy", {"kind": "greedy"}),
        ("new_items", {"kind": "greedy", "new_items": {"weight": 0.3, "age_cutoff_s": cfg.new_item_age_s}}),
    ):
        r = Simulator(world, popularity_agent(world, policy=policy)).run()
        rows[name] = daily_report(r.steps, r.shown, r.new_items, r.catalog_size)
    # greedy popularity never shows an item nobody has clicked; the new-items slots do, ~30% of slots at first
    assert (rows["greedy"]["new_item_share"] == 0).all()
    assert (rows["new_items"]["new_item_share"] > 0.1).all()
    assert rows["new_items"]["new_items_clicked"].mean() > rows["greedy"]["new_items_clicked"].mean()
