"""The GCP network a cluster's nodes sit on and its firewall, made or checked before `ray up`
with the gcloud CLI: `minima gcp-firewall deploy/gcp/cluster.yaml --ssh-from CIDR`.

Ray's GCP launcher makes no firewall rule. A node type without `networkInterfaces` it puts on
the region's first subnet (`_configure_subnet` in ray/autoscaler/_private/gcp/config.py), often
the default network's, whose `default-allow-ssh` lets SSH in from 0.0.0.0/0. So every node type
of the config names the cluster's own network and subnet and carries its network tag, and the
network's ingress rules are the two made here: everything between nodes that carry the tag, and
SSH from the ranges given. A rule on that network open to 0.0.0.0/0 or ::/0 is refused.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass, field


class FirewallError(ValueError):
    """The config or the network is not as this project's stance needs it."""


@dataclass(frozen=True)
class ClusterNetwork:
    project: str
    region: str
    network: str
    subnet: str
    tag: str


@dataclass
class NetworkReport:
    made: list[str] = field(default_factory=list)  # what was created or changed, as gcloud lines
    rules: list[dict] = field(default_factory=list)  # the network's ingress rules afterwards
    extra: list[dict] = field(default_factory=list)  # rules there that are not ours


def _last(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def cluster_network(config: dict) -> ClusterNetwork:
    """The one network, subnet and tag every node type of a GCP cluster config names."""
    provider = config.get("provider") or {}
    if provider.get("type") != "gcp":
        raise FirewallError(f"provider.type is {provider.get('type')!r}; this command is for GCP")
    seen = set()
    for name, node_type in (config.get("available_node_types") or {}).items():
        node = node_type.get("node_config") or {}
        interfaces = node.get("networkInterfaces") or []
        if len(interfaces) != 1 or not interfaces[0].get("network") or not interfaces[0].get("subnetwork"):
            raise FirewallError(
                f"available_node_types.{name}.node_config.networkInterfaces: name the cluster's network and "
                f"subnetwork (one interface); without them Ray puts the node on the region's first subnet, "
                f"whose firewall (the default network's lets SSH in from 0.0.0.0/0) is not this project's")
        tags = (node.get("tags") or {}).get("items") or []
        if len(tags) != 1:
            raise FirewallError(f"available_node_types.{name}.node_config.tags.items: one network tag, the one "
                                f"the cluster's firewall rules name")
        subnet = interfaces[0]["subnetwork"]
        region = f"/{subnet}".split("/regions/", 1)[1].split("/")[0] if "/regions/" in f"/{subnet}" else ""
        if region and region != provider.get("region"):
            raise FirewallError(f"available_node_types.{name}: subnetwork {subnet} is not in provider.region "
                                f"{provider.get('region')}")
        seen.add((_last(interfaces[0]["network"]), _last(subnet), tags[0]))
    if len(seen) != 1:
        raise FirewallError(f"available_node_types: every node type must use one network, subnetwork and tag; "
                            f"found {sorted(seen)}")
    network, subnet, tag = seen.pop()
    return ClusterNetwork(provider.get("project_id") or "", provider["region"], network, subnet, tag)


def _world(cidr: str) -> bool:
    return ipaddress.ip_network(cidr, strict=False).prefixlen == 0


def check_ranges(ranges: list[str]) -> list[str]:
    """The SSH ranges as networks; refuses a range open to everyone."""
    out = []
    for cidr in ranges:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise FirewallError(f"--ssh-from {cidr}: not an IP range (e.g. 203.0.113.0/24)") from None
        if net.prefixlen == 0:
            raise FirewallError(f"--ssh-from {cidr}: that is everyone; give your office or VPN range")
        out.append(str(net))
    if not out:
        raise FirewallError("--ssh-from: give the range the machine running `ray up` is in")
    return out


def intended_rules(net: ClusterNetwork, ssh_ranges: list[str]) -> list[dict]:
    """The cluster network's ingress rules, as GCE Firewall resources: everything between the
    cluster's nodes (its tag, as AWS's group lets in its own members), and SSH from the ranges."""
    return [
        {"name": f"{net.network}-internal", "direction": "INGRESS", "sourceTags": [net.tag],
         "targetTags": [net.tag], "allowed": [{"IPProtocol": "all"}]},
        {"name": f"{net.network}-ssh", "direction": "INGRESS", "sourceRanges": check_ranges(ssh_ranges),
         "targetTags": [net.tag], "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}]},
    ]


def world_open(rule: dict) -> list[str]:
    """The rule's source ranges that mean 'anyone', when it lets traffic in."""
    if rule.get("direction", "INGRESS") != "INGRESS" or rule.get("disabled") or not rule.get("allowed"):
        return []
    return [c for c in rule.get("sourceRanges") or [] if _world(c)]


def describe(rule: dict) -> str:
    allowed = ",".join(a["IPProtocol"] + (":" + "/".join(a["ports"]) if a.get("ports") else "")
                       for a in rule.get("allowed") or [])
    source = ",".join(rule.get("sourceRanges") or []) or "tag " + ",".join(rule.get("sourceTags") or [])
    target = ",".join(rule.get("targetTags") or []) or "every instance"
    return f"{rule['name']}: {allowed} from {source} to {target}"


def create_line(net: ClusterNetwork, rule: dict) -> list[str]:
    allow = ",".join(f"{a['IPProtocol']}:{port}" if port else a["IPProtocol"]
                     for a in rule["allowed"] for port in a.get("ports") or [None])
    argv = ["compute", "firewall-rules", "create", rule["name"], f"--network={net.network}",
            "--direction=INGRESS", f"--allow={allow}", f"--target-tags={','.join(rule['targetTags'])}"]
    # Always a source: without --source-ranges or --source-tags gcloud opens the rule to 0.0.0.0/0.
    if rule.get("sourceRanges"):
        argv.append(f"--source-ranges={','.join(rule['sourceRanges'])}")
    else:
        argv.append(f"--source-tags={','.join(rule['sourceTags'])}")
    return argv


def gcloud(argv: list[str], project: str) -> list[dict] | dict | None:
    """Run `gcloud ARGV --project=P --format=json`; its parsed output."""
    cmd = ["gcloud", *argv, f"--project={project}", "--format=json", "--quiet"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise FirewallError("gcloud is not on PATH: install the Google Cloud CLI and `gcloud auth login`") from None
    if out.returncode != 0:
        raise FirewallError(f"`gcloud {' '.join(argv[:3])} ...` failed: {out.stderr.strip()[-400:]}")
    return json.loads(out.stdout) if out.stdout.strip() else None


def ensure_network(net: ClusterNetwork, ssh_ranges: list[str], subnet_range: str, run=gcloud) -> NetworkReport:
    """Make the network, its subnet and its two rules where missing; refuse a network that lets
    anything in from the world before changing anything."""
    if not net.project or "CHANGE-ME" in net.project:
        raise FirewallError("provider.project_id: set your GCP project")
    wanted = intended_rules(net, ssh_ranges)
    report = NetworkReport()
    networks = {n["name"] for n in run(["compute", "networks", "list"], net.project) or []}
    rules = [r for r in run(["compute", "firewall-rules", "list"], net.project) or []
             if net.network in networks and _last(r.get("network", "")) == net.network]
    open_rules = [r for r in rules if world_open(r)]
    if open_rules:
        fixes = "; ".join(f"gcloud compute firewall-rules delete {r['name']} --project={net.project}" for r in open_rules)
        raise FirewallError(f"network {net.network} lets in the world ({'; '.join(map(describe, open_rules))}); "
                            f"remove it first: {fixes}")

    def make(argv):
        run(argv, net.project)
        report.made.append(" ".join(["gcloud", *argv]))

    if net.network not in networks:
        make(["compute", "networks", "create", net.network, "--subnet-mode=custom"])
    subnets = run(["compute", "networks", "subnets", "list", f"--regions={net.region}"], net.project) or []
    if not any(s["name"] == net.subnet and _last(s.get("network", "")) == net.network for s in subnets):
        make(["compute", "networks", "subnets", "create", net.subnet, f"--network={net.network}",
              f"--region={net.region}", f"--range={subnet_range}"])
    by_name = {r["name"]: r for r in rules}
    for rule in wanted:
        have = by_name.get(rule["name"])
        if have is None:
            make(create_line(net, rule))
        elif rule.get("sourceRanges") and sorted(have.get("sourceRanges") or []) != sorted(rule["sourceRanges"]):
            make(["compute", "firewall-rules", "update", rule["name"],
                  f"--source-ranges={','.join(rule['sourceRanges'])}"])
    rules = [r for r in run(["compute", "firewall-rules", "list"], net.project) or []
             if _last(r.get("network", "")) == net.network]
    report.rules = rules
    report.extra = [r for r in rules if r["name"] not in {w["name"] for w in wanted}]
    if bad := [r for r in rules if world_open(r)]:  # whatever gcloud did: never leave a door open quietly
        raise FirewallError(f"network {net.network} lets in the world: {'; '.join(map(describe, bad))}")
    return report
