"""The logged-bandit dataset: schema, writer, reader, attribution of events to slots, and validation."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from lmrec.errors import DataError
from lmrec.loop.estimators import IPS, SNIPS
from lmrec.loop.logs import (
    EVENT_COLUMNS,
    IMPRESSION_COLUMNS,
    IMPRESSION_SCHEMA,
    impression_rows,
    read_logs,
    schema_markdown,
    write_logs,
)
from lmrec.loop.policies import ExplorationPolicy

DOCS = Path(__file__).parent.parent / "docs" / "loop.md"


def two_slates():
    policy = ExplorationPolicy({"kind": "epsilon", "epsilon": 0.5})
    pool, scores = ["a", "b", "c", "d"], [0.9, 0.8, 0.5, 0.4]
    rows = []
    for rid, user, t in (("r1", "u1", 100.0), ("r2", "u2", 200.0)):
        slate = policy.select(pool, scores, 2, seed_key=rid)
        rows += impression_rows(slate, rid, t, model_version="m1", user_id=user, variant="B")
    return pd.DataFrame(rows)


def event(rid, pos, item, kind, t, user="u1"):
    return {"recommendation_id": rid, "position": pos, "user_id": user, "item_id": item, "event_type": kind, "time": t}


def test_round_trip_and_attribution(tmp_path):
    imp = two_slates()
    shown = dict(zip(zip(imp.recommendation_id, imp.position), imp.item_id))
    events = [
        event("r1", 0, shown["r1", 0], "click", 110.0),
        event("r1", 0, shown["r1", 0], "click", 111.0),  # a second click on the same slot
        event("r1", None, shown["r1", 1], "purchase", 150.0),  # no position: found by item
        event("r2", 1, shown["r2", 1], "click", 90_000.0),  # a day later: outside the window
        event("r2", 0, "zzz", "click", 210.0),  # names an item that was not in that slot
        event("r9", 0, "a", "click", 210.0),  # an unknown recommendation
        event(None, None, "a", "view", 50.0),  # organic: not attributed, not counted
    ]
    write_logs(tmp_path, imp, events)
    assert pq.read_schema(tmp_path / "impressions" / "part-0.parquet").equals(IMPRESSION_SCHEMA, check_metadata=False)
    logs = read_logs(tmp_path, {"weights": {"click": 1.0, "purchase": 5.0}})
    got = logs.impressions.set_index(["recommendation_id", "position"])["reward"].to_dict()
    assert got == {("r1", 0): 1.0, ("r1", 1): 5.0, ("r2", 0): 0.0, ("r2", 1): 0.0}
    assert logs.unattributed == {
        "unknown_recommendation": 1,
        "no_such_slot": 0,
        "item_mismatch": 1,
        "outside_window": 1,
    }
    summed = read_logs(tmp_path, {"weights": {"click": 1.0}, "aggregate": "sum", "window_s": 100_000})
    assert summed.impressions.set_index(["recommendation_id", "position"])["reward"].to_dict() == {
        ("r1", 0): 2.0,
        ("r1", 1): 0.0,
        ("r2", 0): 0.0,
        ("r2", 1): 1.0,
    }
    # the propensities written are the policy's, and the logs feed the estimators directly
    row = logs.impressions.iloc[0]
    assert json.loads(row.policy_params) == {"kind": "epsilon", "epsilon": 0.5}
    assert row.variant == "B" and row.surface == "recommend"
    fb = logs.feedback(eval_pscore=logs.impressions["propensity"].to_numpy())  # the logger evaluated on itself
    assert IPS().estimate(fb) == pytest.approx(logs.reward.mean())
    assert SNIPS().estimate(fb) == pytest.approx(6 / 4)


def test_validation_names_the_problem(tmp_path):
    imp = two_slates()
    with pytest.raises(DataError, match=r"propensity must be in \(0, 1\]"):
        write_logs(tmp_path, imp.assign(propensity=0.0), [])
    with pytest.raises(DataError, match="column propensity must not be null"):
        write_logs(tmp_path, imp.assign(propensity=np.nan), [])
    with pytest.raises(DataError, match=r"missing required column\(s\) \['propensity'\]"):
        write_logs(tmp_path, imp.drop(columns="propensity"), [])
    with pytest.raises(DataError, match="two rows for one position"):
        write_logs(tmp_path, pd.concat([imp, imp.iloc[:1]]), [])
    with pytest.raises(DataError, match="more than one user_id"):
        write_logs(tmp_path, imp.assign(user_id=["u1", "u9", "u2", "u2"]), [])
    with pytest.raises(DataError, match="surface must be one of"):
        write_logs(tmp_path, imp.assign(surface="home"), [])
    with pytest.raises(DataError, match="column position must hold int32"):
        write_logs(tmp_path, imp.assign(position=["top", "2nd", "x", "y"]), [])
    with pytest.raises(DataError, match="no Parquet files in impressions/"):
        read_logs(tmp_path / "nowhere")


def test_docs_print_the_schema():
    text = DOCS.read_text()
    assert schema_markdown(IMPRESSION_COLUMNS) in text
    assert schema_markdown(EVENT_COLUMNS) in text
