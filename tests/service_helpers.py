"""A real `serve run` of the demo's graph for the tests that exercise the service from outside (the API
contract, the chaos drills): a tiny untrained BERT checkpoint exported to int8 behind the parity gate, a
synthetic catalog to seed the store, deployments/demo.yaml adapted to them, a free port and 0-CPU replicas."""

from pathlib import Path

import yaml

from helpers import free_port  # noqa: F401 (the drills' modules take it from here)

REPO = Path(__file__).resolve().parents[1]


def demo_yaml(out: Path, artifact: Path, data_file: Path, port: int, **args) -> Path:
    """deployments/demo.yaml on this artifact and port, one replica per deployment at 0 CPUs (whatever the
    machine has; one replica: a drill kills *the* replica) that stops in seconds, ``args`` over the
    application's args."""
    spec = yaml.safe_load((REPO / "deployments" / "demo.yaml").read_text())
    spec["http_options"]["port"] = port
    app = spec["applications"][0]
    app["args"].update(artifact=str(artifact), seed_config=str(data_file), store_path=str(out / "state.sqlite"), **args)
    for d in app["deployments"]:
        d["ray_actor_options"] = {"num_cpus": 0}
        # a replica stopping waits this long for requests still in it (20 s by default, deployment after
        # deployment): a test's requests are done or abandoned by then
        d["graceful_shutdown_timeout_s"] = 3
        d["graceful_shutdown_wait_loop_s"] = 0.5
        if d.pop("autoscaling_config", None) is not None:
            d["num_replicas"] = 1
    path = out / "serve.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
