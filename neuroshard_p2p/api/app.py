"""The node's HTTP API: a small ASGI app over a running `Node` (served by hypercorn's trio worker).

    GET  /api/market              the market as this node sees it now (price, supply, demand)
    GET  /api/node                this node: peer id, addresses, offer, peers, message counters
    GET  /api/peers               connected peers and their addresses
    POST /api/market/register     {"tokens_per_second": 1000, "min_price": 0.0}   (bearer token)
    POST /api/market/withdraw     no body                                          (bearer token)
    POST /api/market/requests     {"tokens": 5000, "max_price": 0.5, ...}          (bearer token)
    GET  /                        the dashboard page (static files in api/static/)

POSTs need `Authorization: Bearer <token>` (the token in `<data-dir>/api_token`; `neuroshard-node
token` prints it). Bodies are checked by `api.inputs`; every refusal is JSON `{"error": ...,
"status": ...}` with a status that says whose fault it was. Prices leave as NEURO (floats, for
people) and as integer nano-NEURO (`*_nano`, exact).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from importlib import resources
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import parse_qs

from neuroshard_p2p.api.inputs import InputError, parse_register, parse_submit, parse_withdraw
from neuroshard_p2p.core.errors import MarketError
from neuroshard_p2p.money import from_nano, to_nano

if TYPE_CHECKING:  # the app only reads and calls the node; no import cycle at run time
    from neuroshard_p2p.node.host import Node

log = logging.getLogger("neuroshard.api")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
_MAX_BODY = 256 * 1024


def market_json(node: "Node", now: float | None = None) -> dict[str, Any]:
    """The body of GET /api/market."""
    stats = node.stats(now)
    config = node.settings.market
    utilization = stats.utilization
    return {
        "now": stats.now,
        "network": node.settings.network,
        "enabled": True,
        "mode": config.mode,
        "tick": stats.tick,
        "current_price": from_nano(stats.price_nano),
        "current_price_nano": stats.price_nano,
        "target_price": from_nano(stats.target_price_nano),
        "target_price_nano": stats.target_price_nano,
        "min_price": config.min_price,
        "max_price": config.max_price,
        "min_price_nano": to_nano(config.min_price),
        "max_price_nano": to_nano(config.max_price),
        "supply_tokens_per_sec": stats.supply_tokens_per_s,
        "demand_tokens_waiting": stats.demand_tokens_waiting,
        "pending_requests": stats.pending_requests,
        "available_nodes": stats.available_nodes,
        "utilization": None if utilization == float("inf") else utilization,
    }


def node_json(node: "Node") -> dict[str, Any]:
    """The body of GET /api/node."""
    offer = node.engine.offer
    return {
        "running": True,
        "peer_id": node.peer_id,
        "addrs": node.addrs,
        "network": node.settings.network,
        "topic": node.topic,
        "api": node.api_url,
        "peers": node.peer_count,
        "offer": {"tokens_per_second": offer.tokens_per_second,
                  "min_price": from_nano(offer.min_price_nano),
                  "min_price_nano": offer.min_price_nano},
        "queued_requests": len(node.engine.queued_requests(node.now())),
        "messages": [{"outcome": o, "reason": r, "count": c}
                     for (o, r), c in sorted(node.engine.counts().items())],
        "counters": dict(vars(node.counters)),
    }


def peers_json(node: "Node") -> dict[str, Any]:
    """The body of GET /api/peers."""
    peers = node.connected_peers()
    return {"count": len(peers),
            "peers": [{"peer_id": p.peer_id, "addrs": list(p.addrs)} for p in peers]}


def create_app(node: "Node") -> ASGIApp:
    """The ASGI app serving `node`."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        try:
            if method == "GET" or method == "HEAD":
                if path == "/api/market":
                    await _json(send, 200, market_json(node, _instant(scope)))
                elif path == "/api/node":
                    await _json(send, 200, node_json(node))
                elif path == "/api/peers":
                    await _json(send, 200, peers_json(node))
                elif not path.startswith("/api/"):
                    await _static(send, path)
                else:
                    raise InputError(404, f"no such endpoint: GET {path}")
            elif method == "POST":
                _authorize(scope, node)
                body = await _body(receive)
                content_type = _header(scope, b"content-type")
                if path == "/api/market/register":
                    offer = parse_register(body, content_type, node.settings.market)
                    node.set_offer(offer.tokens_per_second, offer.min_price_nano)
                    await _json(send, 200, {"ok": True, "offer": {
                        "tokens_per_second": offer.tokens_per_second,
                        "min_price": from_nano(offer.min_price_nano),
                        "min_price_nano": offer.min_price_nano}})
                elif path == "/api/market/withdraw":
                    parse_withdraw(body, content_type)
                    node.withdraw_offer()
                    await _json(send, 200, {"ok": True})
                elif path == "/api/market/requests":
                    submit = parse_submit(body, content_type, node.settings.market)
                    request = node.submit_request(submit.tokens, submit.max_price_nano,
                                                  tier=submit.tier, prompt=submit.prompt,
                                                  user=submit.user)
                    await _json(send, 202, {"request_id": request.request_id,
                                            "status": "pending", "tokens": request.tokens,
                                            "expires_at": request.expires_at})
                else:
                    raise InputError(404, f"no such endpoint: POST {path}")
            else:
                raise InputError(405, f"method {method} not allowed")
        except InputError as error:
            await _json(send, error.status, error.to_json())
        except MarketError as error:
            await _json(send, 409, {"error": str(error), "status": 409})
        except Exception:  # noqa: BLE001 - a bug answers 500, it does not stop the node
            log.exception("API error on %s %s", method, path)
            await _json(send, 500, {"error": "internal error (see the node's log)", "status": 500})

    return app


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _instant(scope: Scope) -> float | None:
    """`?at=<unix seconds>`: evaluate the market at that instant instead of now."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    unknown = sorted(set(query) - {"at"})
    if unknown:
        raise InputError(400, f"unknown query parameter {unknown[0]!r}; known: at", unknown[0])
    if "at" not in query:
        return None
    try:
        value = float(query["at"][-1])
    except ValueError:
        raise InputError(400, "at must be a number of seconds since the epoch", "at") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(400, "at must be a finite number of seconds >= 0", "at")
    return value


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _authorize(scope: Scope, node: "Node") -> None:
    header = _header(scope, b"authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InputError(401, "this endpoint needs 'Authorization: Bearer <token>' "
                              "(`neuroshard-node token` prints it)")
    if not hmac.compare_digest(token.strip().encode(), node.api_token.encode()):
        raise InputError(403, "wrong API token (`neuroshard-node token` prints the right one)")


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY:
            raise InputError(413, f"body is larger than {_MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _json(send: Send, status: int, body: Any) -> None:
    data = json.dumps(body, allow_nan=False).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": data})


async def _static(send: Send, path: str) -> None:
    name = "index.html" if path in ("/", "") else path.lstrip("/")
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in _STATIC_TYPES:
        raise InputError(404, f"no such page: {path}")
    try:
        data = resources.files("neuroshard_p2p.api").joinpath("static", name).read_bytes()
    except (FileNotFoundError, OSError):
        raise InputError(404, f"no such page: {path}") from None
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", _STATIC_TYPES[suffix].encode()),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


__all__ = ["create_app", "market_json", "node_json", "peers_json"]
