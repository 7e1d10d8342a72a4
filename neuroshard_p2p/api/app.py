"""The node's HTTP API: a plain ASGI app over a running `Node`, served by hypercorn's trio worker
in the daemon's nursery (`neuroshard_p2p.daemon`, which hands it the node, its ledger and its token).

    GET  /                              the dashboard (static files in api/static/)
    GET  /api/market[?at=UNIX_S]        the market as this node sees it (the seed's fields first)
    GET  /api/market/history?window=1h|24h   the price series this node recorded
    GET  /api/market/offers             the merged view's offers, cheapest first, each with how
                                        this gateway routes to it (skipped or not, and why)
    GET  /api/market/requests/{id}      a request's status, provider, tokens served, cost
    GET  /api/peers                     connected peers, their addresses and standing (score, bans)
    GET  /api/node                      peer id, multiaddrs, network and charter, identity work,
                                        version, own offer, the guard's fault and ban counters
    GET  /api/ledger                    settlements, this node's earnings (404 without a ledger)
    GET  /metrics                       Prometheus text
    POST /api/market/register           {"tokens_per_second": 1000, "min_price": 0.0}   (token)
    POST /api/market/withdraw           no body                                          (token)
    POST /api/market/requests           {"tokens": 5000, "max_price": 0.5, ...}          (token)

Why a plain ASGI callable: a dozen fixed routes, JSON in and out, one static directory. A
framework would add routing and request objects we would then have to keep strict ourselves (its
own 422 shapes, its own body parsing); the ASGI interface is small, stable and spoken natively by
hypercorn's trio worker, so the node's structured concurrency reaches all the way into the
request handlers, with no asyncio or anyio layer in between.

Writes need `Authorization: Bearer <token>` (`<data-dir>/api_token`; `neuroshard-node token`
prints it). Bodies are checked by `api.inputs` before anything is called on the node; every refusal
is JSON `{"error": ..., "status": ...}` with a 4xx status that says whose fault it was. Prices
leave as NEURO (floats, for people) and as integer nano-NEURO (`*_nano`, exact).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import parse_qs

import trio

from neuroshard_p2p import __version__
from neuroshard_p2p.api.history import PriceHistory, record_prices
from neuroshard_p2p.api.inputs import (
    MAX_BODY_BYTES,
    InputError,
    parse_history_window,
    parse_register,
    parse_revocations,
    parse_request_id,
    parse_submit,
    parse_withdraw,
)
from neuroshard_p2p.api.metrics import node_registry, render
from neuroshard_p2p.api.openai import ApiToken, OpenAIApi, OpenAIError
from neuroshard_p2p.api.readout import NodeReadout, read_node
from neuroshard_p2p.core.errors import MarketError
from neuroshard_p2p.identity import peer_id_of
from neuroshard_p2p.money import from_nano
from neuroshard_p2p.timeline import seconds_of

if TYPE_CHECKING:  # types only: the app reads and calls the node it is handed
    from neuroshard_p2p.ledger import AsyncLedger
    from neuroshard_p2p.node.host import Node

log = logging.getLogger("neuroshard.api")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
_STATIC_NAME = re.compile(r"^[a-z0-9_-]+\.(html|js|css)$")
_REQUEST_PATH = "/api/market/requests/"
#: The dashboard's own files may not be framed or fed scripts from elsewhere.
_PAGE_HEADERS = [(b"content-security-policy",
                  b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
                 (b"x-content-type-options", b"nosniff")]


@dataclass
class Response:
    """What a handler answers: a status and a JSON body, or raw bytes with a content type."""

    status: int
    body: Any = None
    raw: bytes | None = None
    content_type: str = "application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass
class Request:
    """What a handler gets: the parsed parts of one HTTP request."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[bytes, str]
    body: bytes = b""
    #: A request that carries a body we have not read to its end (yet).
    body_unread: bool = False

    @property
    def content_type(self) -> str | None:
        return self.headers.get(b"content-type")


class Api:
    """The API of one node: its routes, its price history and its metrics."""

    def __init__(self, node: "Node", *, ledger: "AsyncLedger | None" = None,
                 token: Callable[[], str]) -> None:
        self.node = node
        self._node_ledger = ledger
        #: The bearer token writes must carry, read (`token()`) at every write.
        self.token = ApiToken(token)
        #: Where this API answers, once its server has bound (shown by /api/node).
        self.url: str | None = None
        self.history = PriceHistory(node.settings.market.tick_s)
        #: /v1/...: the OpenAI-compatible endpoints (api/openai.py).
        self.openai = OpenAIApi(node, self.token)
        #: Bound to loopback, the API answers only requests addressed to a loopback name: a web
        #: page whose DNS name is rebound to 127.0.0.1 would otherwise read it as same-origin.
        self.loopback_only = _is_loopback(node.settings.api_host_port[0])
        self.reads: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {
            ("GET", "/api/market"): self.market,
            ("GET", "/api/market/history"): self.price_history,
            ("GET", "/api/market/offers"): self.offers,
            ("GET", "/api/peers"): self.peers,
            ("GET", "/api/node"): self.node_info,
            ("GET", "/api/health"): self.health,
            ("GET", "/api/ledger"): self.ledger,
            ("GET", "/metrics"): self.metrics,
        }
        self.writes: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {
            ("POST", "/api/market/register"): self.register,
            ("POST", "/api/market/withdraw"): self.withdraw,
            ("POST", "/api/market/requests"): self.submit,
            ("POST", "/api/revocations"): self.revocations,
        }

    # -- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method = scope["method"]
        head = method == "HEAD"
        request = Request(method="GET" if head else method, path=scope["path"],
                          query=parse_qs(scope.get("query_string", b"").decode("latin-1"),
                                         keep_blank_values=True),
                          headers={k.lower(): v.decode("latin-1")
                                   for k, v in scope.get("headers", [])})
        if request.path.startswith("/v1/") or request.path == "/v1":
            await self._openai(request, receive, send)
            return
        try:
            response = await self._dispatch(request, receive)
        except InputError as error:
            response = Response(error.status, error.to_json())
            if error.status == 401:
                response.headers.append((b"www-authenticate", b'Bearer realm="neuroshard"'))
            if request.body_unread:
                # Refused before (or while) reading the body: the rest of it is still on the
                # connection, so close it rather than let the client send its next request
                # behind bytes we will not read.
                response.headers.append((b"connection", b"close"))
        except MarketError as error:
            response = Response(409, {"error": str(error), "status": 409})
        except Exception:  # noqa: BLE001 - a bug answers 500, it does not stop the node
            log.exception("API error on %s %s", method, request.path)
            response = Response(500, {"error": "internal error (see the node's log)",
                                      "status": 500})
        await _send(send, response, head=head)

    def _cors(self, origin: str | None) -> list[tuple[bytes, bytes]] | None:
        """The CORS headers for a browser page of `origin` (`api_cors_origins`), or None when
        it may not read /v1 (no Origin: not a cross-origin browser request)."""
        allowed = self.node.settings.api_cors_origins
        if origin is None or not (origin in allowed or "*" in allowed):
            return None
        return [(b"access-control-allow-origin", origin.encode("latin-1")),
                (b"vary", b"origin"),
                (b"access-control-expose-headers", b"retry-after")]

    async def _openai(self, request: Request, receive: Receive, send: Send) -> None:
        """/v1/...: OpenAI's shapes for answers and errors, and streamed answers, so the
        handler sends for itself. A page of an origin in `api_cors_origins` may call it from a
        browser: its preflight is answered here and every answer carries the CORS headers."""
        origin = request.headers.get(b"origin")
        cors = self._cors(origin)
        if cors is not None:
            inner = send

            async def send(message: dict[str, Any]) -> None:  # noqa: F811 - the same, with CORS
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), *cors]}
                await inner(message)
        try:
            if self.loopback_only and not _loopback_host_header(request.headers.get(b"host")):
                raise OpenAIError(421, "this node's API answers only requests to localhost, "
                                       "127.0.0.1 or [::1] (it is bound to loopback)")
            if request.method == "OPTIONS" and origin is not None:
                await self._preflight(request, origin, cors, send)
                return
            body = b""
            if request.method == "POST":
                try:
                    body = await _read_body(receive, request.headers)
                except InputError as error:
                    raise OpenAIError(error.status, str(error)) from None
            await self.openai(request.method, request.path, request.headers, body, receive, send)
        except OpenAIError as error:
            await _send(send, Response(error.status, error.body(), headers=error.headers()),
                        head=False)
        except Exception:  # noqa: BLE001 - a bug answers 500 (if nothing was sent yet)
            log.exception("API error on %s %s", request.method, request.path)
            try:
                await _send(send, Response(500, OpenAIError(
                    500, "internal error (see the node's log)", "server_error").body()),
                    head=False)
            except Exception:  # noqa: BLE001 - the answer had started: nothing more to say
                pass

    async def _preflight(self, request: Request, origin: str,
                         cors: list[tuple[bytes, bytes]] | None, send: Send) -> None:
        """A browser asks whether a page of `origin` may send its request: 204 with what it may
        send (any headers it asks for: the official JS client adds its own), or 403 naming the
        setting that would allow it."""
        if cors is None:
            raise OpenAIError(403, f"pages of {origin} may not call this node's /v1 endpoints "
                                   f"from a browser; its operator can allow them with "
                                   f"api_cors_origins (config.toml) or --api-cors-origin",
                              "permission_error", "origin_not_allowed")
        asked = request.headers.get(b"access-control-request-headers",
                                    "authorization, content-type")
        headers = [(b"access-control-allow-methods", b"GET, POST"),
                   (b"access-control-allow-headers", asked.encode("latin-1")),
                   (b"access-control-max-age", b"600"), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _dispatch(self, request: Request, receive: Receive) -> Response:
        if self.loopback_only and not _loopback_host_header(request.headers.get(b"host")):
            request.body_unread = True
            raise InputError(421, "this node's API answers only requests to localhost, "
                                  "127.0.0.1 or [::1] (it is bound to loopback)")
        key = (request.method, request.path)
        if key in self.reads:
            return await self.reads[key](request)
        if key in self.writes:
            request.body_unread = True
            self._authorize(request)
            request.body = await _read_body(receive, request.headers)
            request.body_unread = False
            return await self.writes[key](request)
        if request.method == "GET" and request.path.startswith(_REQUEST_PATH):
            _no_query(request)
            return self.request_status(parse_request_id(request.path[len(_REQUEST_PATH):]))
        allowed = sorted({m for m, p in (*self.reads, *self.writes) if p == request.path})
        if allowed:
            return Response(405, {"error": f"{request.method} is not allowed on {request.path}; "
                                           f"use {', '.join(allowed)}", "status": 405},
                            headers=[(b"allow", ", ".join(allowed).encode())])
        if request.method == "GET" and not request.path.startswith("/api/"):
            return _static(request.path)
        raise InputError(404, f"no such endpoint: {request.method} {request.path}")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Startup warns about a non-loopback bind and starts the price recorder; shutdown stops
        it. The recorder lives in this task, which hypercorn runs inside the node's nursery."""
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        _warn_if_exposed(self.node)
        engine = self.node.engine
        config = self.node.settings.market
        async with trio.open_nursery() as nursery:
            nursery.start_soon(record_prices, self.history,
                               lambda tick: engine.tick_price(tick).price_nano, engine.tick_of,
                               self.node.now, config.window_ticks)
            await send({"type": "lifespan.startup.complete"})
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            nursery.cancel_scope.cancel()
        await send({"type": "lifespan.shutdown.complete"})

    def _authorize(self, request: Request) -> None:
        scheme, _, token = request.headers.get(b"authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InputError(401, "this endpoint needs 'Authorization: Bearer <token>' "
                                  "(`neuroshard-node token` prints it)")
        if not hmac.compare_digest(token.strip().encode(), self.token.expected().encode()):
            raise InputError(403, "wrong API token (`neuroshard-node token` prints the right one)")

    # -- reads ------------------------------------------------------------------------------

    async def readout(self, now: float | None = None) -> NodeReadout:
        """One read of the node (ledger totals fetched off the event loop first)."""
        ledger = self._ledger()
        totals = await ledger.totals() if ledger is not None else None
        return read_node(self.node, self.node.now() if now is None else now, self.history,
                         totals)

    async def market(self, request: Request) -> Response:
        return Response(200, (await self.readout(_instant(request))).market_json())

    async def price_history(self, request: Request) -> Response:
        name, seconds = parse_history_window(request.query)
        now = self.node.now()
        points = self.history.series(seconds, now)
        average = self.history.average(seconds, now)
        return Response(200, {
            "window": name, "seconds": seconds, "now": now,
            "tick_s": self.node.settings.market.tick_s,
            "points": [[t, price] for t, price in points],
            "average_price_nano": average,
            "average_price": None if average is None else from_nano(average)})

    async def offers(self, request: Request) -> Response:
        _no_query(request)
        now = self.node.now()
        own = self.node.engine.signer
        offers = self.node.engine.view.offers_at(now)
        gateway = self.node.jobs.gateway
        # How this node, as a gateway, routes to each offer: skipped or not, and why.
        routing = [gateway.routing(o.signer, now) for o in offers]
        return Response(200, {
            "now": now, "count": len(offers),
            "supply_tokens_per_sec": sum(o.tokens_per_second for o in offers),
            "skipped": sum(1 for r in routing if r["skipped"] and r["state"] != "own"),
            "offers": [{"peer_id": peer_id_of(o.signer), "own": o.signer == own,
                        "tokens_per_second": o.tokens_per_second,
                        "min_price": from_nano(o.min_price_nano),
                        "min_price_nano": o.min_price_nano,
                        "issued_at": seconds_of(o.issued_at_ms),
                        "routing": r} for o, r in zip(offers, routing)]})

    async def peers(self, request: Request) -> Response:
        """Connected peers with their addresses and standing (the guard's score, gossipsub's
        score, faults, bans), then the peers banned or scored that are not connected, and the
        fault counters."""
        _no_query(request)
        node = self.node
        peers = node.connected_peers()
        standings = {s["peer_id"]: s for s in node.peer_standings()}
        connected = []
        for p in peers:
            standing = dict(standings.pop(p.peer_id, {}))
            standing.pop("connected", None)
            connected.append({"peer_id": p.peer_id, "addrs": list(p.addrs),
                              **{k: v for k, v in standing.items() if k != "peer_id"}})
        others = [{k: v for k, v in s.items() if k != "connected"} for s in standings.values()]
        return Response(200, {"count": len(peers), "peers": connected, "others": others,
                              **_guard_json(node)})

    async def node_info(self, request: Request) -> Response:
        _no_query(request)
        node = self.node
        offer = node.engine.offer
        addrs = node.addrs
        work = node.work.progress
        return Response(200, {
            "running": True,
            "peer_id": node.peer_id,
            "multiaddrs": addrs,
            "addrs": addrs,
            "network": node.settings.network,
            "charter": node.settings.charter.describe(),
            # What this key weighs in every peer's price: 2^(bits - required), at most 1.
            "work": {"bits": work.bits, "required_bits": work.required_bits,
                     "weight": work.weight, "nonce": work.nonce, "done": work.done,
                     "hashes": work.hashes, "kept": work.loaded},
            "version": __version__,
            "topic": node.topic,
            "api": self.url,
            "peers": node.peer_count,
            "offer": {"tokens_per_second": offer.tokens_per_second,
                      "min_price": from_nano(offer.min_price_nano),
                      "min_price_nano": offer.min_price_nano},
            # False while the offer waits for a backend that refuses connections.
            "backend_reachable": node.backend_reachable,
            "queued_requests": len(node.engine.queued_requests(node.now())),
            "messages": [{"outcome": o, "reason": r, "count": c}
                         for (o, r), c in sorted(node.engine.counts().items())],
            "counters": dict(vars(node.counters)),
            "guard": _guard_json(node),
            "reach": node.reach.snapshot(),
            # Whether this node's clock agrees with its peers' signed times (clockwatch.py).
            "clock": node.clock_json(),
        })

    async def health(self, request: Request) -> Response:
        """Whether this node can do its work now, for a load balancer, a monitor or a script
        (`curl -f`): 200 when every check passes, 503 naming each one that does not. No token:
        it says no more than /api/node does."""
        _no_query(request)
        node = self.node
        problems: list[dict[str, str]] = []

        def problem(check: str, detail: str) -> None:
            problems.append({"check": check, "detail": detail})

        if node.jobs.stopping:
            problem("stopping", "this node is stopping; it takes no new request or offer")
        if node.peer_count == 0:
            problem("peers", "no connected peer: it sees no market but its own (give it one "
                             "with --bootstrap)")
        clock = node.clock_json()
        if node.clock_reading.warns:
            problem("clock", clock["text"])
        if not node.backend_reachable:
            problem("backend", "its inference backend refuses connections: its offer is held "
                               "until the backend answers")
        unrecorded = node.jobs.unrecorded_earnings
        if unrecorded:
            problem("ledger", f"{unrecorded} earning(s) its ledger could not write (disk full or "
                              "an I/O error), kept in memory and tried again")
        token_problem = self.token.problem()
        if token_problem is not None:
            problem("api_token", f"API writes and /v1 are refused: {token_problem}")
        return Response(503 if problems else 200, {
            "ok": not problems, "problems": problems,
            "peers": node.peer_count, "clock": clock["state"],
            "backend_reachable": node.backend_reachable, "stopping": node.jobs.stopping,
            "unrecorded_earnings": unrecorded})

    async def ledger(self, request: Request) -> Response:
        _no_query(request)
        ledger = self._ledger()
        if ledger is None:
            raise InputError(404, "this node keeps no ledger (none was opened for it)")
        signer = self.node.engine.signer
        summary = await ledger.summary(10, signer)
        summary.pop("path", None)  # where the data dir is is nobody's business over HTTP
        provider = await ledger.totals("provider")
        spent = await ledger.spent(self.node.peer_id)
        totals = summary["totals"]
        summary["node"] = {
            "peer_id": self.node.peer_id,
            "earned_nano": summary["earnings"]["earned"],
            "earned": summary["earnings"]["earned_neuro"],
            "tokens_served": provider.tokens,
            "spent_nano": spent,
            "spent": from_nano(spent),
            "burned_nano": totals["burned"],
            "settled_nano": totals["paid"],
        }
        return Response(200, summary)

    async def metrics(self, request: Request) -> Response:
        readout = await self.readout()
        body, content_type = render(node_registry(lambda: readout))
        return Response(200, raw=body, content_type=content_type)

    def request_status(self, request_id: str) -> Response:
        # The jobs layer answers for every request of this node, those still in the engine's
        # queue (Node.submit_request, not yet routed) included.
        status = self.node.jobs.status(request_id)
        if status is None:
            raise InputError(404, f"no request with id {request_id!r} at this node", "id")
        return Response(200, _status_json(status.to_dict()))

    # -- writes -----------------------------------------------------------------------------

    async def register(self, request: Request) -> Response:
        offer = parse_register(request.body, request.content_type, self.node.settings.market)
        self.node.set_offer(offer.tokens_per_second, offer.min_price_nano)
        return Response(200, {"ok": True, "offer": {
            "tokens_per_second": offer.tokens_per_second,
            "min_price": from_nano(offer.min_price_nano),
            "min_price_nano": offer.min_price_nano}})

    async def revocations(self, request: Request) -> Response:
        """Publish an authority's revocation list (members networks): checked as gossip is,
        merged into this node's view, then gossiped; a refused list answers 422 with the reason."""
        data = parse_revocations(request.body, request.content_type)
        verdict = await self.node.publish_revocations(data)
        if not verdict.accepted:
            raise InputError(422, f"revocation list refused ({verdict.reason}): {verdict.detail}")
        return Response(200, {"ok": True, "published": True})

    async def withdraw(self, request: Request) -> Response:
        parse_withdraw(request.body, request.content_type)
        self.node.withdraw_offer()
        return Response(200, {"ok": True, "offer": {"tokens_per_second": 0, "min_price": 0.0,
                                                    "min_price_nano": 0}})

    async def submit(self, request: Request) -> Response:
        submit = parse_submit(request.body, request.content_type, self.node.settings.market)
        # Straight to the gateway, not through the engine's queue: the price is locked now and
        # the answer can say which.
        status = self.node.jobs.submit(submit.tokens, submit.max_price_nano, prompt=submit.prompt,
                                       tier=submit.tier, user=submit.user)
        return Response(202, _status_json(status.to_dict()))

    def _ledger(self) -> "AsyncLedger | None":
        """The node's ledger, as the daemon handed it (None: the node keeps none)."""
        return self._node_ledger


def create_app(node: "Node", *, ledger: "AsyncLedger | None" = None,
               token: Callable[[], str]) -> Api:
    """The ASGI app serving `node`: `ledger` is the one its job service settles in, `token()`
    the bearer token writes must carry."""
    return Api(node, ledger=ledger, token=token)


# ---------------------------------------------------------------------------------------------
# helpers


def _guard_json(node: "Node") -> dict[str, Any]:
    """The node's accountability counters (node/guard.py)."""
    guard = node.guard
    return {"faults": dict(guard.faults), "bans": guard.bans,
            "graylisted": guard.graylisted(node.now())}


def _status_json(data: dict[str, Any]) -> dict[str, Any]:
    """A request's status with `status` (the issue's word) next to `state`, and costs in NEURO."""
    data["status"] = data["state"]
    cost = data.get("cost_nano")
    data["cost"] = None if cost is None else from_nano(cost)
    return data


def _is_loopback(host: str) -> bool:
    """A loopback address or "localhost"; any other name may resolve anywhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _loopback_host_header(value: str | None) -> bool:
    """The request's Host header names a loopback host (port ignored). HTTP/1.0 clients may send
    none; they are not browsers a rebinding attack could use."""
    if value is None:
        return True
    host = value.strip()
    if host.startswith("["):  # [::1]:8000
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return _is_loopback(host)


def _warn_if_exposed(node: "Node") -> None:
    host, port = node.settings.api_host_port
    if not _is_loopback(host):
        log.warning("HTTP API bound to %s:%d, reachable from other machines: anyone who can "
                    "reach it reads the market and this node's state; writes still need the "
                    "token. Bind 127.0.0.1 unless you mean it.", host, port)


def _no_query(request: Request) -> None:
    """Endpoints without parameters refuse any, so a typo is not silently ignored."""
    if request.query:
        name = sorted(request.query)[0]
        raise InputError(400, f"unknown query parameter {name!r}; {request.path} takes none",
                         name)


def _instant(request: Request) -> float | None:
    """`?at=<unix seconds>`: evaluate the market at that instant instead of now."""
    unknown = sorted(set(request.query) - {"at"})
    if unknown:
        raise InputError(400, f"unknown query parameter {unknown[0]!r}; known: at", unknown[0])
    if "at" not in request.query:
        return None
    try:
        value = float(request.query["at"][-1])
    except ValueError:
        raise InputError(400, "at must be a number of seconds since the epoch", "at") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(400, "at must be a finite number of seconds >= 0", "at")
    return value


async def _read_body(receive: Receive, headers: dict[bytes, str]) -> bytes:
    """The request body, refused with 413 as soon as it passes the cap (a declared length over
    the cap is refused before reading anything)."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise InputError(413, f"body is {declared} bytes (limit {MAX_BODY_BYTES})")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise InputError(413, f"body is larger than {MAX_BODY_BYTES} bytes (limit)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send(send: Send, response: Response, *, head: bool) -> None:
    if response.raw is not None:
        data = response.raw
    else:
        data = json.dumps(response.body, allow_nan=False).encode("utf-8")
    headers = [(b"content-type", response.content_type.encode()),
               (b"content-length", str(len(data)).encode()),
               (b"cache-control", b"no-store"), *response.headers]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else data})


def _static(path: str) -> Response:
    """`/` is the dashboard; `/static/<name>` its script and style sheet."""
    if path in ("/", "/index.html"):
        name = "index.html"
    elif path.startswith("/static/"):
        name = path[len("/static/"):]
    else:
        raise InputError(404, f"no such page: {path}")
    if not _STATIC_NAME.match(name):
        raise InputError(404, f"no such page: {path}")
    try:
        data = resources.files("neuroshard_p2p.api").joinpath("static").joinpath(name).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise InputError(404, f"no such page: {path}") from None
    suffix = name[name.rindex("."):]
    return Response(200, raw=data, content_type=_STATIC_TYPES[suffix], headers=list(_PAGE_HEADERS))


__all__ = ["create_app", "Api"]
