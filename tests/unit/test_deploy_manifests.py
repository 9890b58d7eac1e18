"""What ``deploy/`` hands a provider or grantee, checked without a cluster: the KubeRay
manifests against KubeRay's own v1 CRD schemas (tests/data/kuberay, with their source), each
RayJob's entrypoint as a gosok command that composes and validates (``dry_run=true``), and
the Slurm script and container recipe present and using the same install split."""

from __future__ import annotations

import gzip
import shlex

import jsonschema
import pytest
import yaml

from tests.conftest import REPO, run_gosok

DEPLOY = REPO / "deploy"
CRDS = REPO / "tests" / "data" / "kuberay"
MANIFESTS = sorted((DEPLOY / "kuberay").glob("*.yaml"))


def crd_schema(kind: str) -> dict:
    crd = yaml.safe_load(gzip.decompress((CRDS / f"ray.io_{kind.lower()}s.yaml.gz").read_bytes()))
    assert crd["spec"]["names"]["kind"] == kind
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


def documents() -> list[tuple[str, dict]]:
    return [
        (f"{path.name}#{i}", doc)
        for path in MANIFESTS
        for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
        if doc
    ]


def test_every_deploy_file_exists():
    for name in ("slurm/gosok.sbatch", "container/Containerfile"):
        assert (DEPLOY / name).is_file(), name
    kinds = {doc["kind"] for _, doc in documents()}
    assert {"RayCluster", "RayJob"} <= kinds


def unknown_fields(doc, schema: dict, path: str = "") -> list[str]:
    """Keys the schema does not declare, as the API server's strict field validation
    (``kubectl apply --validate=strict``) refuses them; JSON Schema alone lets them pass."""
    if isinstance(doc, list):
        return [f for i, item in enumerate(doc)
                for f in unknown_fields(item, schema.get("items", {}), f"{path}[{i}]")]  # fmt: skip
    if not isinstance(doc, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    props = schema.get("properties")
    if props is None:  # a map (additionalProperties) or an opaque object
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return [f for k, v in doc.items() for f in unknown_fields(v, extra, f"{path}.{k}")]
        return []
    return [
        f
        for key, value in doc.items()
        for f in (
            unknown_fields(value, props[key], f"{path}.{key}")
            if key in props
            else [f"{path}.{key}"]
        )
    ]


def check(doc: dict) -> None:
    schema = crd_schema(doc["kind"])
    jsonschema.validate(doc, schema)
    spec_schema = schema["properties"]["spec"]
    unknown = unknown_fields(doc["spec"], spec_schema, "spec")
    assert not unknown, f"fields KubeRay v1 does not know: {unknown}"


@pytest.mark.parametrize("name, doc", documents(), ids=[n for n, _ in documents()])
def test_manifest_is_valid_against_the_kuberay_v1_crd(name, doc):
    if doc["apiVersion"] != "ray.io/v1":
        assert doc["kind"] == "PersistentVolumeClaim" and doc["apiVersion"] == "v1", name
        return
    check(doc)
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    if "headGroupSpec" in spec:  # a cluster of its own: token auth from a Secret, GPUs asked for
        assert spec["authOptions"] == {"mode": "token", "secretName": "gosok-ray-token"}
        for group in spec["workerGroupSpecs"]:
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) == 8
            mounts = group["template"]["spec"]["containers"][0]["volumeMounts"]
            assert any(m["mountPath"] == "/shared" for m in mounts)


@pytest.mark.parametrize(
    "change",
    [
        {"shutdownAfterJobFinishes": "yes"},  # a string where the CRD wants a boolean
        {"entrypont": "gosok bench"},  # a misspelt field
        {"backoffLimit": "three"},
    ],
)
def test_a_manifest_that_breaks_the_schema_is_caught(change):
    doc = next(d for _, d in documents() if d["kind"] == "RayJob")
    with pytest.raises((jsonschema.ValidationError, AssertionError)):
        check({**doc, "spec": {**doc["spec"], **change}})


@pytest.mark.parametrize(
    "name, doc",
    [(n, d) for n, d in documents() if d["kind"] == "RayJob"],
    ids=[n for n, d in documents() if d["kind"] == "RayJob"],
)
def test_rayjob_entrypoint_is_a_gosok_command_that_validates(name, doc, tmp_path):
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "gosok" and argv[1] in ("bench", "launch"), argv
    args = [a for a in argv[2:] if not a.startswith("hydra.run.dir=")]
    result = run_gosok(argv[1], *args, "dry_run=true", f"hydra.run.dir={tmp_path}", timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_requirements_keep_training_packages_in_an_extra():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    assert "deepspeed" not in core and "wandb" not in core
    train = " ".join(project["optional-dependencies"]["train"]).lower()
    assert "deepspeed" in train and "wandb" in train
    recipe = (DEPLOY / "container" / "Containerfile").read_text()
    assert "gosok[train]" in recipe or "[train]" in recipe
