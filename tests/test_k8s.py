"""k8s/: the kustomize base and overlays render, every object validates offline (KubeRay CRD schemas,
Kubernetes core schemas in strict mode, our own checks), serveConfigV2 is deployments/prod.yaml, and
deliberately broken manifests are rejected, each for its own reason."""

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml

from lmrec import k8s
from lmrec.errors import LmrecError

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"


@pytest.fixture(scope="module")
def schemas():
    path = k8s.schemas_dir() if k8s.schemas_dir().is_dir() else REPO.parent / "shared" / "k8s-schemas"
    if not (path / "ray.io").is_dir():
        pytest.skip(f"KubeRay CRD JSON schemas not found at {path}: set LMREC_K8S_SCHEMAS")
    return path


@pytest.fixture(scope="module")
def version():
    return k8s.dockerfile_ray_version(K8S / "Dockerfile")


def test_ray_version_is_one_everywhere(version):
    import ray

    pin = re.search(r'"ray\[[^\]]*\]==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert version == pin == ray.__version__
    for target in ("base", "overlays/dev", "overlays/prod"):
        for doc in k8s.render(K8S / target):
            for _, cluster in k8s._ray_clusters(doc):
                assert cluster["rayVersion"] == version


@pytest.mark.parametrize("target", ["base", "overlays/dev", "overlays/prod"])
def test_every_object_validates(schemas, version, target):
    docs = k8s.render(K8S / target)
    kinds = {d["kind"] for d in docs}
    assert {"RayService", "RayJob", "RayCronJob", "PersistentVolumeClaim"} <= kinds
    assert k8s.validate(docs, version, schemas) == []


def test_the_rayservice_serves_prod_yaml():
    k8s.sync_serve_config(REPO / "deployments" / "prod.yaml", K8S / "base" / "rayservice.yaml", check=True)
    [svc] = [d for d in k8s.render(K8S / "base") if d["kind"] == "RayService"]
    assert yaml.safe_load(svc["spec"]["serveConfigV2"]) == yaml.safe_load((REPO / "deployments" / "prod.yaml").read_text())


def test_sync_detects_and_repairs_drift(tmp_path):
    serve, rs = tmp_path / "prod.yaml", tmp_path / "rayservice.yaml"
    shutil.copy(REPO / "deployments" / "prod.yaml", serve)
    shutil.copy(K8S / "base" / "rayservice.yaml", rs)
    assert k8s.sync_serve_config(serve, rs, check=True) is False
    serve.write_text(serve.read_text().replace("max_batch_size: 32", "max_batch_size: 64"))
    with pytest.raises(LmrecError, match="lmrec k8s sync"):
        k8s.sync_serve_config(serve, rs, check=True)
    assert k8s.sync_serve_config(serve, rs) is True
    assert "max_batch_size: 64" in rs.read_text() and k8s.sync_serve_config(serve, rs, check=True) is False
    assert yaml.safe_load(rs.read_text())["spec"]["rayClusterConfig"]  # the rest of the manifest is intact


def test_overlays_shape_the_clusters():
    dev = {d["metadata"]["name"]: d for d in k8s.render(K8S / "overlays" / "dev")}
    prod = {d["metadata"]["name"]: d for d in k8s.render(K8S / "overlays" / "prod")}
    assert {d["metadata"]["namespace"] for d in dev.values()} == {"lmrec-dev"}
    dev_groups = dev["lmrec"]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert [g["groupName"] for g in dev_groups] == ["cpu"]
    assert "nvidia.com/gpu" not in yaml.safe_dump(dev)
    cluster = prod["lmrec"]["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0" and cluster["enableInTreeAutoscaling"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"} and groups["gpu"]["minReplicas"] == 0
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1" and gpu["image"].endswith("-gpu")
    for job in ("lmrec-train", "lmrec-tune"):
        spec = prod[job]["spec"]
        assert spec["shutdownAfterJobFinishes"] and spec["ttlSecondsAfterFinished"] > 0
        assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 0
    assert prod["lmrec-train"]["spec"]["entrypoint"].startswith("lmrec train ")
    assert "train.use_gpu=true" in prod["lmrec-train"]["spec"]["entrypoint"]
    assert prod["lmrec-tune"]["spec"]["entrypoint"].startswith("lmrec tune ")


def _secrets_by_reference(doc):
    for c in k8s._containers(doc):
        for env in c.get("env") or []:
            if env["name"] in k8s.SECRET_ENV:
                yield env


def test_nightly_retraining_reads_the_serving_store_and_exports_behind_the_gate():
    [cron] = [d for d in k8s.render(K8S / "overlays" / "prod") if d["kind"] == "RayCronJob"]
    assert cron["spec"]["schedule"] == "0 3 * * *" and not cron["spec"].get("suspend")
    job = cron["spec"]["jobTemplate"]
    assert job["entrypoint"].split()[:2] == ["lmrec", "retrain"] and "--artifact /models/current" in job["entrypoint"]
    assert "--keep 7" in job["entrypoint"]  # old runs do not fill the models volume
    assert not set(";&|$`") & set(job["entrypoint"])  # one command: nothing for the submitter's shell to split
    refs = list(_secrets_by_reference(cron))
    assert [(e["name"], e["valueFrom"]["secretKeyRef"]["key"]) for e in refs] == [("LMREC_REDIS_URL", "redis-url")]
    [dev] = [d for d in k8s.render(K8S / "overlays" / "dev") if d["kind"] == "RayCronJob"]
    assert dev["spec"]["suspend"] is True


def test_secrets_are_referenced_never_inlined():
    [svc] = [d for d in k8s.render(K8S / "overlays" / "prod") if d["kind"] == "RayService"]
    refs = list(_secrets_by_reference(svc))
    assert refs and all(e["valueFrom"]["secretKeyRef"]["name"] == "lmrec-secrets" for e in refs)


def _svc(docs):
    return next(d for d in docs if d["kind"] == "RayService")


def _job(docs):
    return next(d for d in docs if d["kind"] == "RayJob")


BROKEN = {
    "typo in a field": (lambda d: _svc(d)["spec"].__setitem__("serveConfigv2", _svc(d)["spec"].pop("serveConfigV2")), "serveConfigv2"),
    "name too long": (lambda d: _svc(d)["metadata"].__setitem__("name", "lmrec-" + "x" * 45), "longer than"),
    "name not DNS-1035": (lambda d: _job(d)["metadata"].__setitem__("name", "LMRec_Train"), "DNS-1035"),
    "bad submission mode": (lambda d: _job(d)["spec"].__setitem__("submissionMode", "K8sMode"), "submissionMode"),
    "ttl without shutdown": (lambda d: _job(d)["spec"].__setitem__("shutdownAfterJobFinishes", False), "shutdownAfterJobFinishes"),
    "ray version drift": (lambda d: _svc(d)["spec"]["rayClusterConfig"].__setitem__("rayVersion", "2.59.0"), "rayVersion"),
    "image of another Ray": (lambda d: _svc(d)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
                             .__setitem__("image", "lmrec/lmrec:0.1.0-ray2.50.0-cpu"), "image"),
    "serve config not YAML": (lambda d: _svc(d)["spec"].__setitem__("serveConfigV2", "applications: [oops"), "does not parse"),
    "import path missing": (lambda d: _svc(d)["spec"].__setitem__("serveConfigV2", _svc(d)["spec"]["serveConfigV2"].replace(
        "lmrec.serving.app:build_app", "lmrec.serving.app:no_such_builder")), "does not resolve"),
    "unknown app arg": (lambda d: _svc(d)["spec"].__setitem__("serveConfigV2", _svc(d)["spec"]["serveConfigV2"].replace(
        "auth_reads: true", "auth_read: true")), "args of"),
    "min above max": (lambda d: _svc(d)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].__setitem__("minReplicas", 99), "minReplicas"),
    "dashboard exposed": (lambda d: _svc(d)["spec"]["rayClusterConfig"]["headGroupSpec"].__setitem__("serviceType", "LoadBalancer"), "outside the cluster"),
    "no resource limits": (lambda d: _job(d)["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
                           .pop("limits"), "limits"),
    "token in plain text": (lambda d: _svc(d)["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"][0]
                            .update({"value": "hunter2", "valueFrom": None}), "plain text"),
    "bad upgrade strategy": (lambda d: _svc(d)["spec"]["upgradeStrategy"].__setitem__("type", "Rolling"), "upgradeStrategy"),
    "core kind typo": (lambda d: next(x for x in d if x["kind"] == "PersistentVolumeClaim")["spec"].__setitem__("acessModes", ["ReadWriteOnce"]),
                       "kubernetes"),
    "cron schedule not cron": (lambda d: next(x for x in d if x["kind"] == "RayCronJob")["spec"].__setitem__("schedule", "nightly"), "cron"),
    "cron job without entrypoint": (lambda d: next(x for x in d if x["kind"] == "RayCronJob")["spec"]["jobTemplate"].__setitem__("entrypoint", " "),
                                    "jobTemplate.entrypoint"),
    "replicas not an integer": (lambda d: _job(d)["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].__setitem__("replicas", "two"), "schema"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_manifests_are_rejected(schemas, version, case):
    docs = copy.deepcopy(k8s.render(K8S / "overlays" / "prod"))
    breaker, expected = BROKEN[case]
    breaker(docs)
    problems = k8s.validate(docs, version, schemas)
    assert problems, f"{case}: accepted"
    assert any(expected in p for p in problems), problems


def test_render_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nreplacements: []\n")
    with pytest.raises(LmrecError, match="replacements"):
        k8s.render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [x.yaml]\npatches: [{path: p.yaml, target: {kind: RayJob}}]\n")
    (tmp_path / "x.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (tmp_path / "p.yaml").write_text("- {op: replace, path: /spec/x, value: 1}\n")
    with pytest.raises(LmrecError, match="matches no object"):
        k8s.render(tmp_path)
