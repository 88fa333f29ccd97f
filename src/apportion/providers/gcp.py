"""The ``gcp`` provider: Compute Engine instances that install and start the
agent at boot (the ``startup-script`` metadata item from
``bootstrap.startup_script``).

The instance name is the node name and the provider's id. ``insert`` and
``delete`` return long-running operations; the provider does not wait for
them (a boot takes a minute or more), so a new node is ``provisioning`` and a
deleted one ``terminating`` until ``status``/``list`` say otherwise. Labels
``apportion-managed-by``, ``apportion-provider``, ``apportion-pool``,
``apportion-node`` and ``apportion-node-type`` mark apportion's instances;
nothing else is ever listed or deleted. A spot node type sets
``scheduling.provisioning_model = SPOT`` with ``instance_termination_action
= DELETE``.

Settings (any may be overridden in a pool's ``settings``): see docs/providers.md.
"""

from __future__ import annotations

import builtins
import json
import re
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import compute_v1

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

LABEL_MANAGED_BY = "apportion-managed-by"
LABEL_PROVIDER = "apportion-provider"
LABEL_POOL = "apportion-pool"
LABEL_NODE = "apportion-node"
LABEL_NODE_TYPE = "apportion-node-type"

STATES = {
    "PROVISIONING": InstanceState.PROVISIONING,
    "STAGING": InstanceState.PROVISIONING,
    "PENDING": InstanceState.PROVISIONING,
    "REPAIRING": InstanceState.PROVISIONING,
    "RUNNING": InstanceState.RUNNING,
    "STOPPING": InstanceState.TERMINATING,
    "PENDING_STOP": InstanceState.TERMINATING,
    "DEPROVISIONING": InstanceState.TERMINATING,
    "SUSPENDING": InstanceState.FAILED,
    "SUSPENDED": InstanceState.FAILED,
    "STOPPED": InstanceState.FAILED,
    "TERMINATED": InstanceState.FAILED,  # GCE's TERMINATED is a stopped instance, not a deleted one
}
_LABEL_VALUE_RE = re.compile(r"[^a-z0-9_-]")


def label_value(text: str) -> str:
    """A GCE label value: lowercase letters, digits, ``_`` and ``-``, at most 63."""
    return _LABEL_VALUE_RE.sub("_", text.lower())[:63]


class GcpProvider(Provider):
    kind = "gcp"

    def __init__(self, name: str, settings: Mapping[str, Any], *, client: Any = None) -> None:
        super().__init__(name, settings)
        for key in ("project", "zone"):
            if not settings.get(key):
                raise ProviderConfigError(f"providers.{name}.{key}: required",
                                          field=f"providers.{name}.{key}")
        if not settings.get("source_image") and not self._pool_settings and client is None:
            raise ProviderConfigError(
                f"providers.{name}.source_image: required (here or in each pool's settings)",
                field=f"providers.{name}.source_image")
        self.project = str(reveal(settings["project"]))
        self.zone = str(reveal(settings["zone"]))
        self._lock = threading.Lock()
        self._client: Any = client

    @property
    def client(self) -> Any:
        """The ``compute_v1.InstancesClient``, made on first use."""
        with self._lock:
            if self._client is None:
                self._client = compute_v1.InstancesClient(credentials=self._credentials())
            return self._client

    def _credentials(self) -> Any:
        """Service account credentials from ``credentials_json`` (the key's
        JSON, usually ``${GOOGLE_CREDENTIALS_JSON}``) or ``credentials_file``;
        without either, Application Default Credentials."""
        from google.oauth2 import service_account

        info = reveal(self.settings.get("credentials_json"))
        path = reveal(self.settings.get("credentials_file"))
        make = service_account.Credentials
        scopes = ["https://www.googleapis.com/auth/compute"]
        try:
            if info:
                return make.from_service_account_info(  # type: ignore[no-untyped-call]
                    json.loads(info), scopes=scopes)
            if path:
                return make.from_service_account_file(  # type: ignore[no-untyped-call]
                    path, scopes=scopes)
        except (ValueError, OSError) as exc:
            # Name the field, never the content.
            which = "credentials_json" if info else "credentials_file"
            raise ProviderConfigError(
                f"providers.{self.name}.{which}: not a usable service account key "
                f"({type(exc).__name__})", field=f"providers.{self.name}.{which}") from None
        return None

    # -- the interface ----------------------------------------------------------

    def create(
        self, pool: str, node_type: str, count: int, join: JoinSpec
    ) -> builtins.list[ProvisionedNode]:
        kind = self.check_create(pool, node_type, count)
        labels = self.node_labels(pool, kind, join)
        check_join(join, labels)
        image = self.pool_setting(pool, "source_image")
        if not image:
            raise ProviderConfigError(
                f"providers.{self.name}.source_image: required for pool {pool}",
                field=f"providers.{self.name}.source_image")
        declare = bool(self.pool_setting(pool, "declare_resources", False))
        made: builtins.list[ProvisionedNode] = []
        for name in join.names(pool, count):
            script = startup_script(
                join, name, labels, kind.resources if declare else None,
                install=self.pool_setting(pool, "install", DEFAULT_INSTALL))
            instance = self._instance(pool, kind.name, kind.spot, name, image, script)
            try:
                operation = self.client.insert(project=self.project, zone=self.zone,
                                               instance_resource=instance)
            except gexc.GoogleAPICallError as exc:
                raise ProviderError(
                    f"provider {self.name}: insert {name} ({kind.name}) failed: "
                    f"{_describe(exc)}", nodes=made, provider=self.name) from exc
            made.append(ProvisionedNode(
                name, name, pool, kind.name, InstanceState.PROVISIONING, time.time(), None,
                self.name,
                f"operation {getattr(operation, 'name', '')}".strip()))
        return made

    def terminate(self, ids: Sequence[str]) -> builtins.list[ProvisionedNode]:
        out: builtins.list[ProvisionedNode] = []
        for id in ids:
            instance = self._get(id)
            if instance is None or not self._ours(instance):
                out.append(terminated(id, self.name,
                                      "not an instance of this provider; not touched"))
                continue
            try:
                self.client.delete(project=self.project, zone=self.zone, instance=id)
            except gexc.NotFound:
                out.append(terminated(id, self.name))
                continue
            except gexc.GoogleAPICallError as exc:
                raise ProviderError(f"provider {self.name}: delete {id} failed: "
                                    f"{_describe(exc)}", provider=self.name) from exc
            node = self._node(instance)
            out.append(ProvisionedNode(node.id, node.node_name, node.pool, node.node_type,
                                       InstanceState.TERMINATING, node.created_at, node.address,
                                       self.name))
        return out

    def status(self, id: str) -> ProvisionedNode:
        instance = self._get(id)
        if instance is None or not self._ours(instance):
            return terminated(id, self.name, "no such instance of this provider")
        return self._node(instance)

    def list(self, pool: str | None = None) -> builtins.list[ProvisionedNode]:
        terms = [f'labels.{LABEL_MANAGED_BY} = "{MANAGED_BY}"',
                 f'labels.{LABEL_PROVIDER} = "{label_value(self.name)}"']
        if pool is not None:
            terms.append(f'labels.{LABEL_POOL} = "{label_value(pool)}"')
        request = compute_v1.ListInstancesRequest(
            project=self.project, zone=self.zone, filter=" AND ".join(f"({t})" for t in terms))
        try:
            instances = builtins.list(self.client.list(request=request))
        except gexc.GoogleAPICallError as exc:
            raise ProviderError(f"provider {self.name}: list failed: {_describe(exc)}",
                                provider=self.name) from exc
        nodes = [self._node(i) for i in instances if self._ours(i)]
        return sorted(nodes, key=lambda n: (n.created_at, n.id))

    def close(self) -> None:
        with self._lock:
            transport = getattr(self._client, "transport", None)
            if transport is not None and hasattr(transport, "close"):
                transport.close()
            self._client = None

    # -- Compute Engine ---------------------------------------------------------

    def _instance(
        self, pool: str, machine_type: str, spot: bool, name: str, image: str, script: str
    ) -> compute_v1.Instance:
        extra = self.pool_setting(pool, "labels") or {}
        labels = {
            **{label_value(str(k)): label_value(str(reveal(v))) for k, v in extra.items()},
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_PROVIDER: label_value(self.name),
            LABEL_POOL: label_value(pool),
            LABEL_NODE: label_value(name),
            LABEL_NODE_TYPE: label_value(machine_type),
        }
        interface = compute_v1.NetworkInterface(
            network=self.pool_setting(pool, "network", "global/networks/default"))
        subnetwork = self.pool_setting(pool, "subnetwork")
        if subnetwork:
            interface.subnetwork = subnetwork
        if self.pool_setting(pool, "external_ip", False):
            interface.access_configs = [
                compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")]
        instance = compute_v1.Instance(
            name=name,
            machine_type=f"zones/{self.zone}/machineTypes/{machine_type}",
            labels=labels,
            disks=[compute_v1.AttachedDisk(
                boot=True, auto_delete=True,
                initialize_params=compute_v1.AttachedDiskInitializeParams(
                    source_image=image,
                    disk_size_gb=int(self.pool_setting(pool, "disk_size_gb", 20)),
                ),
            )],
            network_interfaces=[interface],
            metadata=compute_v1.Metadata(
                items=[compute_v1.Items(key="startup-script", value=script)]),
        )
        tags = self.pool_setting(pool, "network_tags")
        if tags:
            instance.tags = compute_v1.Tags(items=[str(t) for t in tags])
        account = self.pool_setting(pool, "service_account")
        if account:
            instance.service_accounts = [compute_v1.ServiceAccount(
                email=account, scopes=["https://www.googleapis.com/auth/cloud-platform"])]
        if spot:
            instance.scheduling = compute_v1.Scheduling(
                provisioning_model="SPOT", instance_termination_action="DELETE")
        return instance

    def _get(self, id: str) -> Any:
        try:
            return self.client.get(project=self.project, zone=self.zone, instance=id)
        except gexc.NotFound:
            return None
        except gexc.GoogleAPICallError as exc:
            raise ProviderError(f"provider {self.name}: get {id} failed: {_describe(exc)}",
                                provider=self.name) from exc

    def _ours(self, instance: Any) -> bool:
        labels = dict(instance.labels)
        return (labels.get(LABEL_MANAGED_BY) == MANAGED_BY
                and labels.get(LABEL_PROVIDER) == label_value(self.name))

    def _node(self, instance: Any) -> ProvisionedNode:
        labels = dict(instance.labels)
        status = str(instance.status)
        state = STATES.get(status, InstanceState.FAILED)
        detail = ""
        if state is InstanceState.FAILED:
            message = str(getattr(instance, "status_message", "") or "")
            detail = f"instance is {status}" + (f": {message}" if message else "")
        address = None
        for interface in instance.network_interfaces:
            if self.settings.get("address") == "public":
                for access in interface.access_configs:
                    address = address or access.nat_i_p or None
            else:
                address = address or interface.network_i_p or None
        machine_type = str(instance.machine_type).rsplit("/", 1)[-1]
        return ProvisionedNode(
            id=str(instance.name),
            node_name=labels.get(LABEL_NODE, str(instance.name)),
            pool=labels.get(LABEL_POOL, ""),
            node_type=labels.get(LABEL_NODE_TYPE, machine_type),
            state=state,
            created_at=_timestamp(str(instance.creation_timestamp)),
            address=address,
            provider=self.name,
            detail=detail,
        )


def _timestamp(text: str) -> float:
    """GCE's RFC 3339 ``2024-05-01T03:00:00.000-07:00`` to Unix seconds."""
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def _describe(exc: gexc.GoogleAPICallError) -> str:
    return f"{exc.code} {exc.message}" if exc.code else str(exc.message)
