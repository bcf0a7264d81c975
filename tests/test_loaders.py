import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmrec.config import DataConfig, SplitConfig
from lmrec.data.loaders import ML100K_GENRES, load_dataset
from lmrec.data.schema import EVENT_TYPES, INTERACTION_COLUMNS, Dataset
from lmrec.data.split import split_dataset
from lmrec.errors import DataError, LmrecError


def _load(path: Path, fmt: str, **kwargs) -> Dataset:
    ds = load_dataset(DataConfig(path=str(path), format=fmt, **kwargs))
    _check_canonical(ds)
    return ds


def _check_canonical(ds: Dataset) -> None:
    inter, items = ds.interactions, ds.items
    assert tuple(inter.columns[:5]) == INTERACTION_COLUMNS
    assert pd.api.types.is_string_dtype(inter["user_id"]) and pd.api.types.is_string_dtype(inter["item_id"])
    assert inter["timestamp"].dtype == np.int64 and inter["value"].dtype == np.float64
    assert inter["event"].isin(EVENT_TYPES).all()
    assert items["item_id"].is_unique and set(inter["item_id"]) <= set(items["item_id"])
    assert items["text"].map(type).eq(str).all()


def _rows(ds: Dataset, *columns: str) -> list[tuple]:
    return list(ds.interactions[list(columns)].itertuples(index=False, name=None))


def _text(ds: Dataset) -> dict[str, str]:
    return dict(zip(ds.items["item_id"], ds.items["text"]))


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / src.name))


# ------------------------------------------------------------------------------------------ MovieLens
def test_movielens_100k(fixtures_dir):
    ds = _load(fixtures_dir / "ml-100k", "movielens-100k")
    assert ds.name == "ml-100k" and ds.info["format"] == "movielens-100k"
    assert _rows(ds, "user_id", "item_id", "timestamp", "value") == [
        ("1", "10", 880000300, 4.0),
        ("2", "10", 880000100, 5.0),
        ("1", "11", 880000100, 3.0),
        ("1", "12", 880000200, 5.0),
        ("2", "13", 880000200, 2.0),
        ("3", "11", 880000500, 1.0),
    ]
    assert set(ds.interactions["event"]) == {"rating"}
    # genre names from u.genre, by flag position; the "unknown" flag adds nothing; latin-1 decoded
    assert _text(ds) == {
        "10": "Paper Moons (1994). Chase, Laughs.",
        "11": "Café Lumière (1996). Tearjerker, Love.",
        "12": "The Long Quiet (1995). Frontier.",
        "13": "Untitled Reel (1998).",
        "14": "Never Rated (1993). Space.",  # in the catalog though nobody rated it
    }
    assert ds.summary()["users"] == 3 and ds.summary()["items"] == 5


def test_movielens_100k_without_genre_file(fixtures_dir, tmp_path):
    root = _copy(fixtures_dir / "ml-100k", tmp_path)
    (root / "u.genre").unlink()
    text = _text(_load(root, "movielens-100k"))
    assert text["10"] == f"Paper Moons (1994). {ML100K_GENRES[1]}, {ML100K_GENRES[5]}."
    assert len(ML100K_GENRES) == 19


def test_movielens_csv(fixtures_dir):
    ds = _load(fixtures_dir / "ml-latest", "movielens-csv")
    assert ds.name == "ml-latest"
    assert _rows(ds, "user_id", "item_id", "timestamp", "value") == [
        ("7", "101", 1500000300, 4.5),
        ("7", "102", 1500000100, 3.0),
        ("7", "103", 1500000200, 5.0),
        ("8", "101", 1500000400, 2.5),
        ("8", "104", 1500000400, 0.5),
    ]
    items = ds.items.set_index("item_id")
    assert items.loc["101", "title"] == "Garden, The (2001)"  # quoted comma
    # tags: lower-cased, most frequent first, ties alphabetical, at most 5
    assert items.loc["101", "tags"] == "slow burn, garden, moody, quiet, twist"
    assert _text(ds) == {
        "101": "Garden, The (2001). Drama, Mystery. slow burn, garden, moody, quiet, twist.",
        "102": "Orbit Nine (2010). Sci-Fi. space.",
        "103": "Small Hours (2003).",  # "(no genres listed)" and no tags: both separators dropped
        "104": "Tin Drum Parade (1999). Comedy, Musical, Children.",
        "105": "Shelf Copy (2015). Documentary.",
    }


def test_movielens_csv_without_tags(fixtures_dir, tmp_path):
    root = _copy(fixtures_dir / "ml-latest", tmp_path)
    (root / "tags.csv").unlink()
    assert _text(_load(root, "movielens-csv"))["102"] == "Orbit Nine (2010). Sci-Fi."


def test_movielens_dat(fixtures_dir, tmp_path):
    ds = _load(fixtures_dir / "ml-1m", "movielens-dat")
    assert _rows(ds, "user_id", "item_id", "timestamp", "value") == [
        ("1", "20", 978300760, 5.0),
        ("1", "21", 978300700, 3.0),
        ("2", "20", 978300900, 4.0),
    ]
    assert _text(ds) == {
        "20": "Harbor Lights (1999). Drama, Romance.",
        "21": "Señor Tortuga (2000). Comedy.",  # latin-1 decoded
    }
    # Windows line endings do not leak into the last field
    root = _copy(fixtures_dir / "ml-1m", tmp_path)
    for f in root.iterdir():
        f.write_bytes(f.read_bytes().replace(b"\n", b"\r\n"))
    crlf = _load(root, "movielens-dat")
    assert _text(crlf) == _text(ds)
    pd.testing.assert_frame_equal(crlf.interactions, ds.interactions)


# -------------------------------------------------------------------------------------------- RecBole
def test_recbole_atomic(fixtures_dir):
    ds = _load(fixtures_dir / "recbole-atomic", "recbole")
    assert ds.name == "shop" and not ds.has_given_split
    assert _rows(ds, "user_id", "item_id", "timestamp", "event", "value") == [
        ("u1", "i1", 1000, "rating", 4.0),
        ("u1", "i2", 900, "rating", 2.0),
        ("u2", "i1", 1100, "rating", 5.0),
        ("u2", "i3", 1200, "rating", 3.0),
    ]
    # no `text` field in the .item file: every text field, in file order; empty brand drops its ". "
    assert ds.info["text_template"] == "{title}. {brand}."
    assert _text(ds) == {"i1": "Blue Kettle. BrewCo.", "i2": "Steel Whisk.", "i3": "Oak Board. Timberline."}
    custom = _load(fixtures_dir / "recbole-atomic", "recbole", text_template="{brand}: {title}")
    assert _text(custom) == {"i1": "BrewCo: Blue Kettle", "i2": "Steel Whisk", "i3": "Timberline: Oak Board"}


def test_recbole_atomic_without_time_or_rating(tmp_path):
    (tmp_path / "clicks.inter").write_text("user_id:token\titem_id:token\nu1\tb\nu2\ta\nu1\ta\n")
    ds = _load(tmp_path, "recbole")
    assert _rows(ds, "user_id", "item_id", "timestamp", "event") == [
        ("u1", "b", 0, "purchase"),
        ("u2", "a", 0, "purchase"),
        ("u1", "a", 1, "purchase"),  # file order within the user
    ]
    assert ds.interactions["value"].isna().all()
    assert ds.items["item_id"].tolist() == ["b", "a"] and (ds.items["text"] == "").all()


def _benchmark_file(root: Path, suffix: str) -> pd.DataFrame:
    return pd.read_csv(root / f"Lab.{suffix}", sep="\t", dtype=str, keep_default_na=False)


def _index(root: Path, suffix: str) -> dict[str, str]:
    df = pd.read_csv(root / f"Lab.{suffix}", sep="\t", header=None, dtype=str)
    return dict(zip(df[1], df[0]))


def test_recbole_benchmark_layout(fixtures_dir):
    root = fixtures_dir / "recbole-benchmark"
    ds = _load(root, "recbole")
    assert ds.name == "Lab" and ds.has_given_split
    inter = ds.interactions
    sequences = {u: g["item_id"].tolist() for u, g in inter.groupby("user_id", sort=False)}
    assert sequences == {
        "U_ALPHA": ["SCOPE01", "FLASK02", "BEAKR03", "TONGS04", "SCALE05", "GLOVE06"],
        "U_BETA": ["FUNNL07", "BEAKR03", "TUBES08"],  # no train rows: the valid history is the train part
        "U_GAMMA": ["TUBES08", "TONGS04", "SCOPE01", "GLOVE06", "FLASK02", "FUNNL07", "BEAKR03"],
    }
    assert inter.groupby("user_id")["split"].agg(list).to_dict() == {
        "U_ALPHA": ["train"] * 4 + ["valid", "test"],
        "U_BETA": ["train", "valid", "test"],
        "U_GAMMA": ["train"] * 5 + ["valid", "test"],
    }
    # the timestamp is the position in the user's sequence
    assert inter.groupby("user_id")["timestamp"].agg(list)["U_BETA"] == [0, 1, 2]
    assert set(inter["event"]) == {"purchase"} and inter["value"].isna().all()
    # catalog in item2index order; text from the .text file, trimmed; an item without a text line -> ""
    assert ds.items["item_id"].tolist() == [
        "SCOPE01",
        "FLASK02",
        "BEAKR03",
        "TONGS04",
        "SCALE05",
        "GLOVE06",
        "FUNNL07",
        "TUBES08",
    ]
    assert _text(ds)["SCOPE01"] == "Compound Microscope. Lab Supplies Optics. Lumen."
    assert _text(ds)["FUNNL07"] == ""


def test_recbole_benchmark_split_is_the_files_split(fixtures_dir):
    """The valid/test targets are exactly the rows of Lab.valid.inter / Lab.test.inter."""
    root = fixtures_dir / "recbole-benchmark"
    split = split_dataset(_load(root, "recbole"), SplitConfig(method="given"))
    items, users = _index(root, "item2index"), _index(root, "user2index")
    for name, targets in (("valid", split.valid), ("test", split.test)):
        rows = _benchmark_file(root, f"{name}.inter")
        expected = sorted(zip(rows["user_id:token"].map(users), rows["item_id:token"].map(items)))
        assert sorted(zip(targets["user_id"], targets["item_id"])) == expected
    # and each file's (truncated) history is the tail of the history the split gives
    rows = _benchmark_file(root, "test.inter")
    history = split.history_for("test")
    for user, hist in zip(rows["user_id:token"].map(users), rows["item_id_list:token_seq"]):
        mapped = [items[i] for i in hist.split()]
        assert history.loc[history["user_id"] == user, "item_id"].tolist()[-len(mapped) :] == mapped


def test_recbole_benchmark_accepts_shortest_prefix_first(fixtures_dir, tmp_path):
    root = _copy(fixtures_dir / "recbole-benchmark", tmp_path)
    train = root / "Lab.train.inter"
    header, *rows = train.read_text().splitlines()
    by_user: dict[str, list[str]] = {}
    for row in rows:
        by_user.setdefault(row.split("\t")[0], []).append(row)
    train.write_text("\n".join([header] + [r for u in by_user for r in reversed(by_user[u])]) + "\n")
    pd.testing.assert_frame_equal(
        _load(root, "recbole").interactions, _load(fixtures_dir / "recbole-benchmark", "recbole").interactions
    )


@pytest.mark.parametrize(
    "file, old, new, message",
    [
        ("Lab.train.inter", "0\t0 1\t2\n", "0\t0 4\t2\n", "do not chain"),
        ("Lab.valid.inter", "2\t3 0 5 1\t6\n", "2\t3 0 5 7\t6\n", "disagrees"),
        ("Lab.valid.inter", "1\t6\t2\n", "1\t6\t2\n1\t6\t3\n", "user 1 has several rows"),
        ("Lab.test.inter", "1\t6 2\t7\n", "", "user 1 has a valid row but no test row"),
        ("Lab.item2index", "TUBES08\t7\n", "", "item index 7 is not listed"),
        ("Lab.item2index", "TUBES08\t7\n", "TUBES08\t6\n", "unique"),
        ("Lab.train.inter", "2\t7\t3\n", "2\t7\t3\n9\t7\t3\n", "user 9 has train rows but no valid/test row"),
    ],
)
def test_recbole_benchmark_inconsistent_files(fixtures_dir, tmp_path, file, old, new, message):
    root = _copy(fixtures_dir / "recbole-benchmark", tmp_path)
    text = (root / file).read_text()
    assert old in text
    (root / file).write_text(text.replace(old, new))
    with pytest.raises(DataError, match=message) as exc:
        _load(root, "recbole")
    assert "Lab." in str(exc.value)


def test_recbole_benchmark_missing_split_file(fixtures_dir, tmp_path):
    root = _copy(fixtures_dir / "recbole-benchmark", tmp_path)
    (root / "Lab.valid.inter").unlink()
    with pytest.raises(DataError, match=r"missing data file: .*Lab\.valid\.inter"):
        _load(root, "recbole")


# -------------------------------------------------------------------------------------------- sequences
def test_sequences(fixtures_dir):
    for path in (fixtures_dir / "sequences", fixtures_dir / "sequences" / "user_sequence.txt"):
        ds = _load(path, "sequences")
        assert ds.name == "user_sequence"
        assert _rows(ds, "user_id", "item_id", "timestamp") == [
            ("ann", "I1", 0), ("ann", "I2", 1), ("ann", "I3", 2), ("ann", "I4", 3),
            ("bob", "I2", 0), ("bob", "I5", 1), ("bob", "I2", 2),  # a repeat is its own event
            ("cat", "I3", 0), ("cat", "I1", 1),
        ]  # fmt: skip
        assert set(ds.interactions["event"]) == {"purchase"}
        assert ds.items["item_id"].tolist() == ["I1", "I2", "I3", "I4", "I5"]
        assert not ds.has_text  # sequences carry no item text: text towers must refuse them


@pytest.mark.parametrize(
    "content, message",
    [
        ("ann I1 I2\nbob\n", "line 2: user 'bob' has no items"),
        ("ann I1\nbob I2\nann I3\n", "line 3: user 'ann' already"),
    ],
)
def test_sequences_malformed(tmp_path, content, message):
    f = tmp_path / "seq.txt"
    f.write_text(content)
    with pytest.raises(DataError, match=message):
        _load(f, "sequences")


# ------------------------------------------------------------------------------------------ Amazon JSON
def test_amazon_2018(fixtures_dir):
    ds = _load(fixtures_dir / "amazon-2018", "amazon-json")
    assert ds.name == "Tools"
    assert _rows(ds, "user_id", "item_id", "timestamp", "event", "value") == [
        ("RV-ANNA", "T0001", 1420156800, "rating", 5.0),
        ("RV-ANNA", "T0002", 1420070400, "rating", 3.0),
        ("RV-BORIS", "T0001", 1422748800, "rating", 4.0),
        ("RV-BORIS", "T0003", 1422835200, "rating", 1.0),
    ]
    # the meta file's unreviewed item stays out; a reviewed item without metadata has empty text
    assert _text(ds) == {
        "T0001": "Voltix Cordless Drill. Tools & Home Improvement, Power Tools, Drills. Voltix.",
        "T0002": "Claw Hammer 16oz. Tools & Home Improvement, Hand Tools.",  # no brand, no ". "
        "T0003": "",
    }
    items = ds.items.set_index("item_id")
    assert items.loc["T0001", "description"] == "A compact drill. Two batteries."
    assert items.loc["T0001", "features"] == "12V LED light"


def test_amazon_2018_gzip_and_explicit_files(fixtures_dir, tmp_path):
    plain = _load(fixtures_dir / "amazon-2018", "amazon-json")
    gz = tmp_path / "gz"
    gz.mkdir()
    for f in (fixtures_dir / "amazon-2018").iterdir():
        (gz / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
    zipped = _load(gz, "amazon-json")
    assert zipped.name == "Tools"
    pd.testing.assert_frame_equal(zipped.interactions, plain.interactions)
    assert _text(zipped) == _text(plain)
    # a reviews file plus data.items_path
    one = _load(
        gz / "Tools.json.gz", "amazon-json", items_path=str(fixtures_dir / "amazon-2018" / "meta_Tools.json")
    )
    assert _text(one) == _text(plain)


def test_amazon_2023(fixtures_dir):
    ds = _load(fixtures_dir / "amazon-2023", "amazon-json")
    # parent_asin groups the variants; milliseconds become seconds
    assert _rows(ds, "user_id", "item_id", "timestamp", "value") == [
        ("AGUSER1", "P0001", 1588615855, 5.0),
        ("AGUSER1", "P0002", 1588615800, 2.0),
        ("AGUSER2", "P0001", 1600000000, 4.0),
    ]
    assert _text(ds) == {
        "P0001": "Cordless Impact Driver. Tools & Home Improvement, Power Tools. Voltix.",  # store as brand
        "P0002": "Folding Workbench.",
    }


# -------------------------------------------------------------------------------------- csv / parquet
COLUMNS = {"user_id": "uid", "item_id": "sku", "timestamp": "when", "event": "action", "value": "score"}


def test_csv_with_columns_and_items(fixtures_dir):
    tab = fixtures_dir / "tabular"
    ds = _load(tab / "events.csv", "csv", columns=COLUMNS, items_path=str(tab / "items.csv"))
    assert ds.name == "events"
    rows = _rows(ds, "user_id", "item_id", "timestamp", "event")
    # ids stay text (leading zeros kept); ISO times in UTC become epoch seconds
    assert rows == [
        ("u-1", "0042", 1709287200, "view"),
        ("u-1", "0017", 1709287500, "click"),
        ("u-2", "0042", 1709366400, "purchase"),
        ("u-1", "0042", 1709458200, "purchase"),
    ]
    assert ds.interactions["value"].tolist()[2:] == [19.5, 19.5] and ds.interactions["value"][:2].isna().all()
    # default template: every text column of the items file; empty ones dropped with their separator
    assert _text(ds) == {
        "0042": "Trail Mug. Kestrel. Kitchen.",
        "0017": "Camp Stool. Outdoor.",
        "0099": "Spare Lid. Kestrel.",
    }
    custom = _load(
        tab / "events.csv",
        "csv",
        columns=COLUMNS,
        items_path=str(tab / "items.csv"),
        text_template="{name} by {brand}",
    )
    assert _text(custom)["0017"] == "Camp Stool" and _text(custom)["0042"] == "Trail Mug by Kestrel"


def test_csv_defaults_without_time_event_value(tmp_path):
    f = tmp_path / "plays.csv"
    f.write_text("user_id,item_id\nx,song-b\ny,song-a\nx,song-a\n")
    ds = _load(f, "csv")
    assert _rows(ds, "user_id", "item_id", "timestamp", "event") == [
        ("x", "song-b", 0, "click"),
        ("y", "song-a", 0, "click"),
        ("x", "song-a", 1, "click"),
    ]
    assert ds.interactions["value"].isna().all() and (ds.items["text"] == "").all()


def test_parquet_with_columns_and_items(tmp_path):
    events = pd.DataFrame(
        {
            "uid": ["u1", "u1", "u2"],
            "sku": [7, 8, 7],  # integer ids
            "when": [1700000000, 1700000100, 1700000050],
            "action": ["view", "purchase", "click"],
            "score": [np.nan, 2.0, 1.0],
        }
    )
    items = pd.DataFrame(
        {"sku": [7, 8], "name": ["Desk Lamp", "Cable Tidy"], "tags": [["light", "desk"], []]}
    )
    events.to_parquet(tmp_path / "events.parquet")
    items.to_parquet(tmp_path / "items.parquet")
    ds = _load(
        tmp_path / "events.parquet", "parquet", columns=COLUMNS, items_path=str(tmp_path / "items.parquet")
    )
    assert _rows(ds, "user_id", "item_id", "timestamp", "event") == [
        ("u1", "7", 1700000000, "view"),
        ("u1", "8", 1700000100, "purchase"),
        ("u2", "7", 1700000050, "click"),
    ]
    assert ds.interactions["value"].tolist()[1:] == [2.0, 1.0]
    assert _text(ds) == {"7": "Desk Lamp. light, desk.", "8": "Cable Tidy."}


def test_parquet_datetimes(tmp_path):
    when = pd.to_datetime(["2024-01-01T02:00:00+02:00", "2024-01-01T00:00:30+00:00"], utc=True)
    pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": when}).to_parquet(tmp_path / "e.parquet")
    ds = _load(tmp_path / "e.parquet", "parquet")
    assert ds.interactions["timestamp"].tolist() == [1704067200, 1704067230]


def test_items_file_may_use_the_canonical_id_name(fixtures_dir, tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("item_id,name\n0042,Trail Mug\n")
    ds = _load(fixtures_dir / "tabular" / "events.csv", "csv", columns=COLUMNS, items_path=str(items))
    assert _text(ds) == {"0042": "Trail Mug.", "0017": ""}


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "fmt",
    [
        "movielens-100k",
        "movielens-csv",
        "movielens-dat",
        "recbole",
        "sequences",
        "amazon-json",
        "csv",
        "parquet",
    ],
)
def test_missing_path(tmp_path, fmt):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as exc:
        _load(missing, fmt)
    assert str(missing) in str(exc.value)
    assert isinstance(exc.value, LmrecError)


def test_missing_item_file(fixtures_dir, tmp_path):
    root = _copy(fixtures_dir / "ml-100k", tmp_path)
    (root / "u.item").unlink()
    with pytest.raises(DataError, match=r"missing data file: .*u\.item"):
        _load(root, "movielens-100k")


FORMAT_OF = {
    "ml-100k": "movielens-100k",
    "ml-latest": "movielens-csv",
    "ml-1m": "movielens-dat",
    "recbole-atomic": "recbole",
    "amazon-2018": "amazon-json",
    "amazon-2023": "amazon-json",
}

# (fixture folder, file, text to replace, replacement, expected message); each names the file and the place
# fmt: off
BROKEN = [
    # malformed lines
    ("ml-100k", "u.data", "1\t12\t5\t880000200", "1\t12\t5", r"u\.data: line 4 does not have 4"),
    # one field too many on the first line must not turn the user column into the row index
    ("ml-100k", "u.data", "1\t10\t4\t880000300", "1\t10\t4\t880000300\t9", r"u\.data: malformed"),
    ("ml-100k", "u.item", "|0|0|1\n", "|0|0\n", r"u\.item: line 3 has fewer than 24"),
    ("ml-1m", "ratings.dat", "1::21::3::978300700", "1::21::3", r"ratings\.dat: line 2 has 3 '::' fields"),
    ("amazon-2018", "Tools.json", '"asin": "T0003"', '"asin": ', r"Tools\.json: line 5 is not valid JSON"),
    ("recbole-atomic", "shop.inter", "\t1200", "\t1200\textra", r"shop\.inter: malformed"),
    ("recbole-atomic", "shop.inter", "u2\ti3\t3.0\t1200", "u2", r"shop\.inter: line 5: column 'timestamp' is empty"),
    ("recbole-atomic", "shop.inter", "u2\ti3\t", "u2\t\t", r"shop\.inter: item_id is empty in data row 4"),
    ("ml-latest", "ratings.csv", "8,104,0.5", ",104,0.5", r"ratings\.csv: user_id is empty in data row 5"),
    # missing columns
    ("ml-latest", "ratings.csv", "rating,timestamp", "rating,time", r"ratings\.csv: missing column\(s\) 'timestamp'"),
    ("ml-latest", "movies.csv", "title,genres", "name,genres", r"movies\.csv: missing column\(s\) 'title'"),
    # bad numbers
    ("ml-latest", "ratings.csv", "7,102,3.0", "7,102,five", r"ratings\.csv: line 3: column 'rating' 'five' is not a"),
    ("ml-latest", "ratings.csv", "7,102,3.0,", "7,102,,", r"ratings\.csv: line 3: column 'rating' is empty"),
    ("ml-100k", "u.data", "880000500", "soon", r"u\.data: line 6: column 'ts' 'soon' is not a number"),
    ("recbole-atomic", "shop.inter", "\t900", "\tlate", r"shop\.inter: line 3: column 'timestamp' 'late'"),
    ("amazon-2023", "Tools.jsonl", "1600000000500", '"later"', r"Tools\.jsonl: line 3: column 'timestamp' 'later'"),
    ("amazon-2018", "Tools.json", '"overall": 3.0', '"overall": "3 stars"', r"Tools\.json: value '3 stars' is not a"),
]
# fmt: on


@pytest.mark.parametrize("folder, file, old, new, message", BROKEN)
def test_malformed_files(fixtures_dir, tmp_path, folder, file, old, new, message):
    root = _copy(fixtures_dir / folder, tmp_path)
    path = root / file
    text = path.read_text(encoding="latin-1")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="latin-1")
    with pytest.raises(DataError, match=message):
        _load(root, FORMAT_OF[folder])


def test_csv_errors(fixtures_dir):
    tab = fixtures_dir / "tabular"
    with pytest.raises(DataError, match=r"events\.csv: missing column\(s\) 'customer'"):
        _load(tab / "events.csv", "csv", columns={**COLUMNS, "user_id": "customer"})
    with pytest.raises(DataError, match=r"events\.csv: missing column\(s\) 'stamp'"):
        _load(tab / "events.csv", "csv", columns={**COLUMNS, "timestamp": "stamp"})
    with pytest.raises(DataError, match=r"data\.columns: unknown canonical name\(s\) \['user'\]"):
        _load(tab / "events.csv", "csv", columns={"user": "uid"})
    with pytest.raises(DataError, match=r"events\.csv: unknown event type '2024-03-01T10:00:00Z'"):
        _load(tab / "events.csv", "csv", columns={**COLUMNS, "event": "when"})
    # the items file's id column: the events' item column name, else item_id; neither is an error naming its columns
    with pytest.raises(DataError, match=r"items\.csv: no item id column: looked for 'uid' or 'item_id' .* its columns "
                                        r"are 'sku', 'name', 'brand', 'category'"):
        _load(
            tab / "events.csv",
            "csv",
            columns={**COLUMNS, "item_id": "uid"},
            items_path=str(tab / "items.csv"),
        )


def test_items_file_whose_ids_match_no_event_is_an_error_naming_both_columns(fixtures_dir, tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("sku,name\n42,Trail Mug\n17,Camp Stool\n")  # the zeros of 0042 lost in a spreadsheet
    with pytest.raises(DataError, match=r"items\.csv: none of its 2 ids in column 'sku' \(e\.g\. '42'\) matches an item "
                                        r"of .*events\.csv column 'sku' \(e\.g\. '0042'\)"):
        _load(fixtures_dir / "tabular" / "events.csv", "csv", columns=COLUMNS, items_path=str(items))


def test_conventions_are_reported(fixtures_dir, tmp_path):
    """Which column was read as what, and what filled in a missing one: recorded for `lmrec data` to print."""
    tab = fixtures_dir / "tabular"
    ds = _load(tab / "events.csv", "csv", columns={"user_id": "uid", "item_id": "sku"}, items_path=str(tab / "items.csv"))
    assert ds.info["columns"] == {"user_id": "uid", "item_id": "sku", "timestamp": "(none: each user's events in file order)",
                                  "event": "(none: every event is a click)", "value": "(none)"}
    assert ds.info["ignored_columns"] == ["when", "action", "score"]
    assert ds.info["items_file"]["id_column"] == "sku" and ds.info["items_not_in_items_file"] == 0
    assert set(ds.interactions["event"]) == {"click"}
    assert _rows(ds, "user_id", "timestamp") == [("u-1", 0), ("u-1", 1), ("u-2", 0), ("u-1", 2)]  # file order per user
    partial = tmp_path / "items.csv"
    partial.write_text("sku,name\n0042,Trail Mug\n")
    ds = _load(tab / "events.csv", "csv", columns=COLUMNS, items_path=str(partial))
    assert ds.info["columns"]["timestamp"] == "when" and ds.info["items_not_in_items_file"] == 1


def test_relative_data_paths_in_a_yaml_resolve_from_its_folder(fixtures_dir, tmp_path, monkeypatch):
    from lmrec.config import load_config

    folder = tmp_path / "shop"
    shutil.copytree(fixtures_dir / "tabular", folder / "data")
    (folder / "shop.yaml").write_text(
        "data:\n  path: data/events.csv\n  format: csv\n  items_path: data/items.csv\n"
        "  columns: {user_id: uid, item_id: sku, timestamp: when, event: action, value: score}\n")
    monkeypatch.chdir(tmp_path)  # not the YAML's folder
    cfg = load_config([folder / "shop.yaml"])
    assert cfg.data.path == str(folder / "data" / "events.csv") and cfg.data.items_path == str(folder / "data" / "items.csv")
    assert len(load_dataset(cfg.data).items) == 3
    # on the command line a relative path is the current directory's; $LMREC_DATA_DIR expands in both
    assert load_config([], ["data.path=shop/data/events.csv", "data.format=csv"]).data.path == str(folder / "data" / "events.csv")
    monkeypatch.setenv("LMREC_DATA_DIR", str(folder))
    (folder / "env.yaml").write_text("data:\n  path: $LMREC_DATA_DIR/data/events.csv\n  format: csv\n")
    assert load_config([folder / "env.yaml"]).data.path == str(folder / "data" / "events.csv")


def test_timestamp_text(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("user_id,item_id,timestamp\na,x,2024-01-01\nb,y,2024-01-01T00:00:10+00:00\n")
    assert _load(f, "csv").interactions["timestamp"].tolist() == [1704067200, 1704067210]
    f.write_text("user_id,item_id,timestamp\na,x,2024-01-01\nb,y,yesterday\n")
    with pytest.raises(
        DataError, match=r"e\.csv: column 'timestamp' data row 2: 'yesterday' is not a date/time"
    ):
        _load(f, "csv")
    f.write_text("user_id,item_id,timestamp\na,x,1700000000\nb,y,soon\n")
    with pytest.raises(DataError, match=r"e\.csv: timestamp 'soon' is not a number \(data row 2\)"):
        _load(f, "csv")


def test_amazon_missing_column(tmp_path):
    (tmp_path / "Tools.jsonl").write_text(
        '{"user_id": "U1", "parent_asin": "P1", "timestamp": 1600000000000}\n'
    )
    with pytest.raises(DataError, match=r"Tools\.jsonl: missing column\(s\) 'rating'; found"):
        _load(tmp_path, "amazon-json")
    (tmp_path / "Tools.jsonl").write_text('{"user_id": "U1", "rating": 5, "timestamp": 1600000000000}\n')
    with pytest.raises(DataError, match=r"Tools\.jsonl: missing column\(s\) 'asin'"):
        _load(tmp_path, "amazon-json")


def test_unknown_event_type(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("user_id,item_id,event\na,x,view\nb,y,like\n")
    with pytest.raises(DataError, match=r"e\.csv: unknown event type 'like'"):
        _load(f, "csv")


def test_unknown_template_field(fixtures_dir):
    with pytest.raises(DataError) as exc:
        _load(fixtures_dir / "ml-100k", "movielens-100k", text_template="{title}. {plot}")
    msg = str(exc.value)
    assert "ml-100k" in msg and "'plot'" in msg and "'genres'" in msg


def test_unknown_and_missing_named_datasets(monkeypatch, tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'ml-999k'"):
        load_dataset(DataConfig(dataset="ml-999k"))
    monkeypatch.setenv("LMREC_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"'ml-100k' not found at .*ml-100k.*LMREC_DATA_DIR"):
        load_dataset(DataConfig(dataset="ml-100k"))


# -------------------------------------------------------------------------------- real shared datasets
def _named(shared_data: Path, name: str, folder: str) -> Dataset:
    if not (shared_data / folder).is_dir():
        pytest.skip(f"{folder}/ not in {shared_data} (set LMREC_DATA_DIR to the shared datasets folder)")
    ds = load_dataset(DataConfig(dataset=name))
    _check_canonical(ds)
    return ds


@pytest.mark.data
def test_real_scientific(shared_data):
    ds = _named(shared_data, "scientific", "amazon-scientific-unisrec")
    s = ds.summary()
    assert (s["users"], s["items"], s["interactions"]) == (8442, 4385, 59427)
    assert s["items_with_text"] == 4385 and s["given_split"]
    split = split_dataset(ds, SplitConfig())
    assert split.method == "given" and len(split.valid) == len(split.test) == 8442
    assert len(split.train) == 59427 - 2 * 8442

    root = shared_data / "amazon-scientific-unisrec"

    def index(name):
        df = pd.read_csv(
            root / name, sep="\t", header=None, names=["orig", "idx"], dtype=str, keep_default_na=False
        )
        return dict(zip(df["idx"], df["orig"]))

    items, users = index("Scientific.item2index"), index("Scientific.user2index")
    history = split.history_for("test").groupby("user_id", sort=False)["item_id"].agg(list)
    for name, targets in (("valid", split.valid), ("test", split.test)):
        rows = pd.read_csv(root / f"Scientific.{name}.inter", sep="\t", dtype=str, keep_default_na=False)
        expected = pd.Series(
            rows["item_id:token"].map(items).to_numpy(), index=rows["user_id:token"].map(users)
        )
        got = targets.set_index("user_id")["item_id"]
        assert got.sort_index().equals(expected.sort_index()), (
            f"{name} targets differ from Scientific.{name}.inter"
        )
        if name == "test":  # the file's history (last 50 items) is the tail of train + valid
            hists = rows["item_id_list:token_seq"].str.split()
            for user, hist in zip(expected.index, hists):
                assert history[user][-len(hist) :] == [items[i] for i in hist]


@pytest.mark.data
def test_real_ml_100k(shared_data):
    ds = _named(shared_data, "ml-100k", "ml-100k")
    s = ds.summary()
    assert (s["users"], s["items"], s["interactions"]) == (943, 1682, 100000)
    assert s["items_with_text"] == 1682
    assert set(ds.interactions["value"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ds.interactions["timestamp"].between(8.7e8, 9.0e8).all()  # Sept 1997 - April 1998
    genres = {g for gs in ds.items["genres"] for g in gs.split(", ") if g}
    assert genres <= set(ML100K_GENRES) - {"unknown"} and len(genres) == 18
    split = split_dataset(ds, SplitConfig())
    assert split.method == "leave_one_out" and len(split.test) == len(split.valid) == 943


@pytest.mark.data
def test_real_ml_latest_small(shared_data):
    ds = _named(shared_data, "ml-latest-small", "ml-latest-small")
    s = ds.summary()
    assert (s["users"], s["interactions"]) == (610, 100836)
    assert s["items"] == 9742  # every movie of movies.csv is in the catalog ...
    assert ds.interactions["item_id"].nunique() == 9724  # ... of which 9,724 are rated
    assert s["items_with_text"] == 9742
    assert (ds.items["tags"] != "").sum() > 0


@pytest.mark.data
def test_real_beauty(shared_data):
    ds = _named(shared_data, "beauty", "amazon-beauty-seq")
    s = ds.summary()
    assert (s["users"], s["items"], s["interactions"]) == (22363, 12101, 198502)
    assert ds.interactions.groupby("user_id").size().min() == 5  # 5-core
