"""The aws provider against moto's in-process EC2 (``mock_aws``): RunInstances
with user data, tags and spot options, DescribeInstances for list and status,
TerminateInstances, and never touching an instance that is not apportion's.
No request leaves the process."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("boto3", reason="the aws extra (boto3) is not installed")
pytest.importorskip("moto", reason="moto is not installed (dev extra)")

import boto3
from moto import mock_aws

from apportion.exceptions import InvalidInput, ProviderConfigError, ProviderError
from apportion.providers import get
from apportion.providers.aws import AwsProvider
from apportion.providers.base import InstanceState, JoinSpec, NodeType
from apportion.providers.secret import Secret

GiB = 1 << 30
REGION = "us-east-1"
AMI = "ami-12c6146b"
TOKEN = "join-0123456789abcdef"
JOIN = JoinSpec("https://apportion.example:8443", Secret(TOKEN), {"facility": "aws-use1"})
SETTINGS: dict[str, Any] = {
    "region": REGION,
    "image_id": AMI,
    "access_key_id": Secret("testing"),
    "secret_access_key": Secret("testing"),
    "tags": {"team": "infra"},
    "node_types": [
        {"name": "c5.xlarge", "resources": {"cpu": "4", "memory": "8Gi"},
         "price_per_hour": 0.17},
        {"name": "g5.xlarge", "resources": {"cpu": "4", "memory": "16Gi", "gpu": 1},
         "price_per_hour": 1.006, "spot": True, "labels": {"gpu.model": "A10G"}},
    ],
    "pools": {"gpu": {"key_name": "ops", "spot_max_price": "0.50"}},
}


@pytest.fixture(scope="module")
def mocked() -> Iterator[Any]:
    """One moto EC2 for the module (starting one costs about a second), with
    no local AWS config or profile in the way."""
    with pytest.MonkeyPatch.context() as env:
        for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
            env.delenv(var, raising=False)
        env.setenv("AWS_CONFIG_FILE", "/nonexistent")
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        env.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")  # moto does not check the AMI
        with mock_aws() as mock:
            client = boto3.client("ec2", region_name=REGION, aws_access_key_id="testing",
                                  aws_secret_access_key="testing")
            yield mock, client


@pytest.fixture
def aws(mocked: Any) -> Any:
    """The EC2 client, on an empty EC2 for each test."""
    mock, client = mocked
    mock.reset()
    return client


@pytest.fixture
def provider(aws: Any) -> AwsProvider:
    built = get("aws", SETTINGS, "aws-east", client=aws)
    assert isinstance(built, AwsProvider)
    return built


def _instance(ec2: Any, id: str) -> dict[str, Any]:
    reply = ec2.describe_instances(InstanceIds=[id])
    instance: dict[str, Any] = reply["Reservations"][0]["Instances"][0]
    return instance


def _user_data(ec2: Any, id: str) -> str:
    value = ec2.describe_instance_attribute(InstanceId=id, Attribute="userData")
    return base64.b64decode(value["UserData"]["Value"]).decode()


def test_node_types_from_the_table(provider: AwsProvider) -> None:
    assert provider.node_types() == [
        NodeType("c5.xlarge", {"cpu": 4000, "memory": 8 * GiB}, 0.17, False, {}),
        NodeType("g5.xlarge", {"cpu": 4000, "memory": 16 * GiB, "gpu": 1}, 1.006, True,
                 {"gpu.model": "A10G"}),
    ]


def test_create_runs_tagged_instances_with_the_agent(provider: AwsProvider, aws: Any) -> None:
    nodes = provider.create("cpu", "c5.xlarge", 2, JOIN)
    assert len(nodes) == 2
    for node in nodes:
        assert node.id.startswith("i-")
        assert (node.pool, node.node_type, node.state, node.provider) == (
            "cpu", "c5.xlarge", InstanceState.PROVISIONING, "aws-east")
        assert node.node_name.startswith("cpu-") and len(node.node_name) == 10
        assert node.address is not None and node.created_at > 0
        instance = _instance(aws, node.id)
        assert instance["InstanceType"] == "c5.xlarge"
        assert instance["ImageId"] == AMI
        assert "InstanceLifecycle" not in instance  # on-demand
        assert {t["Key"]: t["Value"] for t in instance["Tags"]} == {
            "team": "infra",
            "Name": node.node_name,
            "apportion:managed-by": "apportion",
            "apportion:provider": "aws-east",
            "apportion:pool": "cpu",
            "apportion:node": node.node_name,
            "apportion:node-type": "c5.xlarge",
        }
        script = _user_data(aws, node.id)
        assert script.startswith("#!/bin/bash\n")
        assert "APPORTION_SERVER=https://apportion.example:8443\n" in script
        assert f"cat > /etc/apportion/agent.token <<'APPORTION_EOF'\n{TOKEN}\n" in script
        assert "APPORTION_TOKEN_FILE=/etc/apportion/agent.token\n" in script
        assert f"APPORTION_TOKEN={TOKEN}" not in script  # never in the agent's environment
        assert "python3 -m pip install --quiet apportion\n" in script
        assert (
            f"ExecStart=/usr/bin/env apportion agent --name {node.node_name} --labels "
            "facility=aws-use1,node-type=c5.xlarge,pool=cpu,provider=aws-east "
            "--work-dir /var/lib/apportion/agent --on-exit stop\n"
        ) in script  # no --resources: the agent discovers the instance
        assert "systemctl enable --now apportion-agent.service\n" in script
    assert nodes[0].node_name != nodes[1].node_name


def test_spot_node_type_and_pool_settings(provider: AwsProvider, aws: Any) -> None:
    (node,) = provider.create("gpu", "g5.xlarge", 1, JOIN)
    instance = _instance(aws, node.id)
    assert instance["InstanceLifecycle"] == "spot"
    assert instance["KeyName"] == "ops"
    script = _user_data(aws, node.id)
    assert "gpu.model=A10G" in script


def test_spot_request_shape(provider: AwsProvider) -> None:
    """What moto does not echo back: the exact spot options sent."""
    sent: list[dict[str, Any]] = []
    real = provider.ec2.run_instances

    def spy(**request: Any) -> Any:
        sent.append(request)
        return real(**request)

    provider.ec2.run_instances = spy
    (node,) = provider.create("gpu", "g5.xlarge", 1,
                              JoinSpec(JOIN.server_url, JOIN.join_token, node_names=("gpu-a1",)))
    assert node.node_name == "gpu-a1"
    (request,) = sent
    assert request["InstanceMarketOptions"] == {
        "MarketType": "spot",
        "SpotOptions": {"SpotInstanceType": "one-time",
                        "InstanceInterruptionBehavior": "terminate", "MaxPrice": "0.50"},
    }
    assert (request["ClientToken"], request["MinCount"], request["MaxCount"]) == ("gpu-a1", 1, 1)


def test_declared_resources(aws: Any) -> None:
    provider = get("aws", {**SETTINGS, "declare_resources": True}, "aws-east", client=aws)
    (node,) = provider.create("cpu", "c5.xlarge", 1, JOIN)
    assert "--on-exit stop --resources cpu=4,memory=8Gi\n" in _user_data(aws, node.id)


def test_list_and_status(provider: AwsProvider, aws: Any) -> None:
    first = provider.create("cpu", "c5.xlarge", 2, JOIN)
    other = provider.create("gpu", "g5.xlarge", 1, JOIN)
    # An instance that is not apportion's, and one of another provider.
    aws.run_instances(ImageId=AMI, InstanceType="t3.micro", MinCount=1, MaxCount=1)
    aws.run_instances(
        ImageId=AMI, InstanceType="t3.micro", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [
            {"Key": "apportion:managed-by", "Value": "apportion"},
            {"Key": "apportion:provider", "Value": "aws-west"},
            {"Key": "apportion:pool", "Value": "cpu"}]}])
    assert sorted(n.id for n in provider.list("cpu")) == sorted(n.id for n in first)
    assert [n.id for n in provider.list("gpu")] == [other[0].id]
    assert len(provider.list()) == 3
    assert {n.state for n in provider.list()} == {InstanceState.RUNNING}  # moto starts at once
    status = provider.status(first[0].id)
    assert (status.id, status.node_name, status.pool, status.state) == (
        first[0].id, first[0].node_name, "cpu", InstanceState.RUNNING)


def test_terminate_only_ours(provider: AwsProvider, aws: Any) -> None:
    nodes = provider.create("cpu", "c5.xlarge", 2, JOIN)
    foreign = aws.run_instances(ImageId=AMI, InstanceType="t3.micro", MinCount=1,
                                MaxCount=1)["Instances"][0]["InstanceId"]
    out = provider.terminate([nodes[0].id, foreign, "i-0123456789abcdef0"])
    assert [(n.id, n.state) for n in out] == [
        (nodes[0].id, InstanceState.TERMINATING),
        (foreign, InstanceState.TERMINATED),
        ("i-0123456789abcdef0", InstanceState.TERMINATED),
    ]
    assert out[1].detail == "not an instance of this provider; not touched"
    assert _instance(aws, foreign)["State"]["Name"] == "running"
    assert _instance(aws, nodes[1].id)["State"]["Name"] == "running"
    # moto moves shutting-down to terminated on the next describe.
    assert provider.status(nodes[0].id).state is InstanceState.TERMINATED
    assert [n.id for n in provider.list()] == [nodes[1].id]
    again = provider.terminate([nodes[0].id])  # idempotent
    assert again[0].state is InstanceState.TERMINATED
    assert provider.status("i-0123456789abcdef0").state is InstanceState.TERMINATED


def test_stopped_instance_is_failed(provider: AwsProvider, aws: Any) -> None:
    (node,) = provider.create("cpu", "c5.xlarge", 1, JOIN)
    aws.stop_instances(InstanceIds=[node.id])
    status = provider.status(node.id)
    assert status.state is InstanceState.FAILED
    assert status.detail.startswith("instance is st")  # stopping or stopped


def test_api_error_keeps_created_nodes(provider: AwsProvider) -> None:
    calls = 0
    real = provider.ec2.run_instances

    def flaky(**request: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "InsufficientInstanceCapacity",
                                         "Message": "no c5.xlarge in us-east-1a"}},
                              "RunInstances")
        return real(**request)

    provider.ec2.run_instances = flaky
    with pytest.raises(ProviderError) as info:
        provider.create("cpu", "c5.xlarge", 3, JOIN)
    assert info.value.message.endswith(
        "(c5.xlarge) failed: InsufficientInstanceCapacity: no c5.xlarge in us-east-1a")
    assert [n.id for n in info.value.nodes] == [n.id for n in provider.list("cpu")]
    assert len(info.value.nodes) == 1


def test_settings_checked(aws: Any) -> None:
    with pytest.raises(ProviderConfigError, match=r"providers.a.region: required"):
        AwsProvider("a", {"image_id": AMI})
    with pytest.raises(ProviderConfigError, match=r"providers.a.image_id: required"):
        AwsProvider("a", {"region": REGION})
    provider = AwsProvider("a", SETTINGS)
    with pytest.raises(InvalidInput, match=r"unknown node type 't3.micro'"):
        provider.create("cpu", "t3.micro", 1, JOIN)
    with pytest.raises(InvalidInput, match=r"join.join_token"):
        provider.create("cpu", "c5.xlarge", 1, JoinSpec(JOIN.server_url, "a b'c"))


def test_client_from_settings(aws: Any) -> None:
    """Without an injected client the provider makes its own from the
    settings' credentials and region, and uses it."""
    provider = get("aws", SETTINGS, "aws-east")
    (node,) = provider.create("cpu", "c5.xlarge", 1, JOIN)
    assert provider.ec2.meta.region_name == REGION
    assert _instance(aws, node.id)["InstanceType"] == "c5.xlarge"
    assert "testing" not in repr(provider.settings)
    provider.close()
