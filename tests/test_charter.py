"""The charter: canonical bytes, hash and network id, TOML round trip, and refusals."""

import hashlib

import msgpack
import pytest

from neuroshard_p2p.charter import PARAM_KEYS, Charter, CharterError, builtin


def test_testnet_round_trips_through_toml_with_the_same_hash():
    charter = builtin("testnet")
    again = Charter.from_toml(charter.to_toml())
    assert again == charter
    assert again.hash == charter.hash == hashlib.sha256(charter.canonical_bytes).digest()
    assert charter.network_id == "testnet-" + charter.hash[:8].hex()


def test_canonical_bytes_are_the_documented_array_with_float64_and_bools():
    charter = builtin("simnet")
    decoded = msgpack.unpackb(charter.canonical_bytes, raw=False)
    assert decoded[0] == "neuroshard/charter/2"
    assert decoded[1:4] == ["simnet", "neuroshard/synthetic-1", ["open", []]]
    assert [k for k, _ in decoded[4]] == sorted(PARAM_KEYS)
    params = dict(decoded[4])
    assert params["max_step"] == 0.0 and params["dynamic_pricing"] is True
    # smoothing 0.7 is written as the 9-byte float64, never as float32
    assert bytes.fromhex("a9736d6f6f7468696e67cb3fe6666666666666") in charter.canonical_bytes


def test_every_param_names_another_network_but_bootstrap_and_description_do_not():
    base = builtin("simnet")
    assert base.with_params(window_ticks=16).network_id != base.network_id
    assert base.with_params(identity_work_bits=1).hash != base.hash
    moved = base.replace(bootstrap=("/ip4/127.0.0.1/tcp/1/p2p/x",), description="other")
    assert moved.hash == base.hash


def test_a_node_config_that_changes_a_charter_value_is_refused_by_name():
    charter = builtin("testnet")
    charter.check_local({"window_ticks": 32, "claim_timeout_s": 5.0, "retention_s": 10})
    with pytest.raises(CharterError, match=r"\[market\] window_ticks = 16 changes the charter .* "
                                           r"\(window_ticks = 32\)"):
        charter.check_local({"window_ticks": 16})


def test_a_charter_missing_a_param_or_with_a_wrong_type_is_refused():
    text = builtin("simnet").to_toml()
    with pytest.raises(CharterError, match="misses tick_s"):
        Charter.from_toml(text.replace("tick_s = 1.0\n", ""))
    with pytest.raises(CharterError, match="window_ticks has the wrong type"):
        Charter.from_toml(text.replace("window_ticks = 32", 'window_ticks = "32"'))
    with pytest.raises(CharterError, match="name must be 1-32"):
        Charter.from_toml(text.replace('name = "simnet"', 'name = "sim net"'))
    with pytest.raises(CharterError, match="needs at least one authority"):
        Charter.from_toml(text.replace('policy = "open"', 'policy = "members"'))
