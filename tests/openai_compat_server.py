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
The server counts the requests it received, so tests can tell whether a call reached it.
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
