"""The dashboard in a real headless browser (Debian's chromium, driven by selenium through the
system chromedriver) against a real running node: the page loads, shows the price the API returns
in the colour its level calls for, and follows the market when it changes — without reloading.

WebDriver calls block, and the node serving the page runs in this test's trio loop, so every
browser call runs in a worker thread (`trio.to_thread.run_sync`)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest
import trio

from neuroshard_p2p.core.pricing import target_price_nano
from tests.api_harness import API_MARKET, API_NETWORK, ApiNode, api_node
from tests.conftest import make_key
from tests.node_harness import start_node, test_settings
from tests.test_api import expected_level
from tests.waiting import eventually

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else \
    shutil.which("chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs Debian's chromium and chromium-driver "
                              "(apt-get install chromium chromium-driver; scripts/test does it)"),
]

T = TypeVar("T")

#: Everything the test reads from the page, in one round trip.
READ_PAGE = """
const text = (id) => document.getElementById(id).textContent;
const price = document.getElementById('current-price');
return {
  price_text: price.textContent, price_nano: price.dataset.priceNano, level: price.dataset.level,
  classes: Array.from(price.classList), colour: getComputedStyle(price).color, target_nano: document.getElementById('target-price').dataset.priceNano,
  supply: text('supply'), demand: text('demand'), nodes: text('available-nodes'), peers: text('peers'),
  utilization: text('utilization'), network: text('network'), own_offer: text('own-offer'),
  policy: text('policy'), model: text('model'), work: text('work'),
  clock: text('clock'), clock_hint: text('clock-hint'),
  clock_title: document.getElementById('clock').title,
  clock_colour: getComputedStyle(document.getElementById('clock')).color,
  earnings: document.getElementById('earnings').dataset.earnedNano, status: text('status'),
  points: Number(document.getElementById('price-chart').dataset.points),
  window: document.getElementById('price-chart').dataset.window,
  refreshes: Number(document.body.dataset.refreshes),
};
"""

#: The providers table's rows, each as its cells' texts.
READ_PROVIDERS = """
return Array.from(document.querySelectorAll('#providers-body tr'))
  .map((tr) => Array.from(tr.children).map((td) => td.textContent));
"""


class Browser:
    """A headless chromium; every call runs in a worker thread."""

    def __init__(self, profile: str) -> None:
        from selenium import webdriver

        from selenium.webdriver.chrome.service import Service

        self.profile = profile
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM  # type: ignore[assignment]
        for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--window-size=1280,1100",
                     f"--user-data-dir={profile}"):
            options.add_argument(flag)
        # A driver path given: selenium-manager is not asked to find or download anything.
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args)

    async def read(self) -> dict[str, Any]:
        return await self.run(self.driver.execute_script, READ_PAGE)


async def open_browser() -> Browser:
    """A fresh headless chromium with a throw-away profile."""
    return await trio.to_thread.run_sync(Browser, tempfile.mkdtemp(prefix="neuroshard-chromium-"))


async def close_browser(browser: Browser) -> None:
    await trio.to_thread.run_sync(browser.driver.quit)
    shutil.rmtree(browser.profile, ignore_errors=True)


async def page_shows_the_api_price(api: ApiNode, browser: Browser,
                                   want: Callable[[dict[str, Any]], bool] = lambda m: True
                                   ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The market (when `want` accepts it) and the page, if the page shows its price."""
    market = await api.market()
    if not want(market):
        return None
    page = await browser.read()
    again = await api.market()
    if page["price_nano"] == str(market["current_price_nano"]) == str(again["current_price_nano"]):
        return market, page
    return None


#: The colours the page paints each level in (dashboard.css): green, blue, orange.
LEVEL_COLOURS = {"low": "rgb(46, 166, 100)", "medium": "rgb(59, 130, 246)",
                 "high": "rgb(240, 140, 46)"}


def check_price_rendering(market: dict[str, Any], page: dict[str, Any]) -> None:
    level = expected_level(market["current_price"], market["min_price"], market["max_price"])
    assert market["price_level"] == level
    assert page["level"] == level
    assert page["colour"] == LEVEL_COLOURS[level]
    assert f"price-{level}" in page["classes"]
    assert [c for c in page["classes"] if c.startswith("price-")] == [f"price-{level}"]
    assert abs(float(page["price_text"]) - market["current_price"]) <= 0.00005
    assert page["target_nano"] == str(market["target_price_nano"])


async def test_dashboard_shows_the_price_in_its_colour_and_follows_the_market(
        tmp_path: Path) -> None:
    # Screenshots go to the test's temp dir, or where NEUROSHARD_SCREENSHOT_DIR says.
    shots = Path(os.environ.get("NEUROSHARD_SCREENSHOT_DIR", tmp_path))
    async with api_node(tmp_path / "a", 11) as api:
        browser = await open_browser()
        try:
            await browser.run(browser.driver.get, api.url + "/")
            assert await browser.run(lambda: browser.driver.title) == "NeuroShard market"

            # 1. An empty market: the lowest price of the curve, green.
            market, page = await eventually(lambda: page_shows_the_api_price(api, browser), 15,
                                            "the page shows the price the API returns")
            assert market["current_price_nano"] == target_price_nano(0, 0, API_MARKET)
            check_price_rendering(market, page)
            assert page["level"] == "low"
            assert (page["supply"], page["demand"], page["nodes"], page["peers"]) == ("0", "0", "0", "0")
            assert (page["network"], page["status"], page["own_offer"]) == (
                API_NETWORK, "live", "not offering capacity")
            assert (page["policy"], page["model"], page["work"]) == (
                "open", "neuroshard/synthetic-1", "none needed")
            assert (page["clock"], page["clock_title"]) == (
                "not measured yet", "no signed time heard from peers yet")
            assert page["earnings"] == "0" and page["points"] >= 1 and page["window"] == "1h"
            first_refreshes = page["refreshes"]

            # 2. Demand and no supply: the price climbs to the top of the curve, orange.
            submitted = await api.post("/api/market/requests", headers=api.auth,
                                       json={"tokens": 100_000, "max_price": 1.0})
            assert submitted.status_code == 202
            market, page = await eventually(
                lambda: page_shows_the_api_price(
                    api, browser, lambda m: m["current_price_nano"] == m["max_price_nano"]),
                30, "the page shows the top price after demand arrived")
            check_price_rendering(market, page)
            assert page["level"] == "high" and page["demand"] == "100,000"
            assert page["utilization"] == "∞"
            assert page["refreshes"] > first_refreshes  # updated in place, not reloaded
            await browser.run(browser.driver.save_screenshot, str(shots / "dashboard-high.png"))

            # 3. Capacity arrives (at a floor above the locked price, so nothing is served):
            #    as much as the demand needs (utilization 1), the middle of the curve, blue ...
            registered = await api.post("/api/market/register", headers=api.auth,
                                        json={"tokens_per_second": 1667, "min_price": 0.9})
            assert registered.status_code == 200
            balanced = target_price_nano(1667, 100_000, API_MARKET)
            market, page = await eventually(
                lambda: page_shows_the_api_price(
                    api, browser, lambda m: m["current_price_nano"] == balanced),
                30, "the page shows the balanced price")
            check_price_rendering(market, page)
            assert page["level"] == "medium" and page["utilization"] == "100.0 %"
            await browser.run(browser.driver.save_screenshot, str(shots / "dashboard-medium.png"))

            #    ... then plenty: utilization falls and the price with it, back to green.
            registered = await api.post("/api/market/register", headers=api.auth,
                                        json={"tokens_per_second": 50_000, "min_price": 0.9})
            assert registered.status_code == 200
            settled = target_price_nano(50_000, 100_000, API_MARKET)
            market, page = await eventually(
                lambda: page_shows_the_api_price(
                    api, browser, lambda m: m["current_price_nano"] == settled),
                30, "the page shows the settled price after capacity arrived")
            check_price_rendering(market, page)
            assert page["level"] == "low"
            assert (page["supply"], page["nodes"], page["own_offer"]) == ("50,000", "1",
                                                                          "50,000 tokens/s")

            # The providers table: the node's own offer, never routed to by itself.
            async def providers() -> list[list[str]] | None:
                rows = await browser.run(browser.driver.execute_script, READ_PROVIDERS)
                return rows if rows and rows[0][3] == "own" else None

            [row] = await eventually(providers, 10, "the providers table shows the own offer")
            assert row[1:4] == ["50,000", "0.9000", "own"]
            assert row[4] == "this node's own offer (a gateway never sends a job to itself)"

            # The 24 h view is one click away and needs no reload either.
            await browser.run(lambda: browser.driver.find_element("id", "window-24h").click())

            async def day_chart() -> dict[str, Any] | None:
                page = await browser.read()
                return page if page["window"] == "24h" and page["points"] >= 1 else None

            await eventually(day_chart, 10, "the chart shows the 24 h window")

            # No script errors on the way.
            logs = await browser.run(browser.driver.get_log, "browser")
            assert [entry for entry in logs if entry["level"] == "SEVERE"] == []
            shot = shots / "dashboard.png"
            await browser.run(browser.driver.save_screenshot, str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            await close_browser(browser)


async def test_dashboard_shows_a_wrong_clock(tmp_path: Path) -> None:
    """A node 45 s ahead of its two peers: the node card says so, in the warning colour, and its
    tooltip says what it breaks (nobody counts its capacity)."""
    async with trio.open_nursery() as nursery:
        peers = []
        for i, capacity in ((1, 500), (2, 300)):
            boot = tuple(peers[0].node.addrs) if peers else ()
            peers.append(await start_node(nursery, test_settings(
                tmp_path / str(i), market=API_MARKET, capacity=capacity, bootstrap=boot),
                make_key(i)))
        async with api_node(tmp_path / "c", 3, bootstrap=tuple(peers[0].node.addrs),
                            capacity=1000, clock=lambda: time.time() + 45.0) as api:
            browser = await open_browser()
            try:
                await browser.run(browser.driver.get, api.url + "/")

                async def shows() -> dict[str, Any] | None:
                    page = await browser.read()
                    return page if page["clock"] == "45 s ahead" and \
                        page["clock_hint"] == "against 2 signers" else None

                page = await eventually(shows, 30, "the dashboard shows the clock 45 s ahead")
                assert page["clock_colour"] == LEVEL_COLOURS["high"]
                assert page["clock_title"].startswith(
                    "this node's clock is 45 s ahead of 2 of 2 signer(s): peers refuse its "
                    "announcements")
                logs = await browser.run(browser.driver.get_log, "browser")
                assert [entry for entry in logs if entry["level"] == "SEVERE"] == []
            finally:
                await close_browser(browser)
        for peer in reversed(peers):
            await peer.stop()

