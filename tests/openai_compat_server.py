"""A small OpenAI-compatible HTTP server for tests: a real ASGI app served by hypercorn on trio,
listening on 127.0.0.1. It stands in for llama.cpp server / vLLM / Ollama, not for project code.

Behaviour is chosen by the prompt, so one server covers every case:
- any prompt: echoes it; `usage.completion_tokens` = number of words in the prompt, capped at
  max_tokens (what a real server reports);
- "!tokens N": reports N completion tokens whatever max_tokens says;
- "!error": HTTP 500 with an OpenAI-style error body;
- "!badjson": HTTP 200 with a body that is not JSON;
- "!nousage": HTTP 200 without `usage`;
- "!slow S": waits S seconds before answering;
- "!huge": a 5 MiB body.
- "!rate R": max_tokens words ("w0 w1 …"), paced at R tokens per second (0: as fast as it can).
With `"stream": true` the same answers come as server-sent events, one word per event (OpenAI's
`chat.completion.chunk` / `text_completion` shapes), then a chunk with `usage` when the request
asks for it (`stream_options.include_usage`), then `data: [DONE]`. `streams` records, per
streamed request, the words sent and whether the client went away before the end.
The server counts the requests it received, so tests can tell whether a call reached it, and
`GET /stats` shows the last request's body as it arrived (`last`).

Run alone (a real server process, for tests and `python -m neuroshard_p2p.bench openai`):
    python tests/openai_compat_server.py --port 0   # prints "listening on http://127.0.0.1:PORT"
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class OpenAICompatServer:
    """Counters and the URL of a running server."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: One record per streamed request: {"sent": words sent, "disconnected": bool, "done": bool}.
    streams: list[dict[str, Any]] = field(default_factory=list)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if scope["method"] == "GET" and path == "/stats":  # for tests that run it as a process
            await _reply(send, 200, {"requests": len(self.requests), "streams": self.streams,
                                     "last": self.requests[-1] if self.requests else None})
            return
        if scope["method"] != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            await _reply(send, 404, {"error": {"message": f"no route {path}"}})
            return
        request = json.loads(body)
        self.requests.append(request)
        chat = path.endswith("chat/completions")
        prompt = request["messages"][-1]["content"] if chat else request["prompt"]
        max_tokens = int(request.get("max_tokens", 16))
        words = prompt.split()
        command = words[0] if words else ""
        if command == "!error":
            await _reply(send, 500, {"error": {"message": "model crashed: out of memory",
                                               "type": "server_error"}})
            return
        if command == "!badjson":
            await _raw(send, 200, b"this is not json {")
            return
        if command == "!huge":
            await _raw(send, 200, b"x" * (5 * 1024 * 1024))
            return
        if command == "!deep":  # valid JSON nested deeper than Python's parser recurses
            await _raw(send, 200, b"[" * 200_000 + b"]" * 200_000, b"application/json")
            return
        if command == "!status":  # a status the prompt names, with a body that is not JSON
            await _raw(send, int(words[1]), b"<html>bad gateway</html>")
            return
        if command == "!slow":
            await trio.sleep(float(words[1]))
        rate = None
        if command == "!rate":
            rate = float(words[1])
            tag = words[2] if len(words) > 2 else "w"  # "!rate R TAG": words TAG0 TAG1 …
            words = [f"{tag}{i}" for i in range(max_tokens)]
        if request.get("stream"):
            usage = bool((request.get("stream_options") or {}).get("include_usage"))
            await self._stream(receive, send, request, chat, words[:max_tokens], rate, usage)
            return
        tokens = min(len(words), max_tokens)
        if command == "!tokens":
            tokens = int(words[1])
        text = " ".join(words[:max_tokens])
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        answer: dict[str, Any] = {"id": "cmpl-test", "object": "chat.completion" if chat else
                                  "text_completion", "model": request.get("model", ""),
                                  "choices": [choice]}
        if command != "!nousage":
            answer["usage"] = {"prompt_tokens": len(words), "completion_tokens": tokens,
                               "total_tokens": len(words) + tokens}
        await _reply(send, 200, answer)


    async def _stream(self, receive: Receive, send: Send, request: dict[str, Any], chat: bool,
                      words: list[str], rate: float | None, usage: bool) -> None:
        record: dict[str, Any] = {"sent": 0, "disconnected": False, "done": False}
        self.streams.append(record)
        model = request.get("model", "")
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(text: str | None, finish: str | None) -> bytes:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if chat:
                choice["delta"] = {} if text is None else {"content": text}
            else:
                choice["text"] = text or ""
            body = {"id": "cmpl-test", "object": kind, "model": model, "choices": [choice]}
            return b"data: " + json.dumps(body).encode() + b"\n\n"

        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"),
                                (b"cache-control", b"no-cache")]})
        async def watch(scope: trio.CancelScope) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            record["disconnected"] = not record["done"]
            scope.cancel()

        async def generate(scope: trio.CancelScope) -> None:
            started = trio.current_time()
            for i, word in enumerate(words):
                if rate:
                    await trio.sleep_until(started + (i + 1) / rate)
                await send({"type": "http.response.body", "body": event(
                    word if i == 0 else " " + word, None), "more_body": True})
                record["sent"] += 1
            tail = event(None, "length" if rate is not None else "stop")
            if usage:
                tail += b"data: " + json.dumps({
                    "id": "cmpl-test", "object": kind, "model": model, "choices": [],
                    "usage": {"prompt_tokens": 1, "completion_tokens": len(words),
                              "total_tokens": 1 + len(words)}}).encode() + b"\n\n"
            record["done"] = True
            await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n",
                        "more_body": False})
            scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, nursery.cancel_scope)
                nursery.start_soon(generate, nursery.cancel_scope)
        except Exception:  # noqa: BLE001 - the client went away (a send failed)
            record["disconnected"] = not record["done"]


async def _reply(send: Send, status: int, payload: dict[str, Any]) -> None:
    await _raw(send, status, json.dumps(payload).encode(), b"application/json")


async def _raw(send: Send, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def start_openai_server(nursery: trio.Nursery) -> OpenAICompatServer:
    """Start a server in `nursery` on a free port of 127.0.0.1; it stops with the nursery."""
    server = OpenAICompatServer()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.1
    binds = await nursery.start(serve, server.app, config)  # type: ignore[arg-type]
    server.url = binds[0]
    return server


async def _main(port: int) -> None:
    server = OpenAICompatServer()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, server.app, config)  # type: ignore[arg-type]
        print(f"listening on {binds[0]}", flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="An OpenAI-compatible test server (SSE too).")
    parser.add_argument("--port", type=int, default=0)
    trio.run(_main, parser.parse_args().port)
