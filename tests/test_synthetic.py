"""The synthetic demo world: deterministic, canonical, text that separates topics, and a usable simulator."""

import re

import numpy as np
import pandas as pd
import pytest

from lmrec.config import SyntheticConfig
from lmrec.data.schema import EVENT_TYPES, INTERACTION_COLUMNS
from lmrec.data.split import leave_one_out
from lmrec.data.synthetic import (
    EPOCH,
    TOPICS,
    UserModel,
    build_catalog,
    demo_world,
    generate_demo,
)
from lmrec.errors import ConfigError

SMALL = SyntheticConfig(n_items=120, n_users=200, n_topics=6, events_per_user=20, seed=3)


@pytest.fixture(scope="module")
def demo():
    return generate_demo(SyntheticConfig())  # the defaults `make demo` uses


def topic_of(ds) -> pd.Series:
    """(E,) the topic of each interaction's item."""
    return ds.interactions["item_id"].map(ds.items.set_index("item_id")["topic"])


def test_same_seed_same_frames_other_seed_differs():
    a, b = generate_demo(SMALL), generate_demo(SMALL)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)
    c = generate_demo(SMALL.model_copy(update={"seed": 4}))
    assert not a.interactions["item_id"].equals(c.interactions["item_id"])
    assert not a.items["text"].equals(c.items["text"])


def test_canonical_schema_and_sizes(demo):
    cfg = SyntheticConfig()
    inter, items = demo.interactions, demo.items
    assert (demo.name, demo.synthetic, demo.info["format"]) == ("demo", True, "synthetic")
    assert demo.info["text_template"] == "{title}. {category}. {brand}. {description}"
    assert tuple(inter.columns) == INTERACTION_COLUMNS and not demo.has_given_split
    assert inter["timestamp"].dtype == np.int64 and inter["value"].dtype == np.float64
    assert pd.api.types.is_string_dtype(inter["user_id"]) and pd.api.types.is_string_dtype(inter["item_id"])
    assert inter["value"].isna().all()
    assert set(inter["event"]) == {"view", "click", "purchase"} <= set(EVENT_TYPES)
    counts = inter["event"].value_counts()
    assert counts["view"] > counts["click"] > counts["purchase"]

    assert list(items.columns) == ["item_id", "title", "category", "brand", "description", "topic", "text"]
    assert len(items) == cfg.n_items and items["item_id"].is_unique and items["item_id"].iloc[0] == "i0001"
    assert items["topic"].dtype == np.int64 and sorted(items["topic"].unique()) == list(range(cfg.n_topics))
    assert set(inter["item_id"]) <= set(items["item_id"])  # finish_items added no text-less rows

    lengths = inter.groupby("user_id").size()
    assert len(lengths) == cfg.n_users and lengths.min() >= 5
    assert abs(lengths.mean() - cfg.events_per_user) < 1.0
    assert inter["timestamp"].min() >= EPOCH
    # Strictly increasing within each user, in source order.
    assert (inter.groupby("user_id")["timestamp"].diff().dropna() > 0).all()


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_item_text_carries_its_topic():
    items = generate_demo(SyntheticConfig(n_topics=len(TOPICS))).items  # every written vocabulary
    assert (items["text"].str.len() > 0).all()
    vocab = [
        words(" ".join([*(f"{kind} {feature}" for kind, feature in t.products), *t.uses])) for t in TOPICS
    ]
    for row in items.itertuples():
        topic = TOPICS[row.topic]
        assert row.title.split(" ", 1)[1] in dict(topic.products), row.title  # "<adjective> <kind>"
        assert row.category == topic.category and row.brand in topic.brands
        assert row.text.startswith(f"{row.title}. {row.category}. {row.brand}. ")
        # The item's text shares strictly more words with its own topic than with any other:
        # the topic words, not the shared adjectives, decide.
        overlap = np.array([len(words(row.text) & v) for v in vocab])
        assert overlap[row.topic] > np.delete(overlap, row.topic).max(), row.text


@pytest.mark.parametrize("drift", [0.0, 0.15, 0.5])
def test_sequences_stay_in_topic_at_rate_one_minus_drift(drift):
    ds = generate_demo(SMALL.model_copy(update={"drift": drift}))
    inter = ds.interactions.assign(topic=topic_of(ds))
    same_user = inter["user_id"].eq(inter["user_id"].shift())
    stay = inter["topic"].eq(inter["topic"].shift())[same_user].mean()
    assert abs(stay - (1 - drift)) < 0.02  # ~3800 transitions: 2 % is > 5 standard errors


def test_popularity_is_skewed(demo):
    counts = demo.interactions["item_id"].value_counts()
    top_decile = counts.iloc[: len(demo.items) // 10].sum() / counts.sum()
    assert 0.3 < top_decile < 0.7  # a real head, yet most picks are outside the top 10 %
    assert counts.iloc[0] > 10 * counts.median()


def test_slate_pulls_the_user_towards_the_topics_they_want():
    rng = np.random.default_rng(0)
    catalog = build_catalog(240, 8, rng)
    preference = np.full(8, 0.02)
    preference[2] = 1 - 0.02 * 7  # loves topic 2, barely cares for topic 5
    user = UserModel(preference, topic=2, drift=0.15, event_probs=np.array([0.7, 0.2, 0.1]))
    # The four least popular items of each topic: a user browsing alone rarely finds them.
    tail = {t: m[np.argsort(catalog.popularity[m])[:4]] for t in (2, 5) for m in [catalog.members[t]]}

    def pick_rate(slate: np.ndarray, shown: bool, n: int = 3000) -> float:
        """Share of steps whose item is in ``slate``, with the slate shown or not."""
        hits = 0
        for _ in range(n):
            user.topic = 2  # every trial starts in the loved topic
            item, event = user.next_event(rng, catalog, slate if shown else None)
            hits += item in slate
            assert event in ("view", "click", "purchase")
        return hits / n

    without = pick_rate(tail[2], shown=False)
    with_liked = pick_rate(tail[2], shown=True)
    with_disliked = pick_rate(tail[5], shown=True)
    assert without < 0.1
    assert with_liked > without + 0.4  # attention 0.6 on a slate of the topic they want next
    assert with_disliked < 0.05  # off-taste slates are mostly ignored (expected ~0.016)
    # Taking a slate item moves the user into that item's topic (here back to the loved one).
    liked = int(tail[2][0])
    for _ in range(300):  # ~9 % per step: 300 misses in a row has odds below 1e-12
        user.topic = 5
        if user.next_event(rng, catalog, slate=[liked])[0] == liked:
            break
    assert user.topic == 2


def test_demo_world_users_continue_the_logged_history():
    catalog, users, ds = demo_world(SMALL)
    assert len(users) == SMALL.n_users and len(catalog.items) == SMALL.n_items
    np.testing.assert_allclose([u.preference.sum() for u in users], 1.0)
    for u in users:
        assert u.event_probs[0] > u.event_probs[1] > u.event_probs[2]
    # Each user's current topic is the topic of their last logged item.
    last = ds.interactions.groupby("user_id", sort=True).tail(1).assign(topic=topic_of(ds))
    assert last["topic"].tolist() == [u.topic for u in users]


def test_leave_one_out_accepts_the_demo(demo):
    split = leave_one_out(demo.interactions)
    n_users = demo.interactions["user_id"].nunique()
    assert len(split.test) == len(split.valid) == n_users
    assert len(split.train) == len(demo.interactions) - 2 * n_users
    assert (
        split.test.set_index("user_id")["timestamp"] > split.valid.set_index("user_id")["timestamp"]
    ).all()


def test_more_topics_than_written_is_a_clear_error():
    from lmrec.config import load_config

    with pytest.raises(ConfigError, match="n_topics"):
        load_config(overrides=[f"data.synthetic.n_topics={len(TOPICS) + 1}"])
    # the generator checks too, for configs built without validation
    with pytest.raises(ConfigError, match=f"at most {len(TOPICS)}"):
        generate_demo(SyntheticConfig.model_construct(**{**SyntheticConfig().model_dump(), "n_topics": len(TOPICS) + 1}))
