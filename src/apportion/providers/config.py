"""The provider config file: which providers exist and which pools they feed.

```toml
[providers.aws-east]
kind = "aws"                                  # local, docker, aws, gcp, kubernetes
region = "us-east-1"
access_key_id = "${AWS_ACCESS_KEY_ID}"        # from the environment
secret_access_key = "${AWS_SECRET_ACCESS_KEY}"
image_id = "ami-0abc"

[[providers.aws-east.node_types]]
name = "c5.xlarge"
resources = { cpu = "4", memory = "8Gi" }
price_per_hour = 0.17
spot = false

[[pools]]
name = "cpu-burst"
provider = "aws-east"
node_type = "c5.xlarge"
min_size = 0
max_size = 10
mode = "advice"                               # or "auto"
labels = { facility = "aws-us-east-1" }
settings = { subnet_id = "subnet-1" }         # overrides the provider's settings
```

Every string value may hold ``${VAR}``, replaced by the environment variable
``VAR``; an unset variable is an error naming it and the field. ``$${`` is a
literal ``${``. A value that came from the environment, and any value whose key
names a credential (``secret``, ``token``, ``password``, ``credential``,
``private_key``, ``access_key``, ``api_key``), is wrapped in a ``Secret``: it is
``***`` in every ``repr``, log line and JSON, and ``redacted(config)`` is what
the API shows.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apportion.core.autoscale import NodeTemplate, PoolPolicy
from apportion.exceptions import ApportionError, ProviderConfigError
from apportion.providers.base import NodeType, check_pool, parse_node_types
from apportion.providers.secret import MASK, Secret

KINDS = ("local", "docker", "aws", "gcp", "kubernetes")
MODES = ("auto", "advice")
SECRET_KEY_RE = re.compile(
    r"secret|token|password|passwd|credential|private[_-]?key|access[_-]?key|api[_-]?key",
    re.IGNORECASE,
)
_VAR_RE = re.compile(r"(\$\$\{)|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|(\$\{)")
_PROVIDER_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_POLICY_KEYS = (
    "target", "scale_up_above", "scale_down_below", "window_s", "cooldown_up_s",
    "cooldown_down_s", "max_cost_per_hour",
)
_POOL_KEYS = {"name", "provider", "node_type", "min_size", "max_size", "mode", "labels",
              "settings", *_POLICY_KEYS}


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One ``[providers.NAME]`` table; ``settings`` is everything but ``kind``,
    with ``${VAR}`` substituted and credentials wrapped in ``Secret``."""

    name: str
    kind: str
    settings: dict[str, Any]
    node_types: tuple[NodeType, ...]


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    provider: str
    node_type: str
    min_size: int = 0
    max_size: int = 10
    mode: str = "advice"
    labels: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, float] = field(default_factory=dict)
    """Optional knobs of ``PoolPolicy`` (``target``, ``window_s``, ...)."""

    def to_policy(self, node_type: NodeType) -> PoolPolicy:
        """The autoscaling policy for this pool, its template from ``node_type``."""
        template = NodeTemplate(node_type.name, dict(node_type.resources),
                                node_type.price_per_hour)
        return PoolPolicy(template, min_size=self.min_size, max_size=self.max_size,
                          mode="auto" if self.mode == "auto" else "advice", **self.policy)


@dataclass(frozen=True, slots=True)
class ProvidersConfig:
    providers: dict[str, ProviderConfig]
    pools: tuple[PoolConfig, ...]
    source: str = "<config>"

    def pool(self, name: str) -> PoolConfig:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise ProviderConfigError(f"{self.source}: no pool named {name!r}", field="pools")

    def node_type_of(self, pool: PoolConfig) -> NodeType:
        for node_type in self.providers[pool.provider].node_types:
            if node_type.name == pool.node_type:
                return node_type
        raise AssertionError("checked when the config was loaded")  # pragma: no cover

    def provider_settings(self, name: str) -> dict[str, Any]:
        """Settings to build provider ``name`` with: its table, plus
        ``pools``: each of its pools' ``settings`` overrides."""
        settings = dict(self.providers[name].settings)
        settings["node_types"] = list(self.providers[name].node_types)
        settings["pools"] = {p.name: dict(p.settings) for p in self.pools if p.provider == name}
        return settings


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> ProvidersConfig:
    """Read and check a provider config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProviderConfigError(f"{path}: cannot read the provider config: {exc.strerror}",
                                  field="path") from exc
    return parse_config(text, env, source=str(path))


def parse_config(
    text: str, env: Mapping[str, str] | None = None, *, source: str = "<config>"
) -> ProvidersConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProviderConfigError(f"{source}: not valid TOML: {exc}", field="toml") from exc
    unknown = sorted(set(data) - {"providers", "pools"})
    if unknown:
        raise ProviderConfigError(
            f"{source}: unknown top-level key(s) {', '.join(unknown)}; expected providers "
            "and pools", field=unknown[0])
    return config_from_data(data, env, source=source)


def config_from_data(
    data: Mapping[str, Any], env: Mapping[str, str] | None = None, *, source: str = "<config>"
) -> ProvidersConfig:
    """The ``providers`` and ``pools`` of already-parsed TOML (the server's
    own config file may hold them beside its other sections)."""
    env = os.environ if env is None else env
    providers = _providers(data.get("providers", {}), env, source)
    pools = _pools(data.get("pools", []), providers, env, source)
    return ProvidersConfig(providers, pools, source)


# -- ${VAR} substitution --------------------------------------------------------


def substitute(text: str, env: Mapping[str, str], where: str) -> tuple[str, bool]:
    """Replace ``${VAR}`` from ``env``; return the text and whether any
    variable was used. ``$${`` stands for a literal ``${``."""
    used = False

    def one(match: re.Match[str]) -> str:
        nonlocal used
        if match.group(1):
            return "${"
        if match.group(3):
            raise ProviderConfigError(
                f"{where}: malformed ${{...}} in the value; write ${{NAME}} with a name of "
                "letters, digits and '_', or $${ for a literal ${", field=where)
        name = match.group(2)
        if name not in env:
            raise ProviderConfigError(
                f"{where}: environment variable {name} is not set", field=where, variable=name)
        used = True
        return env[name]

    return _VAR_RE.sub(one, text), used


def _resolve(value: Any, env: Mapping[str, str], where: str, secret_key: bool) -> Any:
    """Substitute through strings, lists and tables; wrap credentials."""
    if isinstance(value, str):
        text, used = substitute(value, env, where)
        return Secret(text) if used or secret_key else text
    if isinstance(value, list):
        return [_resolve(v, env, f"{where}[{i}]", secret_key) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {
            k: _resolve(v, env, f"{where}.{k}", secret_key or bool(SECRET_KEY_RE.search(k)))
            for k, v in value.items()
        }
    return value


# -- sections -------------------------------------------------------------------


def _providers(
    raw: object, env: Mapping[str, str], source: str
) -> dict[str, ProviderConfig]:
    if not isinstance(raw, dict):
        raise ProviderConfigError(f"{source}: providers: expected tables [providers.NAME]",
                                  field="providers")
    out: dict[str, ProviderConfig] = {}
    for name, table in raw.items():
        where = f"providers.{name}"
        if not _PROVIDER_NAME_RE.match(name):
            raise ProviderConfigError(
                f"{source}: {where}: provider names are lowercase letters, digits, '-' and "
                "'_', starting with a letter", field=where)
        if not isinstance(table, dict):
            raise ProviderConfigError(f"{source}: {where}: expected a table", field=where)
        kind = table.get("kind", name if name in KINDS else None)
        if kind not in KINDS:
            raise ProviderConfigError(
                f"{source}: {where}.kind: {kind!r} is not a provider kind; use one of "
                f"{', '.join(KINDS)}", field=f"{where}.kind")
        if "pools" in table:
            raise ProviderConfigError(
                f"{source}: {where}.pools: pools are top-level [[pools]] tables",
                field=f"{where}.pools")
        settings = {
            k: _resolve(v, env, f"{where}.{k}", bool(SECRET_KEY_RE.search(k)))
            for k, v in table.items() if k not in ("kind", "node_types")
        }
        try:
            node_types = tuple(parse_node_types(table.get("node_types"), name))
        except ProviderConfigError as exc:
            raise ProviderConfigError(f"{source}: {exc.message}", **exc.data) from exc
        out[name] = ProviderConfig(name, str(kind), settings, node_types)
    return out


def _pools(
    raw: object, providers: dict[str, ProviderConfig], env: Mapping[str, str], source: str
) -> tuple[PoolConfig, ...]:
    if not isinstance(raw, list):
        raise ProviderConfigError(f"{source}: pools: expected [[pools]] tables", field="pools")
    out: list[PoolConfig] = []
    seen: set[str] = set()
    for i, table in enumerate(raw):
        at = f"pools[{i}]"
        if not isinstance(table, dict):
            raise ProviderConfigError(f"{source}: {at}: expected a table", field=at)
        unknown = sorted(set(table) - _POOL_KEYS)
        if unknown:
            raise ProviderConfigError(
                f"{source}: {at}: unknown field(s) {', '.join(unknown)}",
                field=f"{at}.{unknown[0]}")
        name = table.get("name")
        try:
            check_pool(name)  # type: ignore[arg-type]
        except ApportionError as exc:
            raise ProviderConfigError(f"{source}: {at}.name: {exc.message}",
                                      field=f"{at}.name") from exc
        assert isinstance(name, str)
        at = f"pools.{name}"
        if name in seen:
            raise ProviderConfigError(f"{source}: {at}: pool {name!r} is defined twice",
                                      field=at)
        seen.add(name)
        provider = table.get("provider")
        if provider not in providers:
            known = ", ".join(providers) or "none"
            raise ProviderConfigError(
                f"{source}: {at}.provider: {provider!r} is not a provider in this file "
                f"(defined: {known})", field=f"{at}.provider")
        node_type = table.get("node_type")
        offered = [t.name for t in providers[provider].node_types]
        if node_type not in offered:
            raise ProviderConfigError(
                f"{source}: {at}.node_type: {node_type!r} is not a node type of provider "
                f"{provider} (offered: {', '.join(offered) or 'none'})",
                field=f"{at}.node_type")
        min_size = _whole(table.get("min_size", 0), f"{at}.min_size", source)
        max_size = _whole(table.get("max_size", 10), f"{at}.max_size", source)
        if min_size > max_size:
            raise ProviderConfigError(
                f"{source}: {at}: min_size {min_size} is above max_size {max_size}",
                field=f"{at}.min_size")
        mode = table.get("mode", "advice")
        if mode not in MODES:
            raise ProviderConfigError(f"{source}: {at}.mode: {mode!r}; use auto or advice",
                                      field=f"{at}.mode")
        labels = table.get("labels", {})
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise ProviderConfigError(f"{source}: {at}.labels: expected a table of strings",
                                      field=f"{at}.labels")
        settings = table.get("settings", {})
        if not isinstance(settings, dict):
            raise ProviderConfigError(f"{source}: {at}.settings: expected a table",
                                      field=f"{at}.settings")
        policy: dict[str, float] = {}
        for key in _POLICY_KEYS:
            if key in table:
                value = table[key]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ProviderConfigError(f"{source}: {at}.{key}: expected a number",
                                              field=f"{at}.{key}")
                policy[key] = float(value)
        pool = PoolConfig(
            name, str(provider), str(node_type), min_size, max_size, str(mode), dict(labels),
            {k: _resolve(v, env, f"{at}.settings.{k}", bool(SECRET_KEY_RE.search(k)))
             for k, v in settings.items()},
            policy,
        )
        kind = next(t for t in providers[provider].node_types if t.name == node_type)
        try:
            pool.to_policy(kind)
        except ApportionError as exc:
            raise ProviderConfigError(f"{source}: {at}: {exc.message}", field=at) from exc
        out.append(pool)
    return tuple(out)


def _whole(value: object, where: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProviderConfigError(f"{source}: {where}: expected a whole number >= 0",
                                  field=where)
    return value


# -- what the API shows ---------------------------------------------------------


def mask(value: Any) -> Any:
    """``value`` with every ``Secret`` replaced by ``***``, through lists,
    tuples and dicts; node types become their dicts."""
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, NodeType):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [mask(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): mask(v) for k, v in value.items()}
    return value


def redacted(config: ProvidersConfig) -> dict[str, Any]:
    """The config as JSON-ready data with every credential shown as ``***``."""
    return {
        "providers": {
            name: {
                "kind": p.kind,
                "settings": mask(p.settings),
                "node_types": [t.to_dict() for t in p.node_types],
            }
            for name, p in config.providers.items()
        },
        "pools": [
            {
                "name": pool.name,
                "provider": pool.provider,
                "node_type": pool.node_type,
                "min_size": pool.min_size,
                "max_size": pool.max_size,
                "mode": pool.mode,
                "labels": dict(pool.labels),
                "settings": mask(pool.settings),
                **pool.policy,
            }
            for pool in config.pools
        ],
    }
