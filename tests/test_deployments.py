"""deployments/*.yaml are valid Serve configs for our application: Serve's own schema, our typed args,
every deployment of the graph sized and configured, and user_config that the replicas accept."""

from pathlib import Path

import pytest
import yaml

from lmrec.serving.app import AppArgs
from lmrec.serving.batching import BatchConfig
from lmrec.serving.rerank import RerankConfig

DEPLOYMENTS = Path(__file__).resolve().parents[1] / "deployments"
FILES = sorted(DEPLOYMENTS.glob("*.yaml"))
GRAPH = {"Ingress", "UserState", "Retrieval", "Scorer", "Reranker"}


def test_the_three_documented_configs_exist():
    assert {"demo.yaml", "local.yaml", "prod.yaml"} <= {f.name for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_serve_config_is_valid(path):
    from ray.serve.schema import ServeDeploySchema

    spec = yaml.safe_load(path.read_text())
    schema = ServeDeploySchema.model_validate(spec) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(spec)
    assert schema.logging_config.enable_access_log is False  # no per-request access log by default
    [app] = spec["applications"]
    assert app["import_path"] == "lmrec.serving.app:build_app" and app["route_prefix"] == "/"
    AppArgs.model_validate(app["args"])  # typed args: unknown keys are errors

    deployments = {d["name"]: d for d in app["deployments"]}
    if app["args"].get("colocate"):  # the light stages live in the ingress
        assert set(deployments) == {"Ingress", "Scorer"}
        RerankConfig.model_validate(app["args"].get("rerank") or {})
    else:
        assert set(deployments) == GRAPH
        RerankConfig.model_validate(deployments["Reranker"].get("user_config") or {})
    for name, d in deployments.items():
        assert "max_ongoing_requests" in d and "num_cpus" in d.get("ray_actor_options", {}), name
        assert ("autoscaling_config" in d) != ("num_replicas" in d), f"{name}: autoscaled or fixed, not both"
    assert set(deployments["Scorer"]["user_config"]) <= {"max_batch_size", "batch_wait_timeout_s"}
    batching = BatchConfig.model_validate(deployments["Ingress"].get("user_config") or {})
    assert deployments["Ingress"]["max_ongoing_requests"] >= batching.max_batch_size  # room to fill a batch
    # the scorer's threads are its CPUs: at least one whole core
    assert deployments["Scorer"]["ray_actor_options"]["num_cpus"] >= 1


def test_sqlite_configs_do_not_scale_the_single_writer():
    for path in FILES:
        app = yaml.safe_load(path.read_text())["applications"][0]
        if not (app["args"].get("store_url") or app["args"].get("store_url_env")):
            name = "Ingress" if app["args"].get("colocate") else "UserState"
            state = next(d for d in app["deployments"] if d["name"] == name)
            assert state.get("num_replicas") == 1, path.name


def test_prod_keeps_state_in_redis_and_secrets_in_the_environment():
    app = yaml.safe_load((DEPLOYMENTS / "prod.yaml").read_text())["applications"][0]
    assert app["args"]["store_url_env"] == "LMREC_REDIS_URL" and "store_url" not in app["args"]
    assert app["args"]["auth_reads"] is True
    # the token and the Redis URL are named by environment variables (secrets), never written here
    assert app["args"]["api_token_env"].isupper() and app["args"]["store_url_env"].isupper()
