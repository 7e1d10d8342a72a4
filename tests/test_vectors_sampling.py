"""Our sampling header against the revision 2.1 (sampling) vectors, generated without it
(protocols/vectors/v2/gen_sampling.py → sampling.json; spec §9.2)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from neuroshard_p2p.node.backends import (
    MAX_STOP_BYTES,
    MAX_STOP_SEQUENCES,
    SAMPLING_PREFIX,
    SamplingError,
    check_sampling,
    sampling_prompt,
    split_sampling,
)
from neuroshard_p2p.node.jobs import job_protocol, job_sampling_protocol, job_stream_protocol

DOC = json.loads((Path(__file__).parents[1] / "protocols/vectors/v2/sampling.json")
                 .read_text("utf-8"))


def same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down: 1 is not 1.0, True is not 1, -0.0 is not 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


def test_limits_and_protocol_ids() -> None:
    limits = DOC["limits"]
    assert limits["prefix"] == SAMPLING_PREFIX
    assert (limits["max_stop_sequences"], limits["max_stop_bytes"]) == (MAX_STOP_SEQUENCES,
                                                                         MAX_STOP_BYTES)
    ids = DOC["protocol_ids"]
    assert job_sampling_protocol(ids["network_id"]) == ids["sampling"]
    assert job_stream_protocol(ids["network_id"]) == ids["streaming"]
    assert job_protocol(ids["network_id"]) == ids["fallback"]


@pytest.mark.parametrize("vector", DOC["valid"], ids=lambda v: v["name"])
def test_valid_prompts_split_to_their_settings_and_rest(vector: dict) -> None:
    sampling, rest = split_sampling(vector["prompt"])
    assert same(sampling, vector["sampling"]), sampling
    assert rest == vector["rest"]
    assert same(check_sampling(vector["sampling"]), vector["sampling"])


@pytest.mark.parametrize("vector", DOC["invalid"], ids=lambda v: v["name"])
def test_invalid_prompts_fail_their_first_rule(vector: dict) -> None:
    with pytest.raises(SamplingError) as caught:
        split_sampling(vector["prompt"])
    assert caught.value.rule == vector["rule"], str(caught.value)


@pytest.mark.parametrize("vector", [v for v in DOC["invalid"] if v["rule"] in ("S4", "S5", "S6")],
                         ids=lambda v: v["name"])
def test_invalid_settings_fail_check_sampling(vector: dict) -> None:
    """The same settings as a dict (as a gateway holds its buyer's). An integer too long for
    Python's int() (over 4,300 digits) is read as the float it rounds to (an infinity)."""
    header = vector["prompt"][len(SAMPLING_PREFIX):].split("\n", 1)[0]
    settings = json.loads(header, parse_int=lambda t: int(t) if len(t) <= 4300 else float(t))
    with pytest.raises(SamplingError) as caught:
        check_sampling(settings)
    assert caught.value.rule == vector["rule"], str(caught.value)


@pytest.mark.parametrize("vector", DOC["encode"], ids=lambda v: v["name"])
def test_the_gateway_writes_the_reference_header(vector: dict) -> None:
    assert sampling_prompt(vector["sampling"], vector["rest"]) == vector["prompt"]
    sampling, rest = split_sampling(vector["prompt"])
    assert same(sampling, {k: vector["sampling"][k] for k in sorted(vector["sampling"])})
    assert rest == vector["rest"]
