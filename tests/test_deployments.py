"""deployments/*.yaml are valid Serve configs for our application: Serve's own schema, our typed args,
every deployment of the graph sized and configured, and user_config that the replicas accept."""

from pathlib import Path

import pytest
import yaml

from lmrec.ranking.config import RankingConfig
from lmrec.serving.app import AppArgs
from lmrec.serving.args import IngressConfig

DEPLOYMENTS = Path(__file__).resolve().parents[1] / "deployments"
FILES = sorted(DEPLOYMENTS.glob("*.yaml"))
GRAPH = {"Ingress", "UserState", "Retrieval", "Scorer"}


def _deployments(app) -> set[str]:
    """The names of every deployment a bound application holds (the ingress and what its arguments bind)."""
    from ray.serve.deployment import Application

    names, todo = set(), [app]
    while todo:
        d = todo.pop()._bound_deployment
        names.add(d.name)
        args = (*d.init_args, *d.init_kwargs.values())
        args += tuple(v for a in args if isinstance(a, dict) for v in a.values())  # the challengers' scorers
        todo += [a for a in args if isinstance(a, Application)]
    return names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_config_builds_exactly_the_graph_it_configures(path, artifact, tmp_path):
    """build_app on the YAML's args (the artifact and store pointed at the test's): the deployments the code
    binds are the ones the YAML sizes, no more and no fewer (a stage the YAML forgets would run with defaults)."""
    from lmrec.serving.app import build_app

    root, data_file, _, _ = artifact
    app_spec = yaml.safe_load(path.read_text())["applications"][0]
    args = {**app_spec["args"], "artifact": str(root / "art"), "store_path": str(tmp_path / "s.sqlite"), "store_url_env": None,
            "seed_config": str(data_file) if app_spec["args"].get("seed_config") else None}
    assert _deployments(build_app(AppArgs.model_validate(args))) == {d["name"] for d in app_spec["deployments"]}


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
    if app["args"].get("colocate"):  # the light stages live in the ingress, and so does how it ranks
        assert set(deployments) == {"Ingress", "Scorer"}
        assert IngressConfig.model_validate(deployments["Ingress"].get("user_config") or {}).ranking is not None
    else:
        assert set(deployments) == GRAPH
        RankingConfig.model_validate(deployments["Retrieval"].get("user_config") or {})
    for name, d in deployments.items():
        assert "max_ongoing_requests" in d and "num_cpus" in d.get("ray_actor_options", {}), name
        assert ("autoscaling_config" in d) != ("num_replicas" in d), f"{name}: autoscaled or fixed, not both"
    assert set(deployments["Scorer"]["user_config"]) <= {"max_batch_size", "batch_wait_timeout_s"}
    batching = IngressConfig.model_validate(deployments["Ingress"].get("user_config") or {})
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


def test_serve_can_validate_the_yaml_args_through_the_builders_annotation():
    """Serve reads build_app's parameter annotation to turn a YAML's ``args:`` into AppArgs; a string annotation
    (postponed evaluation) would hand build_app a plain dict instead."""
    import inspect

    from lmrec.serving.app import build_app

    assert inspect.signature(build_app).parameters["args"].annotation is AppArgs


def test_challenger_models_bind_a_scorer_each_co_located_only(artifact, tmp_path):
    """args.models: each challenger a Scorer-NAME deployment beside the ingress; refused separated, refused
    when it is the served model itself or missing, and refused by name when invalid."""
    from pydantic import ValidationError

    from lmrec.errors import LmrecError
    from lmrec.serving.app import build_app

    root, _, _, _ = artifact
    base = {"artifact": str(root / "art"), "store_path": str(tmp_path / "s.sqlite"), "store_url_env": None}
    app = build_app(AppArgs.model_validate({**base, "colocate": True, "models": {"next": str(root / "ckpt")}}))
    assert _deployments(app) == {"Ingress", "Scorer", "Scorer-next"}
    with pytest.raises(LmrecError, match="co-located layout"):
        build_app(AppArgs.model_validate({**base, "models": {"next": str(root / "ckpt")}}))
    with pytest.raises(LmrecError, match="the served model itself"):
        build_app(AppArgs.model_validate({**base, "colocate": True, "models": {"same": str(root / "art")}}))
    with pytest.raises(LmrecError, match="args.models.gone: artifact .* does not exist"):
        build_app(AppArgs.model_validate({**base, "colocate": True, "models": {"gone": str(tmp_path / "nothing")}}))
    with pytest.raises(ValidationError, match="models"):
        AppArgs.model_validate({**base, "colocate": True, "models": {"bad name": str(root / "ckpt")}})
