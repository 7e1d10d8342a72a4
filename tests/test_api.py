"""The HTTP API of a real running node, through real HTTP (httpx, and curl for the seed's calls):
every endpoint, the token on writes, a table of bad inputs that change nothing, and metrics that
say what the API says."""

from __future__ import annotations

import json
import logging
import math
import shlex
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from neuroshard_p2p import __version__
from neuroshard_p2p.api.inputs import MAX_BODY_BYTES
from neuroshard_p2p.core.pricing import target_price_nano
from neuroshard_p2p.identity import peer_id_of
from neuroshard_p2p.money import from_nano, settle_amounts
from neuroshard_p2p.node.datadir import rotate_api_token
from neuroshard_p2p.node.settings import DEFAULT_API, NodeSettings
from tests.api_harness import API_MARKET, API_NETWORK, ApiNode, api_node
from tests.node_harness import simnet_charter
from tests.conftest import make_key
from tests.waiting import eventually

# The design note's three calls, character for character; the test runs them against the node's
# own port (8000 may be taken on a test machine) and adds the token header to the two writes.
SEED_CURL_MARKET = "curl http://localhost:8000/api/market"
SEED_CURL_REGISTER = ("curl -X POST http://localhost:8000/api/market/register "
                      "-H \"Content-Type: application/json\" "
                      "-d '{\"tokens_per_second\": 1000, \"min_price\": 0.0}'")
SEED_CURL_WITHDRAW = "curl -X POST http://localhost:8000/api/market/withdraw"

#: The API market's tick and settle delay in ms: a response's `evaluated_at_ms` is
#: tick × TICK_MS − SETTLE_MS (protocol §7.4).
TICK_MS = round(API_MARKET.tick_s * 1000)
SETTLE_MS = round(API_MARKET.settle_delay_s * 1000)

SEED_MARKET_FIELDS = ("enabled", "mode", "current_price", "supply_tokens_per_sec",
                      "demand_tokens_waiting", "utilization", "pending_requests", "available_nodes",
                      "avg_price_24h")


def expected_level(price: float, low: float, high: float) -> str:
    """The documented colour thresholds, computed independently of the API's code."""
    position = (price - low) / (high - low)
    return "low" if position < 1 / 3 else "medium" if position < 2 / 3 else "high"


async def curl(command: str, port: int, token: str | None = None) -> Any:
    """Run one of the seed's curl commands (port swapped, token added for writes); its output,
    parsed as JSON."""
    argv = shlex.split(command.replace("localhost:8000", f"localhost:{port}"))
    if token is not None:
        argv += ["-H", f"Authorization: Bearer {token}"]
    result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True)
    return json.loads(result.stdout)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def supply_is(api: ApiNode, supply: int) -> dict[str, Any] | None:
    market = await api.market()
    return market if market["supply_tokens_per_sec"] == supply else None


# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_seeds_three_curl_calls_verbatim(tmp_path: Path) -> None:
    async with api_node(tmp_path / "a", 1) as api:
        port = port_of(api.url)
        market = await curl(SEED_CURL_MARKET, port)
        for name in SEED_MARKET_FIELDS + ("target_price", "tick", "network"):
            assert name in market, name
        assert (market["enabled"], market["mode"], market["network"]) == (True, "dynamic", API_NETWORK)
        assert (market["supply_tokens_per_sec"], market["available_nodes"]) == (0, 0)

        registered = await curl(SEED_CURL_REGISTER, port, api.token)
        assert registered == {"ok": True, "offer": {"tokens_per_second": 1000, "min_price": 0.0,
                                                    "min_price_nano": 0}}
        assert (api.node.engine.offer.tokens_per_second, api.node.engine.offer.min_price_nano) == (
            1000, 0)
        market = await eventually(lambda: supply_is(api, 1000), 10,
                                  "the registered capacity counts in the market")
        assert market["available_nodes"] == 1

        withdrawn = await curl(SEED_CURL_WITHDRAW, port, api.token)
        assert withdrawn["ok"] is True
        assert api.node.engine.offer.tokens_per_second == 0
        market = await eventually(lambda: supply_is(api, 0), 10, "the withdrawal counts")
        assert market["available_nodes"] == 0

        # Without the token, the seed's write is refused with a JSON reason, and nothing changes.
        refused = await curl(SEED_CURL_REGISTER, port)
        assert refused["status"] == 401 and "Bearer" in refused["error"]
        assert api.node.engine.offer.tokens_per_second == 0


async def test_market_fields_describe_one_instant(tmp_path: Path) -> None:
    """Supply, demand and target come from the same instant, the response's `evaluated_at_ms`:
    while the supply changes, every response's target is the curve's price of that response's
    own supply and demand (read at `now`, the supply would run ahead of the target for one
    settle delay, and this would fail)."""
    async with api_node(tmp_path / "a", 3) as api:
        api.node.set_demand(30_000, 3)
        responses: list[dict[str, Any]] = []

        async def supply_reached(supply: int) -> bool:
            market = await api.market()
            responses.append(market)
            return market["supply_tokens_per_sec"] == supply

        for supply in (1000, 1500):
            registered = await api.post("/api/market/register", headers=api.auth,
                                        json={"tokens_per_second": supply, "min_price": 0.0})
            assert registered.status_code == 200, registered.text
            await eventually(lambda: supply_reached(supply), 10, f"supply {supply} counts",
                             interval=0.02)
        supplies = [m["supply_tokens_per_sec"] for m in responses]
        changes = [i for i in range(1, len(responses)) if supplies[i] != supplies[i - 1]]
        assert [supplies[i] for i in changes] == [1000, 1500]
        for market in responses:
            assert market["evaluated_at_ms"] == market["tick"] * TICK_MS - SETTLE_MS
            assert market["target_price_nano"] == target_price_nano(
                market["supply_tokens_per_sec"], market["demand_tokens_waiting"], API_MARKET)
        # The responses where the supply changed show the new supply with its own target.
        for i in changes:
            market = responses[i]
            assert market["demand_tokens_waiting"] == 30_000
            assert market["target_price_nano"] == target_price_nano(supplies[i], 30_000,
                                                                    API_MARKET)
            assert market["target_price_nano"] != responses[i - 1]["target_price_nano"]


async def test_every_read_endpoint_of_a_fresh_node(tmp_path: Path) -> None:
    async with api_node(tmp_path / "a", 2) as api:
        node = api.node
        peer_id = peer_id_of(make_key(2).public_key.format(compressed=True))

        market = await api.market()
        assert market["enabled"] is True and market["mode"] == "dynamic"
        assert market["network"] == API_NETWORK
        assert (market["supply_tokens_per_sec"], market["demand_tokens_waiting"],
                market["pending_requests"], market["available_nodes"], market["peers"]) == (0, 0, 0, 0, 0)
        assert market["utilization"] == 0.0
        assert (market["min_price"], market["max_price"]) == (API_MARKET.min_price, API_MARKET.max_price)
        assert (market["min_price_nano"], market["max_price_nano"]) == (10_000_000, 1_000_000_000)
        snapshot = node.engine.stats(market["now"])
        assert (market["tick"], market["current_price_nano"], market["target_price_nano"]) == (
            snapshot.tick, snapshot.price_nano, snapshot.target_price_nano)
        assert market["evaluated_at_ms"] == market["tick"] * TICK_MS - SETTLE_MS
        assert market["current_price"] == from_nano(market["current_price_nano"])
        assert market["price_level"] == expected_level(market["current_price"], 0.01, 1.0) == "low"
        # ?at= evaluates another instant: the same answer the engine gives for it.
        at = market["now"] - 1.0
        earlier = (await api.get("/api/market", params={"at": at})).json()
        assert (earlier["now"], earlier["tick"]) == (at, node.engine.tick_of(at))

        info = (await api.get("/api/node")).json()
        assert info["peer_id"] == peer_id == node.peer_id
        assert info["multiaddrs"] and all(a.endswith(f"/p2p/{peer_id}") for a in info["multiaddrs"])
        assert all(a.startswith("/ip4/127.0.0.1/tcp/") for a in info["multiaddrs"])
        assert (info["network"], info["version"], info["api"]) == (API_NETWORK, __version__, api.url)
        charter = simnet_charter(API_MARKET)
        assert info["charter"] == {
            "name": "simnet", "network_id": API_NETWORK, "hash": charter.hash.hex(),
            "model": "neuroshard/synthetic-1", "policy": "open", "authorities": [],
            "params": charter.params, "description": charter.description, "bootstrap": []}
        # simnet asks for no identity work: the key counts fully without grinding
        assert info["work"] == {"bits": 0, "required_bits": 0, "weight": 1.0, "nonce": 0,
                                "done": True, "hashes": 0, "kept": False}
        assert info["offer"] == {"tokens_per_second": 0, "min_price": 0.0, "min_price_nano": 0}

        assert (await api.get("/api/peers")).json() == {
            "count": 0, "peers": [], "others": [], "bans": 0, "graylisted": 0,
            "faults": {"gossip_reject": 0, "sync_item": 0, "sync_frame": 0,
                       "sync_over_budget": 0, "job_frame": 0, "relay_item": 0,
                       "relay_frame": 0, "relay_over_budget": 0}}
        offers = (await api.get("/api/market/offers")).json()
        assert (offers["count"], offers["offers"], offers["supply_tokens_per_sec"]) == (0, [], 0)

        # History: the recorder has caught up one smoothing window at start and adds every tick.
        async def recorded() -> dict[str, Any] | None:
            body = (await api.get("/api/market/history", params={"window": "1h"})).json()
            return body if len(body["points"]) >= API_MARKET.window_ticks + 2 else None

        history = await eventually(recorded, 10, "the 1 h history holds a few ticks")
        assert (history["window"], history["seconds"], history["tick_s"]) == ("1h", 3600.0, 0.5)
        times = [t for t, _ in history["points"]]
        assert times == [round(times[0] + 0.5 * i, 6) for i in range(len(times))]  # one per tick
        for t, price in history["points"]:
            assert price == node.engine.tick_price(node.engine.tick_of(t)).price_nano
        prices = [p for _, p in history["points"]]
        # the mean rounded to the nearest nano, halves up (core.average.mean_nano)
        assert history["average_price_nano"] == (sum(prices) + len(prices) // 2) // len(prices)
        day = (await api.get("/api/market/history", params={"window": "24h"})).json()
        assert day["window"] == "24h" and day["seconds"] == 86400.0 and 1 <= len(day["points"]) <= 2
        assert (await api.get("/api/market/history")).json()["window"] == "1h"  # the default
        assert (await api.market())["avg_price_24h_nano"] is not None

        ledger = (await api.get("/api/ledger")).json()
        assert ledger["totals"]["settlements"] == 0
        assert ledger["node"] == {"peer_id": peer_id, "earned_nano": 0, "earned": 0.0,
                                  "tokens_served": 0, "spent_nano": 0, "spent": 0.0,
                                  "burned_nano": 0, "settled_nano": 0}

        page = await api.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for element in ('id="current-price"', 'id="target-price"', 'id="utilization"',
                        'id="supply"', 'id="demand"', 'id="available-nodes"', 'id="peers"',
                        'id="price-chart"', 'id="own-offer"', 'id="earnings"'):
            assert element in page.text
        assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
        for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            static = await api.get(f"/static/{name}")
            assert static.status_code == 200 and static.headers["content-type"].startswith(kind)
            assert "https://" not in static.text
        head = await api.client.head(api.url + "/api/market")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == "application/json"

        metrics = await api.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "neuroshard_market_price_nano" in metrics.text

        # A request queued through the engine (Python's Node.submit_request) has a status at
        # once, whether or not the jobs layer has taken it from the queue yet.
        queued = node.submit_request(500, 10**9)
        status = (await api.get(f"/api/market/requests/{queued.request_id}")).json()
        assert (status["request_id"], status["state"], status["status"], status["tokens"]) == (
            queued.request_id, "pending", "pending", 500)
        # One the gateway refuses when it takes it (its max price is below the price): failed,
        # with the reason, and counted so in the metrics next to the pending one.
        refused = node.submit_request(500, 1)

        async def refused_status() -> dict[str, Any] | None:
            body = (await api.get(f"/api/market/requests/{refused.request_id}")).json()
            return body if body["state"] == "failed" else None

        failed = await eventually(refused_status, 10, "the gateway refused the request")
        assert failed["reason"].startswith("current price ") and "> max_price" in failed["reason"]
        samples = scrape((await api.get("/metrics")).text)
        assert samples["neuroshard_requests"] == {(("state", "failed"),): 1.0,
                                                  (("state", "pending"),): 1.0}


async def test_two_nodes_offers_peers_and_a_request_served_end_to_end(tmp_path: Path) -> None:
    async with api_node(tmp_path / "provider", 3) as provider:
        async with api_node(tmp_path / "gateway", 4,
                            bootstrap=(provider.node.addrs[0],)) as gateway:
            registered = await provider.post("/api/market/register", headers=provider.auth,
                                             json={"tokens_per_second": 2000, "min_price": 0.01})
            assert registered.status_code == 200

            async def sees_the_offer() -> list[dict[str, Any]]:
                return (await gateway.get("/api/market/offers")).json()["offers"]

            offers = await eventually(sees_the_offer, 10, "the gateway sees the provider's offer")
            assert offers == [{"peer_id": provider.node.peer_id, "own": False,
                               "tokens_per_second": 2000, "min_price": 0.01,
                               "min_price_nano": 10_000_000, "issued_at": offers[0]["issued_at"],
                               "routing": {"state": "probation", "skipped": False,
                                           "why": "no history here: on probation (one job at a "
                                                  "time, small jobs first)"}}]
            own = (await provider.get("/api/market/offers")).json()
            assert [(o["peer_id"], o["own"], o["routing"]["state"]) for o in own["offers"]] == [
                (provider.node.peer_id, True, "own")]
            assert own["skipped"] == 0

            peers = (await gateway.get("/api/peers")).json()
            assert peers["count"] == 1 and peers["peers"][0]["peer_id"] == provider.node.peer_id
            assert (await gateway.get("/api/node")).json()["peers"] == 1

            submitted = await gateway.post("/api/market/requests", headers=gateway.auth, json={
                "tokens": 400, "max_price": 1.0, "tier": "premium", "prompt": "hello market",
                "user": "alice"})
            assert submitted.status_code == 202, submitted.text
            body = submitted.json()
            rid = body["request_id"]
            locked = body["locked_price_nano"]
            assert body["status"] == "pending" and body["tokens"] == 400 and body["tier"] == "premium"
            assert 10_000_000 <= locked <= 1_000_000_000
            assert body["locked_price"] == from_nano(locked)

            async def finished() -> dict[str, Any] | None:
                status = (await gateway.get(f"/api/market/requests/{rid}")).json()
                return status if status["status"] in ("completed", "failed", "expired") else None

            done = await eventually(finished, 20, "the request is served")
            payment = settle_amounts(400, locked, API_MARKET.burn_rate)
            assert (done["status"], done["provider"], done["tokens_served"], done["cost_nano"]) == (
                "completed", provider.node.peer_id, 400, payment.payment)
            assert (done["locked_price_nano"], done["user"]) == (locked, "alice")
            assert done["cost"] == from_nano(payment.payment)

            # Both ledgers hold the settlement; each node sees its own side of it.
            async def provider_earned() -> dict[str, Any] | None:
                mine = (await provider.get("/api/ledger")).json()["node"]
                return mine if mine["earned_nano"] else None

            earned = await eventually(provider_earned, 5, "the provider records its earning")
            assert (earned["earned_nano"], earned["tokens_served"]) == (payment.earned, 400)
            spent = (await gateway.get("/api/ledger")).json()
            assert spent["totals"]["paid"] == payment.payment
            assert spent["totals"]["burned"] == payment.burned
            # The spend is booked to the request's user (alice), not to the gateway node itself.
            assert spent["node"]["spent_nano"] == 0
            # The gateway's record of the provider: one job sent, settled, no fault.
            [seen] = (await gateway.get("/api/market/offers")).json()["offers"]
            assert seen["routing"]["state"] == "probation"
            assert seen["routing"]["why"] == ("on probation: 1 of 3 settled jobs since it was "
                                              "first seen (one job at a time, small jobs first)")
            assert {k: seen["routing"]["record"][k] for k in ("sent", "settled", "faults")} == {
                "sent": 1, "settled": 1, "faults": 0}
            # The provider heard the gateway settle it (JobSettled), the metrics say so.
            await eventually(lambda: provider.node.jobs.provider.payers.outcomes == {"settled": 1},
                             5, "the provider records the settlement")
            samples = scrape((await provider.get("/metrics")).text)
            assert samples["neuroshard_job_settlements_total"] == {(("outcome", "settled"),): 1.0}
            assert samples["neuroshard_jobs_refused_total"] == {
                (("reason", "duplicate"),): 0.0, (("reason", "unpaid"),): 0.0}
            samples = scrape((await gateway.get("/metrics")).text)
            assert samples["neuroshard_providers"] == {(("routing", "probation"),): 1.0}
            assert samples["neuroshard_provider_bans_total"] == {(): 0.0}
            assert samples["neuroshard_provider_faults_not_held_total"] == {(): 0.0}

            missing = await gateway.get("/api/market/requests/req-0000000000000000")
            assert missing.status_code == 404 and "no request" in missing.json()["error"]


AUTH_CASES: list[tuple[dict[str, str], int]] = [
    ({}, 401),
    ({"Authorization": ""}, 401),
    ({"Authorization": "Bearer"}, 401),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
    ({"Authorization": "Token abc"}, 401),
    ({"Authorization": "Bearer wrong-token"}, 403),
]
WRITES: list[tuple[str, dict[str, Any] | None]] = [
    ("/api/market/register", {"tokens_per_second": 1000, "min_price": 0.0}),
    ("/api/market/withdraw", None),
    ("/api/market/requests", {"tokens": 1000, "max_price": 1.0}),
]


async def test_writes_need_the_token_from_the_data_dir_reads_do_not(tmp_path: Path) -> None:
    async with api_node(tmp_path / "a", 5) as api:
        node = api.node
        for path, body in WRITES:
            for headers, status in AUTH_CASES:
                response = await api.post(path, headers=headers, json=body)
                assert response.status_code == status, (path, headers)
                assert response.headers["content-type"] == "application/json"
                assert response.json()["status"] == status
                assert "neuroshard-node token" in response.json()["error"]
                if status == 401:
                    assert response.headers["www-authenticate"].startswith("Bearer")
        assert node.engine.offer.tokens_per_second == 0
        assert node.jobs.statuses() == []
        assert node.engine.announcements_published == 0

        # Reads are open.
        for path in ("/api/market", "/api/node", "/api/peers", "/api/market/offers",
                     "/api/market/history", "/api/ledger", "/metrics", "/"):
            assert (await api.get(path)).status_code == 200, path

        # The scheme is case-insensitive (RFC 7235); the token is the data dir's file.
        ok = await api.post("/api/market/register", headers={"Authorization": f"bearer {api.token}"},
                            json={"tokens_per_second": 10})
        assert ok.status_code == 200 and node.engine.offer.tokens_per_second == 10
        # A rotated token takes effect without a restart; the old one stops working.
        new_token = rotate_api_token(api.data_dir)
        old = await api.post("/api/market/withdraw", headers=api.auth)
        assert old.status_code == 403 and node.engine.offer.tokens_per_second == 10
        new = await api.post("/api/market/withdraw", headers={"Authorization": f"Bearer {new_token}"})
        assert new.status_code == 200 and node.engine.offer.tokens_per_second == 0


async def test_a_token_file_gone_from_a_running_node_refuses_writes_with_the_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Deleted or emptied under a running node, the token file cannot check anyone: every write,
    /api and /v1, is refused 503 naming the file and the command that mends it, logged once;
    `token --rotate` restores writes without a restart. (It was a 500 and a traceback per
    request.)"""
    caplog.set_level(logging.ERROR, logger="neuroshard.api")
    async with api_node(tmp_path / "a", 5) as api:
        token_file = api.data_dir / "api_token"
        mend = f"`neuroshard-node token --rotate --data-dir {api.data_dir}` writes a new one"
        for damage, reason in ((token_file.unlink, f"no API token at {token_file}"),
                               (lambda: token_file.write_text("\n"),
                                f"the API token file {token_file} is empty")):
            damage()
            for _ in range(3):
                own = await api.post("/api/market/register", headers=api.auth,
                                     json={"tokens_per_second": 10})
                assert own.status_code == 503
                assert own.json()["error"] == f"this node cannot check API tokens: {reason}: {mend}"
                v1 = await api.client.get(f"{api.url}/v1/models", headers=api.auth)
                assert v1.status_code == 503
                assert v1.json()["error"]["message"] == own.json()["error"]
                assert v1.json()["error"]["code"] == "api_token_unreadable"
            assert api.node.engine.offer.tokens_per_second == 0
        refused = [r.getMessage() for r in caplog.records if "API writes refused" in r.getMessage()]
        assert refused == [f"API writes refused: no API token at {token_file}: {mend}",
                           f"API writes refused: the API token file {token_file} is empty: {mend}"]
        new_token = rotate_api_token(api.data_dir)
        ok = await api.post("/api/market/register", headers={"Authorization": f"Bearer {new_token}"},
                            json={"tokens_per_second": 10})
        assert ok.status_code == 200 and api.node.engine.offer.tokens_per_second == 10


JSON = {"Content-Type": "application/json"}
BIG = b'{"tokens_per_second": 10, "pad": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}'

#: (method, path, body, extra headers, status, field or None, words in the error)
BAD_INPUTS: list[tuple[str, str, bytes | None, dict[str, str], int, str | None, str]] = [
    ("POST", "/api/market/register", b'{"tokens_per_second": 1000', JSON, 400, None, "not valid JSON"),
    ("POST", "/api/market/register", b"", JSON, 400, None, "empty"),
    ("POST", "/api/market/register", b"[1000]", JSON, 422, None, "JSON object"),
    ("POST", "/api/market/register", b'{"tokens_per_second": -5}', JSON, 422, "tokens_per_second", "got -5"),
    ("POST", "/api/market/register", b'{"tokens_per_second": 0}', JSON, 422, "tokens_per_second", "got 0"),
    ("POST", "/api/market/register", b'{"tokens_per_second": 1e30}', JSON, 422, "tokens_per_second", "1..50000"),
    ("POST", "/api/market/register", b'{"tokens_per_second": "1000"}', JSON, 422, "tokens_per_second", "string"),
    ("POST", "/api/market/register", b'{"tokens_per_second": true}', JSON, 422, "tokens_per_second", "boolean"),
    ("POST", "/api/market/register", b'{"tokens_per_second": 10, "min_price": -0.5}', JSON, 422, "min_price", ">= 0"),
    ("POST", "/api/market/register", b'{"tokens_per_second": 10, "min_price": "free"}', JSON, 422, "min_price", "number"),
    ("POST", "/api/market/register", b'{"tokens_per_second": 10, "min_price": NaN}', JSON, 400, None, "NaN"),
    ("POST", "/api/market/register", b'{"tokens_per_second": 10, "min_price": Infinity}', JSON, 400, None, "Infinity"),
    ("POST", "/api/market/register", b'{"tokens_per_second": 10, "region": "eu"}', JSON, 422, "region", "unknown field"),
    ("POST", "/api/market/register", b'{"tokens_per_second": 10, "tokens_per_second": 20}', JSON, 400, "tokens_per_second", "twice"),
    ("POST", "/api/market/register", b"tokens_per_second=10", {"Content-Type": "application/x-www-form-urlencoded"}, 415, None, "application/json"),
    ("POST", "/api/market/register", b"\xff\xfe", JSON, 400, None, "UTF-8"),
    ("POST", "/api/market/register", b"[" * 100_000 + b"]" * 100_000, JSON, 400, None, "deeply"),
    ("POST", "/api/market/register", BIG, JSON, 413, None, f"limit {MAX_BODY_BYTES}"),
    ("POST", "/api/market/withdraw", b'{"everything": true}', JSON, 422, "everything", "unknown field"),
    ("POST", "/api/market/withdraw", b"please", JSON, 400, None, "not valid JSON"),
    ("POST", "/api/market/withdraw", BIG, JSON, 413, None, "limit"),
    ("POST", "/api/market/requests", b"{}", JSON, 422, "tokens", "required"),
    ("POST", "/api/market/requests", b'{"tokens": 0, "max_price": 1}', JSON, 422, "tokens", "got 0"),
    ("POST", "/api/market/requests", b'{"tokens": -100, "max_price": 1}', JSON, 422, "tokens", "got -100"),
    ("POST", "/api/market/requests", b'{"tokens": 2000000, "max_price": 1}', JSON, 422, "tokens", "1..1000000"),
    ("POST", "/api/market/requests", b'{"tokens": 10.5, "max_price": 1}', JSON, 422, "tokens", "integer"),
    ("POST", "/api/market/requests", b'{"tokens": 100}', JSON, 422, "max_price", "required"),
    ("POST", "/api/market/requests", b'{"tokens": 100, "max_price": 0}', JSON, 422, "max_price", "> 0"),
    ("POST", "/api/market/requests", b'{"tokens": 100, "max_price": -1}', JSON, 422, "max_price", "> 0"),
    ("POST", "/api/market/requests", b'{"tokens": 100, "max_price": 1, "tier": "gold"}', JSON, 422, "tier", "economy"),
    ("POST", "/api/market/requests", b'{"tokens": 100, "max_price": 1, "prompt": ["a"]}', JSON, 422, "prompt", "string"),
    ("POST", "/api/market/requests", b'{"tokens": 100, "max_price": 1, "provider": "me"}', JSON, 422, "provider", "unknown field"),
    ("POST", "/api/market/requests", b'{"tokens": 100, "max_price": 1, "user": ""}', JSON, 422, "user", "blank"),
    # The market's own refusal: a max price below the price the request would lock.
    ("POST", "/api/market/requests", b'{"tokens": 100, "max_price": 0.000001}', JSON, 409, None, "price"),
    ("GET", "/api/market/history?window=2h", None, {}, 400, "window", "1h, 24h"),
    ("GET", "/api/market/history?window=1h&window=24h", None, {}, 400, "window", "more than once"),
    ("GET", "/api/market/history?span=1h", None, {}, 400, "span", "unknown query parameter"),
    ("GET", "/api/market?at=yesterday", None, {}, 400, "at", "seconds"),
    ("GET", "/api/market?at=-1", None, {}, 400, "at", ">= 0"),
    ("GET", "/api/market?at=nan", None, {}, 400, "at", "finite"),
    ("GET", "/api/market?price=1", None, {}, 400, "price", "unknown query parameter"),
    ("GET", "/api/peers?all=1", None, {}, 400, "all", "takes none"),
    ("GET", "/api/market/requests/nope", None, {}, 404, "id", "no request"),
    ("GET", "/api/market/requests/a%20b", None, {}, 404, "id", "no request"),
    ("GET", "/api/market/requests/" + "x" * 200, None, {}, 404, "id", "no request"),
    ("GET", "/api/nothing", None, {}, 404, None, "no such endpoint"),
    ("GET", "/static/../identity.key", None, {}, 404, None, "no such"),
    ("GET", "/static/%2e%2e%2fidentity.key", None, {}, 404, None, "no such"),
    ("GET", "/api_token", None, {}, 404, None, "no such page"),
    ("GET", "/api/market/register", None, {}, 405, None, "use POST"),
    ("POST", "/api/market", b"{}", JSON, 405, None, "use GET"),
    ("PUT", "/api/market/register", b"{}", JSON, 405, None, "use POST"),
    ("DELETE", "/api/market/requests", None, {}, 405, None, "use POST"),
    # Bound to loopback: a request addressed to another name (DNS rebinding) is not answered.
    ("GET", "/api/market", None, {"Host": "evil.example:8000"}, 421, None, "loopback"),
    ("POST", "/api/market/register", b'{"tokens_per_second": 1000}', {**JSON, "Host": "evil.example"}, 421, None, "loopback"),
]


async def test_health_names_what_keeps_a_node_from_its_work(tmp_path: Path) -> None:
    """/api/health for a load balancer or a monitor: 503 naming each failed check (a node
    alone; a broken token file), 200 with none once it has a peer and the file is mended."""
    async with api_node(tmp_path / "a", 6) as api:
        alone = await api.get("/api/health")
        assert alone.status_code == 503
        assert alone.json() == {
            "ok": False, "peers": 0, "clock": "unknown", "backend_reachable": True,
            "stopping": False, "unrecorded_earnings": 0,
            "problems": [{"check": "peers", "detail": "no connected peer: it sees no market but "
                                                      "its own (give it one with --bootstrap)"}]}
        async with api_node(tmp_path / "b", 7, bootstrap=(api.node.addrs[0],), capacity=100):
            async def healthy() -> httpx.Response | None:
                answer = await api.get("/api/health")
                return answer if answer.status_code == 200 and \
                    answer.json()["clock"] == "agrees" else None

            answer = await eventually(healthy, 20, "the node with a peer is healthy, its clock "
                                                   "measured against the peer's")
            assert answer.json() == {"ok": True, "problems": [], "peers": 1, "clock": "agrees",
                                     "backend_reachable": True, "stopping": False,
                                     "unrecorded_earnings": 0}
            head = await api.client.head(api.url + "/api/health")
            assert (head.status_code, head.content) == (200, b"")
            token_file = api.data_dir / "api_token"
            token_file.write_text("\n")
            broken = await api.get("/api/health")
            assert broken.status_code == 503
            assert broken.json()["problems"] == [{
                "check": "api_token",
                "detail": f"API writes and /v1 are refused: the API token file {token_file} is "
                          f"empty: `neuroshard-node token --rotate --data-dir {api.data_dir}` "
                          "writes a new one"}]
            rotate_api_token(api.data_dir)
            assert (await api.get("/api/health")).status_code == 200
            assert (await api.get("/api/health?x=1")).status_code == 400


async def test_bad_inputs_are_4xx_json_and_change_nothing(tmp_path: Path) -> None:
    async with api_node(tmp_path / "a", 6) as api:
        node = api.node
        before = await api.market()
        for method, path, body, headers, status, field, words in BAD_INPUTS:
            request = api.client.build_request(method, api.url + path, content=body,
                                               headers={**api.auth, **headers})
            if "%2e" in path or "/../" in path:  # keep the path exactly as written
                request.url = httpx.URL(api.url + path.replace("/../", "/%2E%2E/"))
            response = await api.client.send(request)
            where = f"{method} {path} {body[:60] if body else body!r}"
            assert response.status_code == status, (where, response.text)
            assert response.headers["content-type"] == "application/json", where
            error = response.json()
            assert error["status"] == status and words in error["error"], (where, error)
            assert error.get("field") == field, (where, error)
        # Nothing changed: no offer, no request, nothing announced, the same market.
        assert (node.engine.offer.tokens_per_second, node.engine.offer.min_price_nano) == (0, 0)
        assert node.jobs.statuses() == []
        assert node.engine.queued_requests(node.now()) == []
        assert node.engine.announcements_published == 0
        after = await api.market()
        for name in ("supply_tokens_per_sec", "demand_tokens_waiting", "pending_requests",
                     "available_nodes"):
            assert after[name] == before[name] == 0
        # And the node still serves.
        assert (await api.post("/api/market/register", headers=api.auth,
                               json={"tokens_per_second": 1})).status_code == 200


def scrape(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Prometheus text → sample name → labels → value."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


EXPECTED_METRICS = {
    "neuroshard_market_price_nano", "neuroshard_market_target_price_nano",
    "neuroshard_market_min_price_nano", "neuroshard_market_max_price_nano",
    "neuroshard_market_utilization", "neuroshard_market_supply_tokens_per_second",
    "neuroshard_market_demand_tokens_waiting", "neuroshard_market_pending_requests",
    "neuroshard_market_available_nodes", "neuroshard_market_tick", "neuroshard_peers",
    "neuroshard_node_info", "neuroshard_messages_total", "neuroshard_requests",
    "neuroshard_settled_nano_total", "neuroshard_burned_nano_total",
    "neuroshard_provider_bans_total", "neuroshard_provider_faults_not_held_total",
    "neuroshard_jobs_refused_total",
    "neuroshard_peer_faults_total", "neuroshard_peer_bans_total", "neuroshard_peers_graylisted",
}


async def test_metrics_say_what_the_api_says(tmp_path: Path) -> None:
    async with api_node(tmp_path / "a", 7) as a, \
            api_node(tmp_path / "b", 8, bootstrap=(a.node.addrs[0],)) as b:
        # b offers capacity at a floor above any price this market reaches with this demand, and
        # a asks for tokens: demand waits, supply is there, nothing is served, the market is still.
        assert (await b.post("/api/market/register", headers=b.auth,
                             json={"tokens_per_second": 1000, "min_price": 0.9})).status_code == 200
        assert (await a.post("/api/market/requests", headers=a.auth,
                             json={"tokens": 5000, "max_price": 1.0})).status_code == 202

        async def settled() -> dict[str, Any] | None:
            m = await a.market()
            return m if (m["supply_tokens_per_sec"], m["demand_tokens_waiting"]) == (1000, 5000) \
                and m["current_price_nano"] == m["target_price_nano"] else None

        await eventually(settled, 15, "a sees supply 1000, demand 5000 and a settled price")

        async def consistent() -> tuple[dict[str, Any], Any, dict[str, Any]] | None:
            # Read the API, the metrics and the API again; keep a reading taken within one tick.
            first = await a.market()
            samples = scrape((await a.get("/metrics")).text)
            info = (await a.get("/api/node")).json()
            second = await a.market()
            same = {k: v for k, v in first.items() if k != "now"} == \
                {k: v for k, v in second.items() if k != "now"}
            return (first, samples, info) if same else None

        market, samples, info = await eventually(consistent, 10, "one tick's worth of readings")
        assert EXPECTED_METRICS <= set(samples)

        def value(name: str, **labels: str) -> float:
            return samples[name][tuple(sorted(labels.items()))]

        assert value("neuroshard_market_price_nano") == market["current_price_nano"]
        assert value("neuroshard_market_target_price_nano") == market["target_price_nano"]
        assert value("neuroshard_market_min_price_nano") == market["min_price_nano"]
        assert value("neuroshard_market_max_price_nano") == market["max_price_nano"]
        assert value("neuroshard_market_utilization") == market["utilization"] == 5000 / 60 / 1000
        assert value("neuroshard_market_supply_tokens_per_second") == market["supply_tokens_per_sec"] == 1000
        assert value("neuroshard_market_demand_tokens_waiting") == market["demand_tokens_waiting"] == 5000
        assert value("neuroshard_market_pending_requests") == market["pending_requests"] == 1
        assert value("neuroshard_market_available_nodes") == market["available_nodes"] == 1
        assert value("neuroshard_market_tick") == market["tick"]
        assert value("neuroshard_peers") == market["peers"] == info["peers"] == 1
        assert value("neuroshard_node_info", network=API_NETWORK, mode="dynamic") == 1
        assert (value("neuroshard_identity_work_bits"), value("neuroshard_identity_work_required_bits"),
                value("neuroshard_identity_weight")) == (0, 0, 1.0)
        messages = {(m["outcome"], m["reason"]): m["count"] for m in info["messages"]}
        assert messages[("accepted", "accepted")] >= 1  # b's announcements reached a
        assert {(dict(k)["outcome"], dict(k)["reason"]): v
                for k, v in samples["neuroshard_messages_total"].items()} == messages
        assert samples["neuroshard_requests"] == {(("state", "pending"),): 1.0}
        assert {dict(k)["kind"]: v for k, v in samples["neuroshard_peer_faults_total"].items()} \
            == info["guard"]["faults"] == {"gossip_reject": 0, "sync_item": 0, "sync_frame": 0,
                                           "sync_over_budget": 0, "job_frame": 0,
                                           "relay_item": 0, "relay_frame": 0,
                                           "relay_over_budget": 0}
        assert value("neuroshard_peer_bans_total") == info["guard"]["bans"] == 0
        assert value("neuroshard_peers_graylisted") == info["guard"]["graylisted"] == 0
        ledger = (await a.get("/api/ledger")).json()
        assert value("neuroshard_settled_nano_total") == ledger["totals"]["paid"] == 0
        assert value("neuroshard_burned_nano_total") == ledger["totals"]["burned"] == 0


async def test_the_api_binds_loopback_by_default_and_warns_when_told_otherwise(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert DEFAULT_API == "127.0.0.1:8000" and NodeSettings().api == DEFAULT_API
    caplog.set_level(logging.WARNING, logger="neuroshard.api")
    async with api_node(tmp_path / "a", 9):
        pass
    assert not [r for r in caplog.records if "reachable from other machines" in r.message]
    async with api_node(tmp_path / "b", 10, api="0.0.0.0:0") as exposed:
        port = port_of(exposed.url)
        response = await exposed.client.get(f"http://127.0.0.1:{port}/api/market")
        assert response.status_code == 200
    warnings = [r for r in caplog.records if "reachable from other machines" in r.message]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0].message


def test_expected_level_matches_the_documented_thresholds() -> None:
    """The test's own threshold function (used against the API and the page) on the boundaries."""
    assert [expected_level(p, 0.0, 3.0) for p in (0.0, 0.999, 1.0, 1.999, 2.0, 3.0)] == [
        "low", "low", "medium", "medium", "high", "high"]
    assert math.isclose(1 / 3 * 3.0, 1.0)


def test_the_servers_price_level_uses_the_documented_thresholds_exactly() -> None:
    """`api.readout.price_level` (what /api/market and the page say) at and around the
    boundaries, in integer nano-NEURO: a boundary belongs to the higher level."""
    from neuroshard_p2p.api.readout import price_level

    lo, hi = 10_000_000, 1_000_000_000  # the defaults, 0.01 … 1.0
    third = (hi - lo) // 3  # 330,000,000 exactly: 0.34 and 0.67 are boundaries
    cases = {lo - 1: "low", lo: "low", lo + third - 1: "low", lo + third: "medium",
             lo + 2 * third - 1: "medium", lo + 2 * third: "high", hi: "high", hi + 1: "high"}
    for price, level in cases.items():
        assert price_level(price, lo, hi) == level, price
        if lo <= price <= hi and price not in (lo + third, lo + 2 * third):  # floats: not exact
            assert expected_level(price / 1e9, lo / 1e9, hi / 1e9) == level, price
