"""The API's input checks on their own: exact results for good bodies, the status and the field
named for bad ones, and no body at all (any bytes) that escapes as anything but InputError.

The same table runs through real HTTP against a running node in test_api.py; here it is fast and
exhaustive."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuroshard_p2p.api.inputs import (
    MAX_BODY_BYTES,
    InputError,
    RegisterCapacity,
    SubmitRequest,
    parse_history_window,
    parse_register,
    parse_request_id,
    parse_submit,
    parse_withdraw,
)
from neuroshard_p2p.config import MarketConfig

CONFIG = MarketConfig()
JSON = "application/json"


def test_seed_register_body() -> None:
    body = b'{"tokens_per_second": 1000, "min_price": 0.0}'
    assert parse_register(body, JSON, CONFIG) == RegisterCapacity(1000, 0)


def test_register_price_in_neuro_becomes_nano() -> None:
    body = json.dumps({"tokens_per_second": 50_000, "min_price": 0.25}).encode()
    assert parse_register(body, None, CONFIG) == RegisterCapacity(50_000, 250_000_000)
    # An integral float is an integer; min_price defaults to 0.
    assert parse_register(b'{"tokens_per_second": 7.0}', JSON, CONFIG) == RegisterCapacity(7, 0)


def test_withdraw_takes_nothing() -> None:
    assert parse_withdraw(b"", None) is None
    assert parse_withdraw(b"{}", JSON) is None
    assert parse_withdraw(b"  \n", "application/x-www-form-urlencoded") is None


def test_submit_defaults_and_exact_values() -> None:
    body = b'{"tokens": 5000, "max_price": 0.5}'
    assert parse_submit(body, JSON, CONFIG) == SubmitRequest(5000, 500_000_000, "standard", "", None)
    body = json.dumps({"tokens": 1, "max_price": 2, "tier": "premium", "prompt": "héllo",
                       "user": "alice"}).encode()
    assert parse_submit(body, JSON, CONFIG) == SubmitRequest(1, 2_000_000_000, "premium", "héllo",
                                                            "alice")


REGISTER_BAD: list[tuple[bytes, str | None, int, str | None, str]] = [
    (b'{"tokens_per_second": -5}', JSON, 422, "tokens_per_second", "1..50000, got -5"),
    (b'{"tokens_per_second": 0}', JSON, 422, "tokens_per_second", "got 0"),
    (b'{"tokens_per_second": 50001}', JSON, 422, "tokens_per_second", "1..50000"),
    (b'{"tokens_per_second": "1000"}', JSON, 422, "tokens_per_second", "got a string"),
    (b'{"tokens_per_second": true}', JSON, 422, "tokens_per_second", "got a boolean"),
    (b'{"tokens_per_second": 10.5}', JSON, 422, "tokens_per_second", "got a number"),
    (b'{"tokens_per_second": null}', JSON, 422, "tokens_per_second", "got null"),
    (b'{"min_price": 0.1}', JSON, 422, "tokens_per_second", "required"),
    (b'{"tokens_per_second": 10, "min_price": -0.1}', JSON, 422, "min_price", ">= 0.0"),
    (b'{"tokens_per_second": 10, "min_price": 5}', JSON, 422, "min_price", "max_price"),
    (b'{"tokens_per_second": 10, "min_price": NaN}', JSON, 400, None, "NaN"),
    (b'{"tokens_per_second": 10, "min_price": 1e999}', JSON, 422, "min_price", "finite"),
    (b'{"tokens_per_second": 10, "min_price": [1]}', JSON, 422, "min_price", "got an array"),
    (b'{"tokens_per_second": 10, "colour": "red"}', JSON, 422, "colour", "unknown field 'colour'"),
    (b'{"tokens_per_second": 10, "tokens_per_second": 20}', JSON, 400, "tokens_per_second", "twice"),
    (b'{"tokens_per_second": 10', JSON, 400, None, "not valid JSON"),
    (b"[1, 2]", JSON, 422, None, "got an array"),
    (b"1000", JSON, 422, None, "got a number"),
    (b"", JSON, 400, None, "empty"),
    (b"\xff\xfe{}", JSON, 400, None, "not UTF-8"),
    (b"tokens_per_second=1000", "application/x-www-form-urlencoded", 415, None, "Content-Type"),
    (b"[" * 200_000 + b"]" * 200_000, JSON, 413, None, "limit"),
    (b"[" * 100_000 + b"]" * 100_000, JSON, 400, None, "nested too deeply"),
    (b'{"tokens_per_second": 10, "pad": "' + b"x" * MAX_BODY_BYTES + b'"}', JSON, 413, None,
     f"limit {MAX_BODY_BYTES}"),
]


@pytest.mark.parametrize("body,content_type,status,field,words", REGISTER_BAD,
                         ids=[f"{i}" for i in range(len(REGISTER_BAD))])
def test_register_refusals(body: bytes, content_type: str | None, status: int, field: str | None,
                           words: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_register(body, content_type, CONFIG)
    assert caught.value.status == status
    assert caught.value.field == field
    assert words in str(caught.value)
    assert caught.value.to_json()["error"] == str(caught.value)


SUBMIT_BAD: list[tuple[dict[str, object], str, str]] = [
    ({"max_price": 0.5}, "tokens", "required"),
    ({"tokens": -1, "max_price": 0.5}, "tokens", "got -1"),
    ({"tokens": 1_000_001, "max_price": 0.5}, "tokens", "1..1000000"),
    ({"tokens": 10}, "max_price", "required"),
    ({"tokens": 10, "max_price": 0}, "max_price", "> 0.0"),
    ({"tokens": 10, "max_price": -1}, "max_price", "> 0.0"),
    ({"tokens": 10, "max_price": 2e6}, "max_price", "<= 1000000.0"),
    # > 0, but less than one nano-NEURO: it would be 0 behind the API
    ({"tokens": 10, "max_price": 4e-10}, "max_price",
     "4e-10 is less than the smallest price, 0.000000001 NEURO (1 nano-NEURO) per 1M tokens"),
    ({"tokens": 10, "max_price": "0.5"}, "max_price", "got a string"),
    ({"tokens": 10, "max_price": 0.5, "tier": "gold"}, "tier", "economy, standard, premium"),
    ({"tokens": 10, "max_price": 0.5, "tier": 1}, "tier", "got 1"),
    ({"tokens": 10, "max_price": 0.5, "prompt": 42}, "prompt", "got a number"),
    ({"tokens": 10, "max_price": 0.5, "prompt": "é" * 40_000}, "prompt", "80000 bytes"),
    ({"tokens": 10, "max_price": 0.5, "user": ""}, "user", "blank"),
    ({"tokens": 10, "max_price": 0.5, "user": "u" * 129}, "user", "129 bytes"),
    ({"tokens": 10, "max_price": 0.5, "provider": "x"}, "provider", "unknown field"),
]


@pytest.mark.parametrize("data,field,words", SUBMIT_BAD, ids=[f"{i}" for i in range(len(SUBMIT_BAD))])
def test_submit_refusals(data: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_submit(json.dumps(data, ensure_ascii=False).encode(), JSON, CONFIG)
    assert caught.value.status == 422
    assert caught.value.field == field
    assert words in str(caught.value)


def test_largest_escaped_prompt_fits_the_body_cap() -> None:
    """64 KiB of 4-byte characters, ASCII-escaped the way json.dumps does by default."""
    prompt = "😀" * (64 * 1024 // 4)
    body = json.dumps({"tokens": 10, "max_price": 0.5, "prompt": prompt}).encode()
    assert len(body) <= MAX_BODY_BYTES
    assert parse_submit(body, JSON, CONFIG).prompt == prompt


def test_submit_lone_surrogate_refused() -> None:
    body = b'{"tokens": 10, "max_price": 0.5, "prompt": "\\ud800"}'
    with pytest.raises(InputError) as caught:
        parse_submit(body, JSON, CONFIG)
    assert (caught.value.status, caught.value.field) == (422, "prompt")


def test_withdraw_refuses_parameters() -> None:
    with pytest.raises(InputError) as caught:
        parse_withdraw(b'{"all": true}', JSON)
    assert (caught.value.status, caught.value.field) == (422, "all")


def test_request_ids_and_windows() -> None:
    assert parse_request_id("abc-123_x.y:z") == "abc-123_x.y:z"
    for bad in ("", "a/b", "x" * 129, "a b", "é"):
        with pytest.raises(InputError) as caught:
            parse_request_id(bad)
        assert caught.value.status == 404
    assert parse_history_window({}) == ("1h", 3600.0)
    assert parse_history_window({"window": ["24h"]}) == ("24h", 86400.0)
    for query in ({"window": ["2h"]}, {"window": ["1h", "24h"]}, {"span": ["1h"]}):
        with pytest.raises(InputError) as caught:
            parse_history_window(query)
        assert caught.value.status == 400


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                        max_size=4),
    max_leaves=12).map(lambda v: json.dumps(v).encode()))
def test_no_body_escapes_as_anything_but_input_error(body: bytes) -> None:
    for parse in (lambda: parse_register(body, JSON, CONFIG), lambda: parse_submit(body, JSON, CONFIG),
                  lambda: parse_withdraw(body, JSON)):
        try:
            parse()
        except InputError as error:
            assert 400 <= error.status < 500
