"""deploy/gcp/cluster.yaml, checked offline: Ray's own validation (the `prepare_config` and
`validate_config` that `ray up` runs before it calls GCP), Ray's own choice of subnet for it, the
GPU node types, and the security stance it shares with deploy/aws/cluster.yaml (the same
checkers: token auth on every `ray start`, dashboard on 127.0.0.1, MLflow with accounts on the
head's internal IP). Its firewall is made by `minima gcp-firewall`: tests/test_gcp_firewall.py.
"""

from __future__ import annotations

import copy
import re
import socket
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray
from ray.autoscaler._private.gcp import config as ray_gcp
from ray.autoscaler._private.util import prepare_config, validate_config

from sweeps.cluster.gcp_firewall import FirewallError, cluster_network
from test_cluster_config import exposed_service_problems, mlflow_account_problems, token_auth_problems

ROOT = Path(__file__).resolve().parent.parent
GCP_YAML = ROOT / "deploy" / "gcp" / "cluster.yaml"
AWS_YAML = ROOT / "deploy" / "aws" / "cluster.yaml"


@pytest.fixture(autouse=True)
def no_network(offline, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", offline)  # no GCP, and no DNS either


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(GCP_YAML.read_text())


@pytest.fixture
def config(raw) -> dict:
    return copy.deepcopy(raw)


def prepared_and_validated(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def workers(raw: dict) -> dict:
    return {n: t for n, t in raw["available_node_types"].items() if n != raw["head_node_type"]}


# --- Ray's own code ------------------------------------------------------------------------------

def test_ray_prepares_and_validates_the_config_offline(config):
    prepared = prepared_and_validated(config)
    assert prepared["provider"]["type"] == "gcp" and prepared["provider"]["region"] == "us-central1"
    assert prepared["provider"]["availability_zone"].startswith(prepared["provider"]["region"])
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # our explicit blocks win over Ray's GCP defaults.yaml (a Ray nightly, an old API client)
    assert prepared["worker_setup_commands"] == config["setup_commands"] + config["worker_setup_commands"]
    assert prepared["head_setup_commands"] == config["setup_commands"] + config["head_setup_commands"]
    assert not any("ray-wheels" in c or "google-api-python-client==" in c for c in prepared["head_setup_commands"])


def _drop_resources(c):
    del c["available_node_types"]["gpu-t4-spot"]["resources"]


def _misspelled_field(c):
    c["available_node_types"]["gpu-t4-spot"]["max_worker"] = 8


def _string_max_workers(c):
    c["available_node_types"]["gpu-v100-spot"]["max_workers"] = "4"


@pytest.mark.parametrize("mutate", [_drop_resources, _misspelled_field, _string_max_workers])
def test_ray_validator_rejects_a_broken_copy(config, mutate):
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        prepared_and_validated(config)


class RegionSubnets:
    """What Ray's `_configure_subnet` asks GCP for: the region's subnets, here the default
    network's (the first a fresh project has)."""

    def __init__(self):
        self.asked = 0

    def subnetworks(self):
        return self

    def list(self, project, region):
        self.asked += 1
        self.answer = {"items": [{"selfLink": f"projects/{project}/regions/{region}/subnetworks/default"}]}
        return self

    def execute(self):
        return self.answer


def test_ray_keeps_every_node_on_the_clusters_own_subnet(config):
    compute = RegionSubnets()
    out = ray_gcp._configure_subnet(copy.deepcopy(config), compute)
    assert compute.asked == 0  # every node type names its network: Ray looks up nothing
    for name, node in out["available_node_types"].items():
        assert node["node_config"]["networkInterfaces"] == config["available_node_types"][name]["node_config"][
            "networkInterfaces"], name
    assert cluster_network(config).network == "minima-atlas"


def test_without_network_interfaces_ray_would_pick_the_default_subnet(config):
    """Why every node type names the subnet: Ray would put a node on the region's first subnet."""
    del config["available_node_types"]["gpu-t4-spot"]["node_config"]["networkInterfaces"]
    compute = RegionSubnets()
    out = ray_gcp._configure_subnet(config, compute)
    interface, = out["available_node_types"]["gpu-t4-spot"]["node_config"]["networkInterfaces"]
    assert compute.asked == 1 and interface["subnetwork"].endswith("/subnetworks/default")
    with pytest.raises(FirewallError, match="gpu-t4-spot.node_config.networkInterfaces"):
        cluster_network(config)  # and `minima gcp-firewall` refuses such a config


# --- node types ----------------------------------------------------------------------------------

def test_node_types_list_integer_resources_and_workers_scale_from_zero(raw):
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"]["GPU"] == 0 and "guestAccelerators" not in head["node_config"]
    for name, node in raw["available_node_types"].items():
        assert all(type(v) is int and v >= 0 for v in node["resources"].values()), name
    for name, node in workers(raw).items():
        assert node["min_workers"] == 0 and type(node["max_workers"]) is int and node["max_workers"] >= 1, name
    assert sum(t["max_workers"] for t in workers(raw).values()) >= raw["max_workers"] >= 1


def test_gpu_workers_have_their_gpus_the_driver_and_terminate_on_maintenance(raw):
    for name, node in workers(raw).items():
        cfg = node["node_config"]
        gpus = sum(a["acceleratorCount"] for a in cfg["guestAccelerators"])
        assert gpus == node["resources"]["GPU"] >= 1, name
        kind = cfg["guestAccelerators"][0]["acceleratorType"].removeprefix("nvidia-tesla-").upper()
        assert node["resources"][f"accelerator_type:{kind}"] == 1, name
        assert cfg["scheduling"]["onHostMaintenance"] == "TERMINATE", name  # GPU VMs cannot live-migrate
        assert {"key": "install-nvidia-driver", "value": "True"} in cfg["metadata"]["items"], name
        assert cfg["serviceAccounts"][0]["scopes"] == ["https://www.googleapis.com/auth/cloud-platform"], name
    assert any("nvidia-smi" in c for c in raw["worker_setup_commands"])  # Ray starts once the driver is up


def test_every_spot_type_has_an_on_demand_twin_of_the_same_shape(raw):
    types = workers(raw)
    spot = {n: t for n, t in types.items() if t["node_config"]["scheduling"].get("provisioningModel") == "SPOT"}
    assert spot
    for name, t in spot.items():
        assert t["node_config"]["scheduling"]["instanceTerminationAction"] == "DELETE", name
        twins = [n for n, o in types.items() if n not in spot
                 and o["node_config"]["machineType"] == t["node_config"]["machineType"]
                 and o["node_config"]["guestAccelerators"] == t["node_config"]["guestAccelerators"]
                 and o["resources"] == t["resources"]]
        assert twins, f"{name} has no on-demand fallback"
        for twin in twins:
            assert types[twin]["node_config"]["scheduling"]["provisioningModel"] == "STANDARD"
            assert types[twin].get("priority", 0) < t.get("priority", 0), name


def test_repo_is_mounted_and_installed_at_pinned_versions_with_the_gcp_extra(raw):
    assert raw["file_mounts"] == {"~/minima-atlas": "."}
    install, = [c for c in raw["setup_commands"] if "pip install" in c and "-e" in c]
    assert "minima-atlas[cluster,gcp]" in install and "constraints.txt" in install
    pins = (ROOT / "constraints.txt").read_text().split()
    assert f"ray=={ray.__version__}" in pins and any(p.startswith("google-api-python-client==") for p in pins)
    extras = re.search(r"^gcp = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert "google-api-python-client" in extras and "google-cloud-storage" in extras


# --- security: the same stance and the same checkers as deploy/aws/cluster.yaml --------------------

def test_dashboard_on_localhost_mlflow_on_the_internal_ip_and_token_auth_everywhere(raw):
    assert exposed_service_problems(raw) == []
    assert token_auth_problems(raw) == []
    assert mlflow_account_problems(raw) == []


def test_head_and_worker_commands_match_the_aws_config_but_for_the_artifact_bucket(raw):
    aws = yaml.safe_load(AWS_YAML.read_text())
    assert raw["worker_start_ray_commands"] == aws["worker_start_ray_commands"]
    assert raw["head_setup_commands"] == aws["head_setup_commands"]
    assert raw["cluster_synced_files"] == aws["cluster_synced_files"]
    ours = [c.replace("gs://CHANGE-ME-minima-artifacts", "s3://CHANGE-ME-minima-artifacts")
            for c in raw["head_start_ray_commands"]]
    assert ours == aws["head_start_ray_commands"]


@pytest.mark.parametrize("mutate", [
    lambda c: c["head_start_ray_commands"].__setitem__(1, c["head_start_ray_commands"][1].replace(
        "--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")),
    lambda c: c["worker_start_ray_commands"].__setitem__(1, "ray start --address=$RAY_HEAD_IP:6379"),
    lambda c: c["head_start_ray_commands"].__setitem__(2, c["head_start_ray_commands"][2].replace(
        " --app-name basic-auth", "")),
])
def test_the_shared_checkers_flag_a_broken_copy(config, mutate):
    mutate(config)
    assert exposed_service_problems(config) + token_auth_problems(config) + mlflow_account_problems(config)
