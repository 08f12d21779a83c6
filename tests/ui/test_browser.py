"""The page in a real browser (Debian's headless Chromium, driven over the DevTools
protocol) against real ``toposched serve`` processes.

With the demo cluster (the scheduler and sidecars whose fake engines move real bytes
with NIXL): the fabric renders, a routed request shows in the decisions list, its KV
transfer moves the tier's latency histogram, and zooming reads a host and a pod. With
tokens configured: the page asks for one, refuses a wrong one, and keeps it out of URLs.
At 8,192 GPUs: the cluster zoom draws one tile per host, the pod zoom fetches the GPUs.
Screenshots go to ``out/ui/`` (git-ignored), for people to look at.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.cli.demo import DEMO_WORKERS
from api.demo.cluster import DemoCluster
from api.demo.run import DemoDriver
from api.demo.workload import AgenticWorkload
from tests.api.service_builders import target
from tests.ui.browser import Browser
from tests.ui.service import OPERATOR_TOKEN, WORKER_TOKEN, serve
from topology.build import build_fabric
from topology.documents import packaged_config
from topology.inventory import load_inventory
from topology.synth import SynthParams, synth_cluster

ROOT = Path(__file__).parents[2]
ARTEFACTS = ROOT / "out" / "ui"
#: The demo's workers this test starts: a prefill, and decode workers over NVLink and
#: over a rail leaf (so a routed request moves its KV between two processes).
WORKERS = [w for w in DEMO_WORKERS if w.name in {"prefill-a", "decode-a-nvlink", "decode-a-rail"}]

pytestmark = [pytest.mark.process, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def example_fabric(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ui-fabric") / "fabric.json"
    build_fabric(load_inventory(packaged_config("clusters/example.yaml"))).save(path)
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, example_fabric: Path
         ) -> Iterator[DemoCluster]:
    cluster = DemoCluster(tmp_path_factory.mktemp("ui-demo"), model="llama-3-8b",
                          block_bytes=1 << 18, kv_blocks=128)
    try:
        cluster.start_scheduler(example_fabric)
        for worker in WORKERS:
            cluster.start_sidecar(worker)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    chromium = Browser(tmp_path_factory.mktemp("chromium"))
    try:
        yield chromium
    finally:
        chromium.close()


def _shot(browser: Browser, name: str) -> None:
    browser.screenshot(ARTEFACTS / name)


def _count_attr(selector: str, attribute: str) -> str:
    return (f"(() => {{ const n = document.querySelector({json.dumps(selector)}); "
            f"return n ? Number(n.dataset.{attribute}) : 0; }})()")


def _open_signed_in(browser: Browser, demo: DemoCluster) -> None:
    """Open the page the way an operator does: the token prompt, then the fabric."""
    browser.navigate(f"{demo.url}/ui")
    browser.evaluate("sessionStorage.clear()")
    browser.navigate(f"{demo.url}/ui")
    browser.wait_for("!document.getElementById('login').hidden", what="the token prompt")
    browser.type_into("#token", demo.operator_token)
    browser.click("#login-form button")
    browser.wait_for("document.getElementById('login').hidden", what="the token accepted")


def _route_until_kv_moves(driver: DemoDriver, workload: AgenticWorkload) -> tuple[str, str]:
    """Run the demo's requests until one moves KV between two sidecars: its id and tier."""
    for request in workload.requests():
        before = Counter(driver.stats.tiers)
        driver.run_one(request)
        moved = Counter(driver.stats.tiers) - before
        if moved:
            return request.request_id, next(iter(moved))
    raise AssertionError("no demo request moved KV between sidecars")


def test_the_page_shows_the_fabric_a_route_and_its_transfer_live(
        demo: DemoCluster, browser: Browser) -> None:
    _open_signed_in(browser, demo)
    browser.wait_for("document.querySelectorAll('a.host').length === 12", what="12 host tiles")
    browser.wait_for("document.getElementById('live').dataset.state === 'live'",
                     what="the event stream")
    zones = browser.evaluate("[...document.querySelectorAll('.zone h3')].map(n => n.textContent)")
    assert zones == ["zone-a", "zone-b"]
    browser.wait_for("document.querySelectorAll('a.host.live').length === 2",
                     what="the hosts of the 3 registered workers marked live")
    _shot(browser, "1-cluster-before.png")

    driver = DemoDriver(demo)
    try:
        request_id, tier = _route_until_kv_moves(driver, AgenticWorkload(sessions=2, turns=2))
        transfers = int(driver.stats.tiers[tier])
    finally:
        driver.finish()
    row = f'li.decision[data-request="{request_id}"]'
    browser.wait_for(f"document.querySelector({json.dumps(row)}) !== null",
                     what=f"{request_id} in the decisions list")
    histogram = f'figure.histogram[data-tier="{tier}"]'
    browser.wait_for(f"{_count_attr(histogram, 'count')} === {transfers}",
                     what=f"the {tier} histogram counting {transfers} transfer(s)")
    _shot(browser, "2-cluster-after-transfer.png")

    browser.click(row)
    detail = browser.wait_for("document.querySelector('.explain h4')?.textContent",
                              what="the decision's explanation")
    assert request_id in detail
    assert browser.evaluate("document.querySelectorAll('.explain .term').length") == 4
    _shot(browser, "3-decision-explained.png")

    browser.click('a.host[data-host="a1-r0-h00"]')
    browser.wait_for("document.querySelectorAll('.gpu-box').length === 8", what="the host zoom")
    roles = browser.evaluate("[...document.querySelectorAll('.gpu-box')].map(n => n.classList[1])")
    assert roles[0] == "prefill" and roles[4] == "decode"  # prefill-a and decode-a-nvlink
    assert "NVLink" in browser.evaluate("document.querySelector('.nvswitch + text').textContent")
    _shot(browser, "4-host-zoom.png")

    browser.click(".crumbs a[href='#/pod/a1']")
    browser.wait_for("document.querySelectorAll('.pod-detail .gpu').length === 32",
                     what="the pod zoom (4 hosts x 8 GPUs)")
    _shot(browser, "5-pod-zoom.png")
    assert browser.errors == []


def test_the_page_shows_the_placement_and_what_its_last_change_moved(
        demo: DemoCluster, browser: Browser) -> None:
    spec = build_fabric(load_inventory(packaged_config("clusters/example.yaml")))
    busy = [h.gpu_name(g.index) for h in spec.hosts if h.rack.startswith("a1-") for g in h.gpus]
    with httpx.Client(base_url=demo.url, timeout=30, trust_env=False,
                      headers=demo.auth) as http:
        answer = http.post("/v1/placement/solve", json=target(gpu_type="H100", exclude=busy))
        assert answer.status_code == 202, answer.text
        _open_signed_in(browser, demo)
        browser.wait_for("document.querySelector('#placement .kv b')?.textContent === 'solve'",
                         what="the solved placement", timeout_s=60)
        placed = http.get("/v1/placement").json()["placement"]
        pod = placed["instances"][0]["pod"]
        browser.evaluate(f"location.hash = '#/pod/{pod}'")
        inside = sum(len(i["gpus"]) for i in placed["instances"] if i["pod"] == pod)
        browser.wait_for(f"document.querySelectorAll('.pod-detail .gpu.prefill, "
                         f".pod-detail .gpu.decode').length === {inside}",
                         what=f"the {inside} placed GPUs of pod {pod} coloured by role")
        _shot(browser, "9-placement-pod-zoom.png")

        # The operator asks for one more decode instance: the page says what moved.
        answer = http.post("/v1/placement/solve", json=target(gpu_type="H100", exclude=busy,
                                                              decode=3))
        assert answer.status_code == 202, answer.text
        heading = browser.wait_for(
            "(document.querySelector('#placement .change h4')?.textContent || '')"
            ".startsWith('last change')", what="what the new placement moved", timeout_s=60)
        assert heading
        after = http.get("/v1/placement").json()["placement"]
    before_keys = {(i["role"], tuple(sorted(i["gpus"]))) for i in placed["instances"]}
    added = [i for i in after["instances"]
             if (i["role"], tuple(sorted(i["gpus"]))) not in before_keys]
    assert added, "the second solve placed nothing new"
    shown = browser.evaluate("[...document.querySelectorAll('#placement .moved.add b')]"
                             ".map(n => n.textContent)")
    assert sorted(shown) == sorted(i["id"] for i in added)
    _shot(browser, "10-placement-change.png")
    assert browser.errors == []


def test_the_page_asks_for_the_token_and_keeps_it_out_of_urls(
        tmp_path: Path, example_fabric: Path, browser: Browser) -> None:
    with serve(tmp_path, example_fabric) as service:
        browser.navigate(f"{service.url}/ui")
        browser.wait_for("!document.getElementById('login').hidden", what="the token prompt")
        _shot(browser, "6-token-prompt.png")
        browser.type_into("#token", "not-the-token")
        browser.click("#login-form button")
        browser.wait_for("document.getElementById('login-reason').textContent.includes('invalid')",
                         what="the wrong token refused")
        browser.type_into("#token", WORKER_TOKEN)
        browser.click("#login-form button")
        browser.wait_for("document.getElementById('login').hidden && "
                         "document.querySelectorAll('a.host').length === 12",
                         what="the fabric after a good token")
        browser.wait_for("document.getElementById('live').dataset.state === 'live'",
                         what="the event stream with the token")
        assert WORKER_TOKEN not in browser.evaluate("location.href")
        assert browser.evaluate("sessionStorage.getItem('toposched.token')") == WORKER_TOKEN
        browser.evaluate("sessionStorage.clear()")
        log = service.log.read_text()
    assert WORKER_TOKEN not in log and OPERATOR_TOKEN not in log
    assert browser.errors == []


@pytest.mark.slow
def test_8192_gpus_draw_a_tile_per_host_and_fetch_gpus_on_zoom(
        tmp_path: Path, browser: Browser) -> None:
    fabric = tmp_path / "fabric.json"
    synth_cluster(SynthParams(zones=2, pods_per_zone=4, racks_per_pod=8,
                              hosts_per_rack=16)).save(fabric)
    # Start-up takes ~20 s here on an idle machine (the fabric's distance model, twice).
    with serve(tmp_path, fabric, tokens=False, start_timeout_s=300) as service:
        browser.navigate(f"{service.url}/ui")
        browser.wait_for("document.querySelectorAll('a.host').length === 1024",
                         what="1,024 host tiles", timeout_s=60)
        nodes = browser.evaluate("document.getElementById('fabric').querySelectorAll('*').length")
        assert nodes < 3000, f"{nodes} elements: the cluster zoom must stay at host level"
        assert browser.evaluate("document.querySelectorAll('.gpu, .gpu-box').length") == 0
        overview: Any = browser.evaluate("fetch('/v1/ui/overview').then(r => r.text())")
        assert len(overview) < 200_000 and '"gpus":8' in overview
        _shot(browser, "7-8192-gpus-cluster.png")
        browser.click('a.pod-name[href="#/pod/z0-p1"]')
        browser.wait_for("document.querySelectorAll('.pod-detail .gpu').length === 1024",
                         what="the pod zoom fetching its 1,024 GPUs", timeout_s=60)
        _shot(browser, "8-8192-gpus-pod.png")
    assert browser.errors == []
