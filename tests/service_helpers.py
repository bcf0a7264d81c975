"""A real `serve run` of the demo's graph for the tests that exercise the service from outside (the API
contract, the chaos drills): a tiny untrained BERT checkpoint exported to int8 behind the parity gate, a
synthetic catalog to seed the store, deployments/demo.yaml adapted to them, a free port and 0-CPU replicas."""

import socket
from pathlib import Path

import yaml

from helpers import save_untrained

REPO = Path(__file__).resolve().parents[1]
DATA = {"dataset": "demo", "synthetic": {"n_items": 60, "n_users": 40, "events_per_user": 8}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_artifact(tiny_lm: str, root: Path) -> tuple[Path, Path, list[str], dict[str, str]]:
    """(artifact dir, the seed's data config, its users, its items' texts by id); the checkpoint it was
    exported from is ``root / "ckpt"``."""
    from lmrec.config import load_config
    from lmrec.export import export_checkpoint

    data_file = root / "data.yaml"
    data_file.write_text(yaml.safe_dump({"data": DATA}))
    cfg = load_config([data_file], [
        f"model.item_tower.pretrained={tiny_lm}", "model.item_tower.kind=text", "model.item_tower.dim=16",
        "model.item_tower.max_text_length=24", "model.user_tower.kind=transformer", "model.user_tower.max_history=8",
        "model.user_tower.dropout=0.0",
    ])  # fmt: skip
    p, data = save_untrained(cfg, root / "ckpt")
    export_checkpoint(root / "ckpt", root / "art", quantize="int8", data=p)
    users = sorted(p.dataset.interactions["user_id"].astype(str).unique())
    return root / "art", data_file, users, dict(zip(data.item_ids, data.texts))


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
