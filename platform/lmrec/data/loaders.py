"""Loaders: one function per source format, each returning a canonical :class:`Dataset`.

Formats (``data.format``):

- ``movielens-100k``: a directory with ``u.data`` and ``u.item`` (and ``u.genre``).
- ``movielens-csv``: MovieLens latest / 20M / 25M: ``ratings.csv``, ``movies.csv``, optional ``tags.csv``.
- ``movielens-dat``: MovieLens 1M / 10M: ``ratings.dat`` and ``movies.dat`` (``::``-separated).
- ``recbole``: RecBole atomic files: ``<name>.inter`` (+ ``<name>.item``), or the benchmark layout
  ``<name>.train.inter`` / ``.valid.inter`` / ``.test.inter`` with ``item_id_list`` histories
  (UniSRec-processed Amazon data; item text in ``<name>.text``, ids in ``.item2index`` / ``.user2index``).
  The benchmark layout's split is kept exactly.
- ``sequences``: one line per user: ``user item1 item2 ...`` in order (e.g. Amazon Beauty).
- ``amazon-json``: Amazon Reviews JSON Lines, 2018 (``reviewerID``/``asin``/``overall``/``unixReviewTime``
  + ``meta_*.json``) or 2023 (``user_id``/``parent_asin``/``rating``/``timestamp`` ms + ``meta_*.jsonl``);
  ``.gz`` accepted.
- ``csv`` / ``parquet``: one interactions file and a ``columns`` mapping, optional items file.
"""

from __future__ import annotations

import csv
import gzip
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from lmrec.config import DataConfig, data_dir
from lmrec.data.schema import Dataset, as_ids, canonical_interactions, finish_items, require_columns
from lmrec.data.text import render_text, template_fields
from lmrec.errors import DataError

# name -> (format, folder under LMREC_DATA_DIR)
NAMED_DATASETS: dict[str, tuple[str, str]] = {
    "ml-100k": ("movielens-100k", "ml-100k"),
    "ml-latest-small": ("movielens-csv", "ml-latest-small"),
    "scientific": ("recbole", "amazon-scientific-unisrec"),
    "amazon-scientific-unisrec": ("recbole", "amazon-scientific-unisrec"),
    "beauty": ("sequences", "amazon-beauty-seq"),
    "amazon-beauty-seq": ("sequences", "amazon-beauty-seq"),
}

DEFAULT_TEMPLATES = {
    "movielens-100k": "{title}. {genres}.",
    "movielens-csv": "{title}. {genres}. {tags}.",
    "movielens-dat": "{title}. {genres}.",
    "recbole": "{text}",
    "sequences": None,  # no item text: ID models only, unless data.text_template says otherwise
    "amazon-json": "{title}. {categories}. {brand}.",
}


def _need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"missing data file: {path} ({what})")
    return path


def _read_table(path: Path, **kwargs) -> pd.DataFrame:
    # index_col=False: a line with one field too many must not silently become the row index; pandas
    # warns (ParserWarning) instead, and that warning is an error here.
    kwargs.setdefault("index_col", False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, **kwargs)
    except pd.errors.ParserWarning:
        raise DataError(f"{path}: malformed file: some line has more fields than the header/expected columns") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: malformed file: {exc}") from None


def _check_numeric(df: pd.DataFrame, columns, path: Path, first_line: int = 1) -> None:
    """Every value of ``columns`` parses as a number; ``first_line`` is the file line of data row 0."""
    for col in columns:
        num = pd.to_numeric(df[col], errors="coerce")
        if num.isna().any():
            row = int(num.isna().to_numpy().argmax())
            raw = df[col].iloc[row]
            what = "is empty" if pd.isna(raw) or str(raw).strip() == "" else f"{raw!r} is not a number"
            raise DataError(f"{path}: line {row + first_line}: column {col!r} {what}")


# ------------------------------------------------------------------------------------------ MovieLens
# u.genre's names in flag order, for a u.item without its u.genre beside it
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


def load_movielens_100k(path: Path, cfg: DataConfig) -> Dataset:
    data = _need_file(path / "u.data", "MovieLens 100k ratings: user<TAB>item<TAB>rating<TAB>timestamp")
    r = _read_table(data, sep="\t", header=None, names=["user", "item", "rating", "ts"], dtype=str, quoting=csv.QUOTE_NONE)
    if r[["user", "item", "rating", "ts"]].isna().any().any():
        row = int(r.isna().any(axis=1).to_numpy().argmax())
        raise DataError(f"{data}: line {row + 1} does not have 4 tab-separated fields")
    _check_numeric(r, ["rating", "ts"], data)
    inter = canonical_interactions(r["user"], r["item"], r["ts"], "rating", r["rating"], source=str(data))
    item_file = _need_file(path / "u.item", "MovieLens 100k items: id|title|release|video|url|19 genre flags")
    genres = list(ML100K_GENRES)
    genre_file = path / "u.genre"
    if genre_file.is_file():
        names = _read_table(genre_file, sep="|", header=None, names=["name", "idx"], encoding="latin-1")
        genres = names.dropna().sort_values("idx")["name"].tolist()
    cols = ["item_id", "title", "release_date", "video_release", "url", *[f"_g{i}" for i in range(len(genres))]]
    it = _read_table(item_file, sep="|", header=None, names=cols, encoding="latin-1", dtype=str, quoting=csv.QUOTE_NONE)
    if it[cols[-1]].isna().any():
        row = int(it[cols[-1]].isna().to_numpy().argmax())
        raise DataError(f"{item_file}: line {row + 1} has fewer than {len(cols)} '|'-separated fields")
    flags = it[[f"_g{i}" for i in range(len(genres))]].fillna("0").to_numpy() == "1"
    items = pd.DataFrame(
        {
            "item_id": it["item_id"].astype(str),
            "title": it["title"].fillna(""),
            "genres": [", ".join(g for g, on in zip(genres, row) if on and g != "unknown") for row in flags],
        }
    )
    return _finish("ml-100k", inter, items, path, cfg, "movielens-100k")


def load_movielens_csv(path: Path, cfg: DataConfig) -> Dataset:
    rfile = _need_file(path / "ratings.csv", "MovieLens ratings: userId,movieId,rating,timestamp")
    r = _read_table(rfile, dtype=str)
    require_columns(r, ["userId", "movieId", "rating", "timestamp"], str(rfile))
    _check_numeric(r, ["rating", "timestamp"], rfile, first_line=2)
    inter = canonical_interactions(r["userId"], r["movieId"], r["timestamp"], "rating", r["rating"], source=str(rfile))
    mfile = _need_file(path / "movies.csv", "MovieLens movies: movieId,title,genres")
    m = _read_table(mfile, dtype=str)
    require_columns(m, ["movieId", "title", "genres"], str(mfile))
    items = pd.DataFrame(
        {
            "item_id": m["movieId"],
            "title": m["title"].fillna(""),
            "genres": [
                ", ".join(g for g in s.split("|") if g and g != "(no genres listed)") for s in m["genres"].fillna("")
            ],
        }
    )
    tfile = path / "tags.csv"
    if tfile.is_file():
        t = _read_table(tfile, dtype=str)
        require_columns(t, ["movieId", "tag"], str(tfile))
        t["tag"] = t["tag"].fillna("").str.strip().str.lower()
        # the most frequent tags of each movie, at most 5, most frequent first
        top = (
            t[t["tag"] != ""]
            .groupby(["movieId", "tag"], sort=False)
            .size()
            .rename("n")
            .reset_index()
            .sort_values(["movieId", "n", "tag"], ascending=[True, False, True])
            .groupby("movieId")["tag"]
            .agg(lambda s: ", ".join(s.head(5)))
        )
        items["tags"] = items["item_id"].map(top).fillna("")
    else:
        items["tags"] = ""
    return _finish(path.name or "movielens", inter, items, path, cfg, "movielens-csv")


def _read_dat(path: Path, names: list[str]) -> pd.DataFrame:
    rows = []
    with open(path, encoding="latin-1") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split("::")
            if len(parts) != len(names):
                raise DataError(f"{path}: line {lineno} has {len(parts)} '::' fields, expected {len(names)} {names}")
            rows.append(parts)
    return pd.DataFrame(rows, columns=names)


def load_movielens_dat(path: Path, cfg: DataConfig) -> Dataset:
    rfile = _need_file(path / "ratings.dat", "MovieLens 1M ratings: UserID::MovieID::Rating::Timestamp")
    r = _read_dat(rfile, ["user", "item", "rating", "ts"])
    _check_numeric(r, ["rating", "ts"], rfile)
    inter = canonical_interactions(r["user"], r["item"], r["ts"], "rating", r["rating"], source=str(rfile))
    mfile = _need_file(path / "movies.dat", "MovieLens 1M movies: MovieID::Title::Genres")
    m = _read_dat(mfile, ["item_id", "title", "genres"])
    m["genres"] = m["genres"].str.replace("|", ", ", regex=False)
    return _finish(path.name or "movielens", inter, m, path, cfg, "movielens-dat")


# -------------------------------------------------------------------------------------------- RecBole
def _read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated, header ``name:type``; returns columns named without types."""
    df = _read_table(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    rename = {}
    for col in df.columns:
        name, sep, kind = col.partition(":")
        if not sep or kind not in ("token", "token_seq", "float", "float_seq"):
            raise DataError(f"{path}: header field {col!r} is not RecBole's name:type (token/token_seq/float)")
        rename[col] = name
    return df.rename(columns=rename)


def _find_one(path: Path, pattern: str, what: str) -> Path | None:
    found = sorted(path.glob(pattern))
    if len(found) > 1:
        raise DataError(f"{path}: several {what} files ({[f.name for f in found]}); point data.path at one dataset")
    return found[0] if found else None


def load_recbole(path: Path, cfg: DataConfig) -> Dataset:
    if not path.is_dir():
        raise DataError(f"missing data directory: {path} (RecBole atomic files)")
    train = _find_one(path, "*.train.inter", "*.train.inter")
    if train is not None:
        return _load_recbole_benchmark(path, train.name[: -len(".train.inter")], cfg)
    inter_file = _find_one(path, "*.inter", "*.inter")
    if inter_file is None:
        raise DataError(f"missing data file: {path}/<name>.inter (RecBole atomic interactions)")
    name = inter_file.name[: -len(".inter")]
    r = _read_atomic(inter_file)
    require_columns(r, ["user_id", "item_id"], str(inter_file))
    if "timestamp" in r.columns:
        _check_numeric(r, ["timestamp"], inter_file, first_line=2)
        ts = r["timestamp"]
    else:  # file order is the order
        ts = r.groupby("user_id", sort=False).cumcount()
    value = r["rating"] if "rating" in r.columns else np.nan
    if "rating" in r.columns:
        _check_numeric(r, ["rating"], inter_file, first_line=2)
    event = "rating" if "rating" in r.columns else "purchase"
    inter = canonical_interactions(r["user_id"], r["item_id"], ts, event, value, source=str(inter_file))
    item_file = path / f"{name}.item"
    items = _read_atomic(item_file) if item_file.is_file() else pd.DataFrame({"item_id": []})
    require_columns(items, ["item_id"], str(item_file))
    return _finish(name, inter, items, path, cfg, "recbole")


def _index_file(path: Path) -> dict[str, str]:
    """``<orig id>\\t<index>`` lines -> {index: orig id}."""
    df = _read_table(path, sep="\t", header=None, names=["orig", "idx"], dtype=str, keep_default_na=False, quoting=3)
    if (df["idx"] == "").any() or df["orig"].duplicated().any() or df["idx"].duplicated().any():
        raise DataError(f"{path}: expected unique '<id>\\t<index>' lines")
    return dict(zip(df["idx"], df["orig"]))


def _load_recbole_benchmark(path: Path, name: str, cfg: DataConfig) -> Dataset:
    """Pre-split RecBole files (prefix -> next item); rebuild each user's full sequence, keep the split."""
    parts = {}
    for split in ("train", "valid", "test"):
        f = _need_file(path / f"{name}.{split}.inter", f"{split} split of the benchmark layout")
        df = _read_atomic(f)
        require_columns(df, ["user_id", "item_id_list", "item_id"], str(f))
        parts[split] = (f, df)
    item_map = _index_file(path / f"{name}.item2index") if (path / f"{name}.item2index").is_file() else None
    user_map = _index_file(path / f"{name}.user2index") if (path / f"{name}.user2index").is_file() else None

    f_test, test = parts["test"]
    f_valid, valid = parts["valid"]
    f_train, train = parts["train"]
    for f, df in ((f_valid, valid), (f_test, test)):
        if df["user_id"].duplicated().any():
            user = df.loc[df["user_id"].duplicated(), "user_id"].iloc[0]
            raise DataError(f"{f}: user {user} has several rows; expected one row per user")
    only_valid = sorted(set(valid["user_id"]) - set(test["user_id"]))
    if only_valid:
        raise DataError(f"{f_test}: user {only_valid[0]} has a valid row but no test row")
    valid_rows = dict(zip(valid["user_id"], zip(valid["item_id_list"], valid["item_id"])))
    # Train rows are prefix -> next pairs, grouped by user, in one direction of time (the UniSRec files
    # list the longest prefix first). Chain them back into the user's training sequence.
    pairs: dict[str, list[tuple[list[str], str]]] = {}
    for user, hist, target in zip(train["user_id"], train["item_id_list"], train["item_id"]):
        pairs.setdefault(user, []).append((hist.split(), target))
    users, items, split_col, order = [], [], [], []
    for user, test_hist, test_target in zip(test["user_id"], test["item_id_list"], test["item_id"]):
        if user not in valid_rows:
            raise DataError(f"{f_valid}: user {user} has a test row but no valid row")
        valid_hist, valid_target = valid_rows[user]
        rows = pairs.get(user, [])
        if len(rows) > 1 and len(rows[0][0]) > len(rows[-1][0]):
            rows = rows[::-1]
        if rows:
            seq = rows[0][0][:1] + [t for _, t in rows]
        else:  # two training-side items or fewer: the valid history is the whole training sequence
            seq = valid_hist.split()
        for j, (hist, _) in enumerate(rows, start=1):
            if not hist or len(hist) > j or hist != seq[j - len(hist) : j]:
                raise DataError(f"{f_train}: user {user}'s training prefixes do not chain into one sequence")
        vh, th = valid_hist.split(), test_hist.split()
        if vh != seq[len(seq) - len(vh) :] or th != (seq + [valid_target])[len(seq) + 1 - len(th) :]:
            raise DataError(f"{f_valid}: user {user}'s valid/test history disagrees with the training rows")
        full = seq + [valid_target, test_target]
        users += [user] * len(full)
        items += full
        split_col += ["train"] * len(seq) + ["valid", "test"]
        order += list(range(len(full)))
    if len(pairs.keys() - valid_rows.keys()):
        user = min(pairs.keys() - valid_rows.keys())
        raise DataError(f"{f_train}: user {user} has train rows but no valid/test row")
    if item_map is not None:
        unknown = sorted(set(items) - set(item_map))
        if unknown:
            raise DataError(f"{path / (name + '.item2index')}: item index {unknown[0]} is not listed")
        items = [item_map[i] for i in items]
    if user_map is not None:
        users = [user_map.get(u, u) for u in users]
    inter = canonical_interactions(users, items, order, "purchase", np.nan, split_col, source=str(path))
    text_file = path / f"{name}.text"
    if text_file.is_file():
        it = _read_atomic(text_file)
        require_columns(it, ["item_id", "text"], str(text_file))
    else:
        it = pd.DataFrame({"item_id": list(item_map.values()) if item_map else [], "text": ""})
    if item_map is not None:
        order_ids = pd.DataFrame({"item_id": [item_map[k] for k in sorted(item_map, key=int)]})
        it = order_ids.merge(it, on="item_id", how="left")
    return _finish(name, inter, it, path, cfg, "recbole")


# -------------------------------------------------------------------------------------------- sequences
def load_sequences(path: Path, cfg: DataConfig) -> Dataset:
    f = path if path.is_file() else _find_one(path, "*.txt", "sequence (.txt)")
    if f is None or not f.is_file():
        raise DataError(f"missing data file: {path} (lines of 'user item1 item2 ...')")
    users, items, order = [], [], []
    seen: dict[str, int] = {}
    with open(f, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise DataError(f"{f}: line {lineno}: user {parts[0]!r} has no items")
            if parts[0] in seen:
                raise DataError(f"{f}: line {lineno}: user {parts[0]!r} already has a sequence on line {seen[parts[0]]}")
            seen[parts[0]] = lineno
            users += [parts[0]] * (len(parts) - 1)
            items += parts[1:]
            order += list(range(len(parts) - 1))
    inter = canonical_interactions(users, items, order, "purchase", np.nan, source=str(f))
    return _finish(f.stem, inter, pd.DataFrame({"item_id": pd.unique(inter["item_id"])}), path, cfg, "sequences")


# ------------------------------------------------------------------------------------------ Amazon JSON
def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {lineno} is not valid JSON: {exc.msg}") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}: line {lineno} is not a JSON object")
            out.append(rec)
    return out


def _amazon_files(path: Path, cfg: DataConfig) -> tuple[Path, Path | None]:
    if path.is_file():
        meta = Path(cfg.items_path) if cfg.items_path else None
        return path, meta
    if not path.is_dir():
        raise DataError(f"missing data path: {path} (Amazon reviews .json/.jsonl[.gz] file or directory)")
    files = [p for p in sorted(path.iterdir()) if p.name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz"))]
    meta = [p for p in files if p.name.startswith("meta_")]
    reviews = [p for p in files if not p.name.startswith("meta_")]
    if len(reviews) != 1:
        raise DataError(f"{path}: expected one reviews file (*.json[l][.gz]) besides meta_*, found {[p.name for p in reviews]}")
    if cfg.items_path:
        return reviews[0], Path(cfg.items_path)
    if len(meta) > 1:
        raise DataError(f"{path}: several meta_* files {[p.name for p in meta]}; set data.items_path")
    return reviews[0], meta[0] if meta else None


def load_amazon_json(path: Path, cfg: DataConfig) -> Dataset:
    rfile, mfile = _amazon_files(path, cfg)
    recs = _read_jsonl(_need_file(rfile, "Amazon reviews JSON Lines"))
    if not recs:
        raise DataError(f"{rfile}: no reviews")
    r = pd.DataFrame(recs)
    if "reviewerID" in r.columns:  # 2018 layout
        require_columns(r, ["reviewerID", "asin", "overall", "unixReviewTime"], str(rfile))
        _check_numeric(r, ["unixReviewTime"], rfile)
        user, item, value, ts = r["reviewerID"], r["asin"], r["overall"], r["unixReviewTime"]
    else:  # 2023 layout: timestamps in milliseconds; parent_asin groups variants as one product
        require_columns(r, ["user_id", "rating", "timestamp"], str(rfile))
        item_col = "parent_asin" if "parent_asin" in r.columns else "asin"
        require_columns(r, [item_col], str(rfile))
        _check_numeric(r, ["timestamp"], rfile)
        user, item, value = r["user_id"], r[item_col], r["rating"]
        ts = pd.to_numeric(r["timestamp"]) // 1000
    inter = canonical_interactions(user, item, ts, "rating", value, source=str(rfile))
    rows = []
    # A meta file covers its whole category; only reviewed items join the catalog.
    reviewed = set(inter["item_id"])
    if mfile is not None:
        for rec in _read_jsonl(_need_file(mfile, "Amazon item metadata JSON Lines")):
            item_id = rec.get("parent_asin") or rec.get("asin")
            if not item_id:
                raise DataError(f"{mfile}: a metadata record has neither 'asin' nor 'parent_asin'")
            if str(item_id) not in reviewed:
                continue
            cats = _listify(rec.get("categories", rec.get("category")))
            if cats and isinstance(cats[0], list):  # 2014-style nested category paths
                cats = cats[0]
            rows.append(
                {
                    "item_id": str(item_id),
                    "title": rec.get("title") or "",
                    "brand": rec.get("brand") or rec.get("store") or "",
                    "categories": [c for c in (cats or []) if isinstance(c, str)],
                    "description": " ".join(d for d in _listify(rec.get("description")) if isinstance(d, str)),
                    "features": " ".join(d for d in _listify(rec.get("features", rec.get("feature"))) if isinstance(d, str)),
                }
            )
    items = pd.DataFrame(rows, columns=["item_id", "title", "brand", "categories", "description", "features"])
    return _finish(rfile.name.split(".")[0], inter, items, path, cfg, "amazon-json")


def _listify(v) -> list:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


# ------------------------------------------------------------------------------------------- tabular
CANONICAL = ("user_id", "item_id", "timestamp", "event", "value")


def _read_any(path: Path, fmt: str, id_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A csv or parquet table; csv ``id_columns`` are read as text (ids like ``0439023483`` keep their zeros)."""
    _need_file(path, f"{fmt} file")
    if fmt == "parquet":
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable Parquet file: {exc}") from None
    return _read_table(path, dtype={c: str for c in id_columns})


def _parse_times(ts: pd.Series, column: str, path: Path) -> pd.Series:
    """Date/time text as naive UTC datetimes; text that is all numbers is left for the numeric check."""
    with warnings.catch_warnings():  # "could not infer format": the values are checked below
        warnings.simplefilter("ignore", UserWarning)
        parsed = pd.to_datetime(ts, errors="coerce", utc=True)
    if parsed.isna().all():
        return ts
    if parsed.isna().any():  # the format was inferred from the first value; ISO 8601 may vary in precision
        parsed = pd.to_datetime(ts, errors="coerce", utc=True, format="ISO8601")
    if parsed.isna().any():
        row = int(parsed.isna().to_numpy().argmax())
        raise DataError(f"{path}: column {column!r} data row {row + 1}: {ts.iloc[row]!r} is not a date/time")
    return parsed.dt.tz_localize(None)


def load_tabular(path: Path, cfg: DataConfig, fmt: str) -> Dataset:
    """One events table (``data.columns`` maps canonical names to its columns; a canonical name not mapped
    is looked up under its own name) and an optional items table. The conventions, each reported in
    ``Dataset.info["columns"]`` (``lmrec data`` prints them):

    - no time column: each user's events are in file order;
    - no event column: every event is a ``click``; no value column: no values;
    - the items file's id column is the events' item column name, else ``item_id``; an items file with
      neither, or whose ids match none of the events' items, is an error naming its columns.
    """
    unknown = sorted(set(cfg.columns) - set(CANONICAL))
    if unknown:
        raise DataError(f"data.columns: unknown canonical name(s) {unknown}; use {list(CANONICAL)}")
    mapping = {c: cfg.columns.get(c, c) for c in CANONICAL}
    df = _read_any(path, fmt, (mapping["user_id"], mapping["item_id"]))
    for name in ("user_id", "item_id", *(c for c in ("timestamp", "event", "value") if c in cfg.columns)):
        require_columns(df, [mapping[name]], str(path))  # a mapped column must exist; others are optional
    used = {c: mapping[c] for c in CANONICAL if mapping[c] in df.columns}
    if mapping["timestamp"] in df.columns:
        ts = df[mapping["timestamp"]]
        if not pd.api.types.is_numeric_dtype(ts) and not pd.api.types.is_datetime64_any_dtype(ts):
            ts = _parse_times(ts, mapping["timestamp"], path)
    else:  # no time column: the file order within each user is the order
        ts = df.groupby(mapping["user_id"], sort=False).cumcount()
        used["timestamp"] = "(none: each user's events in file order)"
    event = df[mapping["event"]] if mapping["event"] in df.columns else "click"
    used.setdefault("event", "(none: every event is a click)")
    value = df[mapping["value"]] if mapping["value"] in df.columns else np.nan
    used.setdefault("value", "(none)")
    inter = canonical_interactions(df[mapping["user_id"]], df[mapping["item_id"]], ts, event, value, source=str(path))
    info: dict = {"columns": used, "ignored_columns": [c for c in df.columns if c not in used.values()]}
    if cfg.items_path:
        ipath = Path(cfg.items_path)
        items = _read_any(ipath, "parquet" if ipath.suffix == ".parquet" else "csv", (mapping["item_id"], "item_id"))
        candidates = list(dict.fromkeys([mapping["item_id"], "item_id"]))
        item_col = next((c for c in candidates if c in items.columns), None)
        if item_col is None:
            raise DataError(
                f"{ipath}: no item id column: looked for {' or '.join(map(repr, candidates))} (the events' item column, "
                f"or item_id); its columns are {', '.join(map(repr, items.columns))}. Rename its id column to one of those."
            )
        ids = as_ids(items[item_col], item_col, str(ipath))
        if len(ids) and not set(ids) & set(inter["item_id"]):
            raise DataError(
                f"{ipath}: none of its {len(ids)} ids in column {item_col!r} (e.g. {ids[0]!r}) matches an item of "
                f"{path} column {mapping['item_id']!r} (e.g. {inter['item_id'].iloc[0]!r}); the two files must use the "
                "same item ids"
            )
        items = items.rename(columns={item_col: "item_id"})
        items["item_id"] = ids
        info["items_file"] = {"path": str(ipath), "id_column": item_col}
    else:
        items = pd.DataFrame({"item_id": []})
    ds = _finish(path.stem, inter, items, path, cfg, fmt)
    if cfg.items_path:  # items of the events the items file lacks: they get no text
        info["items_not_in_items_file"] = int((~ds.items["item_id"].isin(set(items["item_id"]))).sum())
    ds.info.update(info)
    return ds


# ----------------------------------------------------------------------------------------------- glue
def _default_template(items: pd.DataFrame, fmt: str) -> str | None:
    """The format's template when the item table has its fields; else ``{text}``, else every text column."""
    default = DEFAULT_TEMPLATES.get(fmt)
    if default and set(template_fields(default)) <= set(items.columns):
        return default
    if "text" in items.columns:
        return "{text}"
    text_cols = [
        c
        for c in items.columns
        if c != "item_id" and (pd.api.types.is_string_dtype(items[c]) or items[c].dtype == object)
    ]
    return ". ".join("{" + c + "}" for c in text_cols) + "." if text_cols else None


def _finish(name: str, inter: pd.DataFrame, items: pd.DataFrame, path: Path, cfg: DataConfig, fmt: str) -> Dataset:
    template = cfg.text_template or _default_template(items, fmt)
    items = items.copy()
    items["item_id"] = items["item_id"].astype(str)
    if "text" in items.columns and template != "{text}":
        items = items.rename(columns={"text": "text_field"})
        template = template.replace("{text}", "{text_field}") if template else template
    items["text"] = render_text(items, template, str(path)) if template and len(items) else ""
    items = finish_items(items, inter)
    return Dataset(name=name, interactions=inter, items=items, source=str(path), info={"format": fmt, "text_template": template})


LOADERS: dict[str, Callable[[Path, DataConfig], Dataset]] = {
    "movielens-100k": load_movielens_100k,
    "movielens-csv": load_movielens_csv,
    "movielens-dat": load_movielens_dat,
    "recbole": load_recbole,
    "sequences": load_sequences,
    "amazon-json": load_amazon_json,
    "csv": lambda p, c: load_tabular(p, c, "csv"),
    "parquet": lambda p, c: load_tabular(p, c, "parquet"),
}


def resolve_source(cfg: DataConfig) -> tuple[str, Path]:
    """(format, path) for a config: an explicit path+format, or a named dataset under LMREC_DATA_DIR."""
    if cfg.path is not None:
        return cfg.format, Path(cfg.path).expanduser()
    if cfg.dataset not in NAMED_DATASETS:
        raise DataError(
            f"data.dataset: unknown dataset {cfg.dataset!r}; named datasets: "
            f"{', '.join(['demo', *NAMED_DATASETS])} (or set data.path and data.format)"
        )
    fmt, folder = NAMED_DATASETS[cfg.dataset]
    root = data_dir() / folder
    if not root.exists():
        raise DataError(
            f"dataset {cfg.dataset!r} not found at {root}; download it (see README, 'Datasets') and set "
            f"LMREC_DATA_DIR to the folder that holds {folder}/"
        )
    return cfg.format or fmt, root


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load the configured dataset into canonical form (k-core and value filters applied)."""
    from lmrec.data.split import apply_filters

    if cfg.path is None and cfg.dataset == "demo":
        from lmrec.data.synthetic import generate_demo

        ds = generate_demo(cfg.synthetic)
    else:
        fmt, path = resolve_source(cfg)
        ds = LOADERS[fmt](path, cfg)
        if cfg.path is None:
            ds.name = cfg.dataset
    return apply_filters(ds, cfg)
