"""The dashboard in a real browser: Playwright drives Debian's Chromium against
a server with real agents on loopback. Nodes, a running job and a firing
alert appear, and change, without the page being reloaded; screenshots are
saved under ``test-artifacts/dashboard`` (``APPORTION_TEST_ARTIFACTS``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import FAST_SERVER_ENV, Cluster
from support import need_service

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("APPORTION_TEST_ARTIFACTS")
                 or Path(__file__).resolve().parents[2] / "test-artifacts") / "dashboard"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
DOCS_JOB_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard-job.png"
CONFIG = """
[alerts]
interval_s = 0.3
capacity_threshold = 0.5
capacity_critical = 0.99
"""
TIMEOUT_MS = 15_000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    config = tmp_path / "server.toml"
    config.write_text(CONFIG)
    env = {**FAST_SERVER_ENV, "APPORTION_CONFIG_FILE": str(config),
           "APPORTION_HISTORY_INTERVAL": "1"}
    c = Cluster(tmp_path, server_env=env).start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    if not CHROMIUM.exists():
        need_service("Chromium", f"{CHROMIUM} is missing (apt-get install chromium)")
    profile = tmp_path / "chromium-profile"
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1100}, offline=False)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_nodes_a_running_job_and_a_firing_alert_appear_live(cluster: Cluster, page: Any) -> None:
    expect = playwright_api.expect
    server = cluster.server
    assert server is not None
    cluster.add_agent("gpu-a", "cpu=8,memory=16Gi,gpu=4", extra=["--labels", "facility=lab"])
    cluster.add_agent("cpu-b", "cpu=4,memory=8Gi", extra=["--labels", "facility=lab"])

    external: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server.url) else external.append(r.url))

    # Sign in: a wrong token is refused, the right one opens the dashboard.
    page.goto(server.url + "/")
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    expect(page.get_by_test_id("login-error")).to_contain_text("not accepted", timeout=TIMEOUT_MS)
    page.fill("#token", server.token)
    page.click("button[type=submit]")
    expect(page.get_by_test_id("live")).to_have_text("live", timeout=TIMEOUT_MS)
    nodes = page.get_by_test_id("node")
    expect(nodes).to_have_count(2, timeout=TIMEOUT_MS)
    expect(page.locator("[data-node=gpu-a] [data-testid=device]")).to_have_count(4)
    expect(page.locator("[data-node=gpu-a] [data-held='1']")).to_have_count(0)
    page.evaluate("window.__not_reloaded = true")
    shot(page, "1-nodes")

    # A lease job (no command) runs as soon as it is placed: the job row, the
    # held GPUs and the capacity bar appear from the event stream.
    with cluster.api as api:
        r = api.post("/api/v1/jobs", json={"name": "train-llm", "resources": {
            "cpu": "2", "memory": "4Gi", "gpu": 3}})
        assert r.status_code == 201, r.text
        job = r.json()
    row = page.locator(f"[data-testid=job][data-job='{job['id']}']")
    expect(row).to_have_attribute("data-state", "running", timeout=TIMEOUT_MS)
    expect(row).to_contain_text("train-llm")
    expect(page.locator("[data-node=gpu-a] [data-held='1']")).to_have_count(3,
                                                                           timeout=TIMEOUT_MS)
    expect(page.locator("[data-testid=resource][data-resource=gpu]")).to_contain_text("75%")

    # 3 of 4 GPUs in facility "lab" is past the 50 % threshold: an alert fires.
    with cluster.api as api:
        alerts_exist = api.get("/api/v1/alerts").status_code != 404
    if alerts_exist:
        alert = page.locator("[data-testid=alert][data-rule=capacity_utilization]")
        expect(alert.first).to_be_visible(timeout=TIMEOUT_MS)
        expect(alert.first).to_contain_text("gpu")
    shot(page, "2-job-and-alert")

    # A node that joins later shows up; history charts are drawn.
    asics = cluster.root / "asics.toml"
    asics.write_text("".join(f'[[device]]\nresource = "asic.s19"\nid = "s19-{i:02d}"\n'
                             f'serial = "SN{i:04d}"\nmodel = "Antminer S19"\n\n'
                             for i in range(6)))
    cluster.add_agent("asic-c", "cpu=2,memory=4Gi",
                      extra=["--labels", "facility=annex", "--devices", str(asics)])
    expect(nodes).to_have_count(3, timeout=TIMEOUT_MS)
    expect(page.locator("[data-node=asic-c] [data-resource='asic.s19']")).to_have_count(6)
    expect(page.locator("[data-testid=facility][data-facility=annex]")).to_have_count(1,
                                                                                     timeout=TIMEOUT_MS)
    expect(page.get_by_test_id("history-gpu")).to_be_visible(timeout=TIMEOUT_MS)

    # Ending the job frees the GPUs and resolves the alert, still without a reload.
    with cluster.api as api:
        assert api.post(f"/api/v1/jobs/{job['id']}/complete",
                        json={"succeeded": True}).status_code == 200
    expect(row).to_have_count(0, timeout=TIMEOUT_MS)
    expect(page.locator("[data-node=gpu-a] [data-held='1']")).to_have_count(0,
                                                                           timeout=TIMEOUT_MS)
    if alerts_exist:
        expect(page.get_by_test_id("alert")).to_have_count(0, timeout=TIMEOUT_MS)
    assert page.evaluate("window.__not_reloaded") is True
    assert external == [], f"the dashboard fetched from elsewhere: {external}"

    # A screenshot for the docs, with the job running again.
    with cluster.api as api:
        api.post("/api/v1/jobs", json={"name": "train-llm", "resources": {
            "cpu": "2", "memory": "4Gi", "gpu": 3}})
        api.post("/api/v1/jobs", json={"name": "etl", "queue": "default", "resources": {
            "cpu": "3", "memory": "2Gi"}})
    expect(page.get_by_test_id("job")).to_have_count(2, timeout=TIMEOUT_MS)
    page.wait_for_timeout(2500)  # a few history samples
    page.select_option("#window", "900")
    page.wait_for_timeout(500)
    final = shot(page, "3-overview")
    if os.environ.get("APPORTION_UPDATE_DOCS_SCREENSHOT"):
        shutil.copyfile(final, DOCS_SCREENSHOT)
    if not alerts_exist:
        pytest.skip("GET /api/v1/alerts is absent on this server: the firing-alert check "
                    "was skipped (everything else passed)")


def _dashboard_link(cluster: Cluster, token: str, tmp_path: Path) -> str:
    """``apportion dashboard`` as a real process: the link it prints."""
    server = cluster.server
    assert server is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPORTION_")}
    env.update(APPORTION_CONFIG=str(tmp_path / "cli.toml"), APPORTION_SERVER=server.url,
               APPORTION_TOKEN=token)
    proc = subprocess.run([sys.executable, "-m", "apportion.cli.main", "dashboard"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "opens the dashboard signed in as alice (user); the link works once, within 60 s" \
        in proc.stderr
    [url] = proc.stdout.splitlines()
    assert url.startswith(server.url + "/#code=apc_") and token not in url
    return url


def test_the_link_apportion_dashboard_prints_signs_in_once(cluster: Cluster, page: Any,
                                                            tmp_path: Path) -> None:
    expect = playwright_api.expect
    server = cluster.server
    assert server is not None
    with cluster.api as api:
        alice = api.post("/api/v1/tokens", json={"name": "alice", "role": "user"}).json()
    url = _dashboard_link(cluster, alice["token"], tmp_path)
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url))

    page.goto(url)
    expect(page.get_by_test_id("who")).to_have_text("alice (user)", timeout=TIMEOUT_MS)
    expect(page.get_by_test_id("live")).to_have_text("live", timeout=TIMEOUT_MS)
    # The code is gone from the address bar, and no request ever carried it.
    assert page.url == server.url + "/"
    assert page.evaluate("location.hash") == ""
    code = url.split("#code=", 1)[1]
    assert not [u for u in seen if code in u]
    # Signed in as a session of alice's: she may submit (a user may).
    assert page.evaluate("sessionStorage.getItem('apportion.token')") != alice["token"]

    # The same link again (another tab, or someone who read the terminal): refused.
    other = page.context.new_page()
    other.goto(url)
    expect(other.get_by_test_id("login-error")).to_contain_text(
        "this sign-in code was already used", timeout=TIMEOUT_MS)
    assert other.url == server.url + "/"
    other.close()


def test_the_job_view_explains_each_node_and_fragmentation_in_human_units(
        cluster: Cluster, page: Any) -> None:
    expect = playwright_api.expect
    server = cluster.server
    assert server is not None
    cluster.add_agent("gpu-a", "cpu=8,memory=16Gi,gpu=4", extra=["--labels", "facility=lab"])
    cluster.add_agent("cpu-b", "cpu=4,memory=8Gi", extra=["--labels", "facility=lab"])
    with cluster.api as api:
        running = api.post("/api/v1/jobs", json={"name": "train-llm", "resources": {
            "cpu": "2", "memory": "4.5Gi", "gpu": 3}}).json()
        waiting = api.post("/api/v1/jobs", json={"name": "finetune", "resources": {
            "cpu": "1", "memory": "2Gi", "gpu": 2}}).json()
        code = api.post("/api/v1/auth/codes").json()["code"]

    page.goto(f"{server.url}/#code={code}")
    expect(page.get_by_test_id("live")).to_have_text("live", timeout=TIMEOUT_MS)
    row = page.locator(f"[data-testid=job][data-job='{running['id']}']")
    expect(row).to_have_attribute("data-state", "running", timeout=TIMEOUT_MS)
    expect(row).to_contain_text("memory=4.5Gi")
    # Capacity in human units: 4.5Gi of 24Gi, not 4831838208 of 25769803776.
    expect(page.locator("[data-testid=resource][data-resource=memory]")).to_contain_text(
        "4.5Gi of 24Gi")

    # Fragmentation: 11.5Gi free on gpu-a and 8Gi on cpu-b.
    # Columns: resource, free, largest on one node, nodes with free, fragmented.
    memory = page.locator("[data-testid=fragmentation][data-resource=memory] td")
    expect(memory).to_have_text(["memory", "19.5Gi", "11.5Gi", "2", "41%"], timeout=TIMEOUT_MS)
    expect(page.locator("[data-testid=fragmentation][data-resource=gpu] td")).to_have_text(
        ["gpu", "1", "1", "1", "0%"])
    # The waiting job's shape: it fits nowhere, not even were the free GPUs one node.
    expect(page.locator("[data-testid=shape] td")).to_have_text(
        ["cpu=1 gpu=2 memory=2Gi", "0", "0"])

    # The running job's page says where its task runs.
    row.click()
    panel = page.get_by_test_id("job-panel")
    expect(panel.get_by_test_id("job-summary")).to_have_text(
        "cpu=2 memory=4.5Gi gpu=3 · queue default · owner admin · on 0→gpu-a",
        timeout=TIMEOUT_MS)
    expect(panel.get_by_test_id("explain-summary")).to_have_text(
        "This job is running: it does not wait for a node.")

    # The waiting job, node by node: gpu-a is busy (1 GPU free of the 2 it
    # needs) but could take it; cpu-b has no GPU and never could.
    page.locator(f"[data-testid=job][data-job='{waiting['id']}']").click()
    expect(panel).to_be_visible()
    expect(panel.get_by_test_id("job-summary")).to_contain_text("cpu=1 memory=2Gi gpu=2")
    gpu_a = panel.locator("[data-testid=explain-node][data-node=gpu-a]")
    cpu_b = panel.locator("[data-testid=explain-node][data-node=cpu-b]")
    expect(gpu_a).to_have_attribute("data-now", "busy", timeout=TIMEOUT_MS)
    expect(gpu_a).to_have_attribute("data-ever", "1")
    expect(gpu_a.locator("td").nth(3)).to_have_text("yes")
    expect(cpu_b).to_have_attribute("data-ever", "0")
    expect(cpu_b.locator("td").nth(3)).to_have_text("no: node offers no gpu")
    expect(gpu_a.locator("td").nth(2)).to_have_text("insufficient gpu: 1 free, 2 requested")
    expect(panel).not_to_contain_text("null")
    final = shot(page, "4-job-view")
    if os.environ.get("APPORTION_UPDATE_DOCS_SCREENSHOT"):
        shutil.copyfile(final, DOCS_JOB_SCREENSHOT)
