"""Fixtures shared by the test modules: tiny data and models, the one Ray session, and the serving
application (a tiny BERT checkpoint exported to int8 ONNX behind the parity gate, a SQLite store seeded from a
small synthetic catalog, deployed once per layout for every API test module)."""

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
    """One local Ray for every integration test. Its CPUs are logical: the session-wide serving application
    keeps its replicas while the training and tuning tests run, so there are enough for both to be placed."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
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


# ---------------------------------------------------------------------------------------------- serving
TOKEN_ENV = "LMREC_TEST_API_TOKEN"  # set above, before Ray starts, so replicas inherit it
DATA = {"dataset": "demo", "synthetic": {"n_items": 60, "n_users": 40, "events_per_user": 8}}
APP = "lmrec-test"


@pytest.fixture(scope="session")
def artifact(tiny_lm, tmp_path_factory):
    """The tiny model of the serving tests, exported: (root, its data config, {item: text}, the users)."""
    from helpers import export_tiny

    root = tmp_path_factory.mktemp("serving")
    data_file, p, data = export_tiny(root, tiny_lm, DATA)
    items = dict(zip(data.item_ids, data.texts))
    users = sorted(p.dataset.interactions["user_id"].astype(str).unique())
    return root, data_file, items, users


@pytest.fixture(scope="session", params=[False, True], ids=["graph", "colocated"])
def service(request, ray_session, artifact):
    """Deploy the application (each stage its own deployment, or the light stages co-located in the
    ingress, there fused with the artifact's item-kNN) once for the session; yields a small HTTP client and a
    restart function. The API test modules share it."""
    import requests
    from ray import serve

    from helpers import free_port
    from lmrec.serving.app import AppArgs, build_app

    root, data_file, items, users = artifact
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for app in list(serve.status().applications):  # the other mode's application, if it is still up
        serve.delete(app)
    colocate = request.param
    args = AppArgs(artifact=str(root / "art"), store_path=str(root / f"state-{colocate}.sqlite"), seed_config=str(data_file),
                   api_token_env=TOKEN_ENV, retrieval_backend="exact", colocate=colocate, knn_weight=1.0 if colocate else None,
                   knn_refresh_s=0)  # a refit mid-module would change scores tests compare (refits: tested on the stage)

    def deploy(**changes):
        serve.run(build_app(args.model_copy(update=changes)), name=APP, route_prefix="/", blocking=False)

    deploy()

    class Client:
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {os.environ[TOKEN_ENV]}"}
        catalog = items
        known = users
        colocated = colocate
        seed_config = str(data_file)
        store_path = args.store_path
        artifact_dir = args.artifact

        def post(self, path, body, auth=True, headers=None):
            return requests.post(self.base + path, json=body, headers=headers or (self.auth if auth else {}), timeout=60)

        def put(self, path, body, auth=True):
            return requests.put(self.base + path, json=body, headers=self.auth if auth else {}, timeout=60)

        def get(self, path):
            return requests.get(self.base + path, timeout=60)

        def delete(self, path, auth=True):
            return requests.delete(self.base + path, headers=self.auth if auth else {}, timeout=60)

        def recommend(self, user, **body):
            r = self.post("/v1/recommend", {"user_id": user, **body}, auth=False)
            assert r.status_code == 200, r.text
            return r.json()

        def restart(self):
            serve.delete(APP)
            deploy()

        def roll_out(self, **changes):
            """Update the running application in place (Serve replaces its replicas), as a new artifact rolls out."""
            deploy(**changes)

    yield Client()
    serve.delete(APP)
    serve.shutdown()


@pytest.fixture(scope="session")
def tiny_artifact(artifact):
    """The same export, as the tests that run the service from outside (tests/service_helpers.py: the contract,
    chaos drills, tampering) take it: (artifact dir, data config, users, item texts by id)."""
    root, data_file, items, users = artifact
    return root / "art", data_file, users, items
