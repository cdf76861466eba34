"""deploy/aws/cluster.yaml, checked offline: Ray's own validation plus the security rules of this project.

`ray up` first runs `prepare_config` (merges Ray's AWS defaults.yaml, a file read, and fills the
per-type min/max workers) and `validate_config` (ray-schema.json plus a few checks). Both are
offline, and they are what we call here. What `ray up` does next needs AWS and is not called:
`fillout_available_node_types_resources` (EC2 DescribeInstanceTypes) and `bootstrap_config`
(IAM, key pair, subnets, security group). A fixture turns any socket connection into an error, so a
test that reached the network would fail instead of talking to AWS.

The cluster's security group is made before `ray up` by `minima aws-security-group`, with Ray's
intra-cluster rule and our IpPermissions only; Ray then leaves its rules alone (Ray's own bootstrap
against a mocked AWS shows it: tests/test_aws_security_group.py). Here the rules it writes are
checked offline (see `cluster_inbound_rules`): nothing is open to 0.0.0.0/0 or ::/0.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import socket
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray
from ray.autoscaler._private.util import prepare_config, validate_config

from sweeps.cluster.aws_security_group import GroupError, intended_rules

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "deploy" / "aws" / "cluster.yaml"

# Ports that must never face the internet: dashboard + Jobs API, MLflow, GCS, Ray Client.
PROTECTED_PORTS = (8265, 5000, 6379, 10001)
PRIVATE_IP = "\"$(hostname -I | awk '{print $1}')\""


@pytest.fixture(autouse=True)
def no_network(offline, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", offline)  # no AWS, and no DNS either


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture
def config(raw) -> dict:
    """A fresh copy of the file: YAML aliases share objects, so mutate only deep copies."""
    return copy.deepcopy(raw)


def prepared_and_validated(config: dict) -> dict:
    """The offline part of `ray up`: prepare_config, then validate_config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


# --- security checkers ---------------------------------------------------------------------------

def _world_sources(rule: dict) -> list[str]:
    """The rule's CIDRs that mean 'anyone' (a /0, IPv4 or IPv6)."""
    cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
    cidrs += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
    return [c for c in cidrs if c and ipaddress.ip_network(c, strict=False).prefixlen == 0]


def _port_span(rule: dict) -> tuple[int, int] | None:
    """(first, last) TCP/UDP port a rule opens; None for ICMP-style rules that open no port."""
    proto = str(rule.get("IpProtocol", "-1")).lower()
    if proto in ("-1", "all"):
        return 0, 65535
    if proto in ("tcp", "udp", "6", "17"):
        lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
        lo = 0 if lo in (None, -1) else int(lo)
        hi = 65535 if hi in (None, -1) else int(hi)
        return lo, hi
    return None


def world_open_problems(ip_permissions: list[dict]) -> list[str]:
    """Rules that open anything, SSH included, to 0.0.0.0/0 or ::/0."""
    problems = []
    for i, rule in enumerate(ip_permissions):
        world, span = _world_sources(rule), _port_span(rule)
        if not world:
            continue
        lo, hi = span or (None, None)
        protected = [p for p in PROTECTED_PORTS if span and lo <= p <= hi]
        problems.append(f"rule {i} opens ports {lo}-{hi} to {world} (protected: {protected})")
    return problems


def cluster_inbound_rules(config: dict, own_group="sg-0cluster") -> list[dict]:
    """The inbound rules `minima aws-security-group` writes into the cluster's group, which `ray up`
    then keeps: Ray's intra-cluster rule and the file's IpPermissions."""
    return intended_rules(copy.deepcopy(config), {own_group})


def exposed_service_problems(config: dict) -> list[str]:
    """Dashboard / Jobs API must bind 127.0.0.1, MLflow the head's private IP."""
    problems = []
    head = config["head_start_ray_commands"]
    ray_head = [c for c in head if "ray start" in c and "--head" in c]
    if len(ray_head) != 1:
        problems.append(f"expected one `ray start --head`, got {ray_head}")
    for cmd in ray_head:
        if "--dashboard-host=127.0.0.1" not in cmd or re.search(r"--dashboard-host[= ](?!127\.0\.0\.1\b)", cmd):
            problems.append(f"dashboard not bound to 127.0.0.1 only: {cmd}")
    mlflow = [c for c in head if "mlflow server" in c]
    if len(mlflow) != 1:
        problems.append(f"expected one `mlflow server` start, got {mlflow}")
    for cmd in mlflow:
        hosts = re.findall(r"--host[= ](\"[^\"]*\"|\S+)", cmd)
        if hosts != [PRIVATE_IP]:
            problems.append(f"mlflow --host must be the private IP {PRIVATE_IP}, got {hosts}")
        if "0.0.0.0" in cmd or "::" in cmd:
            problems.append(f"mlflow command mentions a wildcard address: {cmd}")
    return problems


def token_auth_problems(config: dict) -> list[str]:
    """Every `ray start` runs with token authentication, the token is made on the head before
    Ray starts there and reaches each worker before its `ray start`, and no secret is in the file."""
    problems = []
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    if len(starts) != 2:
        problems.append(f"expected one `ray start` on the head and one on workers, got {starts}")
    for cmd in starts:
        before = cmd[:cmd.index("ray start")]
        if not re.search(r"(^|[\s;])RAY_AUTH_MODE=token\s+$", before):
            problems.append(f"`ray start` without RAY_AUTH_MODE=token right before it: {cmd}")
    if "~/.ray/auth_token" not in (config.get("cluster_synced_files") or []):
        problems.append("the head's ~/.ray/auth_token is not in cluster_synced_files (workers would start without it)")
    if not any("minima head-secrets" in c for c in config.get("head_setup_commands") or []):
        problems.append("no `minima head-secrets` in head_setup_commands: nothing makes the token on the head")
    text = yaml.safe_dump(config)
    if re.search(r"\b[0-9a-f]{32,}\b", text) or "password1234" in text or "RAY_AUTH_MODE=disabled" in text:
        problems.append("a token, a password or RAY_AUTH_MODE=disabled is written in the file")
    return problems


def mlflow_account_problems(config: dict) -> list[str]:
    problems = []
    servers = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    for cmd in servers:
        if "--app-name basic-auth" not in cmd:
            problems.append(f"mlflow server without accounts (--app-name basic-auth): {cmd}")
        if ". ~/.minima/mlflow-server.env" not in cmd[:cmd.index("mlflow server")]:
            problems.append("mlflow server starts without its secrets (. ~/.minima/mlflow-server.env)")
    head = next((c for c in config["head_start_ray_commands"] if "ray start --head" in c), "")
    if ". ~/.minima/mlflow-client.env" not in head[:head.index("ray start")] if head else True:
        problems.append("the head's `ray start` lacks the MLflow client credentials the sweep driver logs with")
    return problems


# --- 1. Ray's own validation ---------------------------------------------------------------------

def test_ray_prepares_and_validates_the_config_offline(config):
    prepared = prepared_and_validated(config)
    assert prepared["cluster_name"] == "minima-atlas"
    assert prepared["provider"]["type"] == "aws" and prepared["provider"]["region"] == "us-west-2"
    assert isinstance(prepared["provider"]["cache_stopped_nodes"], bool)
    assert prepared["auth"]["ssh_user"] == "ubuntu"
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # our explicit blocks win over Ray's AWS defaults.yaml (which would pip-install a Ray nightly)
    assert prepared["worker_setup_commands"] == config["setup_commands"]
    assert prepared["head_setup_commands"] == config["setup_commands"] + config["head_setup_commands"]
    assert not any("ray-wheels" in c or "nightly" in c for c in prepared["head_setup_commands"])


def test_global_scaling_fields_are_set_in_the_file(raw):
    # set here, not inherited from Ray's defaults.yaml
    assert isinstance(raw["max_workers"], int) and raw["max_workers"] >= 1
    assert raw["idle_timeout_minutes"] > 0 and raw["upscaling_speed"] > 0


# --- 2. node types -------------------------------------------------------------------------------

def test_node_types_list_integer_resources_and_workers_scale_from_zero(raw):
    types, head = raw["available_node_types"], raw["head_node_type"]
    for name, node in types.items():
        res = node["resources"]
        assert type(res["CPU"]) is int and type(res["GPU"]) is int, name
        assert all(type(v) is int and v >= 0 for v in res.values()), (name, res)
        if name != head:
            assert node["min_workers"] == 0, name
            assert type(node["max_workers"]) is int and node["max_workers"] >= 1, name
    assert types[head]["resources"]["GPU"] == 0 and types[head]["resources"]["CPU"] == 8
    gpu_types = {n for n, t in types.items() if t["resources"]["GPU"] >= 1}
    assert gpu_types and head not in gpu_types
    shapes = {t["node_config"]["InstanceType"]: t["resources"]["GPU"] for t in types.values()}
    assert shapes["g5.xlarge"] == 1 and shapes["p3.2xlarge"] == 1 and shapes["p4d.24xlarge"] == 8


def test_every_spot_type_has_an_on_demand_twin_of_the_same_shape(raw):
    types = raw["available_node_types"]
    spot = {n: t for n, t in types.items()
            if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"}
    assert spot, "no spot worker types"
    assert raw["head_node_type"] not in spot
    for name, t in spot.items():
        twins = [n for n, o in types.items()
                 if n not in spot and n != raw["head_node_type"]
                 and o["node_config"]["InstanceType"] == t["node_config"]["InstanceType"]
                 and o["resources"] == t["resources"]]
        assert twins, f"{name} has no on-demand fallback"
        assert all(types[n].get("priority", 0) < t.get("priority", 0) for n in twins), name


def test_one_dlami_for_all_node_types_with_a_lookup_comment(raw):
    images = {t["node_config"]["ImageId"] for t in raw["available_node_types"].values()}
    assert len(images) == 1 and re.fullmatch(r"ami-[0-9a-f]{8}(?:[0-9a-f]{9})?", images.pop())
    text = CLUSTER_YAML.read_text()
    assert "aws ec2 describe-images" in text and "--owners amazon" in text
    assert "Deep Learning OSS Nvidia Driver AMI GPU PyTorch*Ubuntu 22.04*" in text


def test_repo_is_mounted_and_installed_with_the_cluster_extra_at_pinned_versions(raw):
    assert raw["file_mounts"] == {"~/minima-atlas": "."}
    install = [c for c in raw["setup_commands"] if "pip install" in c and "-e" in c]
    assert len(install) == 1
    assert "minima-atlas[cluster]" in install[0] and "-c" in install[0] and "constraints.txt" in install[0]
    # the cluster must run the Ray of the machine that runs `ray up`
    pins = (ROOT / "constraints.txt").read_text().split()
    assert f"ray=={ray.__version__}" in pins
    assert raw["worker_start_ray_commands"][0] == "ray stop"
    assert "ray start --address=$RAY_HEAD_IP:6379" in raw["worker_start_ray_commands"][-1]


# --- 3. security ---------------------------------------------------------------------------------

def test_config_rules_open_nothing_but_ssh_and_ssh_only_to_a_range(raw):
    rules = raw["provider"]["security_group"]["IpPermissions"]
    assert world_open_problems(rules) == []
    ssh = [r for r in rules if _port_span(r) == (22, 22)]
    assert ssh and all(_world_sources(r) == [] for r in ssh)


def test_rules_the_cluster_group_gets_keep_protected_ports_inside_the_cluster(raw):
    rules = cluster_inbound_rules(raw)
    assert world_open_problems(rules) == []
    # SSH from the file's range only
    ssh_sources = {r["CidrIp"] for rule in rules if (span := _port_span(rule)) and span[0] <= 22 <= span[1]
                   for r in rule.get("IpRanges", [])}
    assert ssh_sources == {"203.0.113.0/24"}
    for port in PROTECTED_PORTS:
        for rule in rules:
            span = _port_span(rule)
            if span and span[0] <= port <= span[1]:
                assert not rule.get("IpRanges") and not rule.get("Ipv6Ranges"), (port, rule)
                assert rule["UserIdGroupPairs"] == [{"GroupId": "sg-0cluster"}], (port, rule)
    # intra-cluster traffic: everything, but only from members of the cluster's own group
    assert {"FromPort": -1, "ToPort": -1, "IpProtocol": "-1",
            "UserIdGroupPairs": [{"GroupId": "sg-0cluster"}]} in rules


def test_dashboard_on_localhost_and_mlflow_on_the_private_ip(raw):
    assert exposed_service_problems(raw) == []
    head = raw["head_start_ray_commands"]
    assert head[0] == "ray stop"
    start = next(c for c in head if "ray start --head" in c)
    assert "--port=6379" in start and "--autoscaling-config=~/ray_bootstrap_config.yaml" in start
    mlflow = next(c for c in head if "mlflow server" in c)
    for part in ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false",
                 'MLFLOW_BACKEND_STORE_URI="${MINIMA_MLFLOW_DB:-sqlite:////home/ubuntu/mlflow.db}" ',
                 '--artifacts-destination "${MINIMA_ARTIFACTS:-s3://CHANGE-ME-minima-artifacts}"',
                 "--port 5000", "--workers 2", "> ~/mlflow-server.log 2>&1"):
        assert part in mlflow, part
    assert mlflow.rstrip().endswith("echo $! > ~/mlflow-server.pid") and "nohup" in mlflow
    assert "--backend-store-uri" not in mlflow  # a database password on the command line: `ps` shows it


def test_every_ray_start_runs_with_a_token_made_on_the_head_and_synced_to_workers(raw):
    assert token_auth_problems(raw) == []


def test_mlflow_runs_with_accounts_and_the_sweep_driver_has_credentials(raw):
    assert mlflow_account_problems(raw) == []
    extras = re.search(r"^cluster = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert "mlflow[auth]" in extras  # the basic-auth app needs Flask-WTF


def test_head_secrets_writes_the_token_where_cluster_yaml_syncs_it_from(raw, tmp_path, monkeypatch):
    """The command head_setup_commands runs, with the head's home in a temp dir."""
    import stat

    from minima.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    for _ in range(2):  # a second `ray up` keeps the secrets
        assert main(["head-secrets"]) == 0
    token = Path(raw["cluster_synced_files"][0].replace("~", str(tmp_path), 1))
    assert len(token.read_text()) == 64 and stat.S_IMODE(token.stat().st_mode) == 0o600
    for name in ("mlflow-server.env", "mlflow-client.env"):
        assert (tmp_path / ".minima" / name).exists(), name
        assert f". ~/.minima/{name}" in " ".join(raw["head_start_ray_commands"])
    assert stat.S_IMODE((tmp_path / ".minima").stat().st_mode) == 0o700


# --- 4. the checks can fail ----------------------------------------------------------------------

@pytest.mark.parametrize("bad_rule, port", [
    ({"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, 8265),
    ({"IpProtocol": "tcp", "FromPort": 4000, "ToPort": 7000, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}, 5000),
    ({"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, 10001),
    ({"IpProtocol": "tcp", "FromPort": 20, "ToPort": 25, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, None),
    ({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, 22),
    ({"IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, None),
])
def test_checker_flags_a_rule_that_opens_a_port_to_the_world(config, bad_rule, port):
    config["provider"]["security_group"]["IpPermissions"].append(bad_rule)
    problems = world_open_problems(config["provider"]["security_group"]["IpPermissions"])
    assert len(problems) == 1 and (port is None or str(port) in problems[0] or "0-65535" in problems[0])
    with pytest.raises(GroupError, match=r"IpPermissions\[1\] lets in"):  # the step refuses to write it
        cluster_inbound_rules(config)
    # and Ray's validator does not catch this: the schema does not look inside IpPermissions
    prepared_and_validated(config)


@pytest.mark.parametrize("command, wrong", [
    ("ray start --head --port=6379 --dashboard-host=0.0.0.0 --autoscaling-config=~/ray_bootstrap_config.yaml",
     "dashboard"),
    ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false nohup mlflow server --host 0.0.0.0 --port 5000 &", "mlflow"),
])
def test_checker_flags_a_service_bound_to_every_interface(config, command, wrong):
    cmds = config["head_start_ray_commands"]
    i = next(i for i, c in enumerate(cmds) if ("mlflow server" if wrong == "mlflow" else "ray start") in c)
    cmds[i] = command
    problems = exposed_service_problems(config)
    assert problems and all(wrong in p for p in problems)


def _drop_resources(c):
    del c["available_node_types"]["gpu-a10g-spot"]["resources"]


def _fractional_gpu(c):
    c["available_node_types"]["gpu-a10g-spot"]["resources"]["GPU"] = 0.5


def _misspelled_field(c):
    c["available_node_types"]["gpu-a10g-spot"]["min_worker"] = 0


def _unknown_top_level_key(c):
    c["max_worker"] = 4


def _string_max_workers(c):
    c["available_node_types"]["gpu-v100-spot"]["max_workers"] = "4"


@pytest.mark.parametrize("mutate", [_drop_resources, _fractional_gpu, _misspelled_field,
                                    _unknown_top_level_key, _string_max_workers])
def test_ray_validator_rejects_a_broken_copy(config, mutate):
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        prepared_and_validated(config)


def test_ray_validator_rejects_more_min_workers_than_the_global_cap(config):
    config["available_node_types"]["gpu-a10g-spot"]["min_workers"] = config["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        prepared_and_validated(config)


@pytest.mark.parametrize("mutate", [
    lambda c: c["worker_start_ray_commands"].__setitem__(1, "ulimit -n 65536; ray start --address=$RAY_HEAD_IP:6379"),
    lambda c: c["head_start_ray_commands"].__setitem__(
        1, c["head_start_ray_commands"][1].replace("RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled")),
    lambda c: c.__setitem__("cluster_synced_files", []),
    lambda c: c.__setitem__("head_setup_commands", []),
    lambda c: c["worker_start_ray_commands"].__setitem__(
        1, "RAY_AUTH_TOKEN=" + "ab" * 32 + " RAY_AUTH_MODE=token ray start --address=$RAY_HEAD_IP:6379"),
])
def test_token_checker_flags_a_door_left_open(config, mutate):
    mutate(config)
    assert token_auth_problems(config)


def test_mlflow_checker_flags_a_server_without_accounts(config):
    cmds = config["head_start_ray_commands"]
    i = next(i for i, c in enumerate(cmds) if "mlflow server" in c)
    cmds[i] = cmds[i].replace(" --app-name basic-auth", "")
    assert mlflow_account_problems(config)
