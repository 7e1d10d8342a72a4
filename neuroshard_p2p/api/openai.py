"""The OpenAI-compatible API: every node is an endpoint for its network (issue 16).

    GET  /v1/models              the model the network serves (its charter's)
    POST /v1/chat/completions    messages → a completion, streamed (SSE) or not
    POST /v1/completions         prompt → a completion, streamed (SSE) or not

The node is the gateway: the request's `max_tokens` (or `[node] openai_default_max_tokens`) is
the number of tokens it buys, its price cap is `provider.max_price.completion` (NEURO per 1M
tokens, OpenRouter's shape; `max_price` at the top level is the short form) or the node's
`openai_max_price` (0: the market's max_price), and the market price is locked at admission.
Streams go over job/2.1.0 (JobChunk frames) and come out as SSE chunks in order; a provider
without job/2.1.0 answers in one piece. A client that goes away cancels its request: the provider
stops and its receipt charges the tokens it served, which settle exactly as any other.

Every answer carries `usage` and the market's figures in the `neuroshard` field; every refusal is
OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with a status that says what
happened (docs/readme-api.md lists them). All endpoints need the node's bearer token or a
user's key from `<data-dir>/api_keys.toml` (whose requests are then that user's).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import tomllib
from pathlib import Path
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import trio

from neuroshard_p2p.api.inputs import InputError, parse_json_object
from neuroshard_p2p.config import ConfigError
from neuroshard_p2p.core.errors import MarketError, format_price
from neuroshard_p2p.money import from_nano, settle_amounts, to_nano
from neuroshard_p2p.node.backends import (
    SAMPLING_FIELDS,
    SamplingError,
    chat_prompt,
    check_sampling,
    sampling_prompt,
)
from neuroshard_p2p.wire.codec import MAX_PROMPT

if TYPE_CHECKING:
    from neuroshard_p2p.node.host import Node
    from neuroshard_p2p.node.job_service import Piece
    from neuroshard_p2p.node.jobs import JobStatus

log = logging.getLogger("neuroshard.api.openai")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: How long a request may wait for a provider to take it before the answer is 503: an HTTP
#: client waits for its first token, not for the market's request expiry (600 s).
QUEUE_WAIT_S = 30.0
#: Retry-After (seconds) on 429 and 503: the price moves once a tick, offers every few seconds.
RETRY_AFTER_S = 2
MAX_USER_BYTES = 128
#: Per-user keys for the /v1 endpoints: `[users]` name = "key" (node/datadir.py's data dir).
USER_KEYS_FILE = "api_keys.toml"
MIN_USER_KEY_CHARS = 16
ROLES = ("system", "developer", "user", "assistant", "tool")


class OpenAIError(Exception):
    """A refusal in OpenAI's shape: HTTP `status`, `type`, `code`, `param`, the message."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.type, "param": self.param,
                          "code": self.code}}

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after is None:
            return []
        return [(b"retry-after", str(self.retry_after).encode())]


@dataclass(frozen=True)
class CompletionRequest:
    """A checked /v1 request body."""

    chat: bool
    prompt: str                     # the Job's prompt (a chat prompt for chat)
    max_tokens: int
    max_price_nano: int | None      # None: the node's default
    stream: bool
    include_usage: bool
    user: str | None
    model: str
    #: The sampling settings the provider's backend gets (job/2.2.0): temperature, top_p, stop,
    #: seed, presence_penalty, frequency_penalty, as the request gave them (stop as a list).
    sampling: dict[str, Any] = field(default_factory=dict)


def _bad(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", code, param)


def _price_cap(data: dict[str, Any]) -> int | None:
    """`provider.max_price.completion` (OpenRouter's shape), `provider.max_price` as a number, or
    `max_price` at the top level: NEURO per 1M completion tokens → nano-NEURO. None: not given."""
    value: Any = None
    param = "max_price"
    provider = data.get("provider")
    if provider is not None:
        if not isinstance(provider, dict):
            raise _bad("provider must be an object, e.g. {\"max_price\": {\"completion\": 0.5}}",
                       "provider")
        cap = provider.get("max_price")
        if isinstance(cap, dict):
            value, param = cap.get("completion"), "provider.max_price.completion"
            if value is None:
                raise _bad("provider.max_price needs `completion` (NEURO per 1M completion "
                           "tokens); the market prices completion tokens only",
                           "provider.max_price")
        elif cap is not None:
            value, param = cap, "provider.max_price"
    if "max_price" in data:
        if value is not None:
            raise _bad("give the price cap once: provider.max_price or max_price", "max_price")
        value = data["max_price"]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"{param} must be a number (NEURO per 1M tokens)", param)
    nano = to_nano(float(value))
    if nano <= 0:
        raise _bad(f"{param} must be at least 0.000000001 NEURO (1 nano-NEURO) per 1M tokens",
                   param)
    return nano


def _content(message: Any, index: int) -> dict[str, str]:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _bad(f"{param} must be an object with role and content", param)
    role = message.get("role")
    if role not in ROLES:
        raise _bad(f"{param}.role must be one of {', '.join(ROLES)}, got {role!r}",
                   f"{param}.role")
    content = message.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise _bad(f"{param}.content: only text parts are served here",
                           f"{param}.content")
            parts.append(part["text"])
        text = "".join(parts)
    else:
        raise _bad(f"{param}.content must be a string or a list of text parts",
                   f"{param}.content")
    return {"role": role, "content": text}


#: Request fields the market cannot honour, and when a request uses them: refused, not ignored
#: (an agent that sends tools and gets plain text back would misread the answer).
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tools": (lambda v: bool(v), "tool calls are not offered: providers return text"),
    "functions": (lambda v: bool(v), "function calls are not offered: providers return text"),
    "response_format": (lambda v: not (isinstance(v, dict) and v.get("type") in (None, "text")),
                        "only text answers are offered (response_format type \"text\")"),
    "logprobs": (lambda v: v is True, "log probabilities are not returned"),
    "top_logprobs": (lambda v: v is not None and v != 0, "log probabilities are not returned"),
    "logit_bias": (lambda v: bool(v), "logit_bias is not passed to providers"),
}


def _sampling(data: dict[str, Any]) -> dict[str, Any]:
    """The request's sampling settings, checked as spec §9.2 checks them at the provider (a
    single `stop` string becomes a list of one; null means not set)."""
    sampling: dict[str, Any] = {}
    for name in SAMPLING_FIELDS:
        value = data.get(name)
        if value is None:
            continue
        if name == "stop" and isinstance(value, str):
            value = [value]
        if name == "seed" and isinstance(value, float) and value.is_integer():
            value = int(value)
        sampling[name] = value
    try:
        return check_sampling(sampling)
    except SamplingError as error:
        raise _bad(str(error), error.field) from None


def parse_completion(body: bytes, content_type: str | None, *, chat: bool, model: str,
                     default_max_tokens: int, max_tokens_limit: int) -> CompletionRequest:
    """Check a /v1/chat/completions or /v1/completions body. The sampling fields (temperature,
    top_p, stop, seed, presence_penalty, frequency_penalty) go to the provider's backend
    (job/2.2.0); fields the market cannot honour (tools, JSON answers, log probabilities,
    logit_bias) are refused, 400 `unsupported_parameter`; other fields are not used."""
    try:
        data = parse_json_object(body, content_type)
    except InputError as error:
        status = error.status if error.status in (413, 415) else 400
        raise OpenAIError(status, str(error), "invalid_request_error", None, error.field) from None
    asked = data.get("model", model)
    if not isinstance(asked, str):
        raise _bad("model must be a string", "model")
    if asked not in (model, ""):
        raise OpenAIError(404, f"model {asked!r} is not served on this network; it serves "
                               f"{model!r} (GET /v1/models)", "invalid_request_error",
                          "model_not_found", "model")
    n = data.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise _bad("n must be 1: one request buys one completion", "n")
    for name, (used, why) in UNSUPPORTED.items():
        if data.get(name) is not None and used(data[name]):
            raise _bad(f"{name}: {why}", name, "unsupported_parameter")
    sampling = _sampling(data)
    if chat:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("messages must be a non-empty list", "messages")
        prompt = chat_prompt([_content(m, i) for i, m in enumerate(messages)])
    else:
        raw = data.get("prompt")
        if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
            raw = raw[0]
        if not isinstance(raw, str):
            raise _bad("prompt must be a string (one prompt per request)", "prompt")
        if raw.startswith("\x00"):  # the mark of a chat prompt (node/backends.py)
            raise _bad("prompt must not start with a NUL character", "prompt")
        prompt = raw
    # As the Job carries it on job/2.2.0: the sampling header first (spec §9.2).
    size = len(sampling_prompt(sampling, prompt).encode("utf-8", "replace"))
    if size > MAX_PROMPT:
        raise _bad(f"the prompt is {size} bytes as the job carries it (limit {MAX_PROMPT})",
                   "messages" if chat else "prompt", "context_length_exceeded")
    tokens: Any = default_max_tokens
    for name in ("max_completion_tokens", "max_tokens"):
        if data.get(name) is not None:
            tokens, param = data[name], name
            if isinstance(tokens, float) and tokens.is_integer():
                tokens = int(tokens)
            if isinstance(tokens, bool) or not isinstance(tokens, int) or not (
                    1 <= tokens <= max_tokens_limit):
                raise _bad(f"{name} must be an integer 1..{max_tokens_limit}, got {tokens!r}",
                           param)
            break
    stream = data.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise _bad("stream must be true or false", "stream")
    options = data.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options must be an object", "stream_options")
    user = data.get("user")
    if user is not None:
        if not isinstance(user, str) or not user.strip() or len(
                user.encode("utf-8", "replace")) > MAX_USER_BYTES:
            raise _bad(f"user must be a non-blank string of at most {MAX_USER_BYTES} bytes",
                       "user")
    return CompletionRequest(chat=chat, prompt=prompt, max_tokens=tokens,
                             max_price_nano=_price_cap(data), stream=bool(stream),
                             include_usage=bool(options.get("include_usage")), user=user,
                             model=model, sampling=sampling)


class ApiToken:
    """The token API writes must carry, read through `read` at every check (so `neuroshard-node
    token --rotate` takes effect at once). When its file cannot give one (deleted, emptied,
    unreadable: `read` raises ConfigError saying which), `expected` raises InputError 503: every
    write is refused, with the reason, until the file is mended. Logged once per reason."""

    def __init__(self, read: Callable[[], str]) -> None:
        self.read = read
        self._problem = ""

    def expected(self) -> str:
        try:
            token = self.read()
        except ConfigError as exc:
            if str(exc) != self._problem:
                self._problem = str(exc)
                log.error("API writes refused: %s", exc)
            raise InputError(503, f"this node cannot check API tokens: {exc}") from None
        self._problem = ""
        return token

    def problem(self) -> str | None:
        """Why the token file cannot give a token now, or None when it can (no log line)."""
        try:
            self.read()
        except ConfigError as exc:
            return str(exc)
        return None


class OpenAIApi:
    """The /v1 endpoints of one node's API (`api.app.Api` routes every /v1 path here)."""

    def __init__(self, node: "Node", token: ApiToken) -> None:
        self.node = node
        self.token = token
        self._keys_read: tuple[float, dict[str, str]] = (-1.0, {})

    def user_keys(self) -> dict[str, str]:
        """key → user name from `<data-dir>/api_keys.toml` (`[users]` name = "key"), read again
        when the file changes. A missing or broken file gives no keys (logged once)."""
        path = Path(self.node.settings.data_dir) / USER_KEYS_FILE
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return {}
        if mtime == self._keys_read[0]:
            return self._keys_read[1]
        keys: dict[str, str] = {}
        try:
            users = tomllib.loads(path.read_text("utf-8")).get("users", {})
            for name, key in users.items():
                if (isinstance(key, str) and len(key) >= MIN_USER_KEY_CHARS
                        and 0 < len(name.encode()) <= MAX_USER_BYTES):
                    keys[key] = name
                else:
                    log.warning("%s: user %r skipped (keys need %d characters or more)",
                                path, name, MIN_USER_KEY_CHARS)
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("%s is unreadable (%s); no per-user keys", path, exc)
        self._keys_read = (mtime, keys)
        return keys

    @property
    def model(self) -> str:
        return self.node.settings.charter.model

    async def __call__(self, method: str, path: str, headers: dict[bytes, str], body: bytes,
                       receive: Receive, send: Send) -> None:
        try:
            user = self._authorize(headers)
            if path == "/v1/models":
                if method != "GET":
                    raise OpenAIError(405, f"{method} is not allowed on {path}; use GET")
                await _reply(send, 200, self.models())
            elif path.startswith("/v1/models/"):
                if method != "GET":
                    raise OpenAIError(405, f"{method} is not allowed on {path}; use GET")
                await _reply(send, 200, self.model_object(path[len("/v1/models/"):]))
            elif path in ("/v1/chat/completions", "/v1/completions"):
                if method != "POST":
                    raise OpenAIError(405, f"{method} is not allowed on {path}; use POST")
                await self.complete(path == "/v1/chat/completions", headers, body, receive, send,
                                    user)
            else:
                raise OpenAIError(404, f"no such endpoint: {method} {path}",
                                  code="unknown_url")
        except OpenAIError as error:
            await _reply(send, error.status, error.body(), error.headers())

    def _authorize(self, headers: dict[bytes, str]) -> str | None:
        """The node's token (None: the request may name its user) or a user's key (that user's
        name: every request made with it is theirs in the ledgers)."""
        scheme, _, token = headers.get(b"authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise OpenAIError(401, "this endpoint needs 'Authorization: Bearer <token>' (the "
                                   "node's API token: `neuroshard-node token` prints it)",
                              "authentication_error", "missing_api_key")
        given = token.strip().encode()
        try:
            own = self.token.expected()
        except InputError as exc:
            raise OpenAIError(exc.status, str(exc), "server_error",
                              "api_token_unreadable") from None
        if hmac.compare_digest(given, own.encode()):
            return None
        user = None
        for key, name in self.user_keys().items():
            if hmac.compare_digest(given, key.encode()):
                user = name
        if user is None:
            raise OpenAIError(401, "wrong API key (`neuroshard-node token` prints this node's; "
                                   f"users' keys are in <data-dir>/{USER_KEYS_FILE})",
                              "authentication_error", "invalid_api_key")
        return user

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_object(self.model)]}

    def model_object(self, model: str) -> dict[str, Any]:
        """`GET /v1/models/{model}` (what `client.models.retrieve` asks): the network's model,
        or 404 for any other."""
        if model != self.model:
            raise OpenAIError(404, f"model {model!r} is not served on this network; it serves "
                                   f"{self.model!r}", "invalid_request_error", "model_not_found",
                              "model")
        return {"id": self.model, "object": "model", "created": 0,
                "owned_by": f"neuroshard:{self.node.settings.network}"}

    # -- completions ------------------------------------------------------------------------

    def _admit(self, request: CompletionRequest) -> tuple[int, int]:
        """(price cap, price now) or the refusal: above the cap (402), no capacity (503)."""
        node = self.node
        market = node.settings.market
        cap = request.max_price_nano
        if cap is None:
            cap = to_nano(node.settings.openai_max_price) or to_nano(market.max_price)
        now = node.now()
        price = node.jobs.price_nano(now)
        if price > cap:
            raise OpenAIError(402, f"the market price now, {format_price(price, 9)} NEURO per 1M "
                                   f"tokens, is above your cap {format_price(cap, 9)} "
                                   f"(provider.max_price.completion)", "price_error",
                              "price_above_max_price", "provider.max_price.completion")
        own = node.engine.signer
        others = [o for o in node.engine.view.offers_at(now) if o.signer != own]
        if not any(o.min_price_nano <= price for o in others):
            raise OpenAIError(503, self._why_no_capacity(others, price), "service_unavailable",
                              "no_capacity", retry_after=RETRY_AFTER_S)
        return cap, price

    def _why_no_capacity(self, others: list[Any], price: int) -> str:
        """Why no provider can take a request now, in the terms an operator can act on."""
        node = self.node
        if others:
            lowest = min(o.min_price_nano for o in others)
            return (f"{len(others)} provider(s) on network {node.settings.network} offer "
                    f"capacity, none at or below the price {format_price(price, 9)} now (the "
                    f"lowest asks {format_price(lowest)} NEURO per 1M tokens)")
        text = f"no other node on network {node.settings.network} offers capacity now"
        if node.engine.offer.tokens_per_second > 0:
            text += (" (this node's own capacity serves other gateways' requests, never its "
                     "own: a buyer needs a provider on another node)")
        elif node.peer_count == 0:
            text += " (this node has no peers: see `neuroshard-node peers`)"
        return text

    async def complete(self, chat: bool, headers: dict[bytes, str], body: bytes,
                       receive: Receive, send: Send, key_user: str | None = None) -> None:
        node = self.node
        request = parse_completion(
            body, headers.get(b"content-type"), chat=chat, model=self.model,
            default_max_tokens=node.settings.openai_default_max_tokens,
            max_tokens_limit=node.settings.market.max_tokens_per_minute)
        if key_user is not None:
            if request.user not in (None, key_user):
                raise OpenAIError(403, f"this key is {key_user!r}'s; it cannot buy for "
                                       f"{request.user!r}", "permission_error",
                                  "user_mismatch", "user")
            request = replace(request, user=key_user)
        cap, _ = self._admit(request)
        try:
            status, pieces = node.jobs.submit_streamed(request.max_tokens, cap,
                                                       prompt=request.prompt, user=request.user,
                                                       sampling=request.sampling)
        except MarketError as error:
            text = str(error)
            if text.startswith("current price"):
                raise OpenAIError(402, text, "price_error", "price_above_max_price",
                                  "provider.max_price.completion") from None
            if text.startswith("this gateway holds"):
                raise OpenAIError(429, text, "rate_limit_error", "rate_limit_exceeded",
                                  retry_after=RETRY_AFTER_S) from None
            raise _bad(text) from None
        rid = status.request_id
        created = int(node.now())
        answer = _Answer(self, request, rid, created, send)
        refusal: OpenAIError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_client, receive, rid, nursery.cancel_scope)
            try:
                await answer.run(pieces)
            except OpenAIError as error:  # raised outside the nursery, not in a group
                refusal = error
            finally:
                pieces.close()
                nursery.cancel_scope.cancel()
        if refusal is not None:
            raise refusal

    async def _watch_client(self, receive: Receive, rid: str, scope: trio.CancelScope) -> None:
        """The client went away (http.disconnect): cancel its request; the answer stops. A
        disconnect once the answer is whole (every finished request ends with one) cancels
        nothing and is not logged."""
        while (await receive())["type"] != "http.disconnect":
            pass
        if self.node.jobs.cancel(rid, "the client went away"):
            log.info("client of %s went away; cancelling it", rid)
        scope.cancel()

    def market_fields(self, status: "JobStatus", request: CompletionRequest) -> dict[str, Any]:
        """The `neuroshard` extension field of an answer: what the market did, and whether the
        request's sampling settings reached the provider's backend (`sampling`: "none" when it
        set none, "sent" on job/2.2.0, "not_sent" to a provider without it)."""
        config = self.node.settings.market
        served = status.tokens_served or 0
        settled = settle_amounts(served, status.locked_price_nano, config.burn_rate)
        return {
            "request_id": status.request_id, "network": self.node.settings.network,
            "provider": status.provider, "state": status.state,
            "tokens_requested": status.tokens, "tokens_served": served,
            "locked_price_nano": status.locked_price_nano,
            "locked_price": from_nano(status.locked_price_nano),
            "max_price_nano": status.max_price_nano,
            "cost_nano": status.cost_nano if status.cost_nano is not None else 0,
            "burn_nano": settled.burned if status.state == "completed" else 0,
            "provider_earned_nano": settled.earned if status.state == "completed" else 0,
            "attempts": status.attempts, "reason": status.reason,
            "sampling": ("none" if not request.sampling else
                         "sent" if self.node.jobs.sampling_sent(status.request_id)
                         else "not_sent"),
        }


class _Answer:
    """One completion's answer: SSE chunks as pieces arrive, or one JSON body at the end."""

    def __init__(self, api: OpenAIApi, request: CompletionRequest, rid: str, created: int,
                 send: Send) -> None:
        self.api = api
        self.request = request
        self.rid = rid
        self.created = created
        self.send = send
        self.id = ("chatcmpl-" if request.chat else "cmpl-") + rid
        self.object = "chat.completion" if request.chat else "text_completion"

    async def _first(self, pieces: "trio.MemoryReceiveChannel[Piece]") -> "Piece | None":
        """The first piece; a request no provider took within QUEUE_WAIT_S is cancelled (503)."""
        jobs = self.api.node.jobs
        waited_until = trio.current_time() + QUEUE_WAIT_S
        while True:
            with trio.move_on_at(waited_until):
                try:
                    return await pieces.receive()
                except trio.EndOfChannel:
                    return None
            status = jobs.status(self.rid)
            if status is not None and status.state == "pending":
                jobs.cancel(self.rid, f"no provider took it within {QUEUE_WAIT_S:g} s")
                raise OpenAIError(503, f"no provider took the request within "
                                       f"{QUEUE_WAIT_S:g} s ({status.reason})",
                                  "service_unavailable", "no_capacity",
                                  retry_after=RETRY_AFTER_S)
            waited_until = math.inf  # being served: the job's own deadlines bound it

    def _failure(self, status: "JobStatus | None") -> OpenAIError:
        if status is None:
            return OpenAIError(500, "the request was lost (see the node's log)", "server_error")
        if status.state == "expired":
            return OpenAIError(503, f"request expired: {status.reason}", "service_unavailable",
                               "no_capacity", retry_after=RETRY_AFTER_S)
        return OpenAIError(502, f"request failed: {status.reason}", "upstream_error",
                           "provider_error")

    async def run(self, pieces: "trio.MemoryReceiveChannel[Piece]") -> None:
        jobs = self.api.node.jobs
        first = await self._first(pieces)
        if not self.request.stream:
            parts = [] if first is None or first.accepted else [first.text]
            async for piece in pieces:
                if not piece.accepted:
                    parts.append(piece.text)
            status = jobs.status(self.rid)
            if status is None or status.state != "completed":
                raise self._failure(status)
            await _reply(self.send, 200, self._body("".join(parts), status))
            return
        piece = first
        if piece is not None and piece.accepted:
            # A provider took it: the answer begins now, so the headers are not on the first
            # token's way (a failure from here on is an SSE error event, as in OpenAI's API).
            await self._start()
            piece = await _next(pieces)
        elif piece is None:
            status = jobs.status(self.rid)
            if status is None or status.state != "completed":
                raise self._failure(status)
            await self._start()
        else:
            await self._start()
        # The role chunk and the first piece leave in one write: the first token is not held
        # behind a separate send.
        opening = [self._chunk({"role": "assistant", "content": ""}, None)] if self.request.chat \
            else []
        while piece is not None:
            if piece.text or opening:
                await self._events(opening + ([self._chunk(piece.text, None)]
                                              if piece.text else []))
                opening = []
            piece = await _next(pieces)
        if opening:
            await self._events(opening)
        status = jobs.status(self.rid)
        if status is None or status.state != "completed":
            error = self._failure(status)
            await self._event(error.body())
        else:
            last = self._chunk(None, self._finish(status))
            last["neuroshard"] = self.api.market_fields(status, self.request)
            await self._event(last)
            if self.request.include_usage:
                await self._event({"id": self.id, "object": self._chunk_object, "created":
                                   self.created, "model": self.request.model, "choices": [],
                                   "usage": _usage(status),
                                   "neuroshard": self.api.market_fields(status, self.request)})
        await self.send({"type": "http.response.body", "body": b"data: [DONE]\n\n",
                         "more_body": False})

    async def _start(self) -> None:
        await self.send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"), (b"x-accel-buffering", b"no")]})

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.request.chat else "text_completion"

    def _chunk(self, delta: Any, finish: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if self.request.chat:
            if isinstance(delta, dict):
                choice["delta"] = delta
            else:
                choice["delta"] = {} if delta is None else {"content": delta}
        else:
            choice["text"] = delta or ""
            choice["logprobs"] = None
        return {"id": self.id, "object": self._chunk_object, "created": self.created,
                "model": self.request.model, "choices": [choice]}

    async def _event(self, payload: dict[str, Any]) -> None:
        await self._events([payload])

    async def _events(self, payloads: list[dict[str, Any]]) -> None:
        data = b"".join(b"data: " + json.dumps(p, ensure_ascii=False).encode() + b"\n\n"
                        for p in payloads)
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    def _finish(self, status: "JobStatus") -> str:
        return "length" if (status.tokens_served or 0) >= status.tokens else "stop"

    def _body(self, text: str, status: "JobStatus") -> dict[str, Any]:
        finish = self._finish(status)
        if self.request.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant",
                                                              "content": text},
                                      "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return {"id": self.id, "object": self.object, "created": self.created,
                "model": self.request.model, "choices": [choice], "usage": _usage(status),
                "neuroshard": self.api.market_fields(status, self.request)}


def _usage(status: "JobStatus") -> dict[str, int]:
    """OpenAI's usage: the market sells completion tokens; the prompt is not counted (0)."""
    served = status.tokens_served or 0
    return {"prompt_tokens": 0, "completion_tokens": served, "total_tokens": served}


async def _next(pieces: "trio.MemoryReceiveChannel[Piece]") -> "Piece | None":
    """The next piece of output (markers skipped), or None when the request has ended."""
    while True:
        try:
            piece = await pieces.receive()
        except trio.EndOfChannel:
            return None
        if not piece.accepted:
            return piece


async def _reply(send: Send, status: int, body: dict[str, Any],
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body, ensure_ascii=False).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
        (b"cache-control", b"no-store"), *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


__all__ = ["ApiToken", "OpenAIApi", "OpenAIError", "CompletionRequest", "parse_completion",
           "QUEUE_WAIT_S", "RETRY_AFTER_S"]
