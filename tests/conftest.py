"""Generic fixtures shared by every test module."""

import os
from pathlib import Path

import pytest

from lmrec.config import data_dir

FIXTURES = Path(__file__).parent / "fixtures"
# the serving tests' API token: set before Ray starts so Serve replicas inherit it
os.environ.setdefault("LMREC_TEST_API_TOKEN", "test-token-not-a-secret")


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory) -> Path:
    """Tiny hand-written data files, one folder per source format. A file named like a public dataset's own
    file (``u.data``, ...) is kept as ``NAME.fixture`` in the repository, so nothing tracked looks like a copy
    of a dataset, and gets its format's name in the test run's copy."""
    import shutil

    root = tmp_path_factory.mktemp("fixtures") / "fixtures"
    shutil.copytree(FIXTURES, root)
    for path in root.rglob("*.fixture"):
        path.rename(path.with_suffix(""))
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared research datasets folder (LMREC_DATA_DIR, else ../shared/data); skips when absent."""
    root = data_dir()
    if not root.is_dir():
        pytest.skip(
            f"shared datasets not found at {root}: set LMREC_DATA_DIR to the folder that holds ml-100k/ etc."
        )
    return root


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> str:
    """A 2-layer BERT built from scratch (hidden 32) with the packaged MiniLM tokenizer, saved as a
    Hugging Face model directory: real code paths, test-sized compute."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lmrec.models.lm import resolve_pretrained

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained("default"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep the embedding cache of the test run out of the user's home."""
    import os

    os.environ["LMREC_CACHE_DIR"] = str(tmp_path_factory.mktemp("lmrec-cache"))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every integration test (fractional CPUs per task/replica)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ml100k_slice(shared_data):
    """A tiny real slice: the first 60 users of MovieLens 100k, leave-one-out, their items as the catalog."""
    from lmrec.config import DataConfig
    from lmrec.data.encode import Catalog
    from lmrec.data.loaders import load_dataset
    from lmrec.data.schema import Dataset
    from lmrec.data.split import leave_one_out
    from lmrec.experiments import Prepared

    ds = load_dataset(DataConfig(dataset="ml-100k"))
    users = sorted(ds.interactions["user_id"].unique(), key=int)[:60]
    inter = ds.interactions[ds.interactions["user_id"].isin(users)].reset_index(drop=True)
    items = ds.items[ds.items["item_id"].isin(set(inter["item_id"]))].reset_index(drop=True)
    sliced = Dataset("ml-100k-slice", inter, items, ds.source, info=ds.info)
    return Prepared(sliced, leave_one_out(inter), Catalog.from_dataset(sliced))


@pytest.fixture(scope="session")
def tiny_artifact(tiny_lm, tmp_path_factory):
    """An untrained tiny model exported to int8 behind the parity gate, with the synthetic data config that
    seeds its service: (artifact dir, data config, users, item texts by id); its checkpoint beside it. Shared by
    the serving tests, the tests that run the service from outside (tests/service_helpers.py) and the
    artifact-tampering tests: one export per test run."""
    from service_helpers import tiny_artifact

    return tiny_artifact(tiny_lm, tmp_path_factory.mktemp("tiny-artifact"))
