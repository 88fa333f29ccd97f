"""The ``docker`` provider: each node is a container running the agent.

``containers.run`` starts ``<image> apportion agent ...`` detached, named like
the node, with ``NanoCpus`` and ``Memory`` limits from the node type (GPUs
through a device request), labels ``apportion.managed-by``,
``apportion.provider``, ``apportion.pool``, ``apportion.node`` and
``apportion.node-type``, and no restart policy (a one-time join token cannot
join twice). The join token is passed in the container's environment: anyone
who can ``docker inspect`` it can read it, which on a Docker host means root
anyway. Terminate is ``stop`` (SIGTERM, then SIGKILL after ``grace_s``) and
``remove``.

The server URL must be reachable from inside the container: not
``127.0.0.1`` of the host, unless ``network = "host"``.

Settings (any may be overridden in a pool's ``settings``): see docs/providers.md.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import docker
import docker.errors
import docker.types

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

LABEL_MANAGED_BY = "apportion.managed-by"
LABEL_PROVIDER = "apportion.provider"
LABEL_POOL = "apportion.pool"
LABEL_NODE = "apportion.node"
LABEL_NODE_TYPE = "apportion.node-type"

STATES = {
    "created": InstanceState.PROVISIONING,
    "restarting": InstanceState.PROVISIONING,
    "running": InstanceState.RUNNING,
    "removing": InstanceState.TERMINATING,
    "paused": InstanceState.FAILED,
    "exited": InstanceState.FAILED,
    "dead": InstanceState.FAILED,
}


class DockerProvider(Provider):
    kind = "docker"

    def __init__(self, name: str, settings: Mapping[str, Any], *, client: Any = None) -> None:
        """``client``: a prepared ``docker.DockerClient`` (tests)."""
        super().__init__(name, settings)
        if not settings.get("image") and not self._pool_settings and client is None:
            raise ProviderConfigError(
                f"providers.{name}.image: required: an image with apportion installed",
                field=f"providers.{name}.image")
        grace = settings.get("grace_s", 10)
        if isinstance(grace, bool) or not isinstance(grace, int) or grace < 0:
            raise ProviderConfigError(f"providers.{name}.grace_s: whole seconds >= 0",
                                      field=f"providers.{name}.grace_s")
        self.grace_s = grace
        self._lock = threading.Lock()
        self._client: Any = client

    @property
    def client(self) -> Any:
        """A ``DockerClient`` for ``base_url`` (``unix:///var/run/docker.sock``,
        ``tcp://host:2376``), or from ``DOCKER_HOST``/``DOCKER_TLS_VERIFY``/
        ``DOCKER_CERT_PATH`` when unset."""
        with self._lock:
            if self._client is None:
                base_url = reveal(self.settings.get("base_url"))
                version = str(reveal(self.settings.get("api_version", "auto")))
                try:
                    if base_url:
                        self._client = docker.DockerClient(base_url=base_url, version=version)
                    else:
                        self._client = docker.from_env(version=version)
                except docker.errors.DockerException as exc:
                    raise ProviderError(f"provider {self.name}: cannot reach Docker: {exc}",
                                        provider=self.name) from exc
            return self._client

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
        declared = kind.resources if self.pool_setting(pool, "declare_resources", True) else None
        command = [str(c) for c in self.pool_setting(pool, "command", ["apportion", "agent"])]
        made: builtins.list[ProvisionedNode] = []
        for name in join.names(pool, count):
            options: dict[str, Any] = {
                "name": name,
                "command": command + agent_args(name, labels, declared, WORK_DIR),
                "detach": True,
                "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_PROVIDER: self.name,
                           LABEL_POOL: pool, LABEL_NODE: name, LABEL_NODE_TYPE: kind.name},
                "environment": {"APPORTION_SERVER": join.server_url,
                                "APPORTION_TOKEN": join.join_token.reveal()},
                "stop_signal": "SIGTERM",
            }
            cpu = kind.resources.get("cpu")
            if cpu:
                options["nano_cpus"] = cpu * 1_000_000  # millicores to billionths
            memory = kind.resources.get("memory")
            if memory:
                options["mem_limit"] = memory
            gpus = kind.resources.get("gpu")
            if gpus:
                options["device_requests"] = [
                    docker.types.DeviceRequest(count=gpus, capabilities=[["gpu"]])]
            network = self.pool_setting(pool, "network")
            if network:
                options["network"] = network
            try:
                container = self.client.containers.run(image, **options)
                container.reload()  # run() inspects before starting: state "created"
            except docker.errors.DockerException as exc:
                raise ProviderError(
                    f"provider {self.name}: starting container {name} failed: {_describe(exc)}",
                    nodes=made, provider=self.name) from exc
            made.append(self._node(container))
        return made

    def terminate(self, ids: Sequence[str]) -> builtins.list[ProvisionedNode]:
        out: builtins.list[ProvisionedNode] = []
        for id in ids:
            container = self._get(id)
            if container is None or not self._ours(container):
                out.append(terminated(id, self.name,
                                      "not a container of this provider; not touched"))
                continue
            try:
                if container.status in ("running", "restarting", "paused"):
                    container.stop(timeout=self.grace_s)
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.DockerException as exc:
                raise ProviderError(f"provider {self.name}: removing container {id} failed: "
                                    f"{_describe(exc)}", provider=self.name) from exc
            node = self._node(container)
            out.append(ProvisionedNode(node.id, node.node_name, node.pool, node.node_type,
                                       InstanceState.TERMINATED, node.created_at, None, self.name))
        return out

    def status(self, id: str) -> ProvisionedNode:
        container = self._get(id)
        if container is None or not self._ours(container):
            return terminated(id, self.name, "no such container of this provider")
        return self._node(container)

    def list(self, pool: str | None = None) -> builtins.list[ProvisionedNode]:
        selector = [f"{LABEL_MANAGED_BY}={MANAGED_BY}", f"{LABEL_PROVIDER}={self.name}"]
        if pool is not None:
            selector.append(f"{LABEL_POOL}={pool}")
        try:
            containers = self.client.containers.list(all=True, filters={"label": selector})
        except docker.errors.DockerException as exc:
            raise ProviderError(f"provider {self.name}: listing containers failed: "
                                f"{_describe(exc)}", provider=self.name) from exc
        nodes = [self._node(c) for c in containers if self._ours(c)]
        return sorted(nodes, key=lambda n: (n.created_at, n.id))

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None

    # -- Docker -----------------------------------------------------------------

    def _get(self, id: str) -> Any:
        try:
            return self.client.containers.get(id)
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise ProviderError(f"provider {self.name}: inspecting container {id} failed: "
                                f"{_describe(exc)}", provider=self.name) from exc

    def _ours(self, container: Any) -> bool:
        labels = container.labels or {}
        return bool(labels.get(LABEL_MANAGED_BY) == MANAGED_BY
                    and labels.get(LABEL_PROVIDER) == self.name)

    def _node(self, container: Any) -> ProvisionedNode:
        attrs = container.attrs or {}
        labels = container.labels or {}
        state_info = attrs.get("State") or {}
        status = str(state_info.get("Status") or container.status)
        state = STATES.get(status, InstanceState.FAILED)
        detail = ""
        if state is InstanceState.FAILED:
            detail = f"container is {status}"
            if status in ("exited", "dead"):
                detail += f" (exit code {state_info.get('ExitCode')})"
            if state_info.get("OOMKilled"):
                detail += ", killed for exceeding its memory"
            if state_info.get("Error"):
                detail += f": {state_info['Error']}"
        return ProvisionedNode(
            id=str(container.id),
            node_name=labels.get(LABEL_NODE, str(container.name)),
            pool=labels.get(LABEL_POOL, ""),
            node_type=labels.get(LABEL_NODE_TYPE, ""),
            state=state,
            created_at=_timestamp(str(attrs.get("Created", ""))),
            address=_address(attrs),
            provider=self.name,
            detail=detail,
        )


def _address(attrs: Mapping[str, Any]) -> str | None:
    settings = attrs.get("NetworkSettings") or {}
    if settings.get("IPAddress"):
        return str(settings["IPAddress"])
    for network in (settings.get("Networks") or {}).values():
        if network.get("IPAddress"):
            return str(network["IPAddress"])
    return None


def _timestamp(text: str) -> float:
    """Docker's ``2024-05-01T10:00:00.123456789Z`` (nanoseconds) to Unix seconds."""
    if not text:
        return 0.0
    head, _, frac = text.rstrip("Z").partition(".")
    try:
        seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    except ValueError:
        return 0.0
    return seconds + (float(f"0.{frac[:9]}") if frac.isdigit() else 0.0)


def _describe(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if explanation:
        return f"{status} {explanation}" if status else str(explanation)
    return str(exc)
