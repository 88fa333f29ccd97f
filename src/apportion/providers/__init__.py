"""Node providers for autoscaling: local processes, Docker, AWS EC2, GCE and
Kubernetes pods behind one interface (``apportion.providers.base.Provider``).

``get(kind, settings)`` builds one, importing its SDK only then: a provider
whose extra is not installed raises ``ProviderUnavailable`` naming the extra
(``pip install 'apportion[aws]'``). See docs/providers.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from apportion.exceptions import ProviderConfigError, ProviderUnavailable
from apportion.providers.base import (
    InstanceState,
    JoinSpec,
    NodeType,
    Provider,
    ProvisionedNode,
)
from apportion.providers.secret import Secret

if TYPE_CHECKING:
    from apportion.providers.config import ProvidersConfig

__all__ = [
    "REGISTRY",
    "InstanceState",
    "JoinSpec",
    "NodeType",
    "Provider",
    "ProvisionedNode",
    "Secret",
    "from_config",
    "get",
]



class Entry(NamedTuple):
    module: str
    cls: str
    extra: str | None
    """The optional dependency group that installs the SDK."""
    package: str
    """The SDK's name on PyPI, for the message."""
    sdk: tuple[str, ...]
    """Top-level modules of the SDK: a missing one means the extra is missing."""


REGISTRY: dict[str, Entry] = {
    "local": Entry("apportion.providers.local", "LocalProvider", None, "", ()),
    "docker": Entry("apportion.providers.docker", "DockerProvider", "docker", "docker",
                    ("docker",)),
    "aws": Entry("apportion.providers.aws", "AwsProvider", "aws", "boto3",
                 ("boto3", "botocore")),
    "gcp": Entry("apportion.providers.gcp", "GcpProvider", "gcp", "google-cloud-compute",
                 ("google",)),
    "kubernetes": Entry("apportion.providers.kubernetes", "KubernetesProvider", "kubernetes",
                        "kubernetes", ("kubernetes",)),
}


def provider_class(kind: str) -> type[Provider]:
    """The class for ``kind``, importing its module (and so its SDK) now."""
    try:
        entry = REGISTRY[kind]
    except KeyError:
        raise ProviderConfigError(
            f"unknown provider kind {kind!r}; use one of {', '.join(REGISTRY)}", field="kind"
        ) from None
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as exc:
        if entry.extra and (exc.name or "").split(".")[0] in entry.sdk:
            raise ProviderUnavailable(
                f"the {kind} provider needs {entry.package} (module {exc.name} is not "
                f"installed); install it with: pip install 'apportion[{entry.extra}]'",
                provider=kind, extra=entry.extra, missing=exc.name,
            ) from exc
        raise
    cls: type[Provider] = getattr(module, entry.cls)
    return cls


def get(kind: str, settings: Mapping[str, Any], name: str | None = None, **kw: Any) -> Provider:
    """Build a provider of ``kind`` (``local``, ``docker``, ``aws``, ``gcp``,
    ``kubernetes``) named ``name`` (default: the kind) from its settings.
    Keyword arguments go to the class (tests pass a prepared SDK client)."""
    return provider_class(kind)(name or kind, settings, **kw)


def from_config(config: ProvidersConfig) -> dict[str, Provider]:
    """Every provider of a loaded config, by name, each with its pools' overrides."""
    built: dict[str, Provider] = {}
    try:
        for name, provider in config.providers.items():
            built[name] = get(provider.kind, config.provider_settings(name), name)
    except BaseException:
        for done in built.values():
            done.close()
        raise
    return built
