"""The security group `ray up` gives deploy/aws/cluster.yaml's nodes, with Ray's own AWS bootstrap
(`bootstrap_aws`, the step of `ray up` that makes the IAM profile, key pair, subnets and security
group) run against a mocked EC2 and IAM (moto): nothing is sent to AWS.

Without `minima aws-security-group`, Ray opens SSH to 0.0.0.0/0 (shown below, so these tests can
fail). After it, every rule of every group the bootstrapped config names is listed: the
intra-cluster rule and SSH from deploy/aws/cluster.yaml's range, nothing from 0.0.0.0/0 or ::/0.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import shlex
from pathlib import Path

import boto3
import pytest
import yaml
from moto import mock_aws

from minima.cli import main
from ray.autoscaler._private.aws import config as ray_aws
from ray.autoscaler._private.aws.utils import client_cache, resource_cache
from ray.autoscaler._private.util import prepare_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "deploy" / "aws" / "cluster.yaml"
RAW = yaml.safe_load(CLUSTER_YAML.read_text())
REGION = RAW["provider"]["region"]
GROUP_NAME = RAW["provider"]["security_group"]["GroupName"]
SSH_RANGE = RAW["provider"]["security_group"]["IpPermissions"][0]["IpRanges"][0]["CidrIp"]


@pytest.fixture(autouse=True)
def no_network(offline):
    """Every AWS call goes to moto."""


@pytest.fixture
def ec2(monkeypatch, tmp_path):
    """A fresh mocked AWS account in deploy/aws/cluster.yaml's region, as after one earlier `ray up` there:
    Ray's IAM instance profile exists (so its bootstrap skips making one, and the 30 s it waits
    for IAM), nothing else does."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
                        "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # Ray writes the new key pair to ~/.ssh
    # Ray keeps boto3 resources and subnet lookups for the life of the process: not across accounts
    for cached in (resource_cache, client_cache, ray_aws._get_subnets_or_die):
        cached.cache_clear()
    with mock_aws():
        iam = boto3.client("iam", region_name=REGION)
        iam.create_role(RoleName=ray_aws.DEFAULT_RAY_IAM_ROLE, AssumeRolePolicyDocument="{}")
        iam.create_instance_profile(InstanceProfileName=ray_aws.DEFAULT_RAY_INSTANCE_PROFILE)
        iam.add_role_to_instance_profile(InstanceProfileName=ray_aws.DEFAULT_RAY_INSTANCE_PROFILE,
                                         RoleName=ray_aws.DEFAULT_RAY_IAM_ROLE)
        yield boto3.client("ec2", region_name=REGION)


def ray_bootstrap(raw: dict = RAW) -> dict:
    """What `ray up` does to the file before it launches anything: prepare, then bootstrap."""
    return ray_aws.bootstrap_aws(prepare_config(copy.deepcopy(raw)))


def ingress_rules(ec2, bootstrapped: dict) -> set[tuple]:
    """Every inbound rule of every group the nodes get: (group, protocol, from, to, source)."""
    ids = sorted({g for t in bootstrapped["available_node_types"].values()
                  for g in t["node_config"]["SecurityGroupIds"]})
    rules = set()
    for group in ec2.describe_security_groups(GroupIds=ids)["SecurityGroups"]:
        for perm in group["IpPermissions"]:
            sources = ([r["CidrIp"] for r in perm.get("IpRanges", [])]
                       + [r["CidrIpv6"] for r in perm.get("Ipv6Ranges", [])]
                       + [r["GroupId"] for r in perm.get("UserIdGroupPairs", [])]
                       + [r["PrefixListId"] for r in perm.get("PrefixListIds", [])])
            for source in sources:
                rules.add((group["GroupId"], perm["IpProtocol"], perm.get("FromPort"), perm.get("ToPort"), source))
    return rules


def world_open(rules: set[tuple]) -> set[tuple]:
    return {r for r in rules if not r[4].startswith(("sg-", "pl-")) and ipaddress.ip_network(r[4]).prefixlen == 0}


def only_group(bootstrapped: dict) -> str:
    ids = {g for t in bootstrapped["available_node_types"].values() for g in t["node_config"]["SecurityGroupIds"]}
    assert len(ids) == 1, ids
    return ids.pop()


def step(capsys, path=CLUSTER_YAML) -> tuple[int, str, str]:
    code = main(["aws-security-group", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_ray_bootstrap_alone_opens_ssh_to_the_world(ec2):
    """Ray's behaviour, unchanged: the reason for the step."""
    config = ray_bootstrap()
    sg = only_group(config)
    rules = ingress_rules(ec2, config)
    print("\n".join(map(str, sorted(rules, key=str))))
    assert rules == {
        (sg, "-1", None, None, sg),                 # Ray's intra-cluster rule
        (sg, "tcp", 22, 22, "0.0.0.0/0"),           # Ray's default SSH rule
        (sg, "tcp", 22, 22, SSH_RANGE),             # deploy/aws/cluster.yaml's
    }


def test_after_the_step_ray_bootstrap_opens_nothing_to_the_world(ec2, capsys):
    code, out, err = step(capsys)
    assert code == 0, err
    config = ray_bootstrap()
    sg = only_group(config)
    rules = ingress_rules(ec2, config)
    print("\n".join(map(str, sorted(rules, key=str))))
    assert world_open(rules) == set()
    assert rules == {(sg, "-1", None, None, sg), (sg, "tcp", 22, 22, SSH_RANGE)}
    # Ray took the group the step made: same name, in the VPC of the subnets Ray picked for every node
    group = ec2.describe_security_groups(GroupIds=[sg])["SecurityGroups"][0]
    assert group["GroupName"] == GROUP_NAME and f"{GROUP_NAME} ({sg}, {group['VpcId']})" in out
    subnets = {s for t in config["available_node_types"].values() for s in t["node_config"]["SubnetIds"]}
    assert {s["VpcId"] for s in ec2.describe_subnets(SubnetIds=sorted(subnets))["Subnets"]} == {group["VpcId"]}


def test_the_step_is_idempotent_and_holds_after_ray_up(ec2, capsys):
    assert step(capsys)[0] == 0
    config = ray_bootstrap()
    before = ingress_rules(ec2, config)
    code, out, _ = step(capsys)
    assert code == 0 and "already has the rules asked for" in out
    assert ingress_rules(ec2, ray_bootstrap()) == before


def test_the_step_refuses_a_group_ray_opened_to_the_world_and_its_fix_works(ec2, capsys):
    sg = only_group(ray_bootstrap())  # a `ray up` without the step: SSH open to 0.0.0.0/0
    code, _, err = step(capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert GROUP_NAME in lines[0] and sg in lines[0] and "tcp 22 from 0.0.0.0/0" in lines[0]
    fix = shlex.split(lines[0].split("run this again: ", 1)[1])
    assert fix[:3] == ["aws", "ec2", "revoke-security-group-ingress"]
    assert fix[fix.index("--group-id") + 1] == sg and fix[fix.index("--region") + 1] == REGION
    ec2.revoke_security_group_ingress(GroupId=sg, IpPermissions=json.loads(fix[fix.index("--ip-permissions") + 1]))
    assert step(capsys)[0] == 0
    assert ingress_rules(ec2, ray_bootstrap()) == {(sg, "-1", None, None, sg), (sg, "tcp", 22, 22, SSH_RANGE)}


def test_the_step_adds_the_file_ssh_range_to_an_existing_group_and_names_a_stale_one(ec2, capsys):
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    sg = ec2.create_security_group(GroupName=GROUP_NAME, Description="made by hand", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "198.51.100.0/24"}]}])
    code, out, err = step(capsys)
    assert code == 0 and "added 2 rule(s)" in out
    assert "198.51.100.0/24" in err and "does not ask for" in err
    assert ingress_rules(ec2, ray_bootstrap()) == {
        (sg, "-1", None, None, sg), (sg, "tcp", 22, 22, SSH_RANGE), (sg, "tcp", 22, 22, "198.51.100.0/24")}


def test_the_step_checks_a_group_the_file_names(ec2, capsys, tmp_path):
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    sg = ec2.create_security_group(GroupName="shared", Description="someone's", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}])
    raw = copy.deepcopy(RAW)
    raw["available_node_types"]["head"]["node_config"]["SecurityGroupIds"] = [sg]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, _, err = step(capsys, path)
    assert code == 2 and f"shared ({sg}" in err and "tcp 443 from ::/0" in err
    ec2.revoke_security_group_ingress(GroupId=sg, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}])
    code, out, _ = step(capsys, path)
    assert code == 0 and f"shared ({sg}, {vpc}): named by SecurityGroupIds" in out
    assert f"{GROUP_NAME} (sg-" in out  # the workers' group, made as without the head's


@pytest.mark.parametrize("rules, says", [
    ([{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
     "IpPermissions[0] lets in tcp 22 from 0.0.0.0/0"),
    ([{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": SSH_RANGE}]},
      {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}],
     "IpPermissions[1] lets in all traffic from ::/0"),
    ([{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": SSH_RANGE}]}],
     "no rule lets SSH (tcp 22) in"),
    ([{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "203.0.113.300/24"}]}],
     "IpPermissions[0]: "),
])
def test_the_step_refuses_a_file_that_opens_to_the_world_before_any_aws_call(rules, says, capsys, tmp_path):
    raw = copy.deepcopy(RAW)
    raw["provider"]["security_group"]["IpPermissions"] = rules
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, out, err = step(capsys, path)  # no mock: an AWS call would hit the no-network guard
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and says in err, err
    assert err.startswith(f"minima aws-security-group: {path}: provider.security_group.")
