"""Strict validation of what HTTP clients send: JSON bodies, path ids and query parameters.

Every function here either returns a small frozen value the app can act on, or raises
`InputError` carrying the HTTP status and a message a person can act on ("tokens must be an
integer >= 1, got -5"). Nothing here touches the node, so a bad request is refused before any
state could change. The checks are strict on purpose: unknown fields, booleans where numbers are
expected, NaN/Infinity, duplicate keys and nesting too deep for the parser are all refused rather
than guessed at, because a guess here would move money.

Prices arrive in NEURO per 1M tokens (the seed's API: `{"min_price": 0.0}`) and leave as integer
nano-NEURO, the unit everything behind the API works in.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.money import to_nano
from neuroshard_p2p.wire.messages import TIERS

#: Largest request body accepted, in bytes. A job's prompt is capped at 64 KiB of UTF-8 on the wire;
#: a client that escapes non-ASCII (12 bytes of \\uXXXX escapes per 4-byte character) triples
#: that, and nothing else we accept is more than a few hundred bytes.
MAX_BODY_BYTES = 256 * 1024
#: Bytes of UTF-8 in a prompt (the wire's MAX_PROMPT) and in a user name (the wire's MAX_STR).
MAX_PROMPT_BYTES = 64 * 1024
MAX_USER_BYTES = 128
#: Highest price anyone may name, NEURO per 1M tokens. Keeps nano-NEURO amounts far inside the
#: wire's 63-bit integers; no sane market gets near it.
MAX_PRICE_NEURO = 1_000_000.0
#: Request ids are made by the node; anything else in the path is refused before a lookup.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
#: History windows the API serves, in seconds.
HISTORY_WINDOWS: dict[str, float] = {"1h": 3600.0, "24h": 86400.0}

JSON_CONTENT_TYPES = ("application/json",)


class InputError(ValueError):
    """A client sent something we refuse. `status` is the HTTP status to answer with, `field` the
    offending field if there is one; str(error) says what is wrong and how to fix it."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field

    def to_json(self) -> dict[str, Any]:
        """The JSON error body: `{"error": ..., "status": ..., "field": ...}`."""
        body: dict[str, Any] = {"error": str(self), "status": self.status}
        if self.field is not None:
            body["field"] = self.field
        return body


@dataclass(frozen=True)
class RegisterCapacity:
    """`POST /api/market/register`: offer this much capacity at no less than this price."""

    tokens_per_second: int
    min_price_nano: int


@dataclass(frozen=True)
class SubmitRequest:
    """`POST /api/market/requests`: buy `tokens` of inference at no more than `max_price_nano`."""

    tokens: int
    max_price_nano: int
    tier: str
    prompt: str
    user: str | None


# ---------------------------------------------------------------------------------------------
# JSON bodies


def _reject_constant(name: str) -> Any:
    raise InputError(400, f"body is not valid JSON: {name} is not a number JSON allows")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InputError(400, f"body is not valid JSON for us: key {key!r} appears twice", key)
        result[key] = value
    return result


def _check_content_type(content_type: str | None) -> None:
    """A body must be declared JSON (or not declared at all, for hand-typed curl calls that omit
    the header); a form or text body is refused, so `curl -d` without `-H` gets told why."""
    if content_type is None or content_type.strip() == "":
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media in JSON_CONTENT_TYPES or media.endswith("+json"):
        return
    raise InputError(415, f"body must be JSON: send 'Content-Type: application/json' "
                          f"(got {media!r})")


def parse_json_object(body: bytes, content_type: str | None = None, *,
                      allow_empty: bool = False) -> dict[str, Any]:
    """Decode a request body that must be one JSON object.

    `allow_empty` lets an endpoint without parameters (withdraw) accept no body at all, as in the
    seed's `curl -X POST .../withdraw`; an empty body then reads as `{}`.
    """
    if len(body) > MAX_BODY_BYTES:
        raise InputError(413, f"body is {len(body)} bytes (limit {MAX_BODY_BYTES})")
    if body.strip() == b"":
        if allow_empty:
            return {}
        raise InputError(400, "body is empty: send a JSON object")
    _check_content_type(content_type)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(400, f"body is not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant,
                           object_pairs_hook=_object_without_duplicates)
    except InputError:
        raise
    except json.JSONDecodeError as exc:
        raise InputError(400, f"body is not valid JSON: {exc.msg} at line {exc.lineno} "
                              f"column {exc.colno}") from None
    except RecursionError:
        raise InputError(400, "body is not valid JSON for us: nested too deeply") from None
    if not isinstance(value, dict):
        raise InputError(422, f"body must be a JSON object, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _only_known(data: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InputError(422, f"unknown field{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(repr(k) for k in unknown)}; known: {', '.join(known)}",
                         unknown[0])


def _integer(data: Mapping[str, Any], name: str, *, minimum: int, maximum: int,
             default: int | None = None) -> int:
    if name not in data:
        if default is None:
            raise InputError(422, f"{name} is required (an integer {minimum}..{maximum})", name)
        return default
    value = data[name]
    # JSON writes 1000.0 for some clients' integers; accept an integral float, refuse 1000.5.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(422, f"{name} must be an integer, got {_json_type(value)}", name)
    if not minimum <= value <= maximum:
        raise InputError(422, f"{name} must be an integer {minimum}..{maximum}, got {value}", name)
    return value


def _price(data: Mapping[str, Any], name: str, *, minimum: float, exclusive_minimum: bool,
           maximum: float, default: float | None = None, why_max: str = "") -> int:
    """A price in NEURO per 1M tokens → integer nano-NEURO per 1M tokens."""
    if name not in data:
        if default is None:
            raise InputError(422, f"{name} is required (NEURO per 1M tokens)", name)
        return to_nano(default)
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(422, f"{name} must be a number (NEURO per 1M tokens), "
                              f"got {_json_type(value)}", name)
    value = float(value)
    if not math.isfinite(value):
        raise InputError(422, f"{name} must be finite", name)
    too_low = value <= minimum if exclusive_minimum else value < minimum
    if too_low:
        bound = f"> {minimum}" if exclusive_minimum else f">= {minimum}"
        raise InputError(422, f"{name} must be {bound} NEURO per 1M tokens, got {value}", name)
    if value > maximum:
        raise InputError(422, f"{name} must be <= {maximum} NEURO per 1M tokens, got {value}"
                              f"{why_max}", name)
    nano = to_nano(value)
    if exclusive_minimum and nano <= to_nano(minimum):
        # Positive, but it rounds to nothing in the integer units behind the API.
        raise InputError(422, f"{name} {value:g} is less than the smallest price, 0.000000001 "
                              f"NEURO (1 nano-NEURO) per 1M tokens", name)
    return nano


def _text(data: Mapping[str, Any], name: str, *, max_bytes: int, default: str | None) -> str | None:
    if name not in data:
        return default
    value = data[name]
    if not isinstance(value, str):
        raise InputError(422, f"{name} must be a string, got {_json_type(value)}", name)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InputError(422, f"{name} contains a lone surrogate; send valid Unicode", name) from None
    if size > max_bytes:
        raise InputError(422, f"{name} is {size} bytes of UTF-8 (limit {max_bytes})", name)
    return value


# ---------------------------------------------------------------------------------------------
# The endpoints' bodies

REGISTER_FIELDS = ("tokens_per_second", "min_price")
SUBMIT_FIELDS = ("tokens", "max_price", "tier", "prompt", "user")


def parse_register(body: bytes, content_type: str | None, config: MarketConfig) -> RegisterCapacity:
    """`{"tokens_per_second": 1000, "min_price": 0.0}` — tokens per second is required (1 up to
    the market's per-node limit); min_price defaults to 0 and may not exceed the market's
    max_price, since such capacity could never be matched."""
    data = parse_json_object(body, content_type)
    _only_known(data, REGISTER_FIELDS)
    tokens_per_second = _integer(data, "tokens_per_second", minimum=1,
                                 maximum=config.max_node_tokens_per_s)
    min_price_nano = _price(data, "min_price", minimum=0.0, exclusive_minimum=False,
                            maximum=config.max_price, default=0.0,
                            why_max=" (the market's max_price: a higher floor never matches)")
    return RegisterCapacity(tokens_per_second=tokens_per_second, min_price_nano=min_price_nano)


def parse_revocations(body: bytes, content_type: str | None) -> bytes:
    """`{"list": "<hex>"}` — an authority's signed revocation list (`neuroshard-node member
    revoke` writes it); the node checks it like gossip before it publishes it."""
    data = parse_json_object(body, content_type)
    _only_known(data, ("list",))
    text = data.get("list")
    if not isinstance(text, str) or not text:
        raise InputError(400, "list must be the hex of a signed revocation list")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InputError(400, "list is not hex") from None


def parse_withdraw(body: bytes, content_type: str | None) -> None:
    """Withdraw takes no parameters: no body, or `{}`."""
    data = parse_json_object(body, content_type, allow_empty=True)
    _only_known(data, ())


def parse_submit(body: bytes, content_type: str | None, config: MarketConfig) -> SubmitRequest:
    """`{"tokens": 5000, "max_price": 0.5, "tier": "standard", "prompt": "...", "user": "..."}` —
    tokens (1 up to the per-minute limit) and max_price (> 0) are required; tier defaults to
    "standard", prompt to "", user to the node's own name."""
    data = parse_json_object(body, content_type)
    _only_known(data, SUBMIT_FIELDS)
    tokens = _integer(data, "tokens", minimum=1, maximum=config.max_tokens_per_minute)
    max_price_nano = _price(data, "max_price", minimum=0.0, exclusive_minimum=True,
                            maximum=MAX_PRICE_NEURO)
    tier = data.get("tier", "standard")
    if not isinstance(tier, str) or tier not in TIERS:
        raise InputError(422, f"tier must be one of {', '.join(TIERS)}, got {tier!r}", "tier")
    prompt = _text(data, "prompt", max_bytes=MAX_PROMPT_BYTES, default="")
    user = _text(data, "user", max_bytes=MAX_USER_BYTES, default=None)
    if user is not None and user.strip() == "":
        raise InputError(422, "user must not be blank", "user")
    assert prompt is not None
    return SubmitRequest(tokens=tokens, max_price_nano=max_price_nano, tier=tier, prompt=prompt,
                         user=user)


# ---------------------------------------------------------------------------------------------
# Paths and query strings


def parse_request_id(raw: str) -> str:
    """A request id from the path; anything that is not an id we could have issued is a 404."""
    if not REQUEST_ID_PATTERN.match(raw):
        raise InputError(404, f"no request with id {raw[:64]!r}", "id")
    return raw


def parse_history_window(query: Mapping[str, list[str]]) -> tuple[str, float]:
    """`?window=1h|24h` (default 1h) → (name, seconds). Unknown parameters are refused."""
    _only_known_query(query, ("window",))
    values = query.get("window", ["1h"])
    if len(values) != 1:
        raise InputError(400, "window given more than once", "window")
    name = values[0]
    if name not in HISTORY_WINDOWS:
        raise InputError(400, f"window must be one of {', '.join(HISTORY_WINDOWS)}, got {name!r}",
                         "window")
    return name, HISTORY_WINDOWS[name]


def _only_known_query(query: Mapping[str, list[str]], known: tuple[str, ...]) -> None:
    unknown = sorted(set(query) - set(known))
    if unknown:
        allowed = f"; known: {', '.join(known)}" if known else "; this endpoint takes none"
        raise InputError(400, f"unknown query parameter {unknown[0]!r}{allowed}", unknown[0])


__all__ = [
    "InputError", "RegisterCapacity", "SubmitRequest", "MAX_BODY_BYTES", "HISTORY_WINDOWS",
    "parse_json_object", "parse_register", "parse_withdraw", "parse_submit", "parse_request_id",
    "parse_history_window",
]
