"""A web page of another origin calling a node's /v1 endpoints from a real browser (headless
chromium, as tests/test_dashboard.py drives it): allowed only for the origins in
`api_cors_origins`, where the browser's preflight, the answer and an error body (with its
Retry-After) all reach the page; any other origin's page reads nothing, and the node says why.

The page is a document served by another node (a different port is a different origin): one of
its JSON answers, since the dashboard's own CSP lets it fetch only from itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from neuroshard_p2p.config import ConfigError
from tests.api_harness import ApiNode, api_node
from tests.node_harness import test_settings
from tests.test_dashboard import CHROMEDRIVER, CHROMIUM, close_browser, open_browser

#: Runs in the page: GET /v1/models and POST /v1/chat/completions with the bearer token (both
#: preflighted: the Authorization header is not a "simple" one), as a browser client would.
FETCH = """
const [url, token, done] = arguments;
const call = async (path, init) => {
  try {
    const r = await fetch(url + path, {...init, headers: {...(init.headers || {}),
      'Authorization': 'Bearer ' + token, 'X-Stainless-Lang': 'js'}});
    return {status: r.status, body: await r.json(), retry: r.headers.get('retry-after')};
  } catch (e) { return {error: String(e)}; }
};
Promise.all([
  call('/v1/models', {}),
  call('/v1/chat/completions', {method: 'POST', headers: {'Content-Type': 'application/json'},
       body: JSON.stringify({messages: [{role: 'user', content: 'hi'}], max_tokens: 5})}),
]).then(done);
"""


async def page_calls(page: ApiNode, target: ApiNode) -> list[dict[str, Any]]:
    browser = await open_browser()
    try:
        # A document of the page's origin without the dashboard's CSP (connect-src 'self').
        await browser.run(browser.driver.get, page.url + "/api/node")
        await browser.run(browser.driver.set_script_timeout, 20)
        result: list[dict[str, Any]] = await browser.run(
            browser.driver.execute_async_script, FETCH, target.url, target.token)
        return result
    finally:
        await close_browser(browser)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs Debian's chromium and chromium-driver (scripts/test installs "
                           "them as root)")
async def test_only_an_allowed_origins_page_reads_v1(tmp_path: Path) -> None:
    async with api_node(tmp_path / "page", 21) as page, \
            api_node(tmp_path / "other", 22) as other:
        async with api_node(tmp_path / "node", 23, api_cors_origins=(page.url,)) as node:
            allowed = await page_calls(page, node)
            refused = await page_calls(other, node)
            # A preflight from elsewhere, as the browser sent it: 403, saying what allows it.
            preflight = await node.client.options(
                node.url + "/v1/models", headers={"Origin": other.url,
                                                  "Access-Control-Request-Method": "GET"})
    network = node.node.settings.network
    assert allowed[0] == {"status": 200, "retry": None, "body": {"object": "list", "data": [{
        "id": "neuroshard/synthetic-1", "object": "model", "created": 0,
        "owned_by": f"neuroshard:{network}"}]}}
    # The error body and its Retry-After reach the page too (this node has nobody to buy from).
    assert (allowed[1]["status"], allowed[1]["retry"]) == (503, "2")
    assert allowed[1]["body"]["error"]["code"] == "no_capacity"
    # Another origin's page reads nothing: the browser blocks both calls.
    assert refused == [{"error": "TypeError: Failed to fetch"}] * 2
    assert preflight.status_code == 403
    assert preflight.json()["error"]["code"] == "origin_not_allowed"
    assert "api_cors_origins" in preflight.json()["error"]["message"]
    assert "access-control-allow-origin" not in preflight.headers


async def test_the_preflight_and_the_answer_carry_exactly_the_cors_headers(
        tmp_path: Path) -> None:
    origin = "http://localhost:3000"
    async with api_node(tmp_path / "node", 24, api_cors_origins=(origin,)) as node:
        preflight = await node.client.options(node.url + "/v1/chat/completions", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os"})
        answer = await node.client.get(node.url + "/v1/models",
                                       headers={"Origin": origin, **node.auth})
        without = await node.client.get(node.url + "/v1/models", headers=node.auth)
        dashboard = await node.client.get(node.url + "/api/market", headers={"Origin": origin})
    assert preflight.status_code == 204 and preflight.content == b""
    assert {k: v for k, v in preflight.headers.items() if k.startswith("access-control")} == {
        "access-control-allow-origin": origin, "access-control-allow-methods": "GET, POST",
        "access-control-allow-headers": "authorization,content-type,x-stainless-os",
        "access-control-max-age": "600", "access-control-expose-headers": "retry-after"}
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == origin
    assert answer.headers["vary"] == "origin"
    # No Origin (curl, the SDKs outside a browser), or the rest of the API: no CORS headers.
    assert without.status_code == 200 and "access-control-allow-origin" not in without.headers
    assert "access-control-allow-origin" not in dashboard.headers


@pytest.mark.parametrize("origin", ["localhost:3000", "http://localhost:3000/", "ftp://x",
                                    "http://Localhost", "http://x/app", "http://x:99999"])
def test_an_origin_that_is_not_one_is_refused_at_start(tmp_path: Path, origin: str) -> None:
    with pytest.raises(ConfigError) as caught:
        test_settings(tmp_path, api="127.0.0.1:0", api_cors_origins=(origin,))
    assert f"api_cors_origins: {origin!r} is not a web origin" in str(caught.value)


def test_origins_that_are_accepted(tmp_path: Path) -> None:
    settings = test_settings(tmp_path, api_cors_origins=(
        "*", "http://localhost:3000", "https://app.example", "http://[::1]:8080"))
    assert settings.api_cors_origins == ("*", "http://localhost:3000", "https://app.example",
                                         "http://[::1]:8080")
