"""The ``kubernetes`` provider: each node is a pod running the agent.

The join token goes into a Secret ``<node>-join`` (owned by the pod once the
pod exists, so Kubernetes deletes it with the pod) and reaches the agent as
``APPORTION_TOKEN`` through ``secretKeyRef``: it is never written into the pod
spec, which more people can read than Secrets. The pod's requests and limits
are the node type's resources (Guaranteed QoS, so the capacity the agent
declares is what the pod really has); ``restartPolicy: Never``, because a
one-time token cannot join twice: an agent that exits leaves a ``failed``
node for the autoscaler to replace.

Labels ``apportion.io/managed-by``, ``apportion.io/provider``,
``apportion.io/pool``, ``apportion.io/node`` and ``apportion.io/node-type``
mark apportion's pods; list and terminate select on them and touch nothing
else.

Settings (any may be overridden in a pool's ``settings``): see docs/providers.md.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

from apportion.core.resources import Unit, unit_of
from apportion.exceptions import ProviderConfigError, ProviderError
from apportion.providers.base import (
    MANAGED_BY,
    InstanceState,
    JoinSpec,
    Provider,
    ProvisionedNode,
    terminated,
)
from apportion.providers.bootstrap import WORK_DIR, agent_args, check_join
from apportion.providers.secret import reveal

LABEL_MANAGED_BY = "apportion.io/managed-by"
LABEL_PROVIDER = "apportion.io/provider"
LABEL_POOL = "apportion.io/pool"
LABEL_NODE = "apportion.io/node"
LABEL_NODE_TYPE = "apportion.io/node-type"

RESOURCE_NAMES = {"cpu": "cpu", "memory": "memory", "storage": "ephemeral-storage",
                  "gpu": "nvidia.com/gpu"}
"""apportion resource → Kubernetes resource for requests and limits; others
are only declared to the agent unless ``resource_names`` maps them."""


class KubernetesProvider(Provider):
    kind = "kubernetes"

    def __init__(self, name: str, settings: Mapping[str, Any], *, client: Any = None) -> None:
        """``client``: a prepared ``kubernetes.client.ApiClient`` (tests)."""
        super().__init__(name, settings)
        if not settings.get("image") and not self._pool_settings and client is None:
            raise ProviderConfigError(
                f"providers.{name}.image: required: an image with apportion installed",
                field=f"providers.{name}.image")
        self.namespace = str(reveal(settings.get("namespace", "default")))
        self.grace_s = int(settings.get("grace_s", 30))
        names = settings.get("resource_names", {})
        if not isinstance(names, Mapping):
            raise ProviderConfigError(f"providers.{name}.resource_names: expected a table",
                                      field=f"providers.{name}.resource_names")
        self.resource_names = {**RESOURCE_NAMES, **{str(k): str(v) for k, v in names.items()}}
        self._lock = threading.Lock()
        self._api_client: Any = client
        self._core: Any = None

    @property
    def core(self) -> Any:
        """``CoreV1Api`` on an ``ApiClient`` from ``host``/``token``,
        ``in_cluster``, or a kubeconfig (``kubeconfig``, ``context``)."""
        with self._lock:
            if self._core is None:
                if self._api_client is None:
                    self._api_client = kubernetes.client.ApiClient(self._configuration())
                self._core = kubernetes.client.CoreV1Api(self._api_client)
            return self._core

    def _configuration(self) -> Any:
        s = self.settings
        config = kubernetes.client.Configuration()
        if s.get("host"):
            config.host = str(reveal(s["host"]))
            token = reveal(s.get("token"))
            if token:
                config.api_key = {"authorization": str(token)}
                config.api_key_prefix = {"authorization": "Bearer"}
            if s.get("ca_file"):
                config.ssl_ca_cert = str(reveal(s["ca_file"]))
            config.verify_ssl = bool(s.get("verify_ssl", True))
        elif s.get("in_cluster"):
            load: Any = kubernetes.config.load_incluster_config
            load(client_configuration=config)
        else:
            load = kubernetes.config.load_kube_config
            load(
                config_file=reveal(s.get("kubeconfig")), context=reveal(s.get("context")),
                client_configuration=config)
        return config

    # -- the interface ----------------------------------------------------------

    def create(
        self, pool: str, node_type: str, count: int, join: JoinSpec
    ) -> builtins.list[ProvisionedNode]:
        kind = self.check_create(pool, node_type, count)
        labels = self.node_labels(pool, kind, join)
        check_join(join, labels)
        image = self.pool_setting(pool, "image")
        if not image:
            raise ProviderConfigError(f"providers.{self.name}.image: required for pool {pool}",
                                      field=f"providers.{self.name}.image")
        made: builtins.list[ProvisionedNode] = []
        for name in join.names(pool, count):
            meta = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_PROVIDER: self.name, LABEL_POOL: pool,
                    LABEL_NODE: name, LABEL_NODE_TYPE: kind.name}
            secret = f"{name}-join"
            declared = kind.resources if self.pool_setting(pool, "declare_resources", True) \
                else None
            try:
                self.core.create_namespaced_secret(self.namespace, {
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": secret, "labels": meta},
                    "type": "Opaque",
                    "stringData": {"token": join.join_token.reveal()},
                })
                try:
                    pod = self.core.create_namespaced_pod(
                        self.namespace,
                        self._pod(pool, name, meta, secret, image, join, labels, declared,
                                  kind.resources))
                except ApiException:
                    self._delete_secret(secret)
                    raise
                self._own(secret, pod)
            except ApiException as exc:
                raise ProviderError(
                    f"provider {self.name}: creating pod {self.namespace}/{name} failed: "
                    f"{_describe(exc)}", nodes=made, provider=self.name) from exc
            made.append(self._node(pod))
        return made

    def terminate(self, ids: Sequence[str]) -> builtins.list[ProvisionedNode]:
        out: builtins.list[ProvisionedNode] = []
        for id in ids:
            pod = self._read(id)
            if pod is None or not self._ours(pod):
                out.append(terminated(id, self.name, "not a pod of this provider; not touched"))
                continue
            try:
                deleted = self.core.delete_namespaced_pod(
                    id, self.namespace, grace_period_seconds=self.grace_s)
            except ApiException as exc:
                if exc.status == 404:
                    out.append(terminated(id, self.name))
                    continue
                raise ProviderError(f"provider {self.name}: deleting pod {self.namespace}/{id} "
                                    f"failed: {_describe(exc)}", provider=self.name) from exc
            self._delete_secret(f"{id}-join")
            node = self._node(deleted if getattr(deleted, "metadata", None) else pod)
            out.append(ProvisionedNode(node.id, node.node_name, node.pool, node.node_type,
                                       InstanceState.TERMINATING, node.created_at, node.address,
                                       self.name))
        return out

    def status(self, id: str) -> ProvisionedNode:
        pod = self._read(id)
        if pod is None or not self._ours(pod):
            return terminated(id, self.name, "no such pod of this provider")
        return self._node(pod)

    def list(self, pool: str | None = None) -> builtins.list[ProvisionedNode]:
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_PROVIDER}={self.name}"
        if pool is not None:
            selector += f",{LABEL_POOL}={pool}"
        try:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector)
        except ApiException as exc:
            raise ProviderError(f"provider {self.name}: listing pods failed: {_describe(exc)}",
                                provider=self.name) from exc
        nodes = [self._node(p) for p in pods.items or [] if self._ours(p)]
        return sorted(nodes, key=lambda n: (n.created_at, n.id))

    def close(self) -> None:
        with self._lock:
            if self._api_client is not None and hasattr(self._api_client, "close"):
                self._api_client.close()
            self._api_client = None
            self._core = None

    # -- Kubernetes -------------------------------------------------------------

    def _pod(
        self, pool: str, name: str, meta: Mapping[str, str], secret: str, image: str,
        join: JoinSpec, labels: Mapping[str, str], declared: Mapping[str, int] | None,
        resources: Mapping[str, int],
    ) -> dict[str, Any]:
        quantities: dict[str, str] = {}
        for resource, qty in resources.items():
            k8s = self.resource_names.get(resource)
            if k8s:
                quantities[k8s] = f"{qty}m" if unit_of(resource) is Unit.MILLI else str(qty)
        command = [str(c) for c in self.pool_setting(pool, "command", ["apportion", "agent"])]
        container: dict[str, Any] = {
            "name": "agent",
            "image": image,
            "command": command,
            "args": agent_args(name, labels, declared, WORK_DIR),
            "env": [
                {"name": "APPORTION_SERVER", "value": join.server_url},
                {"name": "APPORTION_TOKEN",
                 "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}},
            ],
            "resources": {"requests": quantities, "limits": dict(quantities)},
            "volumeMounts": [{"name": "work", "mountPath": WORK_DIR}],
        }
        pull = self.pool_setting(pool, "image_pull_policy")
        if pull:
            container["imagePullPolicy"] = pull
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": self.grace_s,
            "containers": [container],
            "volumes": [{"name": "work", "emptyDir": {}}],
        }
        for key, field in (("service_account", "serviceAccountName"),
                           ("node_selector", "nodeSelector"), ("tolerations", "tolerations"),
                           ("priority_class", "priorityClassName")):
            value = self.pool_setting(pool, key)
            if value:
                spec[field] = value
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": self.namespace, "labels": dict(meta)},
                "spec": spec}

    def _own(self, secret: str, pod: Any) -> None:
        """Make the pod own its join Secret, so deleting the pod (by anyone)
        deletes the token too. Best effort: terminate deletes it anyway."""
        with contextlib.suppress(ApiException):
            self.core.patch_namespaced_secret(secret, self.namespace, {
                "metadata": {"ownerReferences": [{
                    "apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name,
                    "uid": pod.metadata.uid}]}})

    def _delete_secret(self, secret: str) -> None:
        try:
            self.core.delete_namespaced_secret(secret, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise ProviderError(f"provider {self.name}: deleting secret "
                                    f"{self.namespace}/{secret} failed: {_describe(exc)}",
                                    provider=self.name) from exc

    def _read(self, id: str) -> Any:
        try:
            return self.core.read_namespaced_pod(id, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise ProviderError(f"provider {self.name}: reading pod {self.namespace}/{id} "
                                f"failed: {_describe(exc)}", provider=self.name) from exc

    def _ours(self, pod: Any) -> bool:
        labels = pod.metadata.labels or {}
        return bool(labels.get(LABEL_MANAGED_BY) == MANAGED_BY
                    and labels.get(LABEL_PROVIDER) == self.name)

    def _node(self, pod: Any) -> ProvisionedNode:
        meta = pod.metadata
        labels = meta.labels or {}
        status = pod.status
        phase = (status.phase if status is not None else None) or "Pending"
        detail = _why(status)
        if meta.deletion_timestamp is not None:
            state = InstanceState.TERMINATING
        elif phase == "Pending":
            state = InstanceState.PROVISIONING
        elif phase == "Running":
            state = InstanceState.RUNNING
        else:  # Succeeded, Failed, Unknown: the agent is not coming back
            state = InstanceState.FAILED
            detail = f"pod is {phase}" + (f": {detail}" if detail else "")
        created = meta.creation_timestamp
        return ProvisionedNode(
            id=str(meta.name),
            node_name=labels.get(LABEL_NODE, str(meta.name)),
            pool=labels.get(LABEL_POOL, ""),
            node_type=labels.get(LABEL_NODE_TYPE, ""),
            state=state,
            created_at=created.timestamp() if created is not None else time.time(),
            address=(status.pod_ip if status is not None else None) or None,
            provider=self.name,
            detail=detail,
        )


def _why(status: Any) -> str:
    """The most telling reason in a pod status: a waiting or terminated
    container (ImagePullBackOff, OOMKilled, exit code), else the pod's own."""
    if status is None:
        return ""
    for container in status.container_statuses or []:
        state = container.state
        if state is None:
            continue
        if state.waiting is not None and state.waiting.reason:
            return str(state.waiting.reason) + (
                f": {state.waiting.message}" if state.waiting.message else "")
        if state.terminated is not None:
            reason = state.terminated.reason or "Terminated"
            return f"{reason} (exit code {state.terminated.exit_code})"
    parts = [p for p in (status.reason, status.message) if p]
    return ": ".join(str(p) for p in parts)


def _describe(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
        message = body.get("message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    return f"{exc.status} {message or exc.reason}"
