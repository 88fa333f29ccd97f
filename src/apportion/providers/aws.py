"""The ``aws`` provider: EC2 instances that install and start the agent at boot.

One ``RunInstances`` call per node (with the node name as ``ClientToken``, so
a retried call cannot start a second machine), user data from
``bootstrap.startup_script`` (the join token sits in a root-only file on the
instance; note that user data can also be read by IAM principals allowed
``ec2:DescribeInstanceAttribute``, one more reason the token is one-time),
tags ``apportion:managed-by``, ``apportion:provider``, ``apportion:pool``,
``apportion:node``, ``apportion:node-type`` and ``Name``. A spot node type
sets ``InstanceMarketOptions`` (one-time, terminate on interruption).

Instance types and prices come from the configured ``node_types``: the
pricing API is not reachable offline and prices differ by contract anyway.

Settings (any may be overridden in a pool's ``settings``): see docs/providers.md.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import boto3
import botocore.exceptions

from apportion.exceptions import ProviderConfigError, ProviderError
from apportion.providers.base import (
    MANAGED_BY,
    InstanceState,
    JoinSpec,
    Provider,
    ProvisionedNode,
    terminated,
)
from apportion.providers.bootstrap import DEFAULT_INSTALL, check_join, startup_script
from apportion.providers.secret import reveal

TAG_MANAGED_BY = "apportion:managed-by"
TAG_PROVIDER = "apportion:provider"
TAG_POOL = "apportion:pool"
TAG_NODE = "apportion:node"
TAG_NODE_TYPE = "apportion:node-type"

STATES = {
    "pending": InstanceState.PROVISIONING,
    "running": InstanceState.RUNNING,
    "shutting-down": InstanceState.TERMINATING,
    "terminated": InstanceState.TERMINATED,
    "stopping": InstanceState.FAILED,
    "stopped": InstanceState.FAILED,
}
LISTED = ["pending", "running", "shutting-down", "stopping", "stopped"]


class AwsProvider(Provider):
    kind = "aws"

    def __init__(self, name: str, settings: Mapping[str, Any], *, client: Any = None) -> None:
        super().__init__(name, settings)
        if not settings.get("region"):
            raise ProviderConfigError(f"providers.{name}.region: required",
                                      field=f"providers.{name}.region")
        if not settings.get("image_id") and not self._pool_settings and client is None:
            raise ProviderConfigError(
                f"providers.{name}.image_id: required (here or in each pool's settings)",
                field=f"providers.{name}.image_id")
        if settings.get("address", "private") not in ("private", "public"):
            raise ProviderConfigError(f"providers.{name}.address: private or public",
                                      field=f"providers.{name}.address")
        self._lock = threading.Lock()
        self._ec2: Any = client

    @property
    def ec2(self) -> Any:
        """The boto3 EC2 client, made on first use (boto3 clients are
        thread-safe; making one is not, hence the lock)."""
        with self._lock:
            if self._ec2 is None:
                s = self.settings
                session = boto3.session.Session(
                    aws_access_key_id=reveal(s.get("access_key_id")),
                    aws_secret_access_key=reveal(s.get("secret_access_key")),
                    aws_session_token=reveal(s.get("session_token")),
                    region_name=reveal(s["region"]),
                    profile_name=reveal(s.get("profile")),
                )
                self._ec2 = session.client("ec2", endpoint_url=reveal(s.get("endpoint_url")))
            return self._ec2

    # -- the interface ----------------------------------------------------------

    def create(
        self, pool: str, node_type: str, count: int, join: JoinSpec
    ) -> builtins.list[ProvisionedNode]:
        kind = self.check_create(pool, node_type, count)
        labels = self.node_labels(pool, kind, join)
        check_join(join, labels)
        image = self.pool_setting(pool, "image_id")
        if not image:
            raise ProviderConfigError(f"providers.{self.name}.image_id: required for pool {pool}",
                                      field=f"providers.{self.name}.image_id")
        declare = bool(self.pool_setting(pool, "declare_resources", False))
        made: builtins.list[ProvisionedNode] = []
        for name in join.names(pool, count):
            script = startup_script(
                join, name, labels, kind.resources if declare else None,
                install=self.pool_setting(pool, "install", DEFAULT_INSTALL))
            tags = {
                **{str(k): str(reveal(v)) for k, v in (self.pool_setting(pool, "tags") or {})
                   .items()},
                "Name": name,
                TAG_MANAGED_BY: MANAGED_BY,
                TAG_PROVIDER: self.name,
                TAG_POOL: pool,
                TAG_NODE: name,
                TAG_NODE_TYPE: kind.name,
            }
            request: dict[str, Any] = {
                "ImageId": image,
                "InstanceType": kind.name,
                "MinCount": 1,
                "MaxCount": 1,
                "ClientToken": name,
                "UserData": script,
                "TagSpecifications": [
                    {"ResourceType": "instance",
                     "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]},
                ],
            }
            self._placement(pool, request)
            if kind.spot:
                options: dict[str, Any] = {"SpotInstanceType": "one-time",
                                           "InstanceInterruptionBehavior": "terminate"}
                max_price = self.pool_setting(pool, "spot_max_price")
                if max_price:
                    options["MaxPrice"] = str(max_price)
                request["InstanceMarketOptions"] = {"MarketType": "spot",
                                                    "SpotOptions": options}
            try:
                reply = self.ec2.run_instances(**request)
            except (botocore.exceptions.BotoCoreError,
                    botocore.exceptions.ClientError) as exc:
                raise ProviderError(
                    f"provider {self.name}: RunInstances for {name} ({kind.name}) failed: "
                    f"{_describe(exc)}", nodes=made, provider=self.name) from exc
            made.extend(self._node(i) for i in reply["Instances"])
        return made

    def terminate(self, ids: Sequence[str]) -> builtins.list[ProvisionedNode]:
        ids = builtins.list(ids)
        mine = {i["InstanceId"]: i for i in self._describe(ids) if self._ours(i)}
        live = [i for i, inst in mine.items() if inst["State"]["Name"] != "terminated"]
        if live:
            try:
                reply = self.ec2.terminate_instances(InstanceIds=live)
            except (botocore.exceptions.BotoCoreError,
                    botocore.exceptions.ClientError) as exc:
                raise ProviderError(
                    f"provider {self.name}: TerminateInstances failed: {_describe(exc)}",
                    provider=self.name) from exc
            for change in reply.get("TerminatingInstances", []):
                mine[change["InstanceId"]]["State"] = change["CurrentState"]
        return [self._node(mine[i]) if i in mine
                else terminated(i, self.name, "not an instance of this provider; not touched")
                for i in ids]

    def status(self, id: str) -> ProvisionedNode:
        for instance in self._describe([id]):
            if self._ours(instance):
                return self._node(instance)
        return terminated(id, self.name, "no such instance of this provider")

    def list(self, pool: str | None = None) -> builtins.list[ProvisionedNode]:
        filters = [
            {"Name": f"tag:{TAG_MANAGED_BY}", "Values": [MANAGED_BY]},
            {"Name": f"tag:{TAG_PROVIDER}", "Values": [self.name]},
            {"Name": "instance-state-name", "Values": LISTED},
        ]
        if pool is not None:
            filters.append({"Name": f"tag:{TAG_POOL}", "Values": [pool]})
        nodes = [self._node(i) for i in self._instances(filters)]
        return sorted(nodes, key=lambda n: (n.created_at, n.id))

    def close(self) -> None:
        with self._lock:
            if self._ec2 is not None and hasattr(self._ec2, "close"):
                self._ec2.close()
            self._ec2 = None

    # -- EC2 --------------------------------------------------------------------

    def _placement(self, pool: str, request: dict[str, Any]) -> None:
        subnet = self.pool_setting(pool, "subnet_id")
        if subnet:
            request["SubnetId"] = subnet
        groups = self.pool_setting(pool, "security_group_ids")
        if groups:
            request["SecurityGroupIds"] = [str(reveal(g)) for g in groups]
        key = self.pool_setting(pool, "key_name")
        if key:
            request["KeyName"] = key
        profile = self.pool_setting(pool, "iam_instance_profile")
        if profile:
            field = "Arn" if str(profile).startswith("arn:") else "Name"
            request["IamInstanceProfile"] = {field: profile}

    def _describe(self, ids: Sequence[str]) -> builtins.list[dict[str, Any]]:
        # A filter (not InstanceIds=) so an unknown id is not an error.
        if not ids:
            return []
        return self._instances([{"Name": "instance-id", "Values": builtins.list(ids)}])

    def _instances(self, filters: builtins.list[dict[str, Any]]) -> builtins.list[dict[str, Any]]:
        try:
            pages = self.ec2.get_paginator("describe_instances").paginate(Filters=filters)
            return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise ProviderError(f"provider {self.name}: DescribeInstances failed: "
                                f"{_describe(exc)}", provider=self.name) from exc

    def _ours(self, instance: Mapping[str, Any]) -> bool:
        tags = _tags(instance)
        return tags.get(TAG_MANAGED_BY) == MANAGED_BY and tags.get(TAG_PROVIDER) == self.name

    def _node(self, instance: Mapping[str, Any]) -> ProvisionedNode:
        tags = _tags(instance)
        state_name = instance["State"]["Name"]
        state = STATES.get(state_name, InstanceState.FAILED)
        detail = ""
        if state is InstanceState.FAILED:
            reason = (instance.get("StateReason") or {}).get("Message", "")
            detail = f"instance is {state_name}" + (f": {reason}" if reason else "")
        if self.settings.get("address") == "public":
            address = instance.get("PublicIpAddress")
        else:
            address = instance.get("PrivateIpAddress")
        launched = instance.get("LaunchTime")
        return ProvisionedNode(
            id=instance["InstanceId"],
            node_name=tags.get(TAG_NODE, ""),
            pool=tags.get(TAG_POOL, ""),
            node_type=tags.get(TAG_NODE_TYPE, instance.get("InstanceType", "")),
            state=state,
            created_at=launched.timestamp() if launched is not None else 0.0,
            address=address or None,
            provider=self.name,
            detail=detail,
        )


def _tags(instance: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def _describe(exc: Exception) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}"
    return str(exc)
