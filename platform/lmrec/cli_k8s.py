"""``lmrec k8s``: KubeRay manifests (sync the RayService's serveConfigV2 from a Serve config, render an overlay,
validate every object offline). Parsing only at import; the work is imported when a command runs."""

from __future__ import annotations

from pathlib import Path

from lmrec.errors import LmrecError


def cmd_k8s(args) -> int:
    from lmrec import k8s

    for flag in ("serve_config", "rayservice"):
        value = getattr(args, flag, None)
        if value and not Path(value).is_file():
            raise LmrecError(f"--{flag.replace('_', '-')} {value}: no such file (run from the lmrec checkout, or pass the path)")
    if args.k8s == "sync":
        changed = k8s.sync_serve_config(args.serve_config, args.rayservice, check=args.check)
        print(f"{args.rayservice}: serveConfigV2 {'updated from' if changed else 'matches'} {args.serve_config}")
        return 0
    try:
        import jsonpatch  # noqa: F401
        import kubernetes_validate  # noqa: F401
    except ImportError:
        raise LmrecError("`lmrec k8s render|validate` needs the k8s extra: pip install 'lmrec[k8s]'") from None
    if args.k8s == "render":
        import yaml

        if not (Path(args.dir) / "kustomization.yaml").is_file():
            raise LmrecError(f"{args.dir}: not a kustomization directory (no kustomization.yaml), e.g. k8s/overlays/prod")
        print(yaml.safe_dump_all(k8s.render(args.dir), sort_keys=False), end="")
        return 0
    if not (Path(args.root) / "base").is_dir():
        raise LmrecError(f"--root {args.root}: no base/ there; run from the lmrec checkout or pass --root (the folder "
                         "holding base/ and overlays/)")
    schemas = Path(args.schemas) if args.schemas else k8s.schemas_dir()
    if not (schemas / "ray.io").is_dir():
        raise LmrecError(
            f"KubeRay CRD JSON schemas not found in {schemas}/ray.io (looked at --schemas, then $LMREC_K8S_SCHEMAS, then "
            "../shared/k8s-schemas beside the current directory); they are KubeRay v1.7's CRDs converted to JSON "
            "schema (ray.io/rayservice_v1.json, rayjob_v1.json, raycluster_v1.json, raycronjob_v1.json): pass --schemas DIR")
    k8s.sync_serve_config(args.serve_config, Path(args.root) / "base" / "rayservice.yaml", check=True)
    results = k8s.validate_tree(args.root, schemas)
    for target, problems in results.items():
        print(f"{target}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for p in problems:
            print(f"  {p}")
    return 1 if any(results.values()) else 0


def add_k8s_commands(sub, command) -> None:
    """``k8s sync|render|validate`` on the CLI's subparsers (``command`` makes each one)."""
    p = command(sub, "k8s", "KubeRay manifests: sync serveConfigV2, render overlays, validate offline", lambda a: 2)
    k = p.add_subparsers(dest="k8s", required=True, metavar="ACTION")
    q = command(k, "sync", "write deployments/prod.yaml into the RayService's serveConfigV2", cmd_k8s)
    q.add_argument("--check", action="store_true", help="only check; exit 2 when the two differ")
    q.add_argument("--serve-config", default="deployments/prod.yaml", metavar="FILE", help="the Serve config")
    q.add_argument("--rayservice", default="k8s/base/rayservice.yaml", metavar="FILE", help="the RayService manifest")
    q = command(k, "render", "print what `kubectl apply -k DIR` applies", cmd_k8s)
    q.add_argument("dir", help="a kustomization directory, e.g. k8s/overlays/prod")
    q = command(k, "validate", "render k8s/base and every overlay and validate each object offline", cmd_k8s)
    q.add_argument("--root", default="k8s", metavar="DIR", help="the folder holding base/ and overlays/")
    q.add_argument("--serve-config", default="deployments/prod.yaml", metavar="FILE", help="the Serve config serveConfigV2 must match")
    q.add_argument("--schemas", metavar="DIR", help="KubeRay CRD JSON schemas (default: $LMREC_K8S_SCHEMAS, else ../shared/k8s-schemas)")
