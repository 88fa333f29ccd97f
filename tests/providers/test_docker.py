"""The docker provider through the real Docker SDK (``docker.DockerClient``),
with a fake Docker Engine API mounted on the SDK's HTTP session: the SDK
builds and sends every request and parses every reply. No Docker engine runs
here, so the engine is this fake, written after the Engine API reference
(v1.43: create, start, inspect, list with label filters, stop, remove, and
its 404/409 error bodies), not recorded from a live daemon."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

pytest.importorskip("docker", reason="the docker extra is not installed")

from apportion.exceptions import ProviderConfigError, ProviderError
from apportion.providers import get
from apportion.providers.base import InstanceState, JoinSpec
from apportion.providers.docker import DockerProvider
from apportion.providers.secret import Secret
from providers.fake_http import Call, FakeAdapter

GiB = 1 << 30
ENGINE = "http://127.0.0.1:2375"
TOKEN = "join-0123456789abcdef"
JOIN = JoinSpec("http://apportion.internal:8080", Secret(TOKEN), {"facility": "lab"})
CREATED = "2024-05-01T10:00:00.123456789Z"
SETTINGS: dict[str, Any] = {
    "base_url": "tcp://127.0.0.1:2375",
    "api_version": "1.43",
    "image": "ghcr.io/acme/apportion:0.1.0",
    "network": "apportion",
    "grace_s": 7,
    "node_types": [
        {"name": "small", "resources": {"cpu": "1500m", "memory": "2Gi"}},
        {"name": "gpu", "resources": {"cpu": "4", "memory": "16Gi", "gpu": 2}},
    ],
}


class FakeEngine:
    """Containers in a Docker Engine, as the Engine API answers for them."""

    def __init__(self) -> None:
        self.containers: dict[str, dict[str, Any]] = {}

    def add(self, name: str, labels: dict[str, str], status: str = "running") -> str:
        id = f"{len(self.containers) + 1:064x}"
        self.containers[id] = self._inspect(id, name, {"Image": "nginx", "Labels": labels,
                                                       "Cmd": [], "Env": []}, {})
        self.containers[id]["State"].update(Status=status, Running=status == "running")
        return id

    def __call__(self, call: Call) -> tuple[int, Any]:
        path = call.path.removeprefix("/v1.43")
        if call.method == "POST" and path == "/containers/create":
            name = call.query["name"][0]
            if any(c["Name"] == f"/{name}" for c in self.containers.values()):
                return 409, {"message": f'Conflict. The container name "/{name}" is already in '
                             "use by container \"x\". You have to remove (or rename) that "
                             "container to be able to reuse that name."}
            id = f"{len(self.containers) + 1:064x}"
            body = call.body
            self.containers[id] = self._inspect(id, name, body, body.get("HostConfig", {}))
            return 201, {"Id": id, "Warnings": []}
        if call.method == "GET" and path == "/containers/json":
            terms = json.loads(call.query.get("filters", ["{}"])[0]).get("label", [])
            assert call.query["all"] == ["1"]
            return 200, [self._summary(c) for c in self.containers.values()
                         if all(c["Config"]["Labels"].get(t.split("=", 1)[0]) ==
                                t.split("=", 1)[1] for t in terms)]
        parts = path.split("/")  # ["", "containers", id, action?]
        key = parts[2] if len(parts) > 2 else ""
        container = self.containers.get(key) or next(
            (c for c in self.containers.values() if c["Name"] == f"/{key}"), None)
        if container is None:
            return 404, {"message": f"No such container: {key}"}
        action = parts[3] if len(parts) > 3 else ""
        state = container["State"]
        if call.method == "GET" and action == "json":
            return 200, container
        if call.method == "POST" and action == "start":
            state.update(Status="running", Running=True, Pid=4242,
                         StartedAt="2024-05-01T10:00:01.5Z")
            container["NetworkSettings"]["Networks"][container["HostConfig"].get(
                "NetworkMode", "bridge")] = {"IPAddress": "172.18.0.5"}
            return 204, None
        if call.method == "POST" and action == "stop":
            state.update(Status="exited", Running=False, Pid=0, ExitCode=143)
            return 204, None
        if call.method == "DELETE" and not action:
            del self.containers[container["Id"]]
            return 204, None
        raise AssertionError(f"unexpected {call.method} {call.path}")

    @staticmethod
    def _inspect(id: str, name: str, config: dict[str, Any],
                 host: dict[str, Any]) -> dict[str, Any]:
        return {
            "Id": id, "Created": CREATED, "Path": (config.get("Cmd") or [""])[0],
            "Args": (config.get("Cmd") or [])[1:], "Image": "sha256:" + "b" * 64,
            "Name": f"/{name}", "RestartCount": 0, "Driver": "overlay2",
            "State": {"Status": "created", "Running": False, "Paused": False,
                      "Restarting": False, "OOMKilled": False, "Dead": False, "Pid": 0,
                      "ExitCode": 0, "Error": "", "StartedAt": "0001-01-01T00:00:00Z",
                      "FinishedAt": "0001-01-01T00:00:00Z"},
            "HostConfig": copy.deepcopy(host),
            "Config": {"Image": config.get("Image"), "Cmd": config.get("Cmd"),
                       "Env": config.get("Env"), "Labels": config.get("Labels") or {}},
            "NetworkSettings": {"IPAddress": "", "Networks": {}},
        }

    @staticmethod
    def _summary(c: dict[str, Any]) -> dict[str, Any]:
        return {"Id": c["Id"], "Names": [c["Name"]], "Image": c["Config"]["Image"],
                "Command": " ".join(c["Config"]["Cmd"] or []), "Created": 1714557600,
                "State": c["State"]["Status"], "Status": "Up 1 second",
                "Labels": c["Config"]["Labels"]}


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def adapter(engine: FakeEngine) -> FakeAdapter:
    return FakeAdapter(engine)


@pytest.fixture
def provider(adapter: FakeAdapter) -> DockerProvider:
    built = get("docker", SETTINGS, "docker")
    assert isinstance(built, DockerProvider)
    built.client.api.mount(ENGINE, adapter)  # the SDK's own client, our engine
    return built


def test_create_runs_agent_containers(
    provider: DockerProvider, adapter: FakeAdapter, engine: FakeEngine
) -> None:
    nodes = provider.create("dev", "small", 2, JOIN)
    assert [(n.pool, n.node_type, n.state, n.provider, n.address) for n in nodes] == [
        ("dev", "small", InstanceState.RUNNING, "docker", "172.18.0.5")] * 2
    assert nodes[0].created_at == pytest.approx(1714557600.123457)
    name = nodes[0].node_name
    assert name.startswith("dev-") and nodes[0].id == f"{1:064x}"
    creates = [c for c in adapter.calls if c.path.endswith("/containers/create")]
    assert [c.query["name"] for c in creates] == [[nodes[0].node_name], [nodes[1].node_name]]
    body = creates[0].body
    assert body["Image"] == "ghcr.io/acme/apportion:0.1.0"
    assert body["Cmd"] == [
        "apportion", "agent", "--name", name, "--labels",
        "facility=lab,node-type=small,pool=dev,provider=docker",
        "--work-dir", "/var/lib/apportion/agent", "--on-exit", "stop",
        "--resources", "cpu=1500m,memory=2Gi"]
    assert body["Env"] == ["APPORTION_SERVER=http://apportion.internal:8080",
                           f"APPORTION_TOKEN={TOKEN}"]
    assert body["Labels"] == {
        "apportion.managed-by": "apportion", "apportion.provider": "docker",
        "apportion.pool": "dev", "apportion.node": name, "apportion.node-type": "small"}
    assert body["StopSignal"] == "SIGTERM"
    assert body["HostConfig"] == {"NanoCpus": 1_500_000_000, "Memory": 2 * GiB,
                                  "NetworkMode": "apportion"}
    assert [c.method + " " + c.path for c in adapter.calls[:3]] == [
        "POST /v1.43/containers/create", f"GET /v1.43/containers/{nodes[0].id}/json",
        f"POST /v1.43/containers/{nodes[0].id}/start"]


def test_gpu_device_request(provider: DockerProvider, adapter: FakeAdapter) -> None:
    provider.create("gpus", "gpu", 1, JOIN)
    host = adapter.calls[0].body["HostConfig"]
    assert host["DeviceRequests"] == [{"Driver": "", "Count": 2, "DeviceIDs": [],
                                       "Capabilities": [["gpu"]], "Options": {}}]
    assert (host["NanoCpus"], host["Memory"]) == (4_000_000_000, 16 * GiB)


def test_list_and_status(provider: DockerProvider, engine: FakeEngine,
                         adapter: FakeAdapter) -> None:
    dev = provider.create("dev", "small", 2, JOIN)
    provider.create("gpus", "gpu", 1, JOIN)
    engine.add("web", {"app": "web"})
    engine.add("other", {"apportion.managed-by": "apportion", "apportion.provider": "d2",
                         "apportion.pool": "dev"})
    assert sorted(n.id for n in provider.list("dev")) == sorted(n.id for n in dev)
    lists = [c for c in adapter.calls if c.path.endswith("/containers/json")]
    assert json.loads(lists[-1].query["filters"][0]) == {"label": [
        "apportion.managed-by=apportion", "apportion.provider=docker", "apportion.pool=dev"]}
    assert len(provider.list()) == 3
    engine.containers[dev[0].id]["State"].update(Status="exited", Running=False, ExitCode=1,
                                                OOMKilled=True)
    status = provider.status(dev[0].id)
    assert (status.state, status.detail) == (
        InstanceState.FAILED, "container is exited (exit code 1), killed for exceeding its memory")
    assert provider.status("nope").state is InstanceState.TERMINATED


def test_terminate_stops_and_removes_only_ours(
    provider: DockerProvider, engine: FakeEngine, adapter: FakeAdapter
) -> None:
    nodes = provider.create("dev", "small", 2, JOIN)
    web = engine.add("web", {"app": "web"})
    adapter.calls.clear()
    out = provider.terminate([nodes[0].id, web, "nope"])
    assert [(n.id, n.state) for n in out] == [(nodes[0].id, InstanceState.TERMINATED),
                                              (web, InstanceState.TERMINATED),
                                              ("nope", InstanceState.TERMINATED)]
    assert out[1].detail == "not a container of this provider; not touched"
    changes = [(c.method, c.path, c.query) for c in adapter.calls if c.method != "GET"]
    assert changes == [
        ("POST", f"/v1.43/containers/{nodes[0].id}/stop", {"t": ["7"]}),
        ("DELETE", f"/v1.43/containers/{nodes[0].id}",
         {"v": ["False"], "link": ["False"], "force": ["True"]}),
    ]
    assert web in engine.containers and nodes[0].id not in engine.containers
    assert [n.id for n in provider.list()] == [nodes[1].id]
    assert provider.terminate([nodes[0].id])[0].state is InstanceState.TERMINATED


def test_name_conflict_is_a_provider_error(provider: DockerProvider, engine: FakeEngine) -> None:
    engine.add("dev-aaaaaa", {})
    with pytest.raises(ProviderError) as info:
        provider.create("dev", "small", 1, JoinSpec(JOIN.server_url, TOKEN,
                                                    node_names=("dev-aaaaaa",)))
    assert info.value.message.startswith(
        'provider docker: starting container dev-aaaaaa failed: 409 Conflict. The container '
        'name "/dev-aaaaaa" is already in use')
    assert info.value.nodes == []


def test_settings_checked() -> None:
    with pytest.raises(ProviderConfigError, match=r"providers.d.image: required"):
        DockerProvider("d", {})
    with pytest.raises(ProviderConfigError, match=r"providers.d.grace_s: whole seconds"):
        DockerProvider("d", {"image": "x", "grace_s": 1.5})
