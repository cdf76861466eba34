"""`minima gcp-firewall`, the step before `ray up` on GCP, against a stand-in for gcloud
(tests/fixtures/gcloud/gcloud) that keeps one project's networks, subnets and firewall rules in a
file: nothing is sent to GCP.

The project starts as a fresh one does, with the default network and its default rules
(`default-allow-ssh` lets SSH in from 0.0.0.0/0). After the step, the network every node type of
deploy/gcp/cluster.yaml names has two ingress rules: everything between the cluster's tagged
nodes, and SSH from the given range; nothing from 0.0.0.0/0 or ::/0. A world-open rule on it, a
world range, a node type on no named network, each is refused (exit 2) before anything changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from minima.cli import main
from sweeps.cluster.gcp_firewall import ClusterNetwork, intended_rules, world_open

ROOT = Path(__file__).resolve().parent.parent
GCP_YAML = ROOT / "deploy" / "gcp" / "cluster.yaml"
FAKE_GCLOUD = ROOT / "tests" / "fixtures" / "gcloud"
PROJECT = "minima-test-project"
SSH_RANGE = "203.0.113.0/24"
API = "https://www.googleapis.com/compute/v1"


def default_network_rule(name, allowed, source):
    return {"name": name, "network": f"{API}/projects/{PROJECT}/global/networks/default", "direction": "INGRESS",
            "disabled": False, "priority": 65534, "allowed": allowed, "sourceRanges": [source]}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A fresh project's state: the default network and its four default rules."""
    state = tmp_path / "gcloud-state.json"
    state.write_text(json.dumps({
        "project": PROJECT, "calls": [],
        "networks": [{"name": "default", "selfLink": f"{API}/projects/{PROJECT}/global/networks/default"}],
        "subnets": [{"name": "default", "ipCidrRange": "10.128.0.0/20",
                     "network": f"{API}/projects/{PROJECT}/global/networks/default",
                     "region": f"{API}/projects/{PROJECT}/regions/us-central1"}],
        "firewalls": [default_network_rule("default-allow-ssh", [{"IPProtocol": "tcp", "ports": ["22"]}], "0.0.0.0/0"),
                      default_network_rule("default-allow-rdp", [{"IPProtocol": "tcp", "ports": ["3389"]}], "0.0.0.0/0"),
                      default_network_rule("default-allow-icmp", [{"IPProtocol": "icmp"}], "0.0.0.0/0"),
                      default_network_rule("default-allow-internal", [{"IPProtocol": "all"}], "10.128.0.0/9")]}))
    return state


@pytest.fixture
def config_file(tmp_path) -> Path:
    """deploy/gcp/cluster.yaml with the project filled in, as a user's copy."""
    path = tmp_path / "cluster.yaml"
    path.write_text(GCP_YAML.read_text().replace("CHANGE-ME-project", PROJECT))
    return path


@pytest.fixture
def firewall(project, monkeypatch, capsys):
    """`minima gcp-firewall ARGS`, run in this process with the stand-in gcloud first on PATH."""
    monkeypatch.setenv("PATH", f"{FAKE_GCLOUD}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_STATE", str(project))

    def run(*args: str) -> SimpleNamespace:
        code = main(["gcp-firewall", *args])
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


def rules_on(project: Path, network: str) -> list[dict]:
    return [r for r in json.loads(project.read_text())["firewalls"] if r["network"].endswith(f"/networks/{network}")]


def test_the_step_makes_the_network_with_ssh_from_the_range_only(firewall, project, config_file):
    out = firewall(str(config_file), "--ssh-from", SSH_RANGE)
    assert out.returncode == 0, out.stderr
    state = json.loads(project.read_text())
    assert "minima-atlas" in {n["name"] for n in state["networks"]}
    subnet, = [s for s in state["subnets"] if s["name"] == "minima-atlas"]
    assert subnet["network"].endswith("/networks/minima-atlas") and subnet["region"].endswith("/us-central1")
    rules = rules_on(project, "minima-atlas")
    assert [r for r in rules if world_open(r)] == []
    by_name = {r["name"]: r for r in rules}
    assert set(by_name) == {"minima-atlas-internal", "minima-atlas-ssh"}
    ssh = by_name["minima-atlas-ssh"]
    assert ssh["sourceRanges"] == [SSH_RANGE] and ssh["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
    assert ssh["targetTags"] == ["minima-atlas"]
    internal = by_name["minima-atlas-internal"]  # every port, but only from the cluster's own nodes
    assert internal["sourceTags"] == internal["targetTags"] == ["minima-atlas"] and "sourceRanges" not in internal
    # the only door from outside the cluster's nodes is port 22: the dashboard, Jobs API, MLflow,
    # GCS and Ray Client ports are open to tagged nodes only
    assert [r["name"] for r in rules if r.get("sourceRanges")] == ["minima-atlas-ssh"]
    assert "minima-atlas-ssh: tcp:22 from 203.0.113.0/24 to minima-atlas" in out.stdout
    assert "default-allow-ssh" not in out.stdout + out.stderr  # another network's rules are not ours to judge


def test_every_node_type_sits_on_the_network_the_step_guards(firewall, project, config_file):
    assert firewall(str(config_file), "--ssh-from", SSH_RANGE).returncode == 0
    raw = yaml.safe_load(config_file.read_text())
    tags = {r["name"]: r["targetTags"] for r in rules_on(project, "minima-atlas")}
    for name, node in raw["available_node_types"].items():
        interface, = node["node_config"]["networkInterfaces"]
        assert interface["network"].endswith("/minima-atlas") and interface["subnetwork"].endswith("/minima-atlas")
        assert all(node["node_config"]["tags"]["items"] == t for t in tags.values()), name


def test_the_step_is_idempotent_and_follows_a_changed_range(firewall, project, config_file):
    assert firewall(str(config_file), "--ssh-from", SSH_RANGE).returncode == 0
    calls = len(json.loads(project.read_text())["calls"])
    again = firewall(str(config_file), "--ssh-from", SSH_RANGE)
    assert again.returncode == 0 and "ran:" not in again.stderr
    made = [c for c in json.loads(project.read_text())["calls"][calls:] if c[2] in ("create", "update")]
    assert made == []
    moved = firewall(str(config_file), "--ssh-from", "198.51.100.0/24", "--ssh-from", SSH_RANGE)
    assert moved.returncode == 0 and "firewall-rules update minima-atlas-ssh" in moved.stderr
    ssh, = [r for r in rules_on(project, "minima-atlas") if r["name"] == "minima-atlas-ssh"]
    assert sorted(ssh["sourceRanges"]) == ["198.51.100.0/24", SSH_RANGE]


def test_a_world_open_rule_on_the_network_is_refused_with_its_fix(firewall, project, config_file):
    assert firewall(str(config_file), "--ssh-from", SSH_RANGE).returncode == 0
    state = json.loads(project.read_text())
    state["firewalls"].append({"name": "open-dashboard", "network": f"{API}/projects/{PROJECT}/global/networks/minima-atlas",
                               "direction": "INGRESS", "disabled": False, "sourceRanges": ["0.0.0.0/0"],
                               "allowed": [{"IPProtocol": "tcp", "ports": ["8265"]}]})
    project.write_text(json.dumps(state))
    out = firewall(str(config_file), "--ssh-from", SSH_RANGE)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    line, = out.stderr.strip().splitlines()
    assert "lets in the world (open-dashboard: tcp:8265 from 0.0.0.0/0" in line
    assert f"gcloud compute firewall-rules delete open-dashboard --project={PROJECT}" in line


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0"])
def test_a_world_range_is_refused_before_any_gcloud_call(firewall, project, config_file, cidr):
    out = firewall(str(config_file), "--ssh-from", cidr)
    assert out.returncode == 2 and "that is everyone" in out.stderr
    assert json.loads(project.read_text())["calls"] == []


def test_a_node_type_on_no_named_network_is_refused(firewall, project, config_file):
    raw = yaml.safe_load(config_file.read_text())
    del raw["available_node_types"]["gpu-v100-spot"]["node_config"]["networkInterfaces"]
    config_file.write_text(yaml.safe_dump(raw))
    out = firewall(str(config_file), "--ssh-from", SSH_RANGE)
    assert out.returncode == 2 and "gpu-v100-spot.node_config.networkInterfaces" in out.stderr
    assert json.loads(project.read_text())["calls"] == []


def test_the_shipped_placeholder_project_is_refused(firewall):
    out = firewall(str(GCP_YAML), "--ssh-from", SSH_RANGE)
    assert out.returncode == 2 and "provider.project_id: set your GCP project" in out.stderr


def test_gclouds_open_default_for_a_rule_without_a_source_is_caught(firewall, project, config_file, monkeypatch):
    """A rule made with neither --source-ranges nor --source-tags is open to 0.0.0.0/0 (gcloud's
    default, which the stand-in keeps): were the step to make one, it would fail, not pass."""
    from sweeps.cluster import gcp_firewall

    def no_source(net, rule):
        argv = original(net, rule)
        return [a for a in argv if not a.startswith(("--source-ranges", "--source-tags"))]

    original = gcp_firewall.create_line
    monkeypatch.setattr(gcp_firewall, "create_line", no_source)
    net = gcp_firewall.cluster_network(yaml.safe_load(config_file.read_text()))
    with pytest.raises(gcp_firewall.FirewallError, match="lets in the world"):
        gcp_firewall.ensure_network(net, [SSH_RANGE], "10.42.0.0/20")


def test_the_intended_rules_open_nothing_to_the_world():
    net = ClusterNetwork(PROJECT, "us-central1", "minima-atlas", "minima-atlas", "minima-atlas")
    rules = intended_rules(net, [SSH_RANGE])
    assert [r for r in rules if world_open(r)] == []
    assert world_open({**rules[1], "sourceRanges": ["0.0.0.0/0"]}) == ["0.0.0.0/0"]
    assert world_open({**rules[1], "sourceRanges": ["::/0"]}) == ["::/0"]
