"""The AWS security group of a Ray cluster, made before `ray up` with only the rules the cluster
config asks for: `minima aws-security-group deploy/aws/cluster.yaml`.

Ray's AWS launcher (ray/autoscaler/_private/aws/config.py) gives every node type without
`SecurityGroupIds` the group named `provider.security_group.GroupName` (default
`ray-autoscaler-CLUSTER`) in the VPC of the subnets it picks, and makes that group when there is
none. It writes rules only into a group that has none: its intra-cluster rule (all traffic from
the cluster's own groups), SSH from 0.0.0.0/0, then `provider.security_group.IpPermissions`. A
group that has rules it leaves as it is. So the group is made here first, found the way Ray finds
it (Ray's own functions), with Ray's intra-cluster rule and the file's rules only.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import shlex
from dataclasses import dataclass, field

SSH_PORT = 22
# (IpProtocol, FromPort, ToPort, source): one source each, so AWS's merged listing and a config's
# rules compare; ports are None for "all protocols", as AWS lists such a rule.
Flat = tuple[str, "int | None", "int | None", str]
_SOURCES = (("IpRanges", "CidrIp"), ("Ipv6Ranges", "CidrIpv6"), ("PrefixListIds", "PrefixListId"),
            ("UserIdGroupPairs", "GroupId"))
_PROTOCOL_NAMES = {"all": "-1", "6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6"}


class GroupError(ValueError):
    """A rule or a group that would let the world in, or AWS refusing a call: one line, with the fix."""


@dataclass
class GroupReport:
    name: str
    group_id: str
    vpc_id: str
    added: list[Flat] = field(default_factory=list)
    kept_extra: list[Flat] = field(default_factory=list)  # rules the group has that the config does not ask for
    rules: list[Flat] = field(default_factory=list)
    given: bool = False  # named by a node type's SecurityGroupIds: checked, never changed


def flatten(ip_permissions: list[dict]) -> dict[Flat, dict]:
    """Each (protocol, ports, source) the permissions let in, mapped to a permission with that one
    source (description kept), the form `authorize_ingress` takes."""
    out: dict[Flat, dict] = {}
    for perm in ip_permissions:
        proto = str(perm.get("IpProtocol", "-1")).lower()
        proto = _PROTOCOL_NAMES.get(proto, proto)
        ports = (None, None) if proto == "-1" else tuple(
            None if perm.get(k) is None else int(perm[k]) for k in ("FromPort", "ToPort"))
        base = {"IpProtocol": proto} if proto == "-1" else {"IpProtocol": proto, "FromPort": ports[0],
                                                            "ToPort": ports[1]}
        for key, name in _SOURCES:
            for source in perm.get(key) or []:
                value = source.get(name) or source.get("GroupName", "")
                if key in ("IpRanges", "Ipv6Ranges"):
                    value = str(ipaddress.ip_network(value, strict=False))
                one = {k: v for k, v in source.items() if k in (name, "GroupName", "Description")}
                out[(proto, *ports, value)] = {**base, key: [one]}
    return out


def is_world(rule: Flat) -> bool:
    """Whether the rule's source is a /0: anyone on the internet, IPv4 or IPv6."""
    try:
        return ipaddress.ip_network(rule[3], strict=False).prefixlen == 0
    except ValueError:  # a group or prefix-list id
        return False


def from_a_range(rule: Flat) -> bool:
    """Whether the source is an address range (a CIDR or a prefix list), not a security group."""
    if rule[3].startswith("pl-"):
        return True
    try:
        ipaddress.ip_network(rule[3], strict=False)
        return True
    except ValueError:
        return False


def opens_ssh(rule: Flat) -> bool:
    proto, lo, hi, _ = rule
    return proto == "-1" or (proto == "tcp" and (lo in (None, -1) or lo <= SSH_PORT <= (lo if hi is None else hi)))


def describe(rule: Flat) -> str:
    proto, lo, hi, source = rule
    if proto == "-1":
        return f"all traffic from {source}"
    ports = "all ports" if lo in (None, -1) else str(lo) if lo == hi else f"{lo}-{hi}"
    return f"{proto} {ports} from {source}"


def config_rules(config: dict) -> list[dict]:
    """`provider.security_group.IpPermissions`, checked: no rule open to the world, and SSH let in
    from some range (the machine running `ray up` reaches the nodes through it)."""
    where = "provider.security_group.IpPermissions"
    rules = (config.get("provider", {}).get("security_group") or {}).get("IpPermissions") or []
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise GroupError(f"{where}: expected a list of rules (IpProtocol, FromPort, ToPort, IpRanges)")
    for i, rule in enumerate(rules):
        try:
            flat = flatten([rule])
        except (ValueError, TypeError) as err:
            raise GroupError(f"{where}[{i}]: {err}") from None
        if world := [describe(r) for r in flat if is_world(r)]:
            raise GroupError(f"{where}[{i}] lets in {', '.join(world)}: give your own address range "
                             f"(e.g. your office or VPN's CIDR) instead of the whole internet")
    if not any(opens_ssh(r) and from_a_range(r) for r in flatten(rules)):
        raise GroupError(f"{where}: no rule lets SSH (tcp {SSH_PORT}) in from your address range, so `ray up` "
                         f"could not reach the head; add one with IpRanges: [{{CidrIp: YOUR_RANGE}}]")
    return rules


def intended_rules(config: dict, group_ids: set[str]) -> list[dict]:
    """What the cluster's own group should let in: Ray's intra-cluster rule and the config's rules."""
    from ray.autoscaler._private.aws.config import _create_default_intracluster_inbound_rules

    return _create_default_intracluster_inbound_rules(group_ids) + copy.deepcopy(config_rules(config))


def revoke_hint(region: str, group_id: str, rules: dict[Flat, dict]) -> str:
    """The AWS CLI line that removes these rules (a description is no part of what a revoke matches)."""
    perms = [{k: ([{n: v for n, v in s.items() if n != "Description"} for s in v] if isinstance(v, list) else v)
              for k, v in perm.items()} for perm in rules.values()]
    return (f"aws ec2 revoke-security-group-ingress --region {region} --group-id {group_id} "
            f"--ip-permissions {shlex.quote(json.dumps(perms, separators=(',', ':')))}")


def refuse_world_open(sg, region: str) -> None:
    """GroupError when the group lets anything in from 0.0.0.0/0 or ::/0."""
    if world := {r: p for r, p in flatten(sg.ip_permissions).items() if is_world(r)}:
        raise GroupError(
            f"security group {sg.group_name} ({sg.id}, {sg.vpc_id}) lets in {', '.join(map(describe, world))}, "
            f"and `ray up` keeps an existing group's rules; remove {'it' if len(world) == 1 else 'them'}, then "
            f"run this again: {revoke_hint(region, sg.id, world)}")


def ensure_security_groups(config: dict) -> list[GroupReport]:
    """Find or make the group `ray up` will use for each node type without SecurityGroupIds (Ray's
    name, in the VPC Ray picks), and give it the intended rules it lacks. Refuses, before adding
    any rule, when a group the cluster will use lets in the world. `config` is prepared
    (`prepare_config`), as `ray up` prepares it."""
    import botocore.exceptions
    import click
    from ray.autoscaler._private.aws import config as aws

    config_rules(config)  # before any AWS call
    region = config["provider"]["region"]
    try:
        config = aws._configure_subnet(copy.deepcopy(config))  # Ray's subnets, hence Ray's VPC
        node_types = config["available_node_types"]
        given = sorted({g for t in node_types.values() for g in t["node_config"].get("SecurityGroupIds", [])})
        given_groups = list(aws._resource("ec2", config).security_groups.filter(GroupIds=given)) if given else []
        for sg in given_groups:  # before a group is made: Ray would fill a bare one with its own rules
            refuse_world_open(sg, region)
        managed = [k for k, t in node_types.items() if "SecurityGroupIds" not in t["node_config"]]
        groups = {sg.id: sg for sg in aws._get_or_create_vpc_security_groups(config, managed).values()} \
            if managed else {}
        for sg in groups.values():
            refuse_world_open(sg, region)

        wanted = flatten(intended_rules(config, set(groups) | set(given)))
        reports = []
        for sg in groups.values():
            missing = {r: p for r, p in wanted.items() if r not in flatten(sg.ip_permissions)}
            if missing:
                sg.authorize_ingress(IpPermissions=list(missing.values()))
                sg.reload()
            rules = list(flatten(sg.ip_permissions))
            reports.append(GroupReport(sg.group_name, sg.id, sg.vpc_id, list(missing),
                                       [r for r in rules if r not in wanted], rules))
        for sg in given_groups:
            reports.append(GroupReport(sg.group_name, sg.id, sg.vpc_id, rules=list(flatten(sg.ip_permissions)),
                                       given=True))
        return reports
    except botocore.exceptions.NoCredentialsError:
        raise GroupError("no AWS credentials found: set them as for `ray up` (aws configure, AWS_PROFILE or "
                         "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)") from None
    except botocore.exceptions.ClientError as err:
        raise GroupError(f"AWS refused {err.operation_name} in {region}: "
                         f"{err.response.get('Error', {}).get('Message', err)}") from None
    except click.ClickException as err:  # Ray's own refusal (no usable subnet), already printed by Ray
        raise GroupError(f"Ray's AWS setup stopped: {err.message.splitlines()[0]}") from None
