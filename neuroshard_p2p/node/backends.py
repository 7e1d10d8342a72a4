"""Inference backends: what a provider actually runs when it accepts a job.

One small interface, `InferenceBackend.serve(prompt, max_tokens, deadline)` (and, for job/2.1.0,
`serve_stream(prompt, max_tokens, deadline, emit)`, which hands each piece of output to `emit` as
it is produced), and two drivers:

- `SyntheticBackend` (the default) produces the requested tokens at the node's announced rate.
  Jobs queue behind one another (first come, first served), so the backend never delivers more than
  `tokens_per_second` in aggregate — the same capacity the node announces and admits jobs against.
- `OpenAIBackend` forwards the prompt to any OpenAI-compatible HTTP server (llama.cpp server, vLLM,
  Ollama) and counts the tokens it served from the response's `usage.completion_tokens`.

Every failure — unreachable server, non-200 answer, malformed JSON, missing usage, timeout — comes
out as one `BackendError` with a stable `reason` code and a message a person can read; nothing
else escapes and nothing hangs past the deadline. Deadlines are absolute times on trio's clock
(`trio.current_time()`), so a job stream's deadline passes straight through to the backend.

This is a driver, not core: it reads trio's clock and sleeps.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol, runtime_checkable
from urllib.parse import urlsplit

import trio

from neuroshard_p2p.node.http1 import Http1Client, TransportError
from neuroshard_p2p.node.settings import BACKEND_KINDS

#: Largest response body accepted from an OpenAI-compatible server. A completion is text; a body
#: larger than this is a misconfigured or hostile server, not an answer.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024

#: Longest text the synthetic backend returns, whatever the token count (it is filler).
SYNTHETIC_MAX_WORDS = 1000

_FILLER = ("the", "market", "routes", "tokens", "to", "providers", "at", "a", "locked", "price")


@dataclass(frozen=True)
class BackendResult:
    """What a backend served for one job: the token count the receipt carries, and the text."""

    tokens_served: int
    text: str
    model: str = ""
    finish_reason: str = ""


#: Why a backend failed, short stable codes (for counters; the job stream sends `backend_<reason>`).
TIMEOUT = "timeout"            # the server did not answer in time
UNREACHABLE = "unreachable"    # no connection to the server
HTTP_STATUS = "http_status"    # the server answered with a status other than 200
BAD_RESPONSE = "bad_response"  # the answer is not a usable completion
DEADLINE = "deadline"          # the job cannot be finished before its deadline
BAD_REQUEST = "bad_request"    # the job itself is unusable (tokens, deadline, prompt)
REASONS = (TIMEOUT, UNREACHABLE, HTTP_STATUS, BAD_RESPONSE, DEADLINE, BAD_REQUEST)
#: How long `OpenAIBackend.reachable` waits for a connection.
REACHABLE_TIMEOUT_S = 5.0


class BackendError(Exception):
    """The backend could not serve a job. `reason` is one of `REASONS` (a short stable code, like
    every other error's `reason`); `message` (also `str(error)`) is for people: it is sent to the
    gateway and shown in the request's status."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown backend error reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"BackendError({self.reason!r}, {self.message!r})"


#: Where a streaming backend hands each piece of output: `await emit(text, tokens)`. It may block
#: (back-pressure: the gateway, or the user behind it, is slower than the backend).
Emit = Callable[[str, int], Awaitable[None]]

#: A prompt that starts with this is a chat (revision 2.1): the rest is the JSON array of the
#: request's messages, [{"role": ..., "content": ...}, ...]. Anything else is plain text.
CHAT_PROMPT_PREFIX = "\x00chat/1\n"


def chat_prompt(messages: list[dict[str, str]]) -> str:
    """The Job prompt that carries chat `messages` (job/2.1.0)."""
    return CHAT_PROMPT_PREFIX + json.dumps(messages, ensure_ascii=False, separators=(",", ":"))


def chat_messages(prompt: str) -> list[dict[str, str]] | None:
    """The messages of a chat prompt, or None if `prompt` is plain text (or a broken chat
    prompt, which is then served as the text it is)."""
    if not prompt.startswith(CHAT_PROMPT_PREFIX):
        return None
    try:
        messages = json.loads(prompt[len(CHAT_PROMPT_PREFIX):])
    except (ValueError, RecursionError):
        return None
    if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in messages)):
        return None
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def plain_prompt(prompt: str) -> str:
    """`prompt` as plain text: a chat prompt becomes a transcript ("role: content" lines, then
    "assistant:"), for a provider that reads only text (job/2.0.0) or a completions backend."""
    messages = chat_messages(prompt)
    if messages is None:
        return prompt
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


#: On job/2.2.0 (revision 2.1: sampling) every Job's prompt starts with this, then the sampling
#: header H (a JSON object on one line), a line feed, and the prompt of job/2.1.0 (spec §9.2).
SAMPLING_PREFIX = "\x00sampling/1\n"
#: The header's members: the OpenAI request fields a provider passes to its backend as they are.
SAMPLING_FIELDS = ("frequency_penalty", "presence_penalty", "seed", "stop", "temperature",
                   "top_p")
#: Inclusive ranges of the numeric members (OpenAI's).
SAMPLING_RANGES = {"temperature": (0, 2), "top_p": (0, 1), "presence_penalty": (-2, 2),
                   "frequency_penalty": (-2, 2)}
SEED_MIN, SEED_MAX = -2**63, 2**63 - 1
MAX_STOP_SEQUENCES = 4
MAX_STOP_BYTES = 256


class SamplingError(ValueError):
    """A sampling header or setting that breaks spec §9.2: `rule` is the first of S1–S6 it
    fails, `field` the member it names (None when the header as a whole is wrong)."""

    def __init__(self, rule: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.rule = rule
        self.field = field


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_sampling(sampling: Any) -> dict[str, Any]:
    """`sampling` if it is a header's object by S4–S6, checked in that order over all its
    members (every name, then every number, then `stop`); raises SamplingError naming the rule
    and the member."""
    if not isinstance(sampling, dict):
        raise SamplingError("S3", "the sampling header must be a JSON object")
    for name in sampling:
        if name not in SAMPLING_FIELDS:
            raise SamplingError("S4", f"{name!r} is not a sampling setting (one of "
                                      f"{', '.join(SAMPLING_FIELDS)})", name)
    for name, value in sampling.items():
        if name == "seed":
            if type(value) is not int or not SEED_MIN <= value <= SEED_MAX:
                raise SamplingError("S5", f"seed must be an integer {SEED_MIN}..{SEED_MAX}, "
                                          f"got {value!r}", name)
        elif name != "stop":
            low, high = SAMPLING_RANGES[name]
            if not _is_number(value) or not low <= value <= high:  # NaN fails the comparison
                raise SamplingError("S5", f"{name} must be a number {low}..{high}, got "
                                          f"{value!r}", name)
    if "stop" in sampling:
        value = sampling["stop"]
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_STOP_SEQUENCES:
            raise SamplingError("S6", f"stop must be 1 to {MAX_STOP_SEQUENCES} strings", "stop")
        for item in value:
            if not isinstance(item, str):
                raise SamplingError("S6", "each stop sequence must be a string", "stop")
            try:
                size = len(item.encode("utf-8"))
            except UnicodeEncodeError:
                raise SamplingError("S6", "a stop sequence must be valid UTF-8 text",
                                    "stop") from None
            if not 1 <= size <= MAX_STOP_BYTES:
                raise SamplingError("S6", f"each stop sequence must be 1 to {MAX_STOP_BYTES} "
                                          f"bytes of UTF-8, got {size}", "stop")
    return sampling


def sampling_prompt(sampling: dict[str, Any], prompt: str) -> str:
    """The Job prompt of job/2.2.0: the header (compact JSON, members sorted, text as it is),
    a line feed, then `prompt` (plain text or a chat prompt)."""
    header = json.dumps(check_sampling(sampling), ensure_ascii=False, separators=(",", ":"),
                        sort_keys=True, allow_nan=False)
    return SAMPLING_PREFIX + header + "\n" + prompt


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"member {name!r} appears twice")
        out[name] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _integer(text: str) -> int | float:
    """A JSON integer; one too long for int() (Python refuses over 4,300 digits) is out of every
    range, so it reads as an infinity and fails S5, not S3."""
    if len(text) > 40:
        return -math.inf if text.startswith("-") else math.inf
    return int(text)


def split_sampling(prompt: str) -> tuple[dict[str, Any], str]:
    """A job/2.2.0 prompt's sampling settings and the prompt after the header (S1–S6 of spec
    §9.2, first failure wins); raises SamplingError."""
    if not prompt.startswith(SAMPLING_PREFIX):
        raise SamplingError("S1", "a job/2.2.0 prompt must start with the sampling header")
    start = len(SAMPLING_PREFIX)
    end = prompt.find("\n", start)
    if end <= start:
        raise SamplingError("S2", "the sampling header must be a non-empty line")
    try:
        sampling = json.loads(prompt[start:end], object_pairs_hook=_unique_members,
                              parse_constant=_no_constant, parse_int=_integer)
    except (ValueError, RecursionError) as exc:
        raise SamplingError("S3", f"the sampling header is not one JSON object: {exc}") from None
    if not isinstance(sampling, dict):
        raise SamplingError("S3", "the sampling header must be a JSON object")
    return check_sampling(sampling), prompt[end + 1:]


@runtime_checkable
class InferenceBackend(Protocol):
    """What a provider serves jobs with."""

    #: "synthetic", "openai", …: shown in status and logs.
    kind: str

    async def serve(self, prompt: str, max_tokens: int, deadline: float) -> BackendResult:
        """Serve `prompt`, producing at most `max_tokens` tokens, finishing before `deadline`
        (absolute, trio clock). Raises `BackendError` on any failure, never anything else."""
        ...

    async def aclose(self) -> None:
        """Release connections. Safe to call more than once."""
        ...


async def serve_stream(backend: InferenceBackend, prompt: str, max_tokens: int, deadline: float,
                       emit: Emit, sampling: dict[str, Any] | None = None) -> BackendResult:
    """Serve through `backend`'s own `serve_stream` when it has one (with the buyer's
    `sampling` settings, job/2.2.0), else in one piece (its whole output, as one emit counting
    every token it charges; a backend without streaming has no sampling settings either)."""
    streaming = getattr(backend, "serve_stream", None)
    if streaming is not None:
        result: BackendResult = await streaming(prompt, max_tokens, deadline, emit,
                                                sampling=sampling)
        return result
    result = await backend.serve(plain_prompt(prompt), max_tokens, deadline)
    await emit(result.text, result.tokens_served)
    return result


def _check_request(max_tokens: int, deadline: float) -> None:
    if type(max_tokens) is not int or max_tokens <= 0:
        raise BackendError(BAD_REQUEST,
                           f"max_tokens must be a positive integer, got {max_tokens!r}")
    if not isinstance(deadline, (int, float)) or math.isnan(deadline):
        raise BackendError(BAD_REQUEST,
                           f"deadline must be a time on trio's clock, got {deadline!r}")


class _Slot:
    """One job's place in the synthetic backend's queue: it is served over [start, finish)."""

    __slots__ = ("start", "finish")

    def __init__(self, start: float, finish: float) -> None:
        self.start = start
        self.finish = finish


#: Shortest time between two pieces the synthetic backend streams.
STREAM_INTERVAL_S = 0.005


def _filler(first: int, end: int) -> str:
    """The synthetic text of tokens [first, end): one filler word per token, none past
    SYNTHETIC_MAX_WORDS."""
    words = [_FILLER[i % len(_FILLER)] for i in range(first, min(end, SYNTHETIC_MAX_WORDS))]
    return "".join(("" if i == 0 else " ") + w for i, w in enumerate(words, start=first))


class SyntheticBackend:
    """Produces exactly `max_tokens` tokens at `tokens_per_second`, shared by all jobs in FIFO
    order: a job that arrives while others are being served finishes after them. It refuses at
    once (reason "deadline") a job it could not finish before its deadline, instead of sleeping
    until the deadline only to fail.

    A job that is cancelled (its gateway gave up, or stopped paying attention) leaves the queue at
    once, wherever it stands in it: every job behind it moves up by the time it had not used, and
    wakes that much earlier. (An unpaid 20,000-token job cancelled at the head of the queue does
    not keep an honest 50-token job waiting for its whole duration.)"""

    kind = "synthetic"

    def __init__(self, tokens_per_second: float) -> None:
        if not (isinstance(tokens_per_second, (int, float)) and math.isfinite(tokens_per_second)
                and tokens_per_second > 0):
            raise ValueError(f"tokens_per_second must be > 0, got {tokens_per_second!r}")
        self.tokens_per_second = float(tokens_per_second)
        # The jobs admitted and not yet finished, in serving order (trio clock).
        self._queue: list[_Slot] = []
        # Set (and replaced) whenever a cancelled job moved the ones behind it up.
        self._moved = trio.Event()
        #: Jobs handed to `serve` (refused ones included): what a test checks to prove that a
        #: job never reached the backend.
        self.calls = 0

    def set_rate(self, tokens_per_second: float) -> None:
        """Follow the node's offer: jobs queued from now on are served at the new rate."""
        if tokens_per_second > 0 and math.isfinite(tokens_per_second):
            self.tokens_per_second = float(tokens_per_second)

    @property
    def queued_seconds(self) -> float:
        """Seconds of work queued ahead of a job arriving now."""
        if not self._queue:
            return 0.0
        return max(0.0, self._queue[-1].finish - trio.current_time())

    def _reserve(self, max_tokens: int, deadline: float) -> _Slot:
        """Queue a job of `max_tokens` behind the others at this backend's rate, or refuse it
        when it would end after `deadline`."""
        self.calls += 1
        _check_request(max_tokens, deadline)
        now = trio.current_time()
        start = max(now, self._queue[-1].finish) if self._queue else now
        finish = start + max_tokens / self.tokens_per_second
        if finish > deadline:
            raise BackendError(
                DEADLINE,
                f"cannot serve {max_tokens} tokens before the deadline: needs {finish - now:.2f} s "
                f"at {self.tokens_per_second:g} tokens/s, {max(0.0, deadline - now):.2f} s left")
        slot = _Slot(start, finish)
        self._queue.append(slot)
        return slot

    async def serve(self, prompt: str, max_tokens: int, deadline: float) -> BackendResult:
        slot = self._reserve(max_tokens, deadline)
        try:
            while trio.current_time() < slot.finish:
                moved = self._moved
                with trio.move_on_at(slot.finish):
                    await moved.wait()
        except trio.Cancelled:
            self._leave(slot)
            raise
        self._queue.remove(slot)
        words = min(max_tokens, SYNTHETIC_MAX_WORDS)
        text = " ".join(_FILLER[i % len(_FILLER)] for i in range(words))
        return BackendResult(tokens_served=max_tokens, text=text, model="synthetic",
                             finish_reason="length")

    async def serve_stream(self, prompt: str, max_tokens: int, deadline: float,
                           emit: Emit, sampling: dict[str, Any] | None = None) -> BackendResult:
        """As `serve`, with the tokens handed to `emit` as they fall due at the job's rate (one
        word per token; pieces at least `STREAM_INTERVAL_S` apart, so a fast backend sends a few
        hundred pieces a second, not one per token). Filler has nothing to sample: `sampling`
        is taken and not used."""
        slot = self._reserve(max_tokens, deadline)
        emitted = 0
        try:
            while emitted < max_tokens:
                now = trio.current_time()
                # The slot moves up when jobs ahead leave; its length stays max_tokens / rate.
                per_token = (slot.finish - slot.start) / max_tokens
                due = max_tokens if now >= slot.finish else max(0, min(
                    max_tokens, int((now - slot.start) / per_token)))
                if due > emitted:
                    await emit(_filler(emitted, due), due - emitted)
                    emitted = due
                    wake = trio.current_time() + STREAM_INTERVAL_S
                else:
                    wake = slot.start + (emitted + 1) * per_token
                moved = self._moved
                with trio.move_on_at(min(wake, slot.finish)):
                    await moved.wait()
        except trio.Cancelled:
            self._leave(slot)
            raise
        self._queue.remove(slot)
        return BackendResult(tokens_served=max_tokens, text="", model="synthetic",
                             finish_reason="length")

    def _leave(self, slot: _Slot) -> None:
        """A cancelled job gives back the time it had not used: the jobs behind it move up."""
        index = self._queue.index(slot)
        del self._queue[index]
        now = trio.current_time()
        freed = slot.finish - max(now, slot.start)
        if freed <= 0 or index == len(self._queue):
            return
        for later in self._queue[index:]:
            later.start = max(now, later.start - freed)
            later.finish -= freed
        self._moved.set()
        self._moved = trio.Event()

    async def aclose(self) -> None:
        return None


class OpenAIBackend:
    """Any OpenAI-compatible server. `base_url` is the server's root, with or without the `/v1`
    suffix (`http://127.0.0.1:8080`, `http://127.0.0.1:11434/v1`). `endpoint` is "chat"
    (`/v1/chat/completions`, the default) or "completions" (`/v1/completions`).

    The tokens served are the response's `usage.completion_tokens`, capped at `max_tokens` — the user
    never pays for more than they asked for, whatever the server reports."""

    kind = "openai"

    def __init__(self, base_url: str, model: str, timeout_s: float = 60.0, *,
                 endpoint: str = "chat", api_key: str | None = None) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError("model must be a non-empty string")
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if endpoint not in ("chat", "completions"):
            raise ValueError(f"endpoint must be 'chat' or 'completions', got {endpoint!r}")
        root = base_url.rstrip("/")
        if root.endswith("/v1"):
            root = root[:-3]
        self.base_url = root
        self.model = model
        self.timeout_s = float(timeout_s)
        self.endpoint = endpoint
        self.url = f"{root}/v1/{'chat/completions' if endpoint == 'chat' else 'completions'}"
        self._target = urlsplit(self.url).path
        headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        # One client per backend keeps connections to the server alive between jobs.
        self._client = Http1Client(root, headers)

    def _request(self, payload: dict[str, Any]) -> Any:
        body = json.dumps(payload, ensure_ascii=False).encode()
        return self._client.request("POST", self._target, body)

    def _payload(self, prompt: str, max_tokens: int, stream: bool = False,
                 sampling: dict[str, Any] | None = None) -> dict[str, Any]:
        # The buyer's sampling settings (job/2.2.0) first: none of them can replace the fields
        # below (spec §9.2 S4 allows only its six names).
        payload: dict[str, Any] = dict(check_sampling(sampling)) if sampling else {}
        payload.update({"model": self.model, "max_tokens": max_tokens, "stream": stream})
        if stream:
            # Servers that know it end with a chunk carrying `usage` (OpenAI, vLLM, llama.cpp).
            payload["stream_options"] = {"include_usage": True}
        if self.endpoint == "chat":
            payload["messages"] = (chat_messages(prompt)
                                   or [{"role": "user", "content": prompt}])
        else:
            payload["prompt"] = plain_prompt(prompt)
        return payload

    async def serve_stream(self, prompt: str, max_tokens: int, deadline: float,
                           emit: Emit, sampling: dict[str, Any] | None = None) -> BackendResult:
        """Serve with `"stream": true` (and the buyer's `sampling` settings, passed as the
        request's own fields): each server-sent event's text goes to `emit` as it
        arrives, counted as one token (what llama.cpp, vLLM and Ollama send per event). When the
        server reports `usage.completion_tokens` at the end, that is the count, capped at
        `max_tokens`: more than the events counted is emitted as a last, empty piece carrying
        the difference, so the pieces always add up to at least what the receipt charges.
        Reading stops at `max_tokens` events."""
        _check_request(max_tokens, deadline)
        if not isinstance(prompt, str):
            raise BackendError(BAD_REQUEST, "prompt must be a string")
        limit = min(deadline, trio.current_time() + self.timeout_s)
        waited = max(0.0, limit - trio.current_time())
        counted = 0
        usage: int | None = None
        finish = ""
        model = self.model
        try:
            with trio.fail_at(limit):
                async with self._request(self._payload(prompt, max_tokens, True,
                                                       sampling)) as response:
                    if response.status != 200:
                        body = b""
                        async for chunk in response.aiter_bytes():
                            body += chunk
                            if len(body) > 65536:
                                break
                        self._parse(response.status, body, max_tokens)  # raises
                    size = 0
                    async for line in response.aiter_lines():
                        size += len(line) + 1
                        if size > MAX_RESPONSE_BYTES:
                            raise BackendError(BAD_RESPONSE, f"backend {self.url} streamed more "
                                                             f"than {MAX_RESPONSE_BYTES} bytes")
                        if not line.startswith("data:"):
                            continue  # comments, event names, blank separators
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        event = _event(data, self.url)
                        if isinstance(event.get("model"), str):
                            model = event["model"]
                        reported = event.get("usage")
                        if isinstance(reported, dict):
                            tokens = reported.get("completion_tokens")
                            if type(tokens) is int and tokens >= 0:
                                usage = tokens
                        text, reason = self._delta(event)
                        if reason:
                            finish = reason
                        if text and counted < max_tokens:
                            counted += 1
                            await emit(text, 1)
                            if counted >= max_tokens:
                                finish = finish or "length"
                                break
        except BaseException as exc:
            self._raise_for(exc, waited, "finish")
            raise
        tokens = counted
        if usage is not None:
            tokens = min(usage, max_tokens)
            if tokens > counted:
                await emit("", tokens - counted)
        return BackendResult(tokens_served=tokens, text="", model=model, finish_reason=finish)

    def _delta(self, event: dict[str, Any]) -> tuple[str, str]:
        """The text and finish reason of one streamed event (chat: choices[0].delta.content;
        completions: choices[0].text)."""
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices:
            return "", ""
        first = choices[0]
        if not isinstance(first, dict):
            raise BackendError(BAD_RESPONSE, f"backend {self.url} streamed a choice that is "
                                             f"not an object")
        if self.endpoint == "chat":
            delta = first.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
        else:
            text = first.get("text")
        if text is not None and not isinstance(text, str):
            raise BackendError(BAD_RESPONSE, f"backend {self.url} streamed text that is not "
                                             f"a string")
        reason = first.get("finish_reason")
        return text or "", reason if isinstance(reason, str) else ""

    async def serve(self, prompt: str, max_tokens: int, deadline: float) -> BackendResult:
        _check_request(max_tokens, deadline)
        if not isinstance(prompt, str):
            raise BackendError(BAD_REQUEST, "prompt must be a string")
        limit = min(deadline, trio.current_time() + self.timeout_s)
        waited = max(0.0, limit - trio.current_time())
        try:
            with trio.fail_at(limit):
                status, body = await self._post(self._payload(prompt, max_tokens))
        except BaseException as exc:
            self._raise_for(exc, waited, "answer")
            raise
        return self._parse(status, body, max_tokens)

    def _raise_for(self, exc: BaseException, waited: float, what: str) -> None:
        """The BackendError for a failed call to the backend (a deadline that ran out while it
        had yet to `what`, an unreachable server, a broken connection); nothing for any other
        exception, which the caller re-raises as it is."""
        if isinstance(exc, trio.TooSlowError):
            raise BackendError(TIMEOUT, f"backend {self.url} did not {what} within "
                                        f"{waited:.1f} s") from None
        if isinstance(exc, (TransportError, OSError)):
            raise BackendError(UNREACHABLE,
                               f"cannot reach backend {self.url}: {exc}") from None

    async def _post(self, payload: dict[str, Any]) -> tuple[int, bytes]:
        async with self._request(payload) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise BackendError(
                        BAD_RESPONSE,
                        f"backend {self.url} answered more than {MAX_RESPONSE_BYTES} bytes")
                chunks.append(chunk)
            return response.status, b"".join(chunks)

    def _parse(self, status: int, body: bytes, max_tokens: int) -> BackendResult:
        data: Any
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting is no answer
            data = None
        if status != 200:
            detail = _error_message(data) or body[:200].decode("utf-8", "replace").strip()
            raise BackendError(HTTP_STATUS, f"backend {self.url} answered HTTP {status}"
                                            + (f": {detail}" if detail else ""))
        if not isinstance(data, dict):
            raise BackendError(BAD_RESPONSE, f"backend {self.url} answered something that is "
                                             f"not a JSON object")
        usage = data.get("usage")
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if type(tokens) is not int or tokens < 0:
            raise BackendError(BAD_RESPONSE, f"backend {self.url} answered without a valid "
                                             f"usage.completion_tokens (got {tokens!r}); cannot "
                                             f"count the tokens served")
        choices = data.get("choices")
        if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
            raise BackendError(BAD_RESPONSE, f"backend {self.url} answered without choices")
        first = choices[0]
        if self.endpoint == "chat":
            message = first.get("message")
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = first.get("text")
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise BackendError(BAD_RESPONSE,
                               f"backend {self.url} answered a completion that is not text")
        finish = first.get("finish_reason")
        model = data.get("model")
        return BackendResult(tokens_served=min(tokens, max_tokens), text=text,
                             model=model if isinstance(model, str) else self.model,
                             finish_reason=finish if isinstance(finish, str) else "")

    async def reachable(self) -> bool:
        """Whether the server takes a connection now (what an `unreachable` failure lacked);
        the node asks this while it offers nothing for want of its backend."""
        parts = urlsplit(self.base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with trio.fail_after(REACHABLE_TIMEOUT_S):
                stream = await trio.open_tcp_stream(parts.hostname or "", port)
        except (OSError, trio.TooSlowError):
            return False
        await stream.aclose()
        return True

    async def aclose(self) -> None:
        await self._client.aclose()


def _event(data: str, url: str) -> dict[str, Any]:
    """One server-sent event's JSON object, or BackendError."""
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):
        event = None
    if not isinstance(event, dict):
        raise BackendError(BAD_RESPONSE, f"backend {url} streamed an event that is not a JSON "
                                         f"object")
    if isinstance(event.get("error"), (dict, str)):
        raise BackendError(HTTP_STATUS, f"backend {url} streamed an error: "
                                        f"{_error_message(event)}")
    return event


def _error_message(data: Any) -> str:
    """The human part of an OpenAI-style error body ({"error": {"message": ...}})."""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:300]
        if isinstance(error, str):
            return error[:300]
    return ""


def make_backend(kind: str, *, tokens_per_second: float, url: str = "", model: str = "",
                 timeout_s: float = 60.0) -> InferenceBackend:
    """Build a backend from settings: "synthetic" (at `tokens_per_second`) or "openai" (needs
    `url` and `model`). Raises ValueError with what is missing."""
    if kind == "synthetic":
        return SyntheticBackend(tokens_per_second)
    if kind == "openai":
        if not url or not model:
            raise ValueError("the openai backend needs a URL and a model name")
        return OpenAIBackend(url, model, timeout_s)
    raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")


__all__ = ["InferenceBackend", "BackendResult", "BackendError", "REASONS", "SyntheticBackend",
           "Emit", "serve_stream", "chat_prompt", "chat_messages", "plain_prompt",
           "CHAT_PROMPT_PREFIX", "SAMPLING_PREFIX", "SAMPLING_FIELDS", "SamplingError",
           "check_sampling", "sampling_prompt", "split_sampling",
           "OpenAIBackend", "make_backend", "BACKEND_KINDS", "MAX_RESPONSE_BYTES"]
