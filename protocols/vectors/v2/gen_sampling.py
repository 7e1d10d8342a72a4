"""Vectors of revision 2.1 (sampling): the sampling header that a Job's prompt carries on
job/2.2.0, built from the text of protocols/market-v2.md §9.2 with the standard library only,
without importing the project. `generate.py` calls `documents()` (main and --check); the
project's test is tests/test_vectors_sampling.py.

    python protocols/vectors/v2/generate.py          # writes sampling.json with the others

Two statements check each other before anything is written: each vector's outcome is written by
hand (the parsed header and the rest, or the rule S1–S6 that fails first), and this file's own
reading of §9.2 (`g_split`) must give exactly that outcome, types included (an integer stays an
integer), or the script stops.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

PREFIX = "\x00sampling/1\n"
CHAT = "\x00chat/1\n"
MEMBERS = ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")
RANGES = {"temperature": (0, 2), "top_p": (0, 1), "presence_penalty": (-2, 2),
          "frequency_penalty": (-2, 2)}
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
MAX_STOP_SEQUENCES = 4
MAX_STOP_BYTES = 256
MAX_PROMPT_BYTES = 65_536
NETWORK = "simnet-0123456789abcdef"


# --- the generator's own reading of §9.2 ----------------------------------------------------------

class Broken(Exception):
    def __init__(self, rule: str, why: str) -> None:
        super().__init__(f"{rule}: {why}")
        self.rule = rule


class _Num:
    """A JSON number as written: `is_int` when it has no fraction and no exponent part."""

    def __init__(self, text: str, is_int: bool) -> None:
        self.text, self.is_int = text, is_int


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("duplicate member name")
    return dict(pairs)


def _parse_h(head: str) -> dict[str, Any]:
    """S3: one JSON object, JSON whitespace (space, tab, CR) around it and nothing else."""
    if not re.fullmatch(r"[ \t\r]*\{.*\}[ \t\r]*", head, re.S):
        raise Broken("S3", "not one JSON object")
    try:
        value = json.loads(head, object_pairs_hook=_no_duplicates,
                           parse_constant=_refuse_constant,
                           parse_int=lambda s: _Num(s, True),
                           parse_float=lambda s: _Num(s, False))
    except (ValueError, RecursionError) as exc:
        raise Broken("S3", str(exc)[:60]) from None
    if not isinstance(value, dict):
        raise Broken("S3", "not an object")
    return value


def _number(name: str, value: Any) -> int | float:
    """S5 for one member: its value as the provider passes it on."""
    if not isinstance(value, _Num):
        raise Broken("S5", f"{name} is not a number")
    if name == "seed":
        if not value.is_int:
            raise Broken("S5", "seed has a fraction or an exponent part")
        exact = Decimal(value.text)  # exact at any length
        if not SEED_MIN <= exact <= SEED_MAX:
            raise Broken("S5", "seed out of range")
        return int(value.text)
    low, high = RANGES[name]
    double = float(value.text)  # the nearest IEEE 754 double (inf when it overflows)
    if not low <= double <= high:
        raise Broken("S5", f"{name} out of range")
    return int(value.text) if value.is_int else double


def _stop(value: Any) -> list[str]:
    if not (isinstance(value, list) and 1 <= len(value) <= MAX_STOP_SEQUENCES):
        raise Broken("S6", "stop is not an array of 1 to 4 items")
    for item in value:
        if not isinstance(item, str):
            raise Broken("S6", "a stop sequence is not a string")
        try:
            size = len(item.encode("utf-8"))
        except UnicodeEncodeError:
            raise Broken("S6", "a stop sequence has no UTF-8 form") from None
        if not 1 <= size <= MAX_STOP_BYTES:
            raise Broken("S6", "a stop sequence is not 1 to 256 bytes")
    return list(value)


def g_split(prompt: str) -> tuple[dict[str, Any], str]:
    """§9.2: (the sampling settings, the rest P), or Broken with the first rule that fails."""
    if not prompt.startswith(PREFIX):
        raise Broken("S1", "no sampling prefix")
    body = prompt[len(PREFIX):]
    end = body.find("\n")
    if end < 0:
        raise Broken("S2", "no line feed after the prefix")
    if end == 0:
        raise Broken("S2", "empty header")
    head, rest = body[:end], body[end + 1:]
    raw = _parse_h(head)
    for name in raw:
        if name not in MEMBERS:
            raise Broken("S4", f"unknown member {name!r}")
    settings: dict[str, Any] = {name: _number(name, value) for name, value in raw.items()
                                if name != "stop"}
    if "stop" in raw:
        settings["stop"] = _stop(raw["stop"])
    return {name: settings[name] for name in raw}, rest


def g_encode(sampling: dict[str, Any], rest: str) -> str:
    """The reference gateway's header (informative): compact, sorted, non-ASCII as it is."""
    return (PREFIX + json.dumps(sampling, separators=(",", ":"), sort_keys=True,
                                ensure_ascii=False) + "\n" + rest)


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 is not 1.0, True is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


# --- vectors ---------------------------------------------------------------------------------------

def p(head: str, rest: str = "Hello") -> str:
    return PREFIX + head + "\n" + rest


CHAT_REST = CHAT + json.dumps([{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Name a prime."}],
                              ensure_ascii=False, separators=(",", ":"))
STOP_256 = "€" * 84 + "🙂"  # 84 × 3 + 4 = 256 bytes
ALL_SIX = ('{"frequency_penalty":0.5,"presence_penalty":-0.5,"seed":42,'
           '"stop":["\\n\\n","END"],"temperature":0.7,"top_p":0.9}')


def valid() -> list[dict[str, Any]]:
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("empty-header-plain-text", p("{}", "Write a haiku about the sea."), {},
         "Write a haiku about the sea."),
        ("chat-prompt-rest", p('{"temperature":0.2}', CHAT_REST), {"temperature": 0.2}, CHAT_REST),
        ("all-six-members", p(ALL_SIX),
         {"frequency_penalty": 0.5, "presence_penalty": -0.5, "seed": 42, "stop": ["\n\n", "END"],
          "temperature": 0.7, "top_p": 0.9}, "Hello"),
        ("temperature-0", p('{"temperature":0}'), {"temperature": 0}, "Hello"),
        ("temperature-2", p('{"temperature":2}'), {"temperature": 2}, "Hello"),
        ("temperature-integer-1-stays-integer", p('{"temperature":1}'), {"temperature": 1},
         "Hello"),
        ("temperature-1.0-stays-fraction", p('{"temperature":1.0}'), {"temperature": 1.0},
         "Hello"),
        ("temperature-minus-zero", p('{"temperature":-0.0}'), {"temperature": -0.0}, "Hello"),
        ("temperature-rounds-to-2-as-a-double", p('{"temperature":2.0000000000000001}'),
         {"temperature": 2.0}, "Hello"),
        ("numbers-with-exponents", p('{"temperature":1E0,"top_p":5e-1}'),
         {"temperature": 1.0, "top_p": 0.5}, "Hello"),
        ("top_p-0", p('{"top_p":0}'), {"top_p": 0}, "Hello"),
        ("top_p-1", p('{"top_p":1}'), {"top_p": 1}, "Hello"),
        ("penalties-low", p('{"presence_penalty":-2,"frequency_penalty":-2.0}'),
         {"presence_penalty": -2, "frequency_penalty": -2.0}, "Hello"),
        ("penalties-high", p('{"frequency_penalty":2,"presence_penalty":2.0}'),
         {"frequency_penalty": 2, "presence_penalty": 2.0}, "Hello"),
        ("seed-lowest", p('{"seed":-9223372036854775808}'), {"seed": SEED_MIN}, "Hello"),
        ("seed-highest", p('{"seed":9223372036854775807}'), {"seed": SEED_MAX}, "Hello"),
        ("seed-minus-zero", p('{"seed":-0}'), {"seed": 0}, "Hello"),
        ("four-stop-sequences", p('{"stop":["a","\\n","Ende ü","a"]}'),
         {"stop": ["a", "\n", "Ende ü", "a"]}, "Hello"),
        ("stop-256-bytes-multibyte", p('{"stop":["' + STOP_256 + '"]}'), {"stop": [STOP_256]},
         "Hello"),
        ("stop-256-bytes-escaped", p('{"stop":["' + "\\u00e9" * 128 + '"]}'),
         {"stop": ["é" * 128]}, "Hello"),
        ("whitespace-inside-header",
         p(' \t{ "temperature" :\t0.5 ,\r"seed": 7 , "stop" : [ "x" ] }\r \t'),
         {"temperature": 0.5, "seed": 7, "stop": ["x"]}, "Hello"),
        ("crlf-after-header", p("{}\r", "Hello"), {}, "Hello"),
        ("empty-rest", p('{"seed":1}', ""), {"seed": 1}, ""),
        ("rest-with-line-feeds-and-a-second-header",
         p('{"temperature":0.1}', "line one\n" + PREFIX + '{"temperature":2}\nline three\n'),
         {"temperature": 0.1}, "line one\n" + PREFIX + '{"temperature":2}\nline three\n'),
        ("rest-starting-with-a-line-feed", p("{}", "\n\nHello"), {}, "\n\nHello"),
    ]
    out = []
    for name, prompt, sampling, rest in cases:
        got = g_split(prompt)
        assert same(got, (sampling, rest)), (name, got)
        assert len(prompt.encode("utf-8")) <= MAX_PROMPT_BYTES, name
        out.append({"name": name, "prompt": prompt, "sampling": sampling, "rest": rest})
    return out


def invalid() -> list[dict[str, Any]]:
    cases: list[tuple[str, str, str]] = [
        ("plain-text", "Hello", "S1"),
        ("empty-prompt", "", "S1"),
        ("chat-prompt-only", CHAT_REST, "S1"),
        ("prefix-without-nul", "sampling/1\n{}\nHello", "S1"),
        ("prefix-other-version", "\x00sampling/2\n{}\nHello", "S1"),
        ("prefix-other-case", "\x00Sampling/1\n{}\nHello", "S1"),
        ("header-after-text", "Hello" + p("{}"), "S1"),
        ("prefix-only", PREFIX, "S2"),
        ("prefix-without-line-feed", PREFIX + '{"seed":1}', "S2"),
        ("carriage-return-is-not-a-line-feed", PREFIX + "{}\rHello", "S2"),
        ("empty-header", p(""), "S2"),
        ("header-not-json", p("temperature=0.7"), "S3"),
        ("header-json-array", p("[]"), "S3"),
        ("header-json-string", p('"{}"'), "S3"),
        ("header-whitespace-only", p(" \t"), "S3"),
        ("nan", p('{"temperature":NaN}'), "S3"),
        ("infinity", p('{"temperature":Infinity}'), "S3"),
        ("minus-infinity", p('{"presence_penalty":-Infinity}'), "S3"),
        ("duplicate-member", p('{"seed":1,"seed":1}'), "S3"),
        ("duplicate-member-escaped", p('{"seed":1,"s\\u0065ed":2}'), "S3"),
        ("order-duplicate-nested-before-stop", p('{"stop":[{"a":1,"a":2}]}'), "S3"),
        ("trailing-garbage", p('{"seed":1}x'), "S3"),
        ("two-objects", p("{}{}"), "S3"),
        ("trailing-form-feed", p("{}\f"), "S3"),
        ("trailing-no-break-space", p("{}\u00a0"), "S3"),
        ("byte-order-mark", p("\ufeff{}"), "S3"),
        ("single-quotes", p("{'seed':1}"), "S3"),
        ("trailing-comma", p('{"seed":1,}'), "S3"),
        ("raw-tab-in-string", p('{"stop":["a\tb"]}'), "S3"),
        ("leading-zero", p('{"seed":01}'), "S3"),
        ("plus-sign", p('{"temperature":+1}'), "S3"),
        ("bare-fraction", p('{"temperature":.5}'), "S3"),
        ("unterminated-deep-nesting", p('{"stop":' + "[" * 20_000 + "}"), "S3"),
        ("unknown-logit_bias", p('{"logit_bias":{"50256":-100}}'), "S4"),
        ("unknown-n", p('{"n":1}'), "S4"),
        ("unknown-max_tokens", p('{"max_tokens":10}'), "S4"),
        ("member-name-case", p('{"Temperature":1}'), "S4"),
        ("order-unknown-before-range", p('{"temperature":5,"n":1}'), "S4"),
        ("temperature-below-0", p('{"temperature":-0.1}'), "S5"),
        ("temperature-above-2", p('{"temperature":2.0000001}'), "S5"),
        ("temperature-overflows", p('{"temperature":1e400}'), "S5"),
        ("temperature-true", p('{"temperature":true}'), "S5"),
        ("temperature-string", p('{"temperature":"1"}'), "S5"),
        ("temperature-null", p('{"temperature":null}'), "S5"),
        ("top_p-1.5", p('{"top_p":1.5}'), "S5"),
        ("presence_penalty-3", p('{"presence_penalty":3}'), "S5"),
        ("frequency_penalty-minus-2.5", p('{"frequency_penalty":-2.5}'), "S5"),
        ("seed-fraction", p('{"seed":1.5}'), "S5"),
        ("seed-zero-fraction", p('{"seed":1.0}'), "S5"),
        ("seed-exponent", p('{"seed":1e3}'), "S5"),
        ("seed-2^63", p('{"seed":9223372036854775808}'), "S5"),
        ("seed-below-minus-2^63", p('{"seed":-9223372036854775809}'), "S5"),
        ("seed-5000-digits", p('{"seed":' + "9" * 5000 + "}"), "S5"),
        ("seed-true", p('{"seed":true}'), "S5"),
        ("seed-string", p('{"seed":"42"}'), "S5"),
        ("order-range-before-stop", p('{"stop":[],"temperature":3}'), "S5"),
        ("stop-a-string", p('{"stop":"END"}'), "S6"),
        ("stop-empty-array", p('{"stop":[]}'), "S6"),
        ("stop-five-strings", p('{"stop":["a","b","c","d","e"]}'), "S6"),
        ("stop-empty-string", p('{"stop":["a",""]}'), "S6"),
        ("stop-257-bytes", p('{"stop":["' + STOP_256 + 'x"]}'), "S6"),
        ("stop-257-bytes-escaped", p('{"stop":["' + "\\u00e9" * 128 + 'x"]}'), "S6"),
        ("stop-a-number", p('{"stop":["a",1]}'), "S6"),
        ("stop-null", p('{"stop":null}'), "S6"),
        ("stop-nested-array", p('{"stop":[["a"]]}'), "S6"),
        ("stop-unpaired-surrogate", p('{"stop":["\\ud800"]}'), "S6"),
    ]
    out = []
    for name, prompt, rule in cases:
        try:
            got = g_split(prompt)
        except Broken as broken:
            assert broken.rule == rule, (name, broken)
        else:
            raise AssertionError(f"{name}: accepted as {got}")
        assert len(prompt.encode("utf-8")) <= MAX_PROMPT_BYTES, name
        out.append({"name": name, "prompt": prompt, "rule": rule})
    return out


def encode() -> list[dict[str, Any]]:
    """The reference gateway's prompt for a buyer's settings (informative)."""
    cases: list[tuple[str, dict[str, Any], str, str]] = [
        ("nothing-set", {}, "Hello", PREFIX + "{}\nHello"),
        ("sorted-compact-raw-non-ascii",
         {"top_p": 0.9, "temperature": 0.7, "stop": ["\n\n", "Ende ü"], "seed": 42},
         "Hello",
         PREFIX + '{"seed":42,"stop":["\\n\\n","Ende ü"],"temperature":0.7,"top_p":0.9}\nHello'),
        ("all-six-chat",
         {"temperature": 1, "presence_penalty": -2, "frequency_penalty": 0.25, "top_p": 1.0,
          "seed": SEED_MAX, "stop": ["</s>"]},
         CHAT_REST,
         PREFIX + '{"frequency_penalty":0.25,"presence_penalty":-2,"seed":9223372036854775807,'
                  '"stop":["</s>"],"temperature":1,"top_p":1.0}\n' + CHAT_REST),
    ]
    out = []
    for name, sampling, rest, prompt in cases:
        assert g_encode(sampling, rest) == prompt, name
        assert same(g_split(prompt), ({k: sampling[k] for k in sorted(sampling)}, rest)), name
        out.append({"name": name, "sampling": sampling, "rest": rest, "prompt": prompt})
    return out


def protocol_ids() -> dict[str, str]:
    return {"network_id": NETWORK, "sampling": f"/neuroshard/{NETWORK}/job/2.2.0",
            "streaming": f"/neuroshard/{NETWORK}/job/2.1.0",
            "fallback": f"/neuroshard/{NETWORK}/job/2.0.0"}


def documents() -> dict[str, Any]:
    doc = {
        "protocol": "neuroshard market v2, revision 2.1: sampling",
        "spec": "protocols/market-v2.md §9.2",
        "generator": "protocols/vectors/v2/gen_sampling.py",
        "about": "job/2.2.0: the Job's prompt is PREFIX + H + LF + P; H the sampling header "
                 "(rules S1-S6, the first that fails is named). Integers in this file are exact "
                 "JSON numbers (seeds up to 2^63-1), and a number written without fraction or "
                 "exponent is an integer in `sampling` (1, not 1.0).",
        "limits": {"prefix": PREFIX, "prompt_bytes": MAX_PROMPT_BYTES,
                   "max_stop_sequences": MAX_STOP_SEQUENCES, "max_stop_bytes": MAX_STOP_BYTES,
                   "members": sorted(MEMBERS),
                   "ranges": {**{k: list(v) for k, v in RANGES.items()},
                              "seed": [SEED_MIN, SEED_MAX]}},
        "protocol_ids": protocol_ids(),
        "valid": valid(), "invalid": invalid(), "encode": encode()}
    # The file must read back with the same types (ints stay ints, -0.0 stays -0.0).
    again = json.loads(json.dumps(doc, ensure_ascii=False))
    assert same(again, doc)
    return {"sampling.json": doc}
