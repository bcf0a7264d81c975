"""Kubernetes manifests (``k8s/``): keep the RayService's ``serveConfigV2`` in step with
``deployments/prod.yaml``, render the kustomize overlays, and validate what they produce offline.

``render`` implements the subset of kustomize that ``k8s/`` uses — ``resources``, ``namespace``,
``labels``, ``images`` and JSON 6902 ``patches`` with a target — and refuses any other field, so a
kustomization that uses more fails loudly here instead of being half-rendered. ``kubectl apply -k`` reads
the same files.

``validate`` checks every object: ``ray.io/v1`` kinds against KubeRay's CRD JSON schemas; core kinds
with ``kubernetes-validate`` (strict) for a pinned Kubernetes version; then what neither schema checks
and KubeRay or we require — names, ``rayVersion`` = the image's Ray, submission modes, TTL only with
``shutdownAfterJobFinishes``, replica bounds, a ``serveConfigV2`` that parses and whose ``import_path``
resolves in lmrec, resource requests and limits, secrets by reference, nothing of Ray's control plane
exposed outside the cluster.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
from pathlib import Path

import yaml

from lmrec.errors import LmrecError

K8S_VERSION = "1.33.0"  # core kinds validate against this Kubernetes release
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
UPGRADE_TYPES = {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}
NAME_LIMITS = {"RayService": 47, "RayJob": 47, "RayCluster": 53, "RayCronJob": 36}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
CONTROL_PORTS = {6379, 8265, 10001, 8266, 52365}  # GCS, dashboard / job API, client, agents
SECRET_ENV = {"LMREC_API_TOKEN", "LMREC_REDIS_URL"}
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
SERVE_CONFIG_KEY = "  serveConfigV2: |"


def schemas_dir() -> Path:
    """KubeRay's CRD JSON schemas (``ray.io/*.json``): LMREC_K8S_SCHEMAS, else ../shared/k8s-schemas."""
    return Path(os.environ.get("LMREC_K8S_SCHEMAS", Path.cwd().parent / "shared" / "k8s-schemas"))


# ------------------------------------------------------------------------------ serveConfigV2 sync
def _serve_block(lines: list[str]) -> tuple[int, int]:
    """(first, end) line indexes of the serveConfigV2 block scalar's body."""
    try:
        start = lines.index(SERVE_CONFIG_KEY) + 1
    except ValueError:
        raise LmrecError(f"no `{SERVE_CONFIG_KEY.strip()}` block (two-space indent) in the RayService manifest") from None
    end = start
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith("    ")):
        end += 1
    while end > start and not lines[end - 1].strip():  # trailing blank lines belong to the document
        end -= 1
    return start, end


def sync_serve_config(serve_yaml: str | Path = "deployments/prod.yaml", rayservice: str | Path = "k8s/base/rayservice.yaml",
                      check: bool = False) -> bool:
    """Write ``serve_yaml``'s text as the RayService's ``serveConfigV2``; returns whether it changed.
    With ``check`` nothing is written and a difference raises (CI: the two must not drift)."""
    serve_yaml, rayservice = Path(serve_yaml), Path(rayservice)
    source = serve_yaml.read_text()
    yaml.safe_load(source)  # a broken file must not be copied
    lines = rayservice.read_text().splitlines()
    start, end = _serve_block(lines)
    body = [("    " + line) if line.strip() else "" for line in source.rstrip("\n").splitlines()]
    if lines[start:end] == body:
        return False
    if check:
        raise LmrecError(f"{rayservice}: serveConfigV2 differs from {serve_yaml}; run `lmrec k8s sync`")
    new = lines[:start] + body + lines[end:]
    tmp = rayservice.with_name("." + rayservice.name + ".tmp")
    tmp.write_text("\n".join(new) + "\n")
    tmp.replace(rayservice)
    return True


# ---------------------------------------------------------------------------------------- render
def _load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(directory: str | Path) -> list[dict]:
    """The objects ``kubectl apply -k DIRECTORY`` would apply (the kustomize subset described above)."""
    directory = Path(directory)
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise LmrecError(f"{directory}: no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(k) - KUSTOMIZE_FIELDS
    if unknown:
        raise LmrecError(f"{kfile}: fields {sorted(unknown)} are not rendered here; supported: {sorted(KUSTOMIZE_FIELDS)}")
    docs: list[dict] = []
    for res in k.get("resources", []):
        p = directory / res
        docs.extend(render(p) if p.is_dir() else _load_docs(p))
    for patch in k.get("patches", []):
        _apply_patch(directory, patch, docs)
    for image in k.get("images", []):
        _set_image(docs, image)
    for label in k.get("labels", []):
        for d in docs:
            d.setdefault("metadata", {}).setdefault("labels", {}).update(label.get("pairs", {}))
    if "namespace" in k:
        for d in docs:
            d.setdefault("metadata", {})["namespace"] = k["namespace"]
    return docs


def _apply_patch(directory: Path, patch: dict, docs: list[dict]) -> None:
    import jsonpatch

    if set(patch) - {"path", "target"} or "path" not in patch:
        raise LmrecError(f"{directory}: patches take `path` and `target` here (JSON 6902 files), got {sorted(patch)}")
    ops = yaml.safe_load((directory / patch["path"]).read_text())
    if not isinstance(ops, list):
        raise LmrecError(f"{directory / patch['path']}: a JSON 6902 patch is a list of operations")
    target = patch.get("target", {})
    hits = [d for d in docs if all(d.get("kind") == v if key == "kind" else d.get("metadata", {}).get("name") == v
                                   for key, v in target.items())]
    if not hits:
        raise LmrecError(f"{directory / patch['path']}: target {target} matches no object")
    for d in hits:
        try:
            patched = jsonpatch.apply_patch(d, ops)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise LmrecError(f"{directory / patch['path']} on {d['kind']}/{d['metadata']['name']}: {exc}") from None
        d.clear()
        d.update(patched)


def _containers(obj) -> list[dict]:
    """Every container of every pod template inside ``obj``."""
    out = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                out.extend(c for c in value if isinstance(c, dict))
            else:
                out.extend(_containers(value))
    elif isinstance(obj, list):
        for value in obj:
            out.extend(_containers(value))
    return out


def _set_image(docs: list[dict], image: dict) -> None:
    for d in docs:
        for c in _containers(d):
            name = c.get("image", "")
            base = name.split("@")[0].rsplit(":", 1)[0] if ":" in name.split("/")[-1] else name
            if base == image["name"]:
                c["image"] = f"{image.get('newName', base)}:{image['newTag']}" if "newTag" in image else image.get("newName", base)


# -------------------------------------------------------------------------------------- validate
def dockerfile_ray_version(dockerfile: str | Path = "k8s/Dockerfile") -> str:
    m = re.search(r"^ARG RAY_VERSION=(\S+)", Path(dockerfile).read_text(), re.M)
    if not m:
        raise LmrecError(f"{dockerfile}: no `ARG RAY_VERSION=...`")
    return m.group(1)


def _ray_clusters(doc: dict) -> list[tuple[str, dict]]:
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind == "RayService":
        return [("spec.rayClusterConfig", spec.get("rayClusterConfig") or {})]
    if kind == "RayJob" and spec.get("rayClusterSpec"):
        return [("spec.rayClusterSpec", spec["rayClusterSpec"])]
    if kind == "RayCronJob" and (spec.get("jobTemplate") or {}).get("rayClusterSpec"):
        return [("spec.jobTemplate.rayClusterSpec", spec["jobTemplate"]["rayClusterSpec"])]
    if kind == "RayCluster":
        return [("spec", spec)]
    return []


def _schema_errors(doc: dict, schemas: Path | None) -> list[str]:
    api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    if api.startswith("ray.io/"):
        if schemas is None:
            return []
        import jsonschema

        path = schemas / "ray.io" / f"{kind.lower()}_{api.split('/')[1]}.json"
        if not path.is_file():
            return [f"no KubeRay schema for {api} {kind} ({path})"]
        validator = jsonschema.Draft7Validator(json.loads(path.read_text()))
        return [f"schema: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]
    from kubernetes_validate import utils as kv

    try:
        kv.validate(doc, K8S_VERSION, strict=True)
    except kv.ValidationError as exc:
        return [f"kubernetes {K8S_VERSION} (strict): {str(exc).splitlines()[0]}"]
    except (kv.SchemaNotFoundError, kv.InvalidSchemaError) as exc:
        return [f"kubernetes {K8S_VERSION}: {exc}"]
    return []


def _serve_config_errors(text) -> list[str]:
    from ray.serve.schema import ServeDeploySchema

    if not isinstance(text, str):
        return ["serveConfigV2 must be a YAML string"]
    try:
        spec = yaml.safe_load(text)
        ServeDeploySchema.model_validate(spec) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(spec)
    except Exception as exc:  # yaml or pydantic, reported with the first line only
        return [f"serveConfigV2 does not parse as a Serve config: {str(exc).splitlines()[0]}"]
    errors = []
    for app in spec.get("applications", []):
        path = app.get("import_path", "")
        module, _, attr = path.partition(":")
        if not module.startswith("lmrec.") or not attr:
            errors.append(f"serveConfigV2: import_path {path!r} is not an lmrec object (module:attribute)")
            continue
        try:
            target = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            errors.append(f"serveConfigV2: import_path {path!r} does not resolve: {exc}")
            continue
        if path == "lmrec.serving.app:build_app":
            from pydantic import ValidationError

            from lmrec.serving.app import AppArgs

            try:
                AppArgs.model_validate(app.get("args") or {})
            except ValidationError as exc:
                errors.append(f"serveConfigV2: args of {app.get('name')}: {str(exc).splitlines()[0]} ({exc.errors()[0]['loc']})")
        elif not callable(target) and not hasattr(target, "bind"):
            errors.append(f"serveConfigV2: import_path {path!r} is neither an application nor a builder")
    return errors


def _cluster_errors(where: str, cluster: dict, ray_version: str) -> list[str]:
    errors = []
    if str(cluster.get("rayVersion")) != ray_version:
        errors.append(f"{where}.rayVersion {cluster.get('rayVersion')!r} != the image's Ray {ray_version!r}")
    head = cluster.get("headGroupSpec") or {}
    if head.get("serviceType") not in (None, "ClusterIP"):
        errors.append(f"{where}.headGroupSpec.serviceType {head['serviceType']!r} would expose the dashboard / job API outside the cluster")
    for i, g in enumerate(cluster.get("workerGroupSpecs") or []):
        lo, hi, n = g.get("minReplicas", 0), g.get("maxReplicas", 2**31 - 1), g.get("replicas")
        if not all(isinstance(x, int) for x in (lo, hi, n) if x is not None):
            continue  # the schema reports the type
        if lo > hi or (n is not None and not lo <= n <= hi):
            errors.append(f"{where}.workerGroupSpecs[{i}] ({g.get('groupName')}): need minReplicas <= replicas <= maxReplicas, got {lo}, {n}, {hi}")
    for c in _containers(cluster):
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(res.get(part) or {})
            if missing:
                errors.append(f"{where}: container {c.get('name')} has no {part} for {sorted(missing)}")
        image = c.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        if f"ray{ray_version}" not in tag:
            errors.append(f"{where}: container {c.get('name')} image {image!r}: its tag must name Ray {ray_version} (ray{ray_version})")
        for env in c.get("env") or []:
            if env.get("name") in SECRET_ENV and "value" in env:
                errors.append(f"{where}: container {c.get('name')} sets {env['name']} in plain text; use valueFrom.secretKeyRef")
    return errors


def _job_errors(where: str, spec: dict) -> list[str]:
    """A RayJob's spec (or a RayCronJob's job template)."""
    errors = []
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode not in SUBMISSION_MODES:
        errors.append(f"{where}.submissionMode {mode!r} is not one of {sorted(SUBMISSION_MODES)}")
    if spec.get("ttlSecondsAfterFinished") is not None and not spec.get("shutdownAfterJobFinishes"):
        errors.append(f"{where}.ttlSecondsAfterFinished needs {where}.shutdownAfterJobFinishes: true")
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        errors.append(f"{where}.suspend needs {where}.shutdownAfterJobFinishes: true")
    if not str(spec.get("entrypoint", "")).strip():
        errors.append(f"{where}.entrypoint is empty")
    return errors


def _object_errors(doc: dict, ray_version: str) -> list[str]:
    kind, meta, spec = doc.get("kind"), doc.get("metadata") or {}, doc.get("spec") or {}
    name = meta.get("name", "")
    errors = []
    if kind in NAME_LIMITS:
        if len(name) > NAME_LIMITS[kind]:
            errors.append(f"name {name!r} is longer than KubeRay's {NAME_LIMITS[kind]} characters for a {kind}")
        if not DNS1035.match(name or "-"):
            errors.append(f"name {name!r} is not a DNS-1035 label")
    for where, cluster in _ray_clusters(doc):
        errors += _cluster_errors(where, cluster, ray_version)
    if kind == "RayService":
        errors += _serve_config_errors(spec.get("serveConfigV2"))
        kind_ = (spec.get("upgradeStrategy") or {}).get("type")
        if kind_ is not None and kind_ not in UPGRADE_TYPES:
            errors.append(f"spec.upgradeStrategy.type {kind_!r} is not one of {sorted(UPGRADE_TYPES)}")
        svc = (spec.get("serveService") or {}).get("spec") or {}
        errors += _exposure_errors("spec.serveService", svc)
    if kind == "RayJob":
        errors += _job_errors("spec", spec)
    if kind == "RayCronJob":
        if len(str(spec.get("schedule", "")).split()) != 5:
            errors.append(f"spec.schedule {spec.get('schedule')!r} is not a five-field cron expression")
        errors += _job_errors("spec.jobTemplate", spec.get("jobTemplate") or {})
    if kind == "Service":
        errors += _exposure_errors("spec", spec)
    return errors


def _exposure_errors(where: str, svc: dict) -> list[str]:
    if svc.get("type", "ClusterIP") == "ClusterIP":
        return []
    exposed = [p.get("port") for p in svc.get("ports") or [] if p.get("port") in CONTROL_PORTS or p.get("targetPort") in CONTROL_PORTS]
    return [f"{where}: type {svc['type']} exposes Ray's control ports {exposed} outside the cluster"] if exposed else []


def validate(docs: list[dict], ray_version: str, schemas: Path | None) -> list[str]:
    """Every problem found, each prefixed by the object (``Kind/name``); empty when all is well."""
    out = []
    for doc in docs:
        label = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        out += [f"{label}: {e}" for e in _schema_errors(doc, schemas) + _object_errors(doc, ray_version)]
    return out


def validate_tree(root: str | Path = "k8s", schemas: Path | None = None, dockerfile: str | Path | None = None) -> dict[str, list[str]]:
    """Render and validate the base and every overlay under ``root``: {kustomization dir: problems}."""
    root = Path(root)
    version = dockerfile_ray_version(dockerfile or root / "Dockerfile")
    targets = [root / "base", *sorted(p for p in (root / "overlays").glob("*") if (p / "kustomization.yaml").is_file())]
    return {str(t): validate(copy.deepcopy(render(t)), version, schemas) for t in targets}
