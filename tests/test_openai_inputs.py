"""The /v1 body checks (api/openai.py) and the chat prompt's form (node/backends.py), exact:
every accepted shape of the price cap, and each refusal with its status, param and code."""

from __future__ import annotations

import json

import pytest
import trio

from neuroshard_p2p.api.openai import OpenAIError, parse_completion
from neuroshard_p2p.node.backends import (
    OpenAIBackend,
    SamplingError,
    SyntheticBackend,
    chat_messages,
    chat_prompt,
    plain_prompt,
    sampling_prompt,
    split_sampling,
)

MODEL = "neuroshard/synthetic-1"


def parse(body: dict, chat: bool = True):  # type: ignore[no-untyped-def]
    return parse_completion(json.dumps(body).encode(), "application/json", chat=chat,
                            model=MODEL, default_max_tokens=1024, max_tokens_limit=1_000_000)


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("extra, nano", [
    ({}, None),
    ({"provider": {"max_price": {"completion": 0.5}}}, 500_000_000),
    ({"provider": {"max_price": {"completion": 1, "prompt": 9}}}, 1_000_000_000),
    ({"provider": {"max_price": 0.25}}, 250_000_000),
    ({"max_price": 0.000000001}, 1),
    ({"provider": {"order": ["x"]}}, None),
])
def test_price_cap_shapes(extra: dict, nano: int | None) -> None:
    assert parse({**CHAT, **extra}).max_price_nano == nano


@pytest.mark.parametrize("extra, status, param, code", [
    ({"provider": {"max_price": {"prompt": 1}}}, 400, "provider.max_price", None),
    ({"provider": {"max_price": 0.5}, "max_price": 0.5}, 400, "max_price", None),
    ({"max_price": 0}, 400, "max_price", None),
    ({"max_price": "1"}, 400, "max_price", None),
    ({"max_price": True}, 400, "max_price", None),
    ({"provider": "cheap"}, 400, "provider", None),
    ({"max_tokens": 0}, 400, "max_tokens", None),
    ({"max_tokens": 1_000_001}, 400, "max_tokens", None),
    ({"max_completion_tokens": 2.5}, 400, "max_completion_tokens", None),
    ({"model": "gpt-4o"}, 404, "model", "model_not_found"),
    ({"n": 3}, 400, "n", None),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role", None),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages[0].content", None),
    ({"messages": [{"role": "user", "content": "x" * 70_000}]}, 400, "messages",
     "context_length_exceeded"),
    ({"stream": "yes"}, 400, "stream", None),
    ({"user": ""}, 400, "user", None),
    # Sampling settings are checked as the provider checks them (spec §9.2 S5, S6).
    ({"temperature": 2.5}, 400, "temperature", None),
    ({"temperature": True}, 400, "temperature", None),
    ({"top_p": -0.1}, 400, "top_p", None),
    ({"presence_penalty": "1"}, 400, "presence_penalty", None),
    ({"frequency_penalty": 2.01}, 400, "frequency_penalty", None),
    ({"seed": 1.5}, 400, "seed", None),
    ({"seed": 2**63}, 400, "seed", None),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
    ({"stop": ""}, 400, "stop", None),
    ({"stop": ["é" * 129]}, 400, "stop", None),
    ({"stop": [1]}, 400, "stop", None),
    # What the market cannot honour is refused, not ignored.
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools",
     "unsupported_parameter"),
    ({"functions": [{"name": "f"}]}, 400, "functions", "unsupported_parameter"),
    ({"response_format": {"type": "json_object"}}, 400, "response_format",
     "unsupported_parameter"),
    ({"logprobs": True}, 400, "logprobs", "unsupported_parameter"),
    ({"top_logprobs": 2}, 400, "top_logprobs", "unsupported_parameter"),
    ({"logit_bias": {"50256": -100}}, 400, "logit_bias", "unsupported_parameter"),
])
def test_refusals(extra: dict, status: int, param: str, code: str | None) -> None:
    with pytest.raises(OpenAIError) as caught:
        parse({**CHAT, **extra})
    error = caught.value
    assert (error.status, error.param, error.code) == (status, param, code)
    assert error.body()["error"]["message"] == str(error)


def test_accepted_fields() -> None:
    request = parse({**CHAT, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        "max_completion_tokens": 7.0, "stream": True, "stream_options": {"include_usage": True},
        "temperature": 0.2, "user": "alice"})
    assert (request.max_tokens, request.stream, request.include_usage, request.user) == (
        7, True, True, "alice")
    assert chat_messages(request.prompt) == [{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": "ab"}]
    plain = parse({"prompt": ["one two"], "max_tokens": 3}, chat=False)
    assert (plain.prompt, plain.max_tokens, plain.chat) == ("one two", 3, False)
    with pytest.raises(OpenAIError):
        parse({"prompt": "\x00chat/1\n[]"}, chat=False)  # a plain prompt cannot pose as a chat


def test_chat_prompt_and_its_transcript() -> None:
    prompt = chat_prompt([{"role": "system", "content": "s"}, {"role": "user", "content": "é"}])
    assert prompt == '\x00chat/1\n[{"role":"system","content":"s"},{"role":"user","content":"é"}]'
    assert plain_prompt(prompt) == "system: s\nuser: é\nassistant:"
    assert plain_prompt("just text") == "just text" and chat_messages("just text") is None
    assert chat_messages("\x00chat/1\n{broken") is None


async def test_synthetic_stream_emits_every_token_at_its_rate() -> None:
    backend = SyntheticBackend(1000)
    pieces: list[tuple[str, int, float]] = []

    async def emit(text: str, tokens: int) -> None:
        pieces.append((text, tokens, trio.current_time()))

    started = trio.current_time()
    result = await backend.serve_stream("x", 50, trio.current_time() + 5, emit)
    assert result.tokens_served == 50 and sum(t for _, t, _ in pieces) == 50
    assert "".join(p for p, _, _ in pieces) == (await backend.serve("x", 50, 1e18)).text
    assert len(pieces) > 1  # in pieces, not at the end
    assert pieces[-1][2] - started >= 0.05 - 1e-3  # 50 tokens at 1000/s


def test_sampling_settings_as_the_job_carries_them() -> None:
    request = parse({**CHAT, "temperature": 0, "top_p": 0.9, "seed": 7.0, "stop": "\n\n",
                     "presence_penalty": -2, "frequency_penalty": 0.5, "user": "alice"})
    assert request.sampling == {"temperature": 0, "top_p": 0.9, "seed": 7, "stop": ["\n\n"],
                                "presence_penalty": -2, "frequency_penalty": 0.5}
    assert type(request.sampling["seed"]) is int
    # null is "not set"; what cannot be honoured is accepted when it asks for nothing.
    plain = parse({**CHAT, "temperature": None, "stop": None, "tools": [], "logprobs": False,
                   "top_logprobs": 0, "logit_bias": {}, "response_format": {"type": "text"},
                   "tool_choice": "none", "metadata": {"a": "b"}})
    assert plain.sampling == {}
    # The header counts toward the Job's prompt limit (65,536 bytes as it is carried).
    room = 65_536 - len(sampling_prompt({}, chat_prompt([{"role": "user", "content": ""}])))
    parse({**CHAT, "messages": [{"role": "user", "content": "x" * room}]})
    with pytest.raises(OpenAIError) as caught:
        parse({**CHAT, "messages": [{"role": "user", "content": "x" * room}], "seed": 1})
    assert (caught.value.param, caught.value.code) == ("messages", "context_length_exceeded")


def test_the_sampling_header_round_trips_and_the_backend_gets_its_fields() -> None:
    sampling = {"temperature": 0.2, "stop": ["ende", "é\n"], "seed": -1}
    prompt = sampling_prompt(sampling, chat_prompt([{"role": "user", "content": "a\nb"}]))
    assert prompt.startswith('\x00sampling/1\n{"seed":-1,"stop":["ende","é\\n"],'
                             '"temperature":0.2}\n\x00chat/1\n')
    assert split_sampling(prompt) == (sampling, chat_prompt([{"role": "user", "content": "a\nb"}]))
    backend = OpenAIBackend("http://127.0.0.1:9", "tiny")
    payload = backend._payload("hi", 5, True, {"temperature": 0.2, "stop": ["x"]})
    assert payload == {"temperature": 0.2, "stop": ["x"], "model": "tiny", "max_tokens": 5,
                       "stream": True, "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(SamplingError) as caught:
        backend._payload("hi", 5, True, {"model": "other"})  # a header cannot replace a field
    assert caught.value.rule == "S4"
