"""The OpenAI-compatible API (issue 16) with the official `openai` client: two real nodes on
127.0.0.1, the provider's backend a real HTTP server process speaking OpenAI's streaming protocol
(tests/openai_compat_server.py run as its own process), the gateway's /v1 endpoints driven by
`openai.OpenAI` in a worker thread. Cancellation is checked down to both ledgers' rows."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import openai
import pytest
import trio

from neuroshard_p2p.money import settle_amounts
from tests.api_harness import API_MARKET, ApiNode, api_node
from tests.waiting import eventually

SERVER = Path(__file__).with_name("openai_compat_server.py")
MODEL = "neuroshard/synthetic-1"  # the simnet charter's model


@asynccontextmanager
async def backend_process() -> AsyncIterator[str]:
    """tests/openai_compat_server.py as a separate process; yields its URL."""
    process = subprocess.Popen([sys.executable, str(SERVER), "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = await trio.to_thread.run_sync(process.stdout.readline)
        assert line.startswith("listening on "), line
        yield line.split()[-1]
    finally:
        process.terminate()
        await trio.to_thread.run_sync(process.wait)


async def stats(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        return (await client.get(url + "/stats")).json()


@asynccontextmanager
async def market(tmp_path: Path, *, provider_streams: bool = True, capacity: int = 2000,
                 backend_url: str | None = None, backend_model: str = "tiny",
                 muxer: str = "yamux", provider_samples: bool = True,
                 gateway_samples: bool = True,
                 ) -> AsyncIterator[tuple[ApiNode, ApiNode, str]]:
    """A provider whose backend is the server process (or the server at `backend_url`), and a
    gateway that sees its offer."""
    async with AsyncExitStack() as stack:
        url = backend_url or await stack.enter_async_context(backend_process())
        async with api_node(tmp_path / "provider", 3, capacity=capacity, min_price=0.01,
                            backend="openai", backend_url=url, backend_model=backend_model,
                            job_streaming=provider_streams, job_sampling=provider_samples,
                            muxer=muxer) as provider:
            async with api_node(tmp_path / "gateway", 4, bootstrap=(provider.node.addrs[0],),
                                muxer=muxer, job_sampling=gateway_samples) as gateway:
                async def sees_offer() -> bool:
                    offers = (await gateway.get("/api/market/offers")).json()["offers"]
                    return bool(offers)
                await eventually(sees_offer, 10, "the gateway sees the provider's offer")
                yield provider, gateway, url


def client(gateway: ApiNode, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key or gateway.token,
                         max_retries=0, timeout=20)


async def rows(node: ApiNode, request_id: str) -> list[Any]:
    ledger = node.node.jobs.ledger
    assert ledger is not None
    return [r for r in await ledger.recent(1000) if r.request_id == request_id]


async def test_streamed_and_plain_chat_through_the_market(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="neuroshard.api.openai")
    async with market(tmp_path) as (provider, gateway, url):
        oa = client(gateway)
        models = await trio.to_thread.run_sync(oa.models.list)
        assert [m.id for m in models.data] == [MODEL]
        model = await trio.to_thread.run_sync(oa.models.retrieve, MODEL)
        assert (model.id, model.owned_by) == (MODEL, f"neuroshard:{gateway.node.settings.network}")
        with pytest.raises(openai.NotFoundError) as missing:
            await trio.to_thread.run_sync(oa.models.retrieve, "gpt-4o")
        assert missing.value.code == "model_not_found"

        def stream() -> tuple[list[str], Any]:
            chunks = list(oa.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "!rate 50"}], max_tokens=12,
                stream=True, stream_options={"include_usage": True},
                extra_body={"provider": {"max_price": {"completion": 0.5}}}))
            texts = [c.choices[0].delta.content for c in chunks
                     if c.choices and c.choices[0].delta.content]
            return texts, chunks

        texts, chunks = await trio.to_thread.run_sync(stream)
        assert "".join(texts) == " ".join(f"w{i}" for i in range(12))
        # Pieces as the backend paced them (20 ms apart: alone, unless the machine stalls).
        assert len(texts) > 1
        usage = chunks[-1].usage
        assert (usage.completion_tokens, usage.prompt_tokens) == (12, 0)
        market_fields = chunks[-1].model_extra["neuroshard"]
        rid = market_fields["request_id"]
        locked = market_fields["locked_price_nano"]
        paid = settle_amounts(12, locked, API_MARKET.burn_rate)
        assert market_fields["provider"] == provider.node.peer_id
        assert (market_fields["tokens_served"], market_fields["cost_nano"],
                market_fields["burn_nano"], market_fields["provider_earned_nano"]) == (
            12, paid.payment, paid.burned, paid.earned)
        assert chunks[-2].choices[0].finish_reason == "length"
        # The same in both ledgers.
        [g] = await rows(gateway, rid)
        assert (g.role, g.tokens, g.payment, g.burned, g.earned) == (
            "gateway", 12, paid.payment, paid.burned, paid.earned)

        async def provider_row() -> list[Any]:
            return await rows(provider, rid)
        [p] = await eventually(provider_row, 5, "the provider records its earning")
        assert (p.role, p.tokens, p.payment, p.receipt_id) == ("provider", 12, paid.payment,
                                                               g.receipt_id)
        # The provider streamed from the backend (it asked for the usage chunk).
        assert (await stats(url))["streams"][-1] == {"sent": 12, "disconnected": False,
                                                      "done": True}
        assert provider.node.jobs.counters.jobs_streamed == 1

        # The gateway now keeps a job/2.1.0 stream open ahead to this provider; the next
        # request goes out on it (no stream open on its way to the first token).
        async def warm() -> bool:
            return provider.node.peer_id in gateway.node.jobs._warm
        await eventually(warm, 5, "a stream is open ahead to the provider")
        plain = await trio.to_thread.run_sync(lambda: oa.chat.completions.create(
            model=MODEL, messages=[{"role": "system", "content": "be brief"},
                                   {"role": "user", "content": "hello there market"}],
            max_tokens=50))
        assert gateway.node.jobs.counters.warm_streams_used == 1
        assert plain.choices[0].message.content == "hello there market"
        assert plain.usage.completion_tokens == 3
        assert plain.choices[0].finish_reason == "stop"
        assert plain.model_extra["neuroshard"]["cost_nano"] == settle_amounts(
            3, plain.model_extra["neuroshard"]["locked_price_nano"], API_MARKET.burn_rate).payment

        completion = await trio.to_thread.run_sync(lambda: oa.completions.create(
            model=MODEL, prompt="one two", max_tokens=5, extra_body={"max_price": 0.5}))
        assert completion.choices[0].text == "one two"
        assert completion.usage.completion_tokens == 2

        # `neuroshard-node chat` streams the same from the terminal.
        done = await trio.run_process(
            [sys.executable, "-m", "neuroshard_p2p.cli", "chat", "--data-dir",
             str(gateway.data_dir), "--api", gateway.url, "--max-tokens", "4", "!rate 0"],
            capture_stdout=True, capture_stderr=True)
        assert done.stdout.decode() == "w0 w1 w2 w3\n"
        assert f"[4 tokens from {provider.node.peer_id} at " in done.stderr.decode()
        # Every answer was whole: the disconnect that ends each cancelled nothing, and said
        # nothing (it logged "went away; cancelling it" for every request served).
        assert [r.getMessage() for r in caplog.records if "went away" in r.getMessage()] == []


async def test_a_stream_through_two_mplex_nodes(tmp_path: Path) -> None:
    # The provider reads the gateway's side while it writes the output: on py-libp2p's own
    # Mplex that deadlocked and every job failed (libp2p_compat entry 12).
    async with market(tmp_path, muxer="mplex") as (provider, gateway, url):
        oa = client(gateway)

        def stream() -> list[str]:
            chunks = oa.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "!rate 200"}], max_tokens=8,
                stream=True)
            return [c.choices[0].delta.content for c in chunks
                    if c.choices and c.choices[0].delta.content]

        texts = await trio.to_thread.run_sync(stream)
        assert "".join(texts) == " ".join(f"w{i}" for i in range(8))
        # The provider counts the job once its receipt is written, which can be after the
        # client has read the last token: wait for it (it failed 1 run in 3 asserted at once).
        await eventually(lambda: provider.node.jobs.counters.jobs_streamed, 5,
                         "the provider counts the streamed job")
        assert provider.node.jobs.counters.jobs_streamed == 1


async def test_client_going_away_mid_stream_settles_exactly_what_was_served(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="neuroshard.api.openai")
    async with market(tmp_path) as (provider, gateway, url):
        oa = client(gateway)
        received: list[str] = []

        def read_some_then_leave() -> None:
            stream = oa.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "!rate 40"}], max_tokens=400,
                stream=True)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
                if len(received) == 10:
                    break
            stream.close()  # the client goes away mid-stream

        await trio.to_thread.run_sync(read_some_then_leave)
        statuses = gateway.node.jobs.statuses()
        assert len(statuses) == 1
        rid = statuses[0].request_id

        async def settled() -> Any:
            status = gateway.node.jobs.status(rid)
            return status if status is not None and status.state == "completed" else None

        done = await eventually(settled, 10, "the cancelled request settles")
        served = done.tokens_served
        # It stopped well before the 400 tokens (10 s at 40/s): within a few tokens of what the
        # client read, never fewer than it read.
        assert 10 <= served < 40, served
        paid = settle_amounts(served, done.locked_price_nano, API_MARKET.burn_rate)
        assert done.cost_nano == paid.payment
        [g] = await rows(gateway, rid)

        async def provider_row() -> list[Any]:
            return await rows(provider, rid)
        [p] = await eventually(provider_row, 5, "the provider records its earning")
        assert (g.tokens, g.payment, g.burned, g.earned) == (served, paid.payment, paid.burned,
                                                            paid.earned)
        assert (p.tokens, p.payment, p.receipt_id) == (served, paid.payment, g.receipt_id)
        # The provider stopped its backend: the server saw the disconnect, having sent the
        # tokens the receipt charges (one per event) and at most the few still in the
        # provider's buffer when JobCancel came (those were never sent on, so not charged).
        async def backend_stopped() -> dict[str, Any] | None:
            record = (await stats(url))["streams"][-1]
            return record if record["disconnected"] else None
        record = await eventually(backend_stopped, 5, "the backend sees its client leave")
        assert served <= record["sent"] <= served + 3 and not record["done"]
        counters = provider.node.jobs.counters
        assert (counters.jobs_cancelled, gateway.node.jobs.counters.cancels_sent) == (1, 1)
        samples = (await gateway.get("/metrics")).text
        assert 'neuroshard_job_streams_total{event="cancelled"} 1.0' in samples
        assert 'neuroshard_job_streams_total{event="opened"} 1.0' in samples
        assert 'neuroshard_job_streams_total{event="stopped"} 1.0' in (
            await provider.get("/metrics")).text
        assert "".join(received) == " ".join(f"w{i}" for i in range(10))
        assert [r.getMessage() for r in caplog.records if "went away" in r.getMessage()] == [
            f"client of {rid} went away; cancelling it"]


SAMPLING = {"temperature": 0.3, "top_p": 0.9, "seed": 7, "stop": ["w3"],
            "presence_penalty": 0.5, "frequency_penalty": -0.5}


async def test_sampling_settings_reach_the_providers_backend(tmp_path: Path) -> None:
    async with market(tmp_path) as (provider, gateway, url):
        oa = client(gateway)

        def stream() -> list[Any]:
            return list(oa.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "!rate 0"}], max_tokens=5,
                stream=True, temperature=0.3, top_p=0.9, seed=7, stop="w3",
                presence_penalty=0.5, frequency_penalty=-0.5))

        chunks = await trio.to_thread.run_sync(stream)
        assert chunks[-1].model_extra["neuroshard"]["sampling"] == "sent"
        last = (await stats(url))["last"]
        assert {k: last[k] for k in SAMPLING if k in last} == SAMPLING
        assert (last["model"], last["max_tokens"], last["messages"]) == (
            "tiny", 5, [{"role": "user", "content": "!rate 0"}])

        # Not streamed, and the legacy endpoint: the same fields, as the buyer gave them.
        plain = await trio.to_thread.run_sync(lambda: oa.completions.create(
            model=MODEL, prompt="one two", max_tokens=4, temperature=0, stop=["a", "b"]))
        assert plain.choices[0].text == "one two"
        assert plain.model_extra["neuroshard"]["sampling"] == "sent"
        last = (await stats(url))["last"]
        assert (last["messages"], last["temperature"], last["stop"]) == (
            [{"role": "user", "content": "one two"}], 0, ["a", "b"])
        assert "seed" not in last and "top_p" not in last

        # None given: none sent (the job still opens with the empty header, spec §9.2).
        none = await trio.to_thread.run_sync(lambda: oa.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x y"}], max_tokens=4))
        assert none.model_extra["neuroshard"]["sampling"] == "none"
        last = (await stats(url))["last"]
        assert not set(SAMPLING) & set(last)
        assert gateway.node.jobs.counters.sampling_sent == 2
        await eventually(lambda: provider.node.jobs.counters.jobs_streamed == 3, 5,
                         "the provider served all three streamed")
        # `neuroshard-node chat` sends them too.
        done = await trio.run_process(
            [sys.executable, "-m", "neuroshard_p2p.cli", "chat", "--data-dir",
             str(gateway.data_dir), "--api", gateway.url, "--max-tokens", "3", "--temperature",
             "1.5", "--top-p", "0.5", "--seed", "-9", "--stop", "a", "--stop", "b c", "!rate 0"],
            capture_stdout=True, capture_stderr=True)
        assert done.stdout.decode() == "w0 w1 w2\n"
        last = (await stats(url))["last"]
        assert {k: last[k] for k in SAMPLING if k in last} == {
            "temperature": 1.5, "top_p": 0.5, "seed": -9, "stop": ["a", "b c"]}
        assert "sampling settings" not in done.stderr.decode()
        assert gateway.node.jobs.counters.sampling_sent == 3
        samples = (await gateway.get("/metrics")).text
        assert 'neuroshard_job_streams_total{event="sampling_sent"} 3.0' in samples
        assert 'neuroshard_job_streams_total{event="sampling_not_sent"} 0.0' in samples

        # Refused at the gateway, before any market work: nothing queued, nothing sent.
        with pytest.raises(openai.BadRequestError) as caught:
            await trio.to_thread.run_sync(lambda: oa.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=4,
                tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]))
        assert caught.value.code == "unsupported_parameter"
        assert caught.value.param == "tools"
        assert (await stats(url))["requests"] == 4


async def test_a_provider_without_job_2_2_0_serves_without_the_settings(tmp_path: Path) -> None:
    async with market(tmp_path, provider_samples=False) as (provider, gateway, url):
        oa = client(gateway)
        answer = await trio.to_thread.run_sync(lambda: oa.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "alpha beta"}], max_tokens=4,
            temperature=0.3, stop="beta"))
        # Served on job/2.1.0: the buyer is told its settings did not reach the backend.
        assert answer.choices[0].message.content == "alpha beta"
        assert answer.model_extra["neuroshard"]["sampling"] == "not_sent"
        last = (await stats(url))["last"]
        assert "temperature" not in last and "stop" not in last
        assert last["messages"] == [{"role": "user", "content": "alpha beta"}]
        counters = gateway.node.jobs.counters
        assert (counters.sampling_sent, counters.sampling_not_sent,
                counters.stream_fallbacks) == (0, 1, 0)
        done = await trio.run_process(
            [sys.executable, "-m", "neuroshard_p2p.cli", "chat", "--data-dir",
             str(gateway.data_dir), "--api", gateway.url, "--max-tokens", "2", "--seed", "1",
             "!rate 0"], capture_stdout=True, capture_stderr=True)
        assert done.stdout.decode() == "w0 w1\n"
        assert done.stderr.decode().endswith(
            "; its backend used its own sampling settings (the provider's version does not take "
            "them)]\n"), done.stderr.decode()


async def test_a_buyers_settings_go_to_the_provider_that_takes_them(tmp_path: Path) -> None:
    """Two providers at the same price, both new to the gateway; one from before job/2.2.0.
    Their keys are picked so the old one's peer id sorts first (the book's last tie-break), so
    without the gateway's preference the settings would go to the old one and be lost."""
    from neuroshard_p2p.identity import peer_id_of
    from tests.conftest import make_key

    old_key, new_key = sorted((5, 6), key=lambda k: peer_id_of(
        make_key(k).public_key.format()))
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(backend_process())
        nodes = {}
        for name, key, samples in (("old", old_key, False), ("new", new_key, True)):
            nodes[name] = await stack.enter_async_context(api_node(
                tmp_path / name, key, capacity=2000, min_price=0.01, backend="openai",
                backend_url=url, backend_model="tiny", job_sampling=samples))
        old, new = nodes["old"], nodes["new"]
        assert old.node.peer_id < new.node.peer_id
        gateway = await stack.enter_async_context(api_node(
            tmp_path / "gateway", 4, bootstrap=(old.node.addrs[0], new.node.addrs[0])))

        async def sees_both() -> bool:
            offers = (await gateway.get("/api/market/offers")).json()["offers"]
            return len(offers) == 2
        await eventually(sees_both, 10, "the gateway sees both offers")
        jobs = gateway.node.jobs
        await eventually(lambda: jobs._lacks_sampling(old.node.peer_id), 10,
                         "identify told the gateway what the old provider speaks")
        assert not jobs._lacks_sampling(new.node.peer_id)
        oa = client(gateway)
        for i in range(2):
            answer = await trio.to_thread.run_sync(lambda: oa.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"ask {i}"}], max_tokens=3,
                temperature=0.2))
            assert answer.model_extra["neuroshard"]["sampling"] == "sent"
            assert (await stats(url))["last"]["temperature"] == 0.2
        assert (jobs.counters.sampling_sent, jobs.counters.sampling_not_sent) == (2, 0)
        await eventually(lambda: new.node.jobs.counters.jobs_streamed == 2, 5,
                         "the new provider served both")
        assert old.node.jobs.counters.jobs_streamed == 0


async def test_a_gateway_without_job_2_2_0_is_served_by_a_new_provider(tmp_path: Path) -> None:
    """Spec §11: an old gateway never offers job/2.2.0, so a new provider serves it on job/2.1.0
    and reads its prompt as it always did (a chat, no header)."""
    async with market(tmp_path, gateway_samples=False) as (provider, gateway, url):
        oa = client(gateway)
        answer = await trio.to_thread.run_sync(lambda: oa.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "gamma delta"}], max_tokens=4,
            temperature=0.1))
        assert answer.choices[0].message.content == "gamma delta"
        assert answer.model_extra["neuroshard"]["sampling"] == "not_sent"
        last = (await stats(url))["last"]
        assert last["messages"] == [{"role": "user", "content": "gamma delta"}]
        assert "temperature" not in last
        await eventually(lambda: provider.node.jobs.counters.jobs_streamed == 1, 5,
                         "the provider served it streamed (job/2.1.0)")


async def test_no_capacity_says_why(tmp_path: Path) -> None:
    # A lone node that offers capacity: its own never serves its own buyers.
    async with api_node(tmp_path / "alone", 5, capacity=1000, min_price=0.01) as alone:
        response = await alone.post(
            "/v1/chat/completions", headers=alone.auth,
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
        assert response.status_code == 503
        assert response.json()["error"]["message"] == (
            f"no other node on network {alone.node.settings.network} offers capacity now "
            f"(this node's own capacity serves other gateways' requests, never its own: a "
            f"buyer needs a provider on another node)")
    # A lone node that offers nothing: it has nobody to buy from.
    async with api_node(tmp_path / "empty", 8) as empty:
        response = await empty.post(
            "/v1/chat/completions", headers=empty.auth,
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
        assert response.json()["error"]["message"] == (
            f"no other node on network {empty.node.settings.network} offers capacity now (this "
            f"node has no peers: see `neuroshard-node peers`)")
    # A provider that asks more than the market price: it is there, and too dear.
    async with api_node(tmp_path / "dear", 6, capacity=1000, min_price=0.5) as dear, \
            api_node(tmp_path / "gw", 7, bootstrap=(dear.node.addrs[0],)) as gateway:
        async def sees_offer() -> bool:
            return bool((await gateway.get("/api/market/offers")).json()["offers"])
        await eventually(sees_offer, 10, "the gateway sees the provider's offer")
        response = await gateway.post(
            "/v1/chat/completions", headers=gateway.auth,
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
        assert response.status_code == 503
        message = response.json()["error"]["message"]
        head = (f"1 provider(s) on network {gateway.node.settings.network} offer capacity, none "
                f"at or below the price ")
        assert message.startswith(head), message
        price = message[len(head):].split(" ")[0]
        assert 0.01 <= float(price) < 0.5  # the market's price, under what the provider asks
        assert message.endswith(" now (the lowest asks 0.50 NEURO per 1M tokens)"), message


async def test_an_old_provider_serves_a_stream_in_one_piece(tmp_path: Path) -> None:
    async with market(tmp_path, provider_streams=False) as (provider, gateway, url):
        oa = client(gateway)

        def stream() -> list[Any]:
            return list(oa.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "alpha beta gamma"}],
                max_tokens=10, stream=True))

        chunks = await trio.to_thread.run_sync(stream)
        texts = [c.choices[0].delta.content for c in chunks
                 if c.choices and c.choices[0].delta.content]
        # job/2.0.0: the chat became a transcript the old provider's backend echoes whole.
        assert texts == ["user: alpha beta gamma assistant:"]
        assert chunks[-1].model_extra["neuroshard"]["tokens_served"] == 5
        assert gateway.node.jobs.counters.stream_fallbacks == 1
        assert provider.node.jobs.counters.jobs_streamed == 0


async def test_errors_in_openais_shape(tmp_path: Path) -> None:
    async with market(tmp_path) as (provider, gateway, url):
        async def call(path: str, body: Any = None, key: str | None = "good",
                       method: str = "POST") -> httpx.Response:
            headers = {} if key is None else {
                "Authorization": f"Bearer {gateway.token if key == 'good' else key}"}
            return await gateway.client.request(method, gateway.url + path, headers=headers,
                                                json=body)

        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        cases = [
            (await call("/v1/chat/completions", chat, key=None), 401, "missing_api_key", None),
            (await call("/v1/chat/completions", chat, key="nope"), 401, "invalid_api_key", None),
            (await call("/v1/chat/completions", {**chat, "max_tokens": 0}), 400, None,
             "max_tokens"),
            (await call("/v1/chat/completions", {**chat, "messages": []}), 400, None, "messages"),
            (await call("/v1/chat/completions", {**chat, "model": "gpt-4o"}), 404,
             "model_not_found", "model"),
            (await call("/v1/chat/completions", {**chat, "provider": {
                "max_price": {"completion": 0.000001}}}), 402, "price_above_max_price",
             "provider.max_price.completion"),
            (await call("/v1/chat/completions", {**chat, "n": 2}), 400, None, "n"),
            (await call("/v1/models", method="DELETE"), 405, None, None),
        ]
        for response, status, code, param in cases:
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
            assert (error["code"], error["param"]) == (code, param), error
        # The official client raises its typed errors for them.
        oa = client(gateway, key="wrong")
        with pytest.raises(openai.AuthenticationError):
            await trio.to_thread.run_sync(lambda: oa.models.list())
        oa = client(gateway)
        with pytest.raises(openai.APIStatusError) as caught:
            await trio.to_thread.run_sync(lambda: oa.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}],
                extra_body={"max_price": 1e-9}))
        assert caught.value.status_code == 402
        # The gateway at its limit of open requests: 429 with Retry-After.
        desk = gateway.node.jobs.gateway
        limits = desk.settings
        desk.settings = dataclasses.replace(limits, max_prompt_bytes=1)
        response = await call("/v1/chat/completions", chat)
        desk.settings = limits
        assert response.status_code == 429, response.text
        assert response.headers["retry-after"] == "2"
        assert (response.json()["error"]["type"], response.json()["error"]["code"]) == (
            "rate_limit_error", "rate_limit_exceeded")
        # No capacity: the provider withdraws; 503 with Retry-After.
        assert (await provider.post("/api/market/withdraw", headers=provider.auth)).status_code \
            == 200

        async def gone() -> bool:
            return not (await gateway.get("/api/market/offers")).json()["offers"]
        await eventually(gone, 10, "the gateway sees the offer withdrawn")
        response = await call("/v1/chat/completions", chat)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "2"
        assert response.json()["error"] == {
            "message": f"no other node on network {gateway.node.settings.network} offers "
                       f"capacity now", "type": "service_unavailable", "param": None,
            "code": "no_capacity"}
        # Nothing was charged for any of it.
        assert await gateway.node.jobs.ledger.recent(10) == []  # type: ignore[union-attr]
        _ = json


async def test_a_backend_error_mid_stream_reaches_the_client_as_the_backends_reason(
        tmp_path: Path) -> None:
    """A streamed job whose backend answers HTTP 500: the provider declines it with the
    backend's reason after accepting (it does not just drop the stream), the client gets an
    error naming that reason, and nothing is charged on either side. The provider had accepted,
    so the answer had begun (HTTP 200): the error is an SSE event, which the official client
    raises as APIError."""
    async with market(tmp_path) as (provider, gateway, url):
        oa = client(gateway)
        with pytest.raises(openai.APIError) as caught:
            await trio.to_thread.run_sync(lambda: list(oa.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "!error"}], max_tokens=5,
                stream=True)))
        assert not isinstance(caught.value, openai.APIStatusError)
        error = caught.value.body
        assert isinstance(error, dict), error
        assert (error["type"], error["code"]) == ("upstream_error", "provider_error")
        assert "could not serve it: backend_http_status" in error["message"], error
        # The same input failed twice at the provider (`user_fault_after`): the input is blamed.
        assert provider.node.jobs.counters.backend_errors == 2
        assert await gateway.node.jobs.ledger.recent(10) == []  # type: ignore[union-attr]
        assert await provider.node.jobs.ledger.recent(10) == []  # type: ignore[union-attr]


async def test_the_synthetic_backend_streams_at_its_rate(tmp_path: Path) -> None:
    """A provider on the default synthetic backend streams too: pieces as the tokens fall due
    at its offered rate (200 tokens/s: 100 tokens take about 0.5 s), not one piece at the end."""
    async with api_node(tmp_path / "provider", 3, capacity=200, min_price=0.01) as provider:
        async with api_node(tmp_path / "gateway", 4,
                            bootstrap=(provider.node.addrs[0],)) as gateway:
            async def sees_offer() -> bool:
                return bool((await gateway.get("/api/market/offers")).json()["offers"])
            await eventually(sees_offer, 10, "the gateway sees the provider's offer")
            oa = client(gateway)

            def stream() -> list[Any]:
                return list(oa.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=100,
                    stream=True))

            chunks = await trio.to_thread.run_sync(stream)
            texts = [c.choices[0].delta.content for c in chunks
                     if c.choices and c.choices[0].delta.content]
            filler = ("the", "market", "routes", "tokens", "to", "providers", "at", "a",
                      "locked", "price")
            assert "".join(texts) == " ".join(filler[i % 10] for i in range(100))
            assert len(texts) >= 5  # streamed in pieces over about half a second
            market_fields = chunks[-1].model_extra["neuroshard"]
            assert market_fields["tokens_served"] == 100
            assert market_fields["cost_nano"] == settle_amounts(
                100, market_fields["locked_price_nano"], API_MARKET.burn_rate).payment


async def test_per_user_keys_name_the_buyer_in_both_ledgers(tmp_path: Path) -> None:
    async with market(tmp_path) as (provider, gateway, url):
        alice_key = "sk-alice-0123456789abcdef"
        (gateway.data_dir / "api_keys.toml").write_text(
            f'[users]\nalice = "{alice_key}"\nbob = "short"\n', "utf-8")
        oa = client(gateway, key=alice_key)
        answer = await trio.to_thread.run_sync(lambda: oa.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "one two three"}]))
        rid = answer.model_extra["neuroshard"]["request_id"]
        [g] = await rows(gateway, rid)

        async def provider_row() -> list[Any]:
            return await rows(provider, rid)
        [p] = await eventually(provider_row, 5, "the provider records its earning")
        assert (g.user, p.user, g.tokens) == ("alice", "alice", 3)
        # A key buys for its own user only; a key shorter than 16 characters is no key.
        with pytest.raises(openai.PermissionDeniedError):
            await trio.to_thread.run_sync(lambda: oa.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], user="mallory"))
        with pytest.raises(openai.AuthenticationError):
            await trio.to_thread.run_sync(lambda: client(gateway, key="short").models.list())
        # The node's own token still buys for any user it names.
        named = await trio.to_thread.run_sync(lambda: client(gateway).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], user="carol"))
        [c] = await rows(gateway, named.model_extra["neuroshard"]["request_id"])
        assert c.user == "carol"
        # User keys reach only /v1: the node's other writes still need the node's token.
        response = await gateway.post("/api/market/withdraw",
                                      headers={"Authorization": f"Bearer {alice_key}"})
        assert response.status_code == 403
