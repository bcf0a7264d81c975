"""The shipped configs load, and the built-in defaults are what the configs of record use."""

from pathlib import Path

import pytest

from lmrec.config import Config, load_config, read_yaml

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    load_config([path])


@pytest.mark.parametrize("name", ["scientific.yaml", "ml-100k.yaml", "demo.yaml", "local.yaml"])
def test_defaults_match_the_configs_of_record(name):
    """A reader of `lmrec config` sees what the configs of record train with: the LM layers fine-tuned by
    default are the main benchmark's record (Scientific), the demo's and the local one's (ml-100k's record
    fine-tunes its top layer and says so); how a config that fine-tunes does it (probe_first,
    lm_refresh_steps) is the default, whichever config it is."""
    raw = read_yaml(Path(__file__).parents[1] / "configs" / name)
    default = Config()
    layers = raw["model"]["item_tower"].get("finetune_layers", default.model.item_tower.finetune_layers)
    assert layers == (1 if name == "ml-100k.yaml" else default.model.item_tower.finetune_layers)
    train = raw.get("train", {})
    assert train.get("probe_first", default.train.probe_first) == default.train.probe_first
    assert train.get("lm_refresh_steps", default.train.lm_refresh_steps) == default.train.lm_refresh_steps
