"""Provider config: TOML pools and providers, ${VAR} substitution, secrets that
never show, redaction for the API, the registry and its lazy SDK imports."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import sys
from pathlib import Path

import orjson
import pytest

from apportion import providers
from apportion.core.autoscale import NodeTemplate, PoolPolicy
from apportion.exceptions import InvalidInput, ProviderConfigError, ProviderUnavailable
from apportion.providers.base import JoinSpec, NodeType, parse_node_types
from apportion.providers.config import (
    load_config,
    mask,
    parse_config,
    redacted,
    substitute,
)
from apportion.providers.secret import Secret, json_default, reveal

GiB = 1 << 30

CONFIG = """
[providers.aws-east]
kind = "aws"
region = "us-east-1"
access_key_id = "${AWS_KEY_ID}"
secret_access_key = "${AWS_SECRET}"
image_id = "ami-0abc"
note = "cost is $${HOURLY} per hour"

[[providers.aws-east.node_types]]
name = "c5.xlarge"
resources = { cpu = "4", memory = "8Gi" }
price_per_hour = 0.17

[[providers.aws-east.node_types]]
name = "g5.xlarge"
resources = { cpu = "4", memory = "16Gi", gpu = 1 }
price_per_hour = 1.006
spot = true
labels = { "gpu.model" = "A10G" }

[providers.local]
state_dir = "/tmp/apportion-local"

[[providers.local.node_types]]
name = "small"
resources = { cpu = "2", memory = "1Gi" }

[[pools]]
name = "cpu-burst"
provider = "aws-east"
node_type = "c5.xlarge"
min_size = 1
max_size = 8
mode = "auto"
labels = { facility = "aws-us-east-1" }
target = 0.6
cooldown_up_s = 120
settings = { subnet_id = "subnet-1", api_token = "plain-in-file" }

[[pools]]
name = "dev"
provider = "local"
node_type = "small"
"""

ENV = {"AWS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET": "wJalrXUtnFEMI/K7MDENG"}


def test_parse_full_config() -> None:
    config = parse_config(CONFIG, ENV, source="providers.toml")
    aws = config.providers["aws-east"]
    assert (aws.kind, config.providers["local"].kind) == ("aws", "local")
    assert aws.settings["region"] == "us-east-1"
    assert aws.settings["note"] == "cost is ${HOURLY} per hour"
    assert isinstance(aws.settings["access_key_id"], Secret)
    assert aws.settings["access_key_id"].reveal() == "AKIAEXAMPLE"
    assert aws.settings["secret_access_key"].reveal() == "wJalrXUtnFEMI/K7MDENG"
    assert aws.node_types == (
        NodeType("c5.xlarge", {"cpu": 4000, "memory": 8 * GiB}, 0.17, False, {}),
        NodeType("g5.xlarge", {"cpu": 4000, "memory": 16 * GiB, "gpu": 1}, 1.006, True,
                 {"gpu.model": "A10G"}),
    )
    burst, dev = config.pools
    assert (burst.name, burst.provider, burst.node_type, burst.min_size, burst.max_size,
            burst.mode) == ("cpu-burst", "aws-east", "c5.xlarge", 1, 8, "auto")
    assert burst.labels == {"facility": "aws-us-east-1"}
    assert burst.policy == {"target": 0.6, "cooldown_up_s": 120.0}
    assert burst.settings["subnet_id"] == "subnet-1"
    assert burst.settings["api_token"] == Secret("plain-in-file")  # key names a credential
    assert (dev.min_size, dev.max_size, dev.mode, dev.settings) == (0, 10, "advice", {})
    assert config.pool("dev") is dev


def test_pool_policy_from_config() -> None:
    config = parse_config(CONFIG, ENV)
    pool = config.pool("cpu-burst")
    policy = pool.to_policy(config.node_type_of(pool))
    assert policy == PoolPolicy(
        NodeTemplate("c5.xlarge", {"cpu": 4000, "memory": 8 * GiB}, 0.17),
        min_size=1, max_size=8, mode="auto", target=0.6, cooldown_up_s=120.0,
    )


def test_provider_settings_carry_pool_overrides() -> None:
    config = parse_config(CONFIG, ENV)
    settings = config.provider_settings("aws-east")
    assert settings["pools"] == {"cpu-burst": {"subnet_id": "subnet-1",
                                               "api_token": Secret("plain-in-file")}}
    assert [t.name for t in settings["node_types"]] == ["c5.xlarge", "g5.xlarge"]
    assert config.provider_settings("local")["pools"] == {"dev": {}}


def test_missing_variable_is_named() -> None:
    with pytest.raises(ProviderConfigError) as info:
        parse_config(CONFIG, {"AWS_KEY_ID": "x"}, source="providers.toml")
    assert info.value.message == (
        "providers.aws-east.secret_access_key: environment variable AWS_SECRET is not set"
    )
    assert info.value.data == {"field": "providers.aws-east.secret_access_key",
                               "variable": "AWS_SECRET"}


@pytest.mark.parametrize(
    ("text", "expected", "used"),
    [
        ("${A}", "1", True),
        ("x${A}y${B}z", "x1y2z", True),
        ("$${A}", "${A}", False),
        ("$$${A}", "$${A}", False),  # leftmost first: "$" then the escape "$${"
        ("pa$$word", "pa$$word", False),
        ("$A and $ and {A}", "$A and $ and {A}", False),
        ("", "", False),
    ],
)
def test_substitute(text: str, expected: str, used: bool) -> None:
    assert substitute(text, {"A": "1", "B": "2"}, "f") == (expected, used)


@pytest.mark.parametrize("text", ["${}", "${1A}", "${A", "${A-B}"])
def test_malformed_substitution(text: str) -> None:
    with pytest.raises(ProviderConfigError, match=r"^f: malformed \$\{\.\.\.\}"):
        substitute(text, {"A": "1"}, "f")


def test_substitution_reaches_nested_values_and_marks_them_secret() -> None:
    config = parse_config(
        """
[providers.k]
kind = "kubernetes"
env = { HTTP_PROXY = "${PROXY}", MODE = "fast" }
args = ["--x", "${PROXY}"]
[[providers.k.node_types]]
name = "pod"
resources = { cpu = 1 }
""", {"PROXY": "http://proxy:3128"})
    settings = config.providers["k"].settings
    assert settings["env"] == {"HTTP_PROXY": Secret("http://proxy:3128"), "MODE": "fast"}
    assert settings["args"] == ["--x", Secret("http://proxy:3128")]


def test_secret_never_shows() -> None:
    secret = Secret("hunter2")
    assert (repr(secret), str(secret), f"{secret}", f"{secret:>5}") == (
        "Secret('***')", "***", "***", "  ***")
    assert "hunter2" not in repr({"k": secret, "l": [secret]})
    assert json.dumps({"k": secret}, default=json_default) == '{"k": "***"}'
    assert orjson.dumps({"k": secret}, default=json_default) == b'{"k":"***"}'
    assert secret == Secret("hunter2") and secret != Secret("other")
    assert reveal(secret) == "hunter2" and reveal(3) == 3
    with pytest.raises(TypeError):
        json.dumps(object(), default=json_default)
    with pytest.raises(TypeError, match="a Secret is not pickled"):
        pickle.dumps(secret)
    assert copy.deepcopy({"k": secret})["k"] is secret


def test_secret_through_pydantic() -> None:
    import pydantic

    class Body(pydantic.BaseModel):
        token: Secret

    body = Body(token="hunter2")  # type: ignore[arg-type]
    assert body.token.reveal() == "hunter2"
    assert body.model_dump_json() == '{"token":"***"}'
    assert body.model_dump(mode="json") == {"token": "***"}
    assert "hunter2" not in repr(body)


def test_secret_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config(CONFIG, ENV)
    join = JoinSpec("http://s:1", "join-token-123", {"a": "b"})
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("config %s join %r", config, join)
    assert "wJalrXUtnFEMI" not in caplog.text
    assert "AKIAEXAMPLE" not in caplog.text
    assert "join-token-123" not in caplog.text
    assert "***" in caplog.text
    assert join.join_token.reveal() == "join-token-123"


def test_redacted_for_the_api() -> None:
    out = redacted(parse_config(CONFIG, ENV))
    text = json.dumps(out)
    assert "AKIAEXAMPLE" not in text and "wJalr" not in text and "plain-in-file" not in text
    assert out["providers"]["aws-east"] == {
        "kind": "aws",
        "settings": {"region": "us-east-1", "access_key_id": "***",
                     "secret_access_key": "***", "image_id": "ami-0abc",
                     "note": "cost is ${HOURLY} per hour"},
        "node_types": [
            {"name": "c5.xlarge", "resources": {"cpu": "4", "memory": "8Gi"},
             "price_per_hour": 0.17, "spot": False, "labels": {}},
            {"name": "g5.xlarge", "resources": {"cpu": "4", "memory": "16Gi", "gpu": "1"},
             "price_per_hour": 1.006, "spot": True, "labels": {"gpu.model": "A10G"}},
        ],
    }
    assert out["pools"][0] == {
        "name": "cpu-burst", "provider": "aws-east", "node_type": "c5.xlarge", "min_size": 1,
        "max_size": 8, "mode": "auto", "labels": {"facility": "aws-us-east-1"},
        "settings": {"subnet_id": "subnet-1", "api_token": "***"},
        "target": 0.6, "cooldown_up_s": 120.0,
    }
    assert mask((Secret("x"), {"y": [Secret("z")]})) == ["***", {"y": ["***"]}]


def test_load_config_file(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(CONFIG)
    assert load_config(path, ENV).source == str(path)
    with pytest.raises(ProviderConfigError, match="cannot read the provider config"):
        load_config(tmp_path / "missing.toml", ENV)


NT = '[[providers.p.node_types]]\nname = "t"\nresources = { cpu = 1 }\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[providers.p\n", "c.toml: not valid TOML"),
        ("[extra]\n", "c.toml: unknown top-level key(s) extra; expected providers and pools"),
        ('[providers.p]\nkind = "azure"\n',
         "c.toml: providers.p.kind: 'azure' is not a provider kind; use one of local, docker, "
         "aws, gcp, kubernetes"),
        ("[providers.p]\n", "c.toml: providers.p.kind: None is not a provider kind"),
        ('[providers.P]\nkind = "aws"\n', "c.toml: providers.P: provider names are lowercase"),
        ('[providers.p]\nkind = "local"\n[[providers.p.node_types]]\nname = "t"\n',
         "c.toml: providers.p.node_types[0].resources: required"),
        ('[providers.p]\nkind = "local"\n[[providers.p.node_types]]\nname = "t"\n'
         'resources = { cpu = "1x" }\n',
         "c.toml: providers.p.node_types[0].resources.cpu: unknown unit 'x'"),
        ('[providers.p]\nkind = "local"\n[[providers.p.node_types]]\nname = "t"\n'
         'resources = { cpu = 1 }\nprice = 3\n',
         "c.toml: providers.p.node_types[0]: unknown field(s) price"),
        ('[providers.p]\nkind = "local"\n' + NT + NT, "c.toml: providers.p.node_types[1]: "
         "node type 't' is listed twice"),
        ('[providers.p]\nkind = "local"\n' + NT + '[[pools]]\nname = "a"\nprovider = "q"\n',
         "c.toml: pools.a.provider: 'q' is not a provider in this file (defined: p)"),
        ('[providers.p]\nkind = "local"\n' + NT
         + '[[pools]]\nname = "a"\nprovider = "p"\nnode_type = "u"\n',
         "c.toml: pools.a.node_type: 'u' is not a node type of provider p (offered: t)"),
        ('[providers.p]\nkind = "local"\n' + NT
         + '[[pools]]\nname = "A_1"\nprovider = "p"\nnode_type = "t"\n',
         "c.toml: pools[0].name: pool: 'A_1' is not a valid pool name"),
        ('[providers.p]\nkind = "local"\n' + NT
         + '[[pools]]\nname = "a"\nprovider = "p"\nnode_type = "t"\nmin_size = 3\nmax_size = 2\n',
         "c.toml: pools.a: min_size 3 is above max_size 2"),
        ('[providers.p]\nkind = "local"\n' + NT
         + '[[pools]]\nname = "a"\nprovider = "p"\nnode_type = "t"\nmode = "yes"\n',
         "c.toml: pools.a.mode: 'yes'; use auto or advice"),
        ('[providers.p]\nkind = "local"\n' + NT
         + '[[pools]]\nname = "a"\nprovider = "p"\nnode_type = "t"\nmaxsize = 2\n',
         "c.toml: pools[0]: unknown field(s) maxsize"),
        ('[providers.p]\nkind = "local"\n' + NT
         + '[[pools]]\nname = "a"\nprovider = "p"\nnode_type = "t"\ntarget = 0.95\n',
         "c.toml: pools.a: pool: need 0 < scale_down_below < target < scale_up_above <= 1"),
        ('[providers.p]\nkind = "local"\n' + NT + '[[pools]]\nname = "a"\nprovider = "p"\n'
         'node_type = "t"\n[[pools]]\nname = "a"\nprovider = "p"\nnode_type = "t"\n',
         "c.toml: pools.a: pool 'a' is defined twice"),
    ],
)
def test_config_errors(text: str, message: str) -> None:
    with pytest.raises(ProviderConfigError) as info:
        parse_config(text, {}, source="c.toml")
    assert info.value.message.startswith(message), info.value.message


def test_node_types_checked() -> None:
    assert parse_node_types(None, "p") == []
    with pytest.raises(ProviderConfigError, match=r"price_per_hour: expected a number >= 0"):
        parse_node_types([{"name": "t", "resources": {"cpu": 1}, "price_per_hour": -1}], "p")
    with pytest.raises(ProviderConfigError, match=r"spot: expected true or false"):
        parse_node_types([{"name": "t", "resources": {"cpu": 1}, "spot": "yes"}], "p")


# -- the registry -----------------------------------------------------------------


def test_registry_builds_local_provider(tmp_path: Path) -> None:
    provider = providers.get("local", {"state_dir": str(tmp_path), "node_types": [
        {"name": "small", "resources": {"cpu": "2", "memory": "1Gi"}, "price_per_hour": 0.0}]})
    assert (provider.name, provider.kind) == ("local", "local")
    assert provider.node_types() == [NodeType("small", {"cpu": 2000, "memory": GiB}, 0.0)]
    with pytest.raises(InvalidInput, match=r"unknown node type 'big' \(offered: small\)"):
        provider.node_type("big")


def test_registry_from_config(tmp_path: Path) -> None:
    config = parse_config(f"""
[providers.local]
state_dir = "{tmp_path}"
[[providers.local.node_types]]
name = "small"
resources = {{ cpu = "2" }}
[[pools]]
name = "dev"
provider = "local"
node_type = "small"
settings = {{ grace_s = 1 }}
""", {})
    built = providers.from_config(config)
    assert list(built) == ["local"]
    assert built["local"].settings["pools"] == {"dev": {"grace_s": 1}}
    assert built["local"].pool_setting("dev", "grace_s") == 1
    assert built["local"].pool_setting("other", "grace_s", 10) == 10


def test_registry_knows_every_config_kind() -> None:
    from apportion.providers.config import KINDS

    assert sorted(providers.REGISTRY) == sorted(KINDS)


def test_registry_unknown_kind() -> None:
    with pytest.raises(ProviderConfigError, match="unknown provider kind 'azure'"):
        providers.get("azure", {})


@pytest.mark.parametrize(
    ("kind", "sdk", "module", "extra"),
    [
        ("aws", "boto3", "apportion.providers.aws", "aws"),
        ("gcp", "google.cloud.compute_v1", "apportion.providers.gcp", "gcp"),
        ("kubernetes", "kubernetes", "apportion.providers.kubernetes", "kubernetes"),
        ("docker", "docker", "apportion.providers.docker", "docker"),
    ],
)
def test_missing_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, kind: str, sdk: str, module: str, extra: str
) -> None:
    # As if the SDK were not installed: "import sdk" fails, and "from parent
    # import sdk" finds no attribute left over from another test's import.
    monkeypatch.setitem(sys.modules, sdk, None)
    parent, _, leaf = sdk.rpartition(".")
    if parent in sys.modules:
        monkeypatch.delattr(sys.modules[parent], leaf, raising=False)
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ProviderUnavailable) as info:
        providers.get(kind, {})
    assert info.value.message.endswith(f"install it with: pip install 'apportion[{extra}]'")
    assert info.value.data["extra"] == extra
