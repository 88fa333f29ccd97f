"""The gcp provider through google-cloud-compute's own ``InstancesClient`` and
REST transport, with a fake Compute Engine API mounted on the transport's
HTTP session: the library builds, sends and parses every request. The
replies follow the Compute Engine v1 REST reference (Instance, Operation,
error and list shapes, paged with ``nextPageToken``); they were written from
it, not recorded from a live project. No request leaves the process."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

pytest.importorskip("google.cloud.compute_v1",
                    reason="the gcp extra (google-cloud-compute) is not installed")

from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from apportion.exceptions import ProviderConfigError, ProviderError
from apportion.providers import get
from apportion.providers.base import InstanceState, JoinSpec
from apportion.providers.gcp import GcpProvider
from apportion.providers.secret import Secret
from providers.fake_http import Call, FakeAdapter

PROJECT, ZONE = "acme-hpc", "us-central1-a"
BASE = f"/compute/v1/projects/{PROJECT}/zones/{ZONE}"
TOKEN = "join-0123456789abcdef"
JOIN = JoinSpec("https://apportion.example:8443", Secret(TOKEN), {"facility": "gcp-usc1"})
IMAGE = "projects/debian-cloud/global/images/family/debian-12"
CREATED = "2024-05-01T03:00:00.000-07:00"  # 1714557600
SETTINGS: dict[str, Any] = {
    "project": PROJECT,
    "zone": ZONE,
    "source_image": IMAGE,
    "labels": {"team": "Infra"},
    "node_types": [
        {"name": "n2-standard-4", "resources": {"cpu": "4", "memory": "16Gi"},
         "price_per_hour": 0.194},
        {"name": "g2-standard-8", "resources": {"cpu": "8", "memory": "32Gi", "gpu": 1},
         "price_per_hour": 0.85, "spot": True},
    ],
    "pools": {"gpu": {"subnetwork": "regions/us-central1/subnetworks/gpu", "external_ip": True}},
}


class FakeCompute:
    """Compute Engine's instances collection in one zone."""

    def __init__(self) -> None:
        self.instances: dict[str, dict[str, Any]] = {}
        self.fail_insert: dict[str, Any] | None = None

    def add(self, name: str, labels: dict[str, str], status: str = "RUNNING") -> None:
        self.instances[name] = {
            "kind": "compute#instance", "id": str(1000 + len(self.instances)), "name": name,
            "status": status, "creationTimestamp": CREATED, "labels": labels,
            "machineType": f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/"
                           f"{ZONE}/machineTypes/e2-small",
            "networkInterfaces": [{"networkIP": "10.128.0.99"}],
        }

    def __call__(self, call: Call) -> tuple[int, Any]:
        assert call.path.startswith(BASE + "/instances"), call.path
        rest = call.path[len(BASE + "/instances"):].lstrip("/")
        if call.method == "POST" and not rest:
            if self.fail_insert:
                return self.fail_insert["status"], self.fail_insert["body"]
            body = copy.deepcopy(call.body)
            n = len(self.instances) + 1
            body.update({
                "kind": "compute#instance", "id": str(7000 + n), "status": "PROVISIONING",
                "creationTimestamp": CREATED,
                "selfLink": f"https://www.googleapis.com/compute/v1{BASE}/instances/"
                            f"{body['name']}",
            })
            for interface in body.get("networkInterfaces", []):
                interface["networkIP"] = f"10.128.0.{n}"
                for access in interface.get("accessConfigs", []):
                    access["natIP"] = f"34.1.2.{n}"
            self.instances[body["name"]] = body
            return 200, self._operation("insert", body["name"])
        if call.method == "GET" and not rest:
            return 200, self._list(call)
        instance = self.instances.get(rest)
        if instance is None:
            return 404, {"error": {"code": 404, "message": f"The resource 'projects/{PROJECT}/"
                                   f"zones/{ZONE}/instances/{rest}' was not found",
                                   "errors": [{"message": "not found", "domain": "global",
                                               "reason": "notFound"}]}}
        if call.method == "GET":
            return 200, instance
        if call.method == "DELETE":
            instance["status"] = "STOPPING"
            del self.instances[rest]  # the next get answers 404, as after a delete
            return 200, self._operation("delete", rest)
        raise AssertionError(f"unexpected {call.method} {call.path}")

    def _list(self, call: Call) -> dict[str, Any]:
        terms = re.findall(r'labels\.([a-z0-9_-]+) = "([^"]*)"', call.query["filter"][0])
        items = [i for i in self.instances.values()
                 if all(i.get("labels", {}).get(k) == v for k, v in terms)]
        start = int(call.query.get("pageToken", ["0"])[0])
        page: dict[str, Any] = {"kind": "compute#instanceList", "id": f"projects/{PROJECT}/"
                                f"zones/{ZONE}/instances"}
        if items[start:start + 2]:
            page["items"] = items[start:start + 2]  # two a page, to exercise the pager
        if start + 2 < len(items):
            page["nextPageToken"] = str(start + 2)
        return page

    def _operation(self, kind: str, name: str) -> dict[str, Any]:
        return {
            "kind": "compute#operation", "id": "4242", "name": f"operation-{kind}-{name}",
            "zone": f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{ZONE}",
            "operationType": kind, "status": "RUNNING", "progress": 0,
            "targetLink": f"https://www.googleapis.com/compute/v1{BASE}/instances/{name}",
        }


@pytest.fixture
def gce() -> FakeCompute:
    return FakeCompute()


@pytest.fixture
def adapter(gce: FakeCompute) -> FakeAdapter:
    return FakeAdapter(gce)


@pytest.fixture
def provider(adapter: FakeAdapter) -> GcpProvider:
    client = compute_v1.InstancesClient(credentials=AnonymousCredentials(), transport="rest")
    client.transport._session.mount("https://", adapter)
    built = get("gcp", SETTINGS, "gcp-main", client=client)
    assert isinstance(built, GcpProvider)
    return built


def test_create_inserts_labelled_instances(
    provider: GcpProvider, adapter: FakeAdapter, gce: FakeCompute
) -> None:
    nodes = provider.create("cpu", "n2-standard-4", 2, JOIN)
    assert [(n.pool, n.node_type, n.state, n.provider) for n in nodes] == [
        ("cpu", "n2-standard-4", InstanceState.PROVISIONING, "gcp-main")] * 2
    assert nodes[0].detail == f"operation operation-insert-{nodes[0].id}"
    posts = [c for c in adapter.calls if c.method == "POST"]
    assert [c.path for c in posts] == [BASE + "/instances"] * 2
    body = posts[0].body
    name = nodes[0].node_name
    assert nodes[0].id == name and name.startswith("cpu-")
    script = body["metadata"]["items"][0]["value"]
    assert body == {
        "name": name,
        "machineType": f"zones/{ZONE}/machineTypes/n2-standard-4",
        "labels": {"team": "infra", "apportion-managed-by": "apportion",
                   "apportion-provider": "gcp-main", "apportion-pool": "cpu",
                   "apportion-node": name, "apportion-node-type": "n2-standard-4"},
        "disks": [{"boot": True, "autoDelete": True,
                   "initializeParams": {"sourceImage": IMAGE, "diskSizeGb": "20"}}],
        "networkInterfaces": [{"network": "global/networks/default"}],
        "metadata": {"items": [{"key": "startup-script", "value": script}]},
    }
    assert f"cat > /etc/apportion/agent.token <<'APPORTION_EOF'\n{TOKEN}\n" in script
    assert "APPORTION_TOKEN_FILE=/etc/apportion/agent.token\n" in script
    assert (f"ExecStart=/usr/bin/env apportion agent --name {name} --labels facility=gcp-usc1,"
            "node-type=n2-standard-4,pool=cpu,provider=gcp-main --work-dir "
            "/var/lib/apportion/agent --on-exit stop\n") in script
    assert sorted(gce.instances) == sorted(n.id for n in nodes)


def test_spot_and_pool_settings(provider: GcpProvider, adapter: FakeAdapter) -> None:
    (node,) = provider.create("gpu", "g2-standard-8", 1, JOIN)
    body = adapter.calls[-1].body
    assert body["scheduling"] == {"provisioningModel": "SPOT",
                                  "instanceTerminationAction": "DELETE"}
    assert body["networkInterfaces"] == [{
        "network": "global/networks/default",
        "subnetwork": "regions/us-central1/subnetworks/gpu",
        "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}],
    }]
    status = provider.status(node.id)
    assert (status.state, status.address, status.created_at) == (
        InstanceState.PROVISIONING, "10.128.0.1", 1714557600.0)


def test_list_pages_and_filters(
    provider: GcpProvider, adapter: FakeAdapter, gce: FakeCompute
) -> None:
    made = provider.create("cpu", "n2-standard-4", 3, JOIN)
    provider.create("gpu", "g2-standard-8", 1, JOIN)
    gce.add("hand-made", {"team": "infra"})
    gce.add("other-provider", {"apportion-managed-by": "apportion",
                               "apportion-provider": "gcp-other", "apportion-pool": "cpu"})
    for name in gce.instances:
        gce.instances[name]["status"] = "RUNNING"
    listed = provider.list("cpu")
    assert sorted(n.id for n in listed) == sorted(n.id for n in made)
    assert {n.state for n in listed} == {InstanceState.RUNNING}
    lists = [c for c in adapter.calls if c.method == "GET" and c.path == BASE + "/instances"]
    assert lists[0].query["filter"] == [
        '(labels.apportion-managed-by = "apportion") AND '
        '(labels.apportion-provider = "gcp-main") AND (labels.apportion-pool = "cpu")']
    assert [c.query.get("pageToken") for c in lists] == [None, ["2"]]
    assert len(provider.list()) == 4


@pytest.mark.parametrize(
    ("gce_status", "state"),
    [("PROVISIONING", InstanceState.PROVISIONING), ("STAGING", InstanceState.PROVISIONING),
     ("RUNNING", InstanceState.RUNNING), ("STOPPING", InstanceState.TERMINATING),
     ("TERMINATED", InstanceState.FAILED), ("SUSPENDED", InstanceState.FAILED)],
)
def test_status_mapping(
    provider: GcpProvider, gce: FakeCompute, gce_status: str, state: InstanceState
) -> None:
    (node,) = provider.create("cpu", "n2-standard-4", 1, JOIN)
    gce.instances[node.id]["status"] = gce_status
    assert provider.status(node.id).state is state


def test_terminate_deletes_only_ours(
    provider: GcpProvider, adapter: FakeAdapter, gce: FakeCompute
) -> None:
    nodes = provider.create("cpu", "n2-standard-4", 2, JOIN)
    gce.add("hand-made", {"team": "infra"})
    out = provider.terminate([nodes[0].id, "hand-made", "never-was"])
    assert [(n.id, n.state) for n in out] == [
        (nodes[0].id, InstanceState.TERMINATING),
        ("hand-made", InstanceState.TERMINATED),
        ("never-was", InstanceState.TERMINATED),
    ]
    assert out[1].detail == "not an instance of this provider; not touched"
    deletes = [c.path for c in adapter.calls if c.method == "DELETE"]
    assert deletes == [f"{BASE}/instances/{nodes[0].id}"]
    assert "hand-made" in gce.instances
    assert provider.status(nodes[0].id).state is InstanceState.TERMINATED
    assert [n.id for n in provider.list()] == [nodes[1].id]


def test_insert_error_is_a_provider_error(provider: GcpProvider, gce: FakeCompute) -> None:
    gce.fail_insert = {"status": 403, "body": {"error": {
        "code": 403, "message": "Quota 'CPUS' exceeded.  Limit: 24.0 in region us-central1.",
        "errors": [{"message": "Quota exceeded", "domain": "usageLimits",
                    "reason": "quotaExceeded"}]}}}
    with pytest.raises(ProviderError) as info:
        provider.create("cpu", "n2-standard-4", 1, JOIN)
    assert info.value.message.endswith(
        "(n2-standard-4) failed: 403 POST https://compute.googleapis.com/compute/v1/projects/"
        "acme-hpc/zones/us-central1-a/instances: Quota 'CPUS' exceeded.  Limit: 24.0 in "
        "region us-central1.")
    assert info.value.nodes == []


def test_settings_checked() -> None:
    with pytest.raises(ProviderConfigError, match=r"providers.g.project: required"):
        GcpProvider("g", {"zone": ZONE})
    with pytest.raises(ProviderConfigError, match=r"providers.g.source_image: required"):
        GcpProvider("g", {"project": PROJECT, "zone": ZONE})
    broken = GcpProvider("g", {**SETTINGS, "credentials_json": Secret("{not json")})
    with pytest.raises(ProviderConfigError) as info:
        _ = broken.client
    assert info.value.message == (
        "providers.g.credentials_json: not a usable service account key (JSONDecodeError)")
