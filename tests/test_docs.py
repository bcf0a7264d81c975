"""The docs site builds strictly (every link and anchor resolves) and its reference pages come from the code:
the config keys with their defaults and comments, every CLI command's help, every HTTP route with its bounds."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "platform"), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _text(site: Path, page: str) -> str:
    html = (site / page / "index.html").read_text()
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")


def test_the_site_builds_strictly_with_every_page(site):
    for page in ("getting-started", "tutorial", "concepts", "data", "training", "evaluation", "export", "serving",
                 "retraining", "kubernetes", "benchmarks", "structure", "reference/config", "reference/cli", "reference/api"):
        assert (site / page / "index.html").is_file(), page
    assert not (site / "hooks.py").exists()  # the build's hooks are not published


def test_config_reference_is_the_pydantic_models(site):
    text = _text(site, "reference/config")
    from lmrec.config import Config

    for key in ("data.items_path", "model.item_tower.finetune_layers", "train.epochs", "eval.ks", "output_dir"):
        assert key in text
    assert f"model.item_tower.finetune_layers int {Config().model.item_tower.finetune_layers} >= -1" in text
    assert "Transformer layers fine-tuned, counted from the top" in text  # the comment beside the field
    assert "args.colocate" in text and "ranking.rules.diversity" in text and "ranking.policy.epsilon" in text


def test_cli_reference_is_the_parser(site):
    text = _text(site, "reference/cli")
    for cmd in ("lmrec serve", "lmrec data", "lmrec bench quality", "lmrec k8s validate"):
        assert f"usage: {cmd}" in text
    assert "--print-config" in text and "(default: 8000)" in text


def test_api_reference_is_the_openapi_schema(site):
    from lmrec.serving.ingress import api

    text = _text(site, "reference/api")
    spec = api.openapi()
    for path, methods in spec["paths"].items():
        for method in methods:
            assert f"{method.upper()} {path}" in text
    k = spec["components"]["schemas"]["RecommendRequest"]["properties"]["k"]
    assert f"k integer 10 >= {int(k['minimum'])}, <= {int(k['maximum'])}" in text
