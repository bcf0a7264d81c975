from pathlib import Path

import pytest

from lmrec.config import Config, data_dir, dump_config, load_config, parse_override
from lmrec.errors import ConfigError, LmrecError


def _yaml(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.data.dataset == "demo" and cfg.data.split.method == "auto"
    assert cfg.eval.ks == [10, 20, 50]


def test_layering_precedence(tmp_path):
    """defaults < base < file1 < file2 < overrides, key by key (a later layer keeps earlier siblings)."""
    f1 = _yaml(
        tmp_path,
        "dataset.yaml",
        "data:\n  dataset: ml-100k\n  min_user_interactions: 5\ntrain:\n  epochs: 3\n  lr: 0.01\n"
        "model:\n  user_tower:\n    layers: 4\n",
    )
    f2 = _yaml(tmp_path, "experiment.yaml", "train:\n  epochs: 7\nmodel:\n  user_tower:\n    heads: 4\n")
    cfg = load_config(
        [f1, f2],
        ["train.epochs=9", "data.split.method=temporal"],
        base={"train": {"epochs": 1, "batch_size": 64}, "output_dir": "runs/base"},
    )
    assert cfg.train.epochs == 9  # override beats both files and base
    assert cfg.train.lr == 0.01  # file1, untouched by file2
    assert cfg.train.batch_size == 64  # base, untouched by the files
    assert cfg.model.user_tower.layers == 4 and cfg.model.user_tower.heads == 4  # nested merge keeps both
    assert cfg.model.user_tower.dropout == 0.2  # default
    assert cfg.data.dataset == "ml-100k" and cfg.data.min_user_interactions == 5
    assert cfg.data.split.method == "temporal" and cfg.data.split.valid_quantile == 0.8
    assert cfg.output_dir == "runs/base"
    # without the override, the later file wins
    assert load_config([f1, f2]).train.epochs == 7
    assert load_config([f2, f1]).train.epochs == 3


def test_later_override_wins():
    assert load_config(overrides=["train.epochs=2", "train.epochs=4"]).train.epochs == 4


@pytest.mark.parametrize(
    "item, path, value",
    [
        ("train.epochs=5", ["train", "epochs"], 5),
        ("train.use_gpu=true", ["train", "use_gpu"], True),
        ("train.use_gpu=false", ["train", "use_gpu"], False),
        ("eval.ks=[5, 10]", ["eval", "ks"], [5, 10]),
        ("train.lr=0.5", ["train", "lr"], 0.5),
        ("data.dataset=ml-100k", ["data", "dataset"], "ml-100k"),
        ("data.path=null", ["data", "path"], None),
        ("output_dir=", ["output_dir"], ""),
        (" train.epochs = 6", ["train", "epochs"], 6),
        ("data.columns={user_id: uid}", ["data", "columns"], {"user_id": "uid"}),
    ],
)
def test_parse_override_types(item, path, value):
    got_path, got = parse_override(item)
    assert got_path == path
    assert got == value and type(got) is type(value)


def test_override_values_reach_typed_fields():
    cfg = load_config(
        overrides=[
            "train.lr=1e-3",  # YAML 1.1 reads this as a string; the float field still accepts it
            "train.use_gpu=true",
            "eval.ks=[20, 5, 5]",
            "data.columns.user_id=uid",
            "train.max_steps_per_epoch=10",
        ]
    )
    assert cfg.train.lr == pytest.approx(0.001)
    assert cfg.train.use_gpu is True
    assert cfg.eval.ks == [5, 20]  # sorted, deduplicated
    assert cfg.data.columns == {"user_id": "uid"}
    assert cfg.train.max_steps_per_epoch == 10


@pytest.mark.parametrize("item", ["train.epochs", "=5", "train..epochs=5", ".epochs=5", "train.epochs=[1,"])
def test_bad_override_syntax(item):
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=[item])
    assert repr(item) in str(exc.value)
    assert isinstance(exc.value, LmrecError)


def test_unknown_key_in_file_names_the_key_path(tmp_path):
    f = _yaml(tmp_path, "typo.yaml", "model:\n  user_tower:\n    layer: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config([f])
    msg = str(exc.value)
    assert "model.user_tower.layer" in msg and "unknown key" in msg and "typo.yaml" in msg


def test_unknown_key_in_override_names_the_key_path():
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown key"):
        load_config(overrides=["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"trian: unknown key"):
        load_config(overrides=["trian.epochs=3"])


@pytest.mark.parametrize(
    "override, where",
    [
        ("train.epochs=0", "train.epochs"),  # below the minimum
        ("train.epochs=five", "train.epochs"),  # not a number
        ("train.epochs=2.5", "train.epochs"),  # not an integer
        ("model.user_tower.kind=lstm", "model.user_tower.kind"),  # not one of the choices
        ("eval.ks=[]", "eval.ks"),
        ("data.split.valid_quantile=0.95", "data.split"),  # must stay below test_quantile
        ("data.path=/tmp/x.csv", "data"),  # a path needs a format
        ("train=3", "train"),
    ],
)
def test_invalid_values_name_the_field(override, where):
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=[override])
    assert f"  {where}" in str(exc.value)


def test_config_file_errors(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config([missing])
    listing = _yaml(tmp_path, "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="list.yaml: the top level must be a mapping"):
        load_config([listing])
    broken = _yaml(tmp_path, "broken.yaml", "train: [1,\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config([broken])
    empty = _yaml(tmp_path, "empty.yaml", "")
    assert load_config([empty]) == Config()


def test_dump_round_trip(tmp_path):
    cfg = load_config(overrides=["train.epochs=4", "eval.ks=[5]", "data.dataset=ml-100k"])
    f = _yaml(tmp_path, "dumped.yaml", dump_config(cfg))
    assert load_config([f]) == cfg


def test_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LMREC_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    monkeypatch.delenv("LMREC_DATA_DIR")
    assert data_dir().parts[-2:] == ("shared", "data")
