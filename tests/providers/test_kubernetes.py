"""The kubernetes provider through the kubernetes client's own ``CoreV1Api``
and ``ApiClient``, with the REST layer (``ApiClient.rest_client``) replaced by
a fake API server: the client serializes every request and deserializes
every reply into its models. The replies have the shape a real API server
gives (``kubectl get -o json``): defaults filled in on create, a Secret's
``stringData`` returned as ``data``, list items without kind, ``Status``
objects for 404 and for deleted Secrets, a pod that lingers with
``deletionTimestamp`` during its grace period. They were written after that
shape, not recorded from a live cluster. No request leaves the process."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

pytest.importorskip("kubernetes", reason="the kubernetes extra is not installed")

import kubernetes.client

from apportion.exceptions import ProviderConfigError, ProviderError
from apportion.providers import get
from apportion.providers.base import InstanceState, JoinSpec
from apportion.providers.kubernetes import KubernetesProvider
from apportion.providers.secret import Secret

NS = "apportion"
TOKEN = "join-0123456789abcdef"
JOIN = JoinSpec("https://apportion.example:8443", Secret(TOKEN), {"facility": "k8s-lab"})
CREATED = "2024-05-01T10:00:00Z"  # 1714557600
SETTINGS: dict[str, Any] = {
    "namespace": NS,
    "image": "ghcr.io/acme/apportion:0.1.0",
    "node_selector": {"pool": "batch"},
    "node_types": [
        {"name": "small", "resources": {"cpu": "2", "memory": "4Gi"}, "price_per_hour": 0.05},
        {"name": "gpu", "resources": {"cpu": "500m", "memory": "8Gi", "gpu": 1,
                                      "license.matlab": 1}},
    ],
    "pools": {"gpus": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                        "effect": "NoSchedule"}]}},
}


class Response:
    """What ``RESTClientObject.request`` returns (both the v37 client, which
    calls ``read()``, and older ones, which read ``data``)."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.reason = {200: "OK", 201: "Created", 403: "Forbidden",
                       404: "Not Found"}.get(status, "Error")
        self.data = json.dumps(body).encode()
        self.headers = {"content-type": "application/json"}

    def read(self) -> bytes:
        return self.data

    def getheaders(self) -> dict[str, str]:
        return self.headers

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


class FakeApiServer:
    """Pods and Secrets of one namespace, answering as kube-apiserver does."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, dict[str, list[str]], Any]] = []
        self.forbid_pods = False
        self._uid = 0
        self._version = 1000

    # The ``RESTClientObject.request`` signature, old and new.
    def request(self, method: str, url: str, query_params: Any = None, headers: Any = None,
                body: Any = None, post_params: Any = None, _preload_content: bool = True,
                _request_timeout: Any = None) -> Response:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.calls.append((method, parts.path, query, copy.deepcopy(body)))
        prefix = f"/api/v1/namespaces/{NS}/"
        assert parts.path.startswith(prefix), parts.path
        kind, _, name = parts.path[len(prefix):].partition("/")
        store = {"pods": self.pods, "secrets": self.secrets}[kind]
        if method == "POST":
            if kind == "pods" and self.forbid_pods:
                return Response(403, _status(403, "Forbidden", (
                    f'pods "{body["metadata"]["name"]}" is forbidden: exceeded quota: '
                    "compute, requested: limits.cpu=2, used: limits.cpu=8, limited: "
                    "limits.cpu=8")))
            made = self._create_pod(body) if kind == "pods" else self._create_secret(body)
            store[made["metadata"]["name"]] = made
            return Response(201, made)
        if method == "GET" and not name:
            return Response(200, self._list(kind, store, query))
        if name not in store:
            return Response(404, _status(404, "NotFound", f'{kind} "{name}" not found',
                                         name=name, kind=kind))
        obj = store[name]
        if method == "GET":
            return Response(200, obj)
        if method == "PATCH":
            obj["metadata"].update(body["metadata"])
            return Response(200, obj)
        if method == "DELETE":
            if kind == "secrets":
                del store[name]
                return Response(200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                      "status": "Success", "details": {
                                          "name": name, "kind": "secrets",
                                          "uid": obj["metadata"]["uid"]}})
            grace = int(query.get("gracePeriodSeconds", ["30"])[0])
            obj["metadata"]["deletionTimestamp"] = "2024-05-01T10:05:00Z"
            obj["metadata"]["deletionGracePeriodSeconds"] = grace
            return Response(200, obj)
        raise AssertionError(f"unexpected {method} {url}")

    def _meta(self, body: dict[str, Any]) -> dict[str, Any]:
        self._uid += 1
        self._version += 1
        return {**body["metadata"], "namespace": NS,
                "uid": f"3f2a9c1e-0000-4000-8000-{self._uid:012d}",
                "resourceVersion": str(self._version), "creationTimestamp": CREATED,
                "managedFields": [{"manager": "apportion", "operation": "Update",
                                   "apiVersion": "v1", "time": CREATED,
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]}

    def _create_pod(self, body: dict[str, Any]) -> dict[str, Any]:
        pod = copy.deepcopy(body)
        pod["metadata"] = self._meta(body)
        spec = pod["spec"]
        for container in spec["containers"]:
            container.setdefault("imagePullPolicy", "IfNotPresent")
            container["terminationMessagePath"] = "/dev/termination-log"
            container["terminationMessagePolicy"] = "File"
        spec.update({"dnsPolicy": "ClusterFirst", "enableServiceLinks": True,
                     "preemptionPolicy": "PreemptLowerPriority", "priority": 0,
                     "schedulerName": "default-scheduler", "securityContext": {},
                     "serviceAccount": "default", "serviceAccountName": "default"})
        spec.setdefault("tolerations", []).extend([
            {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready",
             "operator": "Exists", "tolerationSeconds": 300},
            {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable",
             "operator": "Exists", "tolerationSeconds": 300}])
        pod["status"] = {"phase": "Pending", "qosClass": "Guaranteed"}
        return pod

    def _create_secret(self, body: dict[str, Any]) -> dict[str, Any]:
        secret = {k: v for k, v in body.items() if k != "stringData"}
        secret["metadata"] = self._meta(body)
        secret["data"] = {k: base64.b64encode(v.encode()).decode()
                          for k, v in body.get("stringData", {}).items()}
        return secret

    def _list(self, kind: str, store: dict[str, Any], query: dict[str, list[str]]) -> Any:
        terms = [t.split("=", 1) for t in query.get("labelSelector", [""])[0].split(",") if t]
        items = []
        for obj in store.values():
            if all(obj["metadata"].get("labels", {}).get(k) == v for k, v in terms):
                item = copy.deepcopy(obj)
                item.pop("kind", None)  # list items carry no kind/apiVersion
                item.pop("apiVersion", None)
                items.append(item)
        return {"kind": "PodList" if kind == "pods" else "SecretList", "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._version)}, "items": items}

    # -- what the kubelet would do ----------------------------------------------

    def run(self, name: str, ip: str) -> None:
        pod = self.pods[name]
        pod["spec"]["nodeName"] = "worker-1"
        pod["status"] = {
            "phase": "Running", "qosClass": "Guaranteed", "hostIP": "192.168.49.2",
            "podIP": ip, "podIPs": [{"ip": ip}], "startTime": CREATED,
            "conditions": [
                {"type": t, "status": "True", "lastProbeTime": None,
                 "lastTransitionTime": CREATED}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
            "containerStatuses": [{
                "name": "agent", "ready": True, "restartCount": 0, "started": True,
                "image": pod["spec"]["containers"][0]["image"],
                "imageID": "ghcr.io/acme/apportion@sha256:" + "0" * 64,
                "containerID": "containerd://" + "a" * 64, "lastState": {},
                "state": {"running": {"startedAt": CREATED}}}],
        }

    def wait(self, name: str, reason: str, message: str) -> None:
        self.pods[name]["status"]["containerStatuses"] = [{
            "name": "agent", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
            "state": {"waiting": {"reason": reason, "message": message}}}]

    def end(self, name: str, phase: str, reason: str, exit_code: int) -> None:
        self.pods[name]["status"] = {
            "phase": phase, "qosClass": "Guaranteed",
            "containerStatuses": [{
                "name": "agent", "ready": False, "restartCount": 0, "image": "x",
                "imageID": "", "state": {"terminated": {
                    "exitCode": exit_code, "reason": reason, "startedAt": CREATED,
                    "finishedAt": "2024-05-01T10:03:00Z"}}}]}

    def finish_deletions(self) -> None:
        for name in [n for n, p in self.pods.items() if p["metadata"].get("deletionTimestamp")]:
            del self.pods[name]


def _status(code: int, reason: str, message: str, **details: str) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                           "status": "Failure", "message": message, "reason": reason,
                           "code": code}
    if details:
        out["details"] = details
    return out


@pytest.fixture
def api() -> FakeApiServer:
    return FakeApiServer()


@pytest.fixture
def provider(api: FakeApiServer) -> KubernetesProvider:
    client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host="https://k8s.test"))
    client.rest_client = api
    built = get("kubernetes", SETTINGS, "k8s", client=client)
    assert isinstance(built, KubernetesProvider)
    return built


def test_create_makes_secret_then_pod(provider: KubernetesProvider, api: FakeApiServer) -> None:
    nodes = provider.create("batch", "small", 2, JOIN)
    assert [(n.pool, n.node_type, n.state, n.provider, n.created_at) for n in nodes] == [
        ("batch", "small", InstanceState.PROVISIONING, "k8s", 1714557600.0)] * 2
    name = nodes[0].node_name
    assert nodes[0].id == name and name.startswith("batch-")
    base = f"/api/v1/namespaces/{NS}"
    assert [(m, p) for m, p, _, _ in api.calls[:3]] == [
        ("POST", f"{base}/secrets"), ("POST", f"{base}/pods"),
        ("PATCH", f"{base}/secrets/{name}-join")]
    labels = {"apportion.io/managed-by": "apportion", "apportion.io/provider": "k8s",
              "apportion.io/pool": "batch", "apportion.io/node": name,
              "apportion.io/node-type": "small"}
    secret, pod, patch = (body for _, _, _, body in api.calls[:3])
    assert secret == {"apiVersion": "v1", "kind": "Secret",
                      "metadata": {"name": f"{name}-join", "labels": labels},
                      "type": "Opaque", "stringData": {"token": TOKEN}}
    assert pod == {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "nodeSelector": {"pool": "batch"},
            "containers": [{
                "name": "agent",
                "image": "ghcr.io/acme/apportion:0.1.0",
                "command": ["apportion", "agent"],
                "args": ["--name", name, "--labels",
                         "facility=k8s-lab,node-type=small,pool=batch,provider=k8s",
                         "--work-dir", "/var/lib/apportion/agent", "--on-exit", "stop",
                         "--resources", "cpu=2,memory=4Gi"],
                "env": [{"name": "APPORTION_SERVER", "value": "https://apportion.example:8443"},
                        {"name": "APPORTION_TOKEN", "valueFrom": {
                            "secretKeyRef": {"name": f"{name}-join", "key": "token"}}}],
                "resources": {"requests": {"cpu": "2000m", "memory": "4294967296"},
                              "limits": {"cpu": "2000m", "memory": "4294967296"}},
                "volumeMounts": [{"name": "work", "mountPath": "/var/lib/apportion/agent"}],
            }],
            "volumes": [{"name": "work", "emptyDir": {}}],
        },
    }
    assert TOKEN not in json.dumps(pod)  # only in the Secret
    assert patch == {"metadata": {"ownerReferences": [{
        "apiVersion": "v1", "kind": "Pod", "name": name,
        "uid": api.pods[name]["metadata"]["uid"]}]}}
    assert api.secrets[f"{name}-join"]["metadata"]["ownerReferences"][0]["kind"] == "Pod"
    assert base64.b64decode(api.secrets[f"{name}-join"]["data"]["token"]).decode() == TOKEN


def test_gpu_requests_and_pool_settings(provider: KubernetesProvider, api: FakeApiServer) -> None:
    provider.create("gpus", "gpu", 1, JOIN)
    pod = api.calls[1][3]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"] == {
        "cpu": "500m", "memory": "8589934592", "nvidia.com/gpu": "1"}  # no k8s licence name
    assert container["args"][-1] == "cpu=500m,memory=8Gi,gpu=1,license.matlab=1"
    assert pod["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_status_follows_the_pod(provider: KubernetesProvider, api: FakeApiServer) -> None:
    (node,) = provider.create("batch", "small", 1, JOIN)
    api.wait(node.id, "ImagePullBackOff", 'Back-off pulling image "ghcr.io/acme/apportion"')
    status = provider.status(node.id)
    assert (status.state, status.detail) == (
        InstanceState.PROVISIONING,
        'ImagePullBackOff: Back-off pulling image "ghcr.io/acme/apportion"')
    api.run(node.id, "10.244.1.7")
    status = provider.status(node.id)
    assert (status.state, status.address, status.detail) == (
        InstanceState.RUNNING, "10.244.1.7", "")
    api.end(node.id, "Failed", "OOMKilled", 137)
    status = provider.status(node.id)
    assert (status.state, status.detail) == (
        InstanceState.FAILED, "pod is Failed: OOMKilled (exit code 137)")
    api.end(node.id, "Succeeded", "Completed", 0)
    assert provider.status(node.id).detail == "pod is Succeeded: Completed (exit code 0)"
    assert provider.status("batch-ffffff").state is InstanceState.TERMINATED


def test_list_selects_our_pods(provider: KubernetesProvider, api: FakeApiServer) -> None:
    batch = provider.create("batch", "small", 2, JOIN)
    provider.create("gpus", "gpu", 1, JOIN)
    for name in list(api.pods):
        api.run(name, "10.244.0.1")
    other = copy.deepcopy(api.pods[batch[0].id])
    other["metadata"].update(name="someone-else", labels={"app": "web"})
    api.pods["someone-else"] = other
    listed = provider.list("batch")
    assert sorted(n.id for n in listed) == sorted(n.id for n in batch)
    assert {n.state for n in listed} == {InstanceState.RUNNING}
    (_, path, query, _) = api.calls[-1]
    assert path == f"/api/v1/namespaces/{NS}/pods"
    assert query["labelSelector"] == [
        "apportion.io/managed-by=apportion,apportion.io/provider=k8s,apportion.io/pool=batch"]
    assert len(provider.list()) == 3


def test_terminate_deletes_pod_and_secret(
    provider: KubernetesProvider, api: FakeApiServer
) -> None:
    nodes = provider.create("batch", "small", 2, JOIN)
    api.pods["web-1"] = copy.deepcopy(api.pods[nodes[1].id])
    api.pods["web-1"]["metadata"].update(name="web-1", labels={"app": "web"})
    out = provider.terminate([nodes[0].id, "web-1", "gone-1"])
    assert [(n.id, n.state) for n in out] == [(nodes[0].id, InstanceState.TERMINATING),
                                              ("web-1", InstanceState.TERMINATED),
                                              ("gone-1", InstanceState.TERMINATED)]
    assert out[1].detail == "not a pod of this provider; not touched"
    deletes = [(p, q) for m, p, q, _ in api.calls if m == "DELETE"]
    assert deletes == [
        (f"/api/v1/namespaces/{NS}/pods/{nodes[0].id}", {"gracePeriodSeconds": ["30"]}),
        (f"/api/v1/namespaces/{NS}/secrets/{nodes[0].id}-join", {}),
    ]
    assert "web-1" in api.pods
    assert provider.status(nodes[0].id).state is InstanceState.TERMINATING  # grace period
    api.finish_deletions()
    assert provider.status(nodes[0].id).state is InstanceState.TERMINATED
    assert [n.id for n in provider.list()] == [nodes[1].id]


def test_forbidden_pod_cleans_up_its_secret(
    provider: KubernetesProvider, api: FakeApiServer
) -> None:
    api.forbid_pods = True
    with pytest.raises(ProviderError) as info:
        provider.create("batch", "small", 1, JOIN)
    name = api.calls[0][3]["metadata"]["name"][: -len("-join")]
    assert info.value.message == (
        f"provider k8s: creating pod {NS}/{name} failed: 403 pods \"{name}\" is forbidden: "
        "exceeded quota: compute, requested: limits.cpu=2, used: limits.cpu=8, limited: "
        "limits.cpu=8")
    assert info.value.nodes == []
    assert api.secrets == {}  # the token did not stay behind


def test_settings_checked() -> None:
    with pytest.raises(ProviderConfigError, match=r"providers.k.image: required"):
        KubernetesProvider("k", {"namespace": NS})
