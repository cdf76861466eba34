"""deploy/kuberay/, checked without a Kubernetes cluster.

rayjob.yaml is validated against the RayJob CRD's `openAPIV3Schema` from KubeRay
(../shared/kuberay/, beside the checkout), the schema a Kubernetes API server applies to it, with
the API server's treatment of unknown fields: `kubectl apply` (strict field validation) rejects a
field the schema does not list, and without it the server drops the field silently, so a
misspelled field must fail here. Then the checks KubeRay's operator makes itself
(ValidateRayJobMetadata / ValidateRayJobSpec in ray-operator/controllers/ray/utils/validation.go)
that bear on this file, and the security stance: no Service beyond the cluster network, Ray's
token from a Secret, MLflow with accounts whose secrets come from a Secret.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBERAY = ROOT / "deploy" / "kuberay"
EXPOSED = ("LoadBalancer", "NodePort")
MAX_RAYJOB_NAME = 47  # KubeRay's MaxRayJobNameLength: 53 for a RayCluster, less the 6 it appends


def shared_dir() -> Path:
    """../shared beside the checkout (CI clones the repository next to it); from a git worktree,
    the one beside its main checkout."""
    candidates = [ROOT.parent / "shared"]
    dot_git = ROOT / ".git"
    if dot_git.is_file():  # a worktree: "gitdir: MAIN/.git/worktrees/NAME"
        gitdir = Path(dot_git.read_text().split(":", 1)[1].strip())
        candidates.append(gitdir.parents[2].parent / "shared")
    for path in candidates:
        if (path / "kuberay" / "ray.io_rayjobs.yaml").is_file():
            return path
    raise FileNotFoundError(f"KubeRay's CRDs are not at {' or '.join(str(c / 'kuberay') for c in candidates)}")


# --- the API server's view of a RayJob ------------------------------------------------------------

OBJECT_META = {  # what a manifest may set of metav1.ObjectMeta (the CRD leaves `metadata` open)
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def structural_to_json_schema(node):
    """A Kubernetes structural schema as JSON Schema: an object that lists its properties takes
    no others (the API server prunes or, with strict validation, rejects them) unless it says
    x-kubernetes-preserve-unknown-fields; int-or-string and nullable become plain JSON Schema."""
    if isinstance(node, list):
        return [structural_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: structural_to_json_schema(v) for k, v in node.items()
           if not k.startswith("x-kubernetes-") and k not in ("nullable", "format", "default")}
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crd() -> dict:
    return yaml.safe_load((shared_dir() / "kuberay" / "ray.io_rayjobs.yaml").read_text())


@pytest.fixture(scope="module")
def validator(crd) -> jsonschema.Draft7Validator:
    version, = (v for v in crd["spec"]["versions"] if v["name"] == "v1" and v["served"] and v["storage"])
    schema = structural_to_json_schema(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/v1"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator, manifest: dict) -> list[str]:
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                  for e in validator.iter_errors(manifest))


def unchecked_rules(crd, manifest: dict) -> list[str]:
    """Fields the manifest sets whose schema carries CEL rules (x-kubernetes-validations), which
    this test does not evaluate: none may be used, or the test would pass what the server refuses."""
    found = []

    def walk(value, schema, path):
        if not isinstance(schema, dict):
            return
        if "x-kubernetes-validations" in schema:
            found.append(path)
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(sub, schema.get("properties", {}).get(key), f"{path}.{key}")
        elif isinstance(value, list):
            for i, sub in enumerate(value):
                walk(sub, schema.get("items"), f"{path}[{i}]")

    version, = (v for v in crd["spec"]["versions"] if v["name"] == "v1")
    walk(manifest, version["schema"]["openAPIV3Schema"], "")
    return found


def operator_problems(job: dict) -> list[str]:
    """What KubeRay's own validation refuses that the schema lets through, for this file's fields."""
    problems = []
    name, spec = job["metadata"]["name"], job["spec"]
    if len(name) > MAX_RAYJOB_NAME or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        problems.append(f"name {name!r}: a DNS-1035 label of at most {MAX_RAYJOB_NAME} characters")
    cluster = spec.get("rayClusterSpec")
    if not cluster:
        return problems + ["rayClusterSpec is missing"]
    if cluster.get("authOptions", {}).get("mode") == "token":
        version = tuple(int(p) for p in re.findall(r"\d+", cluster.get("rayVersion", ""))[:3])
        if version < (2, 52, 0):
            problems.append(f"authOptions.mode token needs rayVersion >= 2.52.0, got {cluster.get('rayVersion')!r}")
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]
    for group_name, group in groups:
        pod = group["template"]["spec"]
        if not pod.get("containers"):
            problems.append(f"{group_name}: no container")
        params = group.get("rayStartParams", {})
        if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and group.get("resources"):
            problems.append(f"{group_name}: resources in both rayStartParams and resources")
        if "labels" in params:
            problems.append(f"{group_name}: rayStartParams['labels'] is not supported")
        autoscaler_v2 = cluster.get("enableInTreeAutoscaling") and \
            cluster.get("autoscalerOptions", {}).get("version") == "v2"
        if autoscaler_v2 and pod.get("restartPolicy", "Never") != "Never":
            problems.append(f"{group_name}: restartPolicy must be Never or unset with autoscaler v2")
    if spec.get("ttlSecondsAfterFinished", 0) < 0 or spec.get("backoffLimit", 0) < 0:
        problems.append("ttlSecondsAfterFinished and backoffLimit must not be negative")
    if "activeDeadlineSeconds" in spec and spec["activeDeadlineSeconds"] <= 0:
        problems.append("activeDeadlineSeconds must be positive")
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        problems.append("suspend needs shutdownAfterJobFinishes")
    if spec.get("runtimeEnvYAML") is not None:
        try:
            yaml.safe_load(spec["runtimeEnvYAML"])
        except yaml.YAMLError as err:
            problems.append(f"runtimeEnvYAML is not YAML: {err}")
    return problems


# --- security stance --------------------------------------------------------------------------

def containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("containers", []) + pod_spec.get("initContainers", [])


def pod_specs(doc: dict) -> list[dict]:
    if doc["kind"] == "RayJob":
        cluster = doc["spec"]["rayClusterSpec"]
        return [cluster["headGroupSpec"]["template"]["spec"]] + \
            [g["template"]["spec"] for g in cluster.get("workerGroupSpecs", [])]
    if doc["kind"] == "Deployment":
        return [doc["spec"]["template"]["spec"]]
    return []


def exposure_problems(docs: list[dict]) -> list[str]:
    """Anything that would let a port out of the cluster network: a Service of type LoadBalancer
    or NodePort (the Ray head's among them), an Ingress, a host port, the host's network."""
    problems = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in ("Ingress", "Gateway", "HTTPRoute", "Route"):
            problems.append(f"{kind} {name}")
        if kind == "Service" and doc["spec"].get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"Service {name} is {doc['spec']['type']}")
        if kind == "RayJob":
            head = doc["spec"]["rayClusterSpec"]["headGroupSpec"]
            if head.get("serviceType", "ClusterIP") != "ClusterIP":
                problems.append(f"RayJob {name}: head serviceType {head['serviceType']}")
            if head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") != "ClusterIP":
                problems.append(f"RayJob {name}: headService type {head['headService']['spec']['type']}")
            if head.get("enableIngress"):
                problems.append(f"RayJob {name}: enableIngress")
        for pod in pod_specs(doc):
            if pod.get("hostNetwork"):
                problems.append(f"{kind} {name}: hostNetwork")
            for c in containers(pod):
                problems += [f"{kind} {name}: {c['name']} hostPort {p['hostPort']}"
                             for p in c.get("ports", []) if p.get("hostPort")]
    return problems


SECRET_ENV = re.compile(r"TOKEN|PASSWORD|SECRET|KEY|BACKEND_STORE_URI")


def inline_secret_problems(docs: list[dict]) -> list[str]:
    """A token, password, key or database URI written into a manifest instead of read from a
    Secret; a Secret object in the manifests (its value would be in the repository)."""
    problems = []
    for doc in docs:
        if doc["kind"] == "Secret":
            problems.append(f"Secret {doc['metadata']['name']} is in the manifests")
        for pod in pod_specs(doc):
            for c in containers(pod):
                for env in c.get("env", []):
                    if SECRET_ENV.search(env["name"]) and "value" in env:
                        problems.append(f"{doc['metadata']['name']}/{c['name']}: {env['name']} written inline")
                    if env["name"] == "RAY_AUTH_MODE" and env.get("value") != "token":
                        problems.append(f"{doc['metadata']['name']}/{c['name']}: RAY_AUTH_MODE={env.get('value')}")
    text = yaml.safe_dump_all(docs)
    if re.search(r"\b[0-9a-f]{32,}\b", text) or "password1234" in text:
        problems.append("a token or a default password is written in the manifests")
    return problems


def token_auth_problems(job: dict) -> list[str]:
    auth = job["spec"]["rayClusterSpec"].get("authOptions") or {}
    problems = []
    if auth.get("mode") != "token":
        problems.append(f"authOptions.mode is {auth.get('mode')!r}, not 'token'")
    if not auth.get("secretName"):
        problems.append("authOptions.secretName is not set: the token would not come from a Secret of ours")
    return problems


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rayjob_raw() -> dict:
    docs = list(yaml.safe_load_all((KUBERAY / "rayjob.yaml").read_text()))
    assert len(docs) == 1
    return docs[0]


@pytest.fixture
def rayjob(rayjob_raw) -> dict:
    return copy.deepcopy(rayjob_raw)


@pytest.fixture(scope="module")
def mlflow_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBERAY / "mlflow.yaml").read_text()) if d]


# --- 1. the schema and the operator's own checks -------------------------------------------------

def test_rayjob_passes_the_crd_schema_with_unknown_fields_refused(validator, crd, rayjob):
    assert schema_errors(validator, rayjob) == []
    assert unchecked_rules(crd, rayjob) == []


def test_rayjob_passes_kuberays_own_validation(rayjob):
    assert operator_problems(rayjob) == []


def _misspelled_spec_field(job):
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")


def _misspelled_deep_field(job):
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group["minReplica"] = group.pop("minReplicas")  # also leaves a required field missing


def _misspelled_container_field(job):
    container = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["envfrom"] = container.pop("envFrom")


def _misspelled_auth_field(job):
    job["spec"]["rayClusterSpec"]["authOptions"]["secret"] = "minima-ray-token"


def _misspelled_metadata_field(job):
    job["metadata"]["namespaces"] = "minima"


def _string_for_integer(job):
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "8"


def _string_for_boolean(job):
    job["spec"]["shutdownAfterJobFinishes"] = "true"


def _integer_for_string(job):
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0


def _unknown_auth_mode(job):
    job["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "Token"


def _bad_quantity(job):
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
        "resources"]["limits"]["memory"] = "48 GB"


def _wrong_kind(job):
    job["kind"] = "RayJobs"


@pytest.mark.parametrize("mutate, error", [
    (_misspelled_spec_field, "spec: Additional properties are not allowed ('shutdownAfterJobFinish' was unexpected)"),
    (_misspelled_deep_field, "workerGroupSpecs.0: 'minReplicas' is a required property"),
    (_misspelled_container_field, "containers.0: Additional properties are not allowed ('envfrom' was unexpected)"),
    (_misspelled_auth_field, "authOptions: Additional properties are not allowed ('secret' was unexpected)"),
    (_misspelled_metadata_field, "metadata: Additional properties are not allowed ('namespaces' was unexpected)"),
    (_string_for_integer, "maxReplicas: '8' is not of type 'integer'"),
    (_string_for_boolean, "shutdownAfterJobFinishes: 'true' is not of type 'boolean'"),
    (_integer_for_string, "rayStartParams.num-cpus: 0 is not of type 'string'"),
    (_unknown_auth_mode, "authOptions.mode: 'Token' is not one of ['disabled', 'token']"),
    (_bad_quantity, "limits.memory: '48 GB' does not match"),
    (_wrong_kind, "kind: 'RayJob' was expected"),
])
def test_a_broken_copy_fails_the_schema_naming_the_field(validator, rayjob, mutate, error):
    mutate(rayjob)
    assert any(error in e for e in schema_errors(validator, rayjob)), schema_errors(validator, rayjob)


@pytest.mark.parametrize("mutate, why", [
    (lambda j: j["metadata"].__setitem__("name", "minima-" + "x" * 41), "DNS-1035"),
    (lambda j: j["spec"]["rayClusterSpec"].__setitem__("rayVersion", "2.51.0"), "2.52.0"),
    (lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"].__setitem__(
        "restartPolicy", "Always"), "restartPolicy"),
    (lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"].__setitem__("resources", {"CPU": "0"}), "both"),
])
def test_the_operator_checks_can_fail(rayjob, mutate, why):
    mutate(rayjob)
    assert any(why in p for p in operator_problems(rayjob))


def test_a_cel_rule_field_is_flagged_as_unchecked(crd, rayjob):
    rayjob["spec"]["deletionStrategy"] = {"onSuccess": {"policy": "DeleteCluster"}}
    assert unchecked_rules(crd, rayjob) == [".spec.deletionStrategy"]


def test_the_crd_is_found_beside_the_checkout_or_the_test_fails():
    assert (shared_dir() / "kuberay" / "ray.io_rayjobs.yaml").is_file()


# --- 2. what the RayJob does ---------------------------------------------------------------------

def test_rayjob_runs_or_resumes_a_sweep_with_object_storage_and_the_mlflow_service(rayjob, mlflow_docs):
    entry = rayjob["spec"]["entrypoint"]
    assert re.search(r"minima run sweeps/\S+\.yaml --resume", entry)
    sweep = re.search(r"minima run (sweeps/\S+\.yaml)", entry).group(1)
    assert (ROOT / sweep).is_file()
    storage = re.search(r"--set storage=(\S+)", entry).group(1)
    assert storage.startswith(("s3://", "gs://"))
    tracking = re.search(r"--set tracking_uri=(\S+)", entry).group(1)
    service = next(d for d in mlflow_docs if d["kind"] == "Service")
    port = service["spec"]["ports"][0]["port"]
    assert tracking == f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port}"
    assert rayjob["metadata"]["namespace"] == service["metadata"]["namespace"]


def test_the_sweep_command_accepts_the_entrypoints_settings(rayjob, tmp_path):
    """The entrypoint's `minima run` arguments, read by `minima validate` offline."""
    import shlex
    import subprocess
    import sys

    argv = shlex.split(rayjob["spec"]["entrypoint"].split("&&", 1)[1])
    assert argv[:2] == ["minima", "run"] and "--resume" in argv
    argv = [a for a in argv[2:] if a != "--resume"]
    out = subprocess.run([sys.executable, "-m", "minima.cli", "validate", *argv], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "target    a Ray cluster with GPU workers" in out.stdout
    assert "note      storage: shipped placeholders" in out.stdout  # the bucket is yours to name; tracking is set


def test_gpu_workers_scale_from_zero_and_the_cluster_goes_when_the_job_ends(rayjob):
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 1  # a retry resumes from storage
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    head_container = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head_container["resources"].get("limits", {})
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) > 0]
    assert gpu_groups
    for group in gpu_groups:
        assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0 and group["maxReplicas"] >= 1


def test_the_image_runs_the_ray_that_constraints_pin(rayjob):
    pins = (ROOT / "constraints.txt").read_text().split()
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert f"ray=={cluster['rayVersion']}" in pins
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(cluster['rayVersion'])}-py\d+-gpu$", dockerfile, re.M)
    assert '-c constraints.txt' in dockerfile and '".[cluster]"' in dockerfile
    images = {c["image"] for pod in pod_specs(rayjob) for c in containers(pod)}
    assert len(images) == 1  # head, workers (and so KubeRay's submitter) run the same image


# --- 3. security ---------------------------------------------------------------------------------

def test_nothing_is_exposed_beyond_the_cluster_network(rayjob, mlflow_docs):
    assert exposure_problems([rayjob, *mlflow_docs]) == []


def test_ray_asks_for_a_token_that_comes_from_a_secret(rayjob, mlflow_docs):
    assert token_auth_problems(rayjob) == []
    assert inline_secret_problems([rayjob, *mlflow_docs]) == []


@pytest.mark.parametrize("mutate", [
    lambda docs: docs[0]["spec"]["rayClusterSpec"]["headGroupSpec"].__setitem__("serviceType", "LoadBalancer"),
    lambda docs: docs[0]["spec"]["rayClusterSpec"]["headGroupSpec"].__setitem__(
        "headService", {"spec": {"type": "NodePort"}}),
    lambda docs: docs[0]["spec"]["rayClusterSpec"]["headGroupSpec"].__setitem__("enableIngress", True),
    lambda docs: next(d for d in docs if d["kind"] == "Service")["spec"].__setitem__("type", "NodePort"),
    lambda docs: next(d for d in docs if d["kind"] == "Service")["spec"].__setitem__("type", "LoadBalancer"),
    lambda docs: docs[0]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "ports"][1].__setitem__("hostPort", 8265),
    lambda docs: next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"].__setitem__(
        "hostNetwork", True),
])
def test_the_exposure_check_flags_an_open_door(rayjob, mlflow_docs, mutate):
    docs = [rayjob, *copy.deepcopy(mlflow_docs)]
    mutate(docs)
    assert exposure_problems(docs)


@pytest.mark.parametrize("mutate", [
    lambda j: j["spec"]["rayClusterSpec"]["authOptions"].__setitem__("mode", "disabled"),
    lambda j: j["spec"]["rayClusterSpec"].pop("authOptions"),
    lambda j: j["spec"]["rayClusterSpec"]["authOptions"].pop("secretName"),
])
def test_the_token_check_flags_auth_left_off(rayjob, mutate):
    mutate(rayjob)
    assert token_auth_problems(rayjob)


@pytest.mark.parametrize("env", [
    {"name": "RAY_AUTH_TOKEN", "value": "ab" * 32},
    {"name": "MLFLOW_TRACKING_PASSWORD", "value": "hunter2"},
    {"name": "RAY_AUTH_MODE", "value": "disabled"},
])
def test_the_secret_check_flags_a_value_written_inline(rayjob, mlflow_docs, env):
    rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(env)
    assert inline_secret_problems([rayjob, *mlflow_docs])


def test_mlflow_pod_template_passes_the_pod_schema_the_crd_embeds(crd, mlflow_docs):
    """The CRD carries Kubernetes' own PodTemplateSpec schema (a Ray group's template): the
    MLflow Deployment's pod template is checked against it, unknown fields refused."""
    version, = (v for v in crd["spec"]["versions"] if v["name"] == "v1")
    cluster = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rayClusterSpec"]
    pod_schema = structural_to_json_schema(cluster["properties"]["headGroupSpec"]["properties"]["template"])
    pods = jsonschema.Draft7Validator(pod_schema)
    template = next(d for d in mlflow_docs if d["kind"] == "Deployment")["spec"]["template"]
    assert schema_errors(pods, template) == []
    broken = copy.deepcopy(template)
    broken["spec"]["containers"][0]["readinessprobe"] = broken["spec"]["containers"][0].pop("readinessProbe")
    assert schema_errors(pods, broken) == [
        "spec.containers.0: Additional properties are not allowed ('readinessprobe' was unexpected)"]


def test_mlflow_runs_with_accounts_from_a_secret_behind_a_cluster_ip(mlflow_docs, rayjob):
    kinds = sorted(d["kind"] for d in mlflow_docs)
    assert kinds == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Service"]
    deployment = next(d for d in mlflow_docs if d["kind"] == "Deployment")
    server, = deployment["spec"]["template"]["spec"]["containers"]
    command = " ".join(server.get("command", []) + server.get("args", []))
    assert "mlflow server" in command and "--app-name basic-auth" in command
    assert "--backend-store-uri" not in command  # read from the environment: no password on a command line
    env = {e["name"]: e for e in server["env"]}
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_BACKEND_STORE_URI"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "minima-mlflow", name
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    # the driver's password is the same Secret key as the server's admin password
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    driver = {e["name"]: e for e in head["env"]}
    assert driver["MLFLOW_TRACKING_USERNAME"]["value"] == env["MLFLOW_AUTH_ADMIN_USERNAME"]["value"]
    assert driver["MLFLOW_TRACKING_PASSWORD"]["valueFrom"] == env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]
    # MLflow answers only the Host names it is asked by: the Service's, and localhost for a port-forward
    service = next(d for d in mlflow_docs if d["kind"] == "Service")
    hosts = env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc:5000" in hosts
    assert "localhost:*" in hosts and "*" not in hosts


@pytest.mark.slow
def test_the_mlflow_container_serves_accounts_to_the_services_host_name(mlflow_docs, tmp_path):
    """The Deployment's container, run here as the kubelet would: its command and environment,
    the Secret's keys given test values, the ConfigMap's ini and the volume in a temp dir,
    127.0.0.1 for 0.0.0.0. The admin comes from the environment (no password in the ini), the
    Service's host name and a port-forward's localhost get in, another host name does not."""
    import os
    import signal
    import subprocess
    import sys

    import requests

    sys.path.insert(0, str(ROOT))
    from benchmarks.chaos import answers_health, free_port, wait_for

    deployment = next(d for d in mlflow_docs if d["kind"] == "Deployment")
    config = next(d for d in mlflow_docs if d["kind"] == "ConfigMap")
    server, = deployment["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    data, etc = tmp_path / "data", tmp_path / "etc"
    data.mkdir()
    etc.mkdir()
    for name, text in config["data"].items():
        (etc / name).write_text(text.replace(f"sqlite:///{mounts['data']}/", f"sqlite:///{data}/"))
    secret = {"admin-password": "pw-" + os.urandom(12).hex(), "flask-secret-key": os.urandom(32).hex(),
              "backend-store-uri": f"sqlite:///{data}/mlflow.db"}
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    for item in server["env"]:
        env[item["name"]] = item["value"] if "value" in item else secret[item["valueFrom"]["secretKeyRef"]["key"]]
    env["MLFLOW_AUTH_CONFIG_PATH"] = env["MLFLOW_AUTH_CONFIG_PATH"].replace(mounts["auth"], str(etc))
    env["MINIMA_ARTIFACTS"] = str(tmp_path / "artifacts")
    port = free_port()
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in server["command"]]  # the kubelet's $(VAR)
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "mlflow.log", "w"))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers_health(base) or proc.poll() is not None, 180, "MLflow to answer /health")
        assert proc.poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]

        def ask(host: str, auth=None) -> int:
            return requests.get(f"{base}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                                headers={"Host": host}, auth=auth, timeout=30).status_code

        admin = (env["MLFLOW_AUTH_ADMIN_USERNAME"], secret["admin-password"])
        assert ask("mlflow.minima.svc:5000", admin) == 200  # the sweep driver, through the Service
        assert ask("localhost:5000", admin) == 200  # kubectl port-forward
        assert ask("mlflow.minima.svc:5000") == 401
        assert ask("mlflow.minima.svc:5000", ("admin", "password1234")) == 401
        assert ask("attacker.example:5000", admin) == 403  # DNS rebinding
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
