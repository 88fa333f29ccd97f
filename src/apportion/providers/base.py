"""The interface every node provider implements.

A provider turns "give pool P two more nodes of type T" into machines that run
``apportion agent`` and join the server, and terminates them again. It knows
nothing of scheduling or of the ledger: the autoscaling policy
(``apportion.core.autoscale``) decides, the server drains a node and waits
until it is empty, and only then calls ``terminate``. A provider never checks
whether a node runs work; that rule is the caller's (see ``ready_to_terminate``).

The interface is synchronous on purpose. Every SDK behind it (boto3,
google-cloud-compute, kubernetes, docker) blocks, and the local provider
forks processes and waits for them; an async facade would only wrap those
calls in threads. The server calls a provider through
``anyio.to_thread.run_sync``, so one slow cloud call never stalls the event
loop, and each provider guards its own shared state with a lock.
"""

from __future__ import annotations

import builtins
import re
import secrets as _secrets
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from apportion.core.resources import format_vector, parse_vector
from apportion.exceptions import ApportionError, InvalidInput, ProviderConfigError
from apportion.providers.secret import Secret, reveal

MANAGED_BY = "apportion"
"""Value of the managed-by tag/label on every machine a provider creates; a
provider only ever lists or terminates machines that carry it."""

POOL_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
"""Pool names: a DNS label that starts with a letter, at most 40 characters,
so ``<pool>-<6 hex>`` is a valid EC2 tag, GCE instance name, pod name and
container name."""


NODE_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
"""Node names a provider creates: valid as an instance name, a pod name, a
container name and a cloud label value."""


class InstanceState(StrEnum):
    """Where a provider's instance (machine, pod, container, process) is in
    its life, as the provider sees it. Not ``core.model.NodeState``: that is
    the node's state in the cluster, once its agent has joined."""

    PROVISIONING = "provisioning"
    """Asked for; the machine or process is starting."""
    RUNNING = "running"
    """The machine or process runs (whether its agent has joined yet is the
    server's knowledge, not the provider's)."""
    TERMINATING = "terminating"
    """Termination was asked for and is under way."""
    TERMINATED = "terminated"
    """Gone. Also the answer for an id the provider no longer knows."""
    FAILED = "failed"
    """Exists but will not serve: exited on its own, stopped, crashed."""


LIVE_STATES = frozenset({InstanceState.PROVISIONING, InstanceState.RUNNING})


@dataclass(frozen=True, slots=True)
class NodeType:
    """One kind of node a provider offers: what it gives and what it costs.
    ``resources`` are integers in base units (cpu millicores, bytes, units)."""

    name: str
    resources: dict[str, int]
    price_per_hour: float = 0.0
    spot: bool = False
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "resources": format_vector(self.resources),
            "price_per_hour": self.price_per_hour,
            "spot": self.spot,
            "labels": dict(self.labels),
        }


@dataclass(frozen=True, slots=True, init=False)
class JoinSpec:
    """How a new node reaches the server: its URL, a one-time join token (kept
    as a ``Secret``; a plain ``str`` is wrapped) and labels for the node.

    ``node_names``, when given, names the nodes to create (one per node, in
    order) instead of ``<pool>-<6 hex>``: for a server that binds each join
    token to the node name it may register."""

    server_url: str
    join_token: Secret
    labels: dict[str, str]
    node_names: tuple[str, ...]

    def __init__(
        self,
        server_url: str,
        join_token: Secret | str,
        labels: Mapping[str, str] | None = None,
        node_names: Sequence[str] = (),
    ) -> None:
        token = join_token if isinstance(join_token, Secret) else Secret(str(join_token))
        object.__setattr__(self, "server_url", server_url)
        object.__setattr__(self, "join_token", token)
        object.__setattr__(self, "labels", dict(labels or {}))
        object.__setattr__(self, "node_names", tuple(node_names))
        for name in self.node_names:
            if not isinstance(name, str) or not NODE_NAME_RE.match(name):
                raise InvalidInput(
                    f"join.node_names: {name!r} is not a valid node name; use 1-63 lowercase "
                    "letters, digits and '-', starting with a letter", field="join.node_names")

    def names(self, pool: str, count: int) -> builtins.list[str]:
        """The names of ``count`` new nodes of ``pool``."""
        if not self.node_names:
            return [new_node_name(pool) for _ in range(count)]
        if len(self.node_names) != count:
            raise InvalidInput(
                f"join.node_names: {len(self.node_names)} name(s) for {count} node(s)",
                field="join.node_names")
        return builtins.list(self.node_names)


@dataclass(frozen=True, slots=True)
class ProvisionedNode:
    """One machine (or process, pod, container) a provider made.

    ``id`` is the provider's handle (instance id, instance name, pod name,
    container id, local node name); ``node_name`` is the name its agent
    registers with. ``created_at`` is Unix seconds. ``detail`` says why a
    node is ``failed`` (or anything else worth showing)."""

    id: str
    node_name: str
    pool: str
    node_type: str
    state: InstanceState
    created_at: float
    address: str | None = None
    provider: str = ""
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "node_name": self.node_name,
            "pool": self.pool,
            "node_type": self.node_type,
            "state": self.state.value,
            "created_at": self.created_at,
            "address": self.address,
            "provider": self.provider,
            "detail": self.detail,
        }


class Provider(ABC):
    """Creates and terminates nodes of one provider instance.

    ``name`` is the instance's name in the config (``aws-east``); ``kind`` is
    the implementation (``aws``). Settings are validated in ``__init__``, so
    a bad config fails when the server starts, not at the first scale-up.
    Per-pool overrides (an image, a subnet) come in ``settings["pools"]``.
    """

    kind: str = ""

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        self.name = name
        self.settings = dict(settings)
        self._types = {t.name: t for t in parse_node_types(settings.get("node_types"), name)}
        self._pool_settings: dict[str, dict[str, Any]] = {
            str(k): dict(v) for k, v in (settings.get("pools") or {}).items()
        }

    # -- the interface ----------------------------------------------------------

    def node_types(self) -> builtins.list[NodeType]:
        """The node types this provider offers, with prices, in config order."""
        return builtins.list(self._types.values())

    @abstractmethod
    def create(
        self, pool: str, node_type: str, count: int, join: JoinSpec
    ) -> builtins.list[ProvisionedNode]:
        """Start ``count`` nodes of ``node_type`` for ``pool``; return them at
        once (usually ``provisioning``), without waiting for them to boot.
        A failure after some nodes were made raises ``ProviderError`` with
        those nodes in ``.nodes``."""

    @abstractmethod
    def terminate(self, ids: Sequence[str]) -> builtins.list[ProvisionedNode]:
        """Terminate these nodes (the caller has drained them and checked that
        they run nothing). Ids the provider does not know, or that are not
        apportion's, come back ``terminated`` untouched. Idempotent."""

    @abstractmethod
    def status(self, id: str) -> ProvisionedNode:
        """The node's current state; ``terminated`` for an id the provider no
        longer knows (clouds forget deleted machines)."""

    @abstractmethod
    def list(self, pool: str | None = None) -> builtins.list[ProvisionedNode]:
        """This provider's nodes that are not yet terminated, of one pool or
        all, oldest first."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Release SDK clients and connections."""

    # -- helpers for implementations --------------------------------------------

    def node_type(self, name: str) -> NodeType:
        try:
            return self._types[name]
        except KeyError:
            known = ", ".join(self._types) or "none"
            raise InvalidInput(
                f"provider {self.name}: unknown node type {name!r} (offered: {known})",
                field="node_type",
            ) from None

    def pool_setting(self, pool: str, key: str, default: Any = None) -> Any:
        """A setting for ``pool``: its override in ``pools.<pool>``, else the
        provider-wide one, else ``default``. Secrets come back revealed."""
        if key in self._pool_settings.get(pool, {}):
            return reveal(self._pool_settings[pool][key])
        return reveal(self.settings.get(key, default))

    def check_create(self, pool: str, node_type: str, count: int) -> NodeType:
        check_pool(pool)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise InvalidInput(f"count: expected a whole number >= 1, got {count!r}",
                               field="count")
        return self.node_type(node_type)

    def node_labels(self, pool: str, kind: NodeType, join: JoinSpec) -> dict[str, str]:
        """Labels the new node's agent registers with: the node type's, then
        the join spec's, then where it came from (these last win)."""
        return {
            **kind.labels,
            **join.labels,
            "pool": pool,
            "provider": self.name,
            "node-type": kind.name,
        }


def check_pool(pool: str) -> str:
    if not isinstance(pool, str) or not POOL_RE.match(pool):
        raise InvalidInput(
            f"pool: {pool!r} is not a valid pool name; use 1-40 lowercase letters, digits "
            "and '-', starting with a letter",
            field="pool",
        )
    return pool


def new_node_name(pool: str) -> str:
    """``<pool>-<6 random hex>``: unique enough, and valid everywhere."""
    return f"{pool}-{_secrets.token_hex(3)}"


def terminated(id: str, provider: str, detail: str = "") -> ProvisionedNode:
    """The answer for an id a provider no longer knows."""
    return ProvisionedNode(id, "", "", "", InstanceState.TERMINATED, 0.0, None, provider, detail)


def parse_node_types(raw: object, provider: str) -> builtins.list[NodeType]:
    """``node_types`` from settings: a list of tables with ``name``,
    ``resources`` (quantity text: ``{cpu = "4", memory = "8Gi"}``),
    ``price_per_hour``, ``spot`` and ``labels``. An already-built ``NodeType``
    passes through."""
    where = f"providers.{provider}.node_types"
    if raw is None:
        return []
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ProviderConfigError(f"{where}: expected a list of tables", field=where)
    out: builtins.list[NodeType] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        node_type = item if isinstance(item, NodeType) else _node_type(item, at)
        if node_type.name in seen:
            raise ProviderConfigError(f"{at}: node type {node_type.name!r} is listed twice",
                                      field=at)
        seen.add(node_type.name)
        out.append(node_type)
    return out


_TYPE_KEYS = {"name", "resources", "price_per_hour", "spot", "labels"}


def _node_type(item: object, at: str) -> NodeType:
    if not isinstance(item, Mapping):
        raise ProviderConfigError(f"{at}: expected a table", field=at)
    unknown = sorted(set(item) - _TYPE_KEYS)
    if unknown:
        raise ProviderConfigError(
            f"{at}: unknown field(s) {', '.join(unknown)}; expected "
            f"{', '.join(sorted(_TYPE_KEYS))}", field=at)
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ProviderConfigError(f"{at}.name: required, a non-empty string", field=f"{at}.name")
    raw_resources = item.get("resources")
    if not isinstance(raw_resources, Mapping) or not raw_resources:
        raise ProviderConfigError(
            f"{at}.resources: required, a table such as {{cpu = \"4\", memory = \"8Gi\"}}",
            field=f"{at}.resources")
    try:
        resources = parse_vector(raw_resources, f"{at}.resources")
    except ApportionError as exc:
        raise ProviderConfigError(exc.message, field=f"{at}.resources") from exc
    price = item.get("price_per_hour", 0.0)
    if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
        raise ProviderConfigError(f"{at}.price_per_hour: expected a number >= 0",
                                  field=f"{at}.price_per_hour")
    spot = item.get("spot", False)
    if not isinstance(spot, bool):
        raise ProviderConfigError(f"{at}.spot: expected true or false", field=f"{at}.spot")
    labels = item.get("labels", {})
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ProviderConfigError(f"{at}.labels: expected a table of strings",
                                  field=f"{at}.labels")
    return NodeType(name, resources, float(price), spot, dict(labels))
