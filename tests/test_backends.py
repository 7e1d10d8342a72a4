"""Inference backends: the synthetic one on trio's virtual clock (exact times), the OpenAI-compatible
one against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from neuroshard_p2p.node.backends import (
    REASONS,
    BackendError,
    InferenceBackend,
    OpenAIBackend,
    SyntheticBackend,
    make_backend,
)
from tests.openai_compat_server import start_openai_server


# --- synthetic -------------------------------------------------------------------------------

async def test_synthetic_serves_requested_tokens_at_the_announced_rate(autojump_clock: trio.abc.Clock) -> None:
    backend = SyntheticBackend(tokens_per_second=1000)
    start = trio.current_time()
    result = await backend.serve("hello", 250, deadline=start + 10)
    assert result.tokens_served == 250
    assert trio.current_time() - start == pytest.approx(0.25, abs=1e-9)
    assert len(result.text.split()) == 250
    assert isinstance(backend, InferenceBackend)


async def test_synthetic_jobs_share_the_rate_first_come_first_served(autojump_clock: trio.abc.Clock) -> None:
    backend = SyntheticBackend(tokens_per_second=100)
    start = trio.current_time()
    finished: dict[str, float] = {}

    async def job(name: str, tokens: int) -> None:
        await backend.serve(name, tokens, deadline=start + 100)
        finished[name] = trio.current_time() - start

    async with trio.open_nursery() as nursery:
        nursery.start_soon(job, "first", 100)
        await trio.sleep(0)  # the first job is queued before the second arrives
        nursery.start_soon(job, "second", 50)
    # 100 tokens/s in aggregate: 1 s for the first job, then 0.5 s for the second.
    assert finished == {"first": pytest.approx(1.0), "second": pytest.approx(1.5)}


async def test_synthetic_refuses_at_once_a_job_it_cannot_finish_in_time(autojump_clock: trio.abc.Clock) -> None:
    backend = SyntheticBackend(tokens_per_second=100)
    start = trio.current_time()
    with pytest.raises(BackendError) as caught:
        await backend.serve("x", 1000, deadline=start + 2)
    assert caught.value.reason == "deadline"
    assert "needs 10.00 s" in str(caught.value) and "2.00 s left" in str(caught.value)
    assert trio.current_time() == start
    # The refused job took no share of the rate: the next one starts at once.
    await backend.serve("y", 100, deadline=start + 2)
    assert trio.current_time() - start == pytest.approx(1.0)


async def test_synthetic_cancelled_job_gives_back_its_unused_time(autojump_clock: trio.abc.Clock) -> None:
    backend = SyntheticBackend(tokens_per_second=100)
    start = trio.current_time()
    with trio.move_on_after(0.3):
        await backend.serve("x", 1000, deadline=start + 100)
    assert backend.queued_seconds == 0.0
    await backend.serve("y", 10, deadline=start + 100)
    assert trio.current_time() - start == pytest.approx(0.4)


async def test_synthetic_cancelled_job_frees_its_time_for_the_jobs_behind_it(
        autojump_clock: trio.abc.Clock) -> None:
    # Issue 19: an honest 50-token job waited behind a cancelled 20,000-token job for its whole
    # duration. At 100 tokens/s: a 100-token job (1 s) is served, the unpaid 20,000-token job
    # (200 s) waits behind it, an honest 50-token job (0.5 s) behind that.
    backend = SyntheticBackend(tokens_per_second=100)
    start = trio.current_time()
    finished: dict[str, float] = {}

    async def job(name: str, tokens: int, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            await backend.serve(name, tokens, deadline=start + 1000)
            finished[name] = trio.current_time() - start

    unpaid = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(job, "head", 100)
        await wait_all_tasks_blocked()
        nursery.start_soon(job, "unpaid", 20_000, unpaid)
        await wait_all_tasks_blocked()
        nursery.start_soon(job, "honest", 50)
        await wait_all_tasks_blocked()
        assert backend.queued_seconds == pytest.approx(201.5)
        await trio.sleep(0.3)
        unpaid.cancel()  # its gateway went away while it waited
        await wait_all_tasks_blocked()
        assert backend.queued_seconds == pytest.approx(1.2)
    assert finished == {"head": pytest.approx(1.0), "honest": pytest.approx(1.5)}
    assert backend.calls == 3

    # Cancelled while being served: the job behind starts at that instant.
    start = trio.current_time()
    finished.clear()
    unpaid = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(job, "unpaid", 20_000, unpaid)
        await wait_all_tasks_blocked()
        nursery.start_soon(job, "honest", 50)
        await trio.sleep(2.0)
        unpaid.cancel()
    assert finished == {"honest": pytest.approx(2.5)}
    assert backend.queued_seconds == 0.0


@pytest.mark.parametrize("tokens", [0, -5, 1.5, "10"])
async def test_synthetic_rejects_bad_token_counts(tokens: object) -> None:
    backend = SyntheticBackend(tokens_per_second=100)
    with pytest.raises(BackendError) as caught:
        await backend.serve("x", tokens, deadline=trio.current_time() + 5)  # type: ignore[arg-type]
    assert caught.value.reason == "bad_request"


def test_make_backend_explains_bad_settings() -> None:
    assert make_backend("synthetic", tokens_per_second=5).kind == "synthetic"
    with pytest.raises(ValueError, match="needs a URL and a model"):
        make_backend("openai", tokens_per_second=5)
    with pytest.raises(ValueError, match="unknown backend 'gpt'"):
        make_backend("gpt", tokens_per_second=5)
    with pytest.raises(ValueError, match="tokens_per_second must be > 0"):
        SyntheticBackend(0)
    with pytest.raises(ValueError, match="http"):
        OpenAIBackend("ftp://x", "m")


# --- OpenAI-compatible -------------------------------------------------------------------------

async def test_openai_chat_counts_tokens_from_usage(nursery: trio.Nursery) -> None:
    server = await start_openai_server(nursery)
    backend = OpenAIBackend(server.url, "tiny-model", timeout_s=5)
    try:
        result = await backend.serve("one two three four five", 100, trio.current_time() + 5)
    finally:
        await backend.aclose()
    assert result.tokens_served == 5
    assert result.text == "one two three four five"
    assert result.model == "tiny-model"
    assert server.requests == [{"model": "tiny-model", "max_tokens": 100, "stream": False,
                                "messages": [{"role": "user",
                                              "content": "one two three four five"}]}]


async def test_openai_completions_endpoint_and_v1_suffix(nursery: trio.Nursery) -> None:
    server = await start_openai_server(nursery)
    backend = OpenAIBackend(server.url + "/v1/", "m", timeout_s=5, endpoint="completions")
    try:
        result = await backend.serve("a b c", 2, trio.current_time() + 5)
    finally:
        await backend.aclose()
    assert (result.tokens_served, result.text) == (2, "a b")
    assert server.requests[0]["prompt"] == "a b c"


async def test_openai_never_charges_more_than_requested(nursery: trio.Nursery) -> None:
    server = await start_openai_server(nursery)
    backend = OpenAIBackend(server.url, "m", timeout_s=5)
    try:
        result = await backend.serve("!tokens 500", 10, trio.current_time() + 5)
    finally:
        await backend.aclose()
    assert result.tokens_served == 10


@pytest.mark.parametrize("prompt, code, words", [
    ("!error", "http_status", "HTTP 500: model crashed: out of memory"),
    ("!badjson", "bad_response", "not a JSON object"),
    ("!nousage", "bad_response", "usage.completion_tokens"),
    ("!huge", "bad_response", "more than 4194304 bytes"),
    ("!deep", "bad_response", "not a JSON object"),
    ("!status 502", "http_status", "HTTP 502: <html>bad gateway</html>"),
])
async def test_openai_failures_become_readable_backend_errors(
        nursery: trio.Nursery, prompt: str, code: str, words: str) -> None:
    server = await start_openai_server(nursery)
    backend = OpenAIBackend(server.url, "m", timeout_s=5)
    try:
        with pytest.raises(BackendError) as caught:
            await backend.serve(prompt, 10, trio.current_time() + 5)
    finally:
        await backend.aclose()
    assert caught.value.reason == code
    assert words in str(caught.value)


async def test_openai_timeout_never_hangs(nursery: trio.Nursery) -> None:
    server = await start_openai_server(nursery)
    backend = OpenAIBackend(server.url, "m", timeout_s=0.3)
    start = trio.current_time()
    try:
        with pytest.raises(BackendError) as caught:
            await backend.serve("!slow 30", 10, start + 5)
        assert caught.value.reason == "timeout"
        assert trio.current_time() - start < 10.0  # the server would answer after 30 s
        # The job's deadline binds too when it is sooner than the backend's timeout.
        backend.timeout_s = 30
        start = trio.current_time()
        with pytest.raises(BackendError) as caught:
            await backend.serve("!slow 30", 10, start + 0.3)
        assert caught.value.reason == "timeout"
        assert "within 0.3 s" in str(caught.value)
        assert trio.current_time() - start < 10.0
    finally:
        await backend.aclose()


async def test_openai_unreachable_server() -> None:
    with socket.socket() as sock:  # a port nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIBackend(f"http://127.0.0.1:{port}", "m", timeout_s=2)
    try:
        with pytest.raises(BackendError) as caught:
            await backend.serve("hi", 10, trio.current_time() + 5)
    finally:
        await backend.aclose()
    assert caught.value.reason == "unreachable"
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_backend_error_reason_is_a_stable_code_and_the_message_is_separate() -> None:
    error = BackendError("timeout", "backend http://127.0.0.1:1 did not answer within 5.0 s")
    assert (error.reason, error.message, str(error)) == (
        "timeout", "backend http://127.0.0.1:1 did not answer within 5.0 s",
        "backend http://127.0.0.1:1 did not answer within 5.0 s")
    assert REASONS == ("timeout", "unreachable", "http_status", "bad_response", "deadline",
                       "bad_request")
    with pytest.raises(ValueError, match="unknown backend error reason"):
        BackendError("the server is down", "words where the code goes")
