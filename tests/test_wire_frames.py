"""Stream frames (wire/frames.py, protocols/market-v2.md §8.2, §9, §10): round trips against the
spec's layouts packed with plain msgpack (version item 2 on the sync and job streams, the 5-item
SyncRequest with its revocations digest, version 1 for peer exchange), exact limits, old and new
peer exchange side by side, and a structure-aware fuzz that reaches every frame kind the code
speaks (16–21) and the 1.0.0 peer list. The published frame vectors (protocols/vectors/v2/
frames.json, v1's among them in v2 bytes) are checked by test_vectors_v2.py.

The fuzz builds a valid frame of one layout, applies one structural mutation to its item tree
(or its bytes) and checks the decoder's answer: for most mutations the exact reason the spec's
rule order gives; for those that may leave a valid frame (bit flips, dropping an item of a list
of variable length) either a frame that re-encodes to exactly the input or a WireError with a
frame reason. Anything else (another exception, a wrong reason, an accepted invalid frame) fails.
Budget: 7 layouts × 9 mutations × 40 examples = 2,520 examples, plus 7 × 100 round trips.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuroshard_p2p import wire
from neuroshard_p2p.wire import (
    FRAME_REASONS,
    REJECT,
    JobAccepted,
    JobDeclined,
    JobResult,
    SyncRequest,
    SyncResponse,
    WireError,
)

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])

# The spec's numbers (§8.2, §9, §10), written here rather than imported, so a changed constant
# in the code fails these tests.
LIMIT = {16: 1024, 17: 1_048_576, 18: 1024, 19: 1024, 20: 1_048_576, 21: 32_768, "legacy": 32_768}
ANY_FRAME = 1_048_576
V = 2  # the version item of sync and job frames; peer exchange keeps 1
SYNC_ITEM = 65_536  # the largest message a SyncResponse carries (a revocation list)
#: The kinds each stream carries (§8.2): the job stream also carries 22 (JobSettled).
STREAM_OF = {16: (16, 17), 17: (16, 17), 18: (18, 19, 20, 22), 19: (18, 19, 20, 22),
             20: (18, 19, 20, 22), 21: (21,)}
ZERO = b"\x00" * 32


def pack(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def reason_of(call: Callable[[], Any]) -> str:
    with pytest.raises(WireError) as caught:
        call()
    assert caught.value.action == REJECT and str(caught.value)
    return caught.value.reason


# --- valid frames of every layout, as the frame and as the spec's item tree ----------------------

def text(low: int, high: int) -> st.SearchStrategy[str]:
    """Text of low..high bytes of UTF-8 (no lone surrogates), including the exact bounds."""
    plain = st.text(st.characters(blacklist_categories=("Cs",)), min_size=low, max_size=40)
    bounds = [t for t in ("x" * low, "é" * (high // 2) + "x" * (high % 2), "x" * high) if t]
    return (plain | st.sampled_from(bounds)).filter(lambda t: low <= len(t.encode()) <= high)


peer_entries = st.lists(st.tuples(text(1, 128), st.lists(text(1, 256), max_size=8)), max_size=6)
full_peers = st.just([(f"peer-{i}", [f"/ip4/10.0.0.{i}/tcp/{4000 + a}" for a in range(8)])
                      for i in range(32)])  # 32 peers × 8 addresses: both arrays at their limit


@dataclass(frozen=True)
class Layout:
    name: str
    kind: int | str                          # frame kind, or "legacy"
    frames: st.SearchStrategy[Any]           # valid frames (or peer entries)
    tree: Callable[[Any], list[Any]]         # the spec's items of one
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]
    oversize: tuple[Callable[[list[Any]], None], ...]   # each breaks one limit of the tree
    fixed: Callable[[tuple[int, ...]], bool]  # is the list at this path of fixed length?


def _set(path: tuple[int, ...], value: Any) -> Callable[[list[Any]], None]:
    def apply(tree: list[Any]) -> None:
        node = tree
        for i in path[:-1]:
            node = node[i]
        node[path[-1]] = value
    return apply


def _grow(path: tuple[int, ...], item: Any, to: int) -> Callable[[list[Any]], None]:
    def apply(tree: list[Any]) -> None:
        node = tree
        for i in path:
            node = node[i]
        node.extend([copy.deepcopy(item)] * (to - len(node)))
    return apply


def _over(limit: int) -> str:
    return "x" * (limit - 1) + "é"  # limit + 1 bytes of UTF-8, limit characters


def _peer_limits(at: int) -> tuple[Callable[[list[Any]], None], ...]:
    def first(change: Callable[[list[Any]], None]) -> Callable[[list[Any]], None]:
        def apply(tree: list[Any]) -> None:
            if not tree[at]:
                tree[at].append(["p", ["/ip4/1.2.3.4/tcp/1"]])
            change(tree)
        return apply
    return (_grow((at,), ["p", []], 33),
            first(_grow((at, 0, 1), "/ip4/1.2.3.4/tcp/1", 9)),
            first(_set((at, 0, 0), _over(128))), first(_set((at, 0, 0), "")),
            first(lambda t: t[at][0][1].append(_over(256))),
            first(lambda t: t[at][0][1].append("")))


digests = st.binary(min_size=32, max_size=32)
LAYOUTS = [
    Layout("sync_request", 16,
           st.builds(lambda d, b, r: SyncRequest(d, tuple(b), r), digests,
                     st.lists(digests, min_size=16, max_size=16), digests),
           lambda f: [V, 16, f.digest, list(f.bucket_digests), f.revocations_digest],
           wire.encode_sync, wire.decode_sync,
           (_set((2,), b"\x00" * 33), _set((2,), b"\x00" * 31), _grow((3,), b"\x00" * 32, 17),
            _set((3, 5), b"\x00" * 33), _set((4,), b"\x00" * 33), _set((4,), b"\x00" * 31)),
           lambda path: path == (3,)),
    Layout("sync_response", 17,
           st.builds(lambda a: SyncResponse(tuple(a)),
                     st.lists(st.binary(min_size=1, max_size=40)
                              | st.just(b"\x01" * SYNC_ITEM), max_size=5)),
           lambda f: [V, 17, list(f.announcements)], wire.encode_sync, wire.decode_sync,
           (lambda t: t[2].append(b"\x01" * (SYNC_ITEM + 1)), lambda t: t[2].append(b""),
            _grow((2,), b"\x01", 4097)),
           lambda path: False),
    Layout("job_declined", 18,
           st.builds(JobDeclined, text(1, 128), text(1, 128), text(0, 512)),
           lambda f: [V, 18, f.request_id, f.reason, f.detail], wire.encode_job_frame,
           wire.decode_job_frame,
           (_set((2,), _over(128)), _set((2,), ""), _set((3,), _over(128)), _set((3,), ""),
            _set((4,), _over(512))),
           lambda path: False),
    Layout("job_accepted", 19, st.builds(JobAccepted, text(1, 128)),
           lambda f: [V, 19, f.request_id], wire.encode_job_frame, wire.decode_job_frame,
           (_set((2,), _over(128)), _set((2,), ""), _set((2,), "x" * 1100)),
           lambda path: False),
    Layout("job_result", 20,
           st.builds(JobResult, text(1, 128), st.binary(min_size=1, max_size=200),
                     text(0, 1_000_000) | st.just("é" * 500_000)),
           lambda f: [V, 20, f.request_id, f.receipt, f.output], wire.encode_job_frame,
           wire.decode_job_frame,
           (_set((2,), _over(128)), _set((2,), ""), _set((3,), b""),
            _set((4,), _over(1_000_000)), _set((3,), b"\x01" * ANY_FRAME)),
           lambda path: False),
    Layout("peer_exchange", 21, peer_entries | full_peers,
           lambda e: [1, 21, [[p, list(a)] for p, a in e]], wire.encode_peer_exchange,
           wire.decode_peer_exchange, _peer_limits(2),
           lambda path: len(path) == 2 and path[0] == 2),
    Layout("peer_exchange_legacy", "legacy", peer_entries | full_peers,
           lambda e: [1, [[p, list(a)] for p, a in e]], wire.encode_peer_exchange_legacy,
           wire.decode_peer_exchange_legacy, _peer_limits(1),
           lambda path: len(path) == 2 and path[0] == 1),
]
BY_NAME = {layout.name: layout for layout in LAYOUTS}


@settings(FUZZ, max_examples=100)
@given(data=st.data())
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
def test_valid_frames_are_the_specs_bytes_and_round_trip(layout: Layout, data: st.DataObject) -> None:
    frame = data.draw(layout.frames)
    encoded = layout.encode(frame)
    assert encoded == pack(layout.tree(frame))  # the spec's layout, canonical msgpack
    assert layout.decode(encoded) == frame
    assert layout.decode(bytearray(encoded)) == frame


# --- structural mutations ----------------------------------------------------------------------

@dataclass(frozen=True)
class Wide:
    """A value to write in a longer msgpack form than canonical (same value, other bytes)."""
    value: Any


def pack_tree(node: Any) -> bytes:
    """msgpack of a tree whose `Wide` nodes get the widest header of their type (never
    canonical for the sizes here); everything else canonical."""
    if isinstance(node, Wide):
        v = node.value
        if type(v) is int:
            return b"\xcf" + v.to_bytes(8, "big")
        if type(v) is str:
            raw = v.encode()
            return b"\xdb" + len(raw).to_bytes(4, "big") + raw
        if type(v) is bytes:
            return b"\xc6" + len(v).to_bytes(4, "big") + v
        assert type(v) is list
        return b"\xdd" + len(v).to_bytes(4, "big") + b"".join(pack_tree(x) for x in v)
    if type(node) is list:
        n = len(node)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
        return head + b"".join(pack_tree(x) for x in node)
    return pack(node)


def widens(node: Any) -> bool:
    """Whether `node` has a longer msgpack form than its canonical one (`Wide`)."""
    if type(node) is int:
        return node < 2**32
    if type(node) is str:
        return len(node.encode()) < 2**16  # from 64 KiB on, str32 is the canonical form
    return type(node) in (bytes, list) and len(node) < 2**16


def paths(tree: Any, path: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], Any]]:
    out = [(path, tree)]
    if type(tree) is list and len(tree) <= 64:  # a 4097-item list: its first items suffice
        for i, item in enumerate(tree):
            out += paths(item, path + (i,))
    return out


def at(tree: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        tree = tree[i]
    return tree


def replace(tree: list[Any], path: tuple[int, ...], value: Any) -> list[Any]:
    if not path:
        return value  # type: ignore[no-any-return]
    at(tree, path[:-1])[path[-1]] = value
    return tree


OTHER_TYPES = [0, 7, 2**40, "x", "", b"\x00", b"", [], [1], None, True, False, 1.5]
MUTATIONS = ["version", "kind", "wrong_type", "extra_item", "missing_item", "oversize",
             "non_canonical", "truncate", "flip"]


@st.composite
def mutated(draw: st.DrawFn, layout: Layout, how: str) -> tuple[bytes, set[str] | None]:
    """Bytes of a valid frame of `layout` changed by one mutation, and the reasons the spec
    allows for them (None: the result may be a valid frame)."""
    tree = layout.tree(draw(layout.frames))
    legacy = layout.kind == "legacy"
    limit = LIMIT[layout.kind]

    def sized(reason: str, data: bytes) -> set[str]:
        return {"oversize"} if len(data) > limit else {reason}

    if how == "version":
        # Another integer (v1's 1 on a v2 stream among them), or the version in another type
        # (equal to it in Python, not on the wire).
        version = tree[0]
        tree[0] = draw(st.integers(0, 2**64 - 1).filter(lambda v: v != version)
                       | st.sampled_from([version == 1, float(version), str(version),
                                          bytes([version]), [version], None]))
        return pack(tree), {"version"}
    if how == "kind":
        if legacy:  # the 1.0.0 list has no kind: an integer where the peer list belongs
            tree[1] = draw(st.integers(0, 255))
            return pack(tree), {"bad_field"}
        stream = STREAM_OF[layout.kind]  # type: ignore[index]
        tree[1] = draw(st.integers(0, 2**64 - 1).filter(lambda k: k not in stream)
                       | st.sampled_from([float(k) for k in stream] + [str(stream[0])]))
        return pack(tree), {"kind"}
    if how == "wrong_type":
        path, node = draw(st.sampled_from(paths(tree)[1:]))
        value = draw(st.sampled_from([v for v in OTHER_TYPES if type(v) is not type(node)] + [{}]))
        data = pack(replace(tree, path, value))
        if value == {}:
            return data, {"malformed"}  # maps never appear (F2 / L2)
        if path == (0,):
            return data, {"version"}
        if path == (1,) and not legacy:
            return data, {"kind"}
        return data, sized("bad_field", data)
    if how == "extra_item":
        path, node = draw(st.sampled_from([(p, n) for p, n in paths(tree) if type(n) is list]))
        node.append(None)
        data = pack(tree)
        return data, {"malformed"} if path == () else sized("bad_field", data)
    if how == "missing_item":
        path, node = draw(st.sampled_from([(p, n) for p, n in paths(tree)
                                           if type(n) is list and n]))
        index = draw(st.integers(0, len(node) - 1))
        del node[index]
        data = pack(tree)
        if path == ():
            if legacy:
                return data, {"malformed"}
            return data, {0: {"version"}, 1: {"kind"}}.get(index, {"malformed"})
        return data, {"bad_field"} if layout.fixed(path) else None
    if how == "oversize":
        draw(st.sampled_from(layout.oversize))(tree)
        data = pack(tree)
        return data, sized("bad_field", data)
    if how == "non_canonical":
        path, node = draw(st.sampled_from([(p, n) for p, n in paths(tree) if widens(n)]))
        data = pack_tree(replace(tree, path, Wide(node)))
        return data, sized("non_canonical", data)
    data = pack(tree)
    if how == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))], {"malformed"}
    flipped = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        flipped[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(flipped), None


def check_answer(layout: Layout, data: bytes, allowed: set[str] | None) -> None:
    try:
        decoded = layout.decode(data)
    except WireError as error:
        assert error.action == REJECT and str(error)
        expected = set(FRAME_REASONS) if allowed is None else allowed
        assert error.reason in expected, f"{error!r}, expected one of {sorted(expected)}"
        return
    assert allowed is None, f"accepted an invalid {layout.name}: {decoded!r:.300}"
    assert layout.encode(decoded) == data  # what is accepted is exactly what the bytes say


@pytest.mark.parametrize("how", MUTATIONS)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
def test_fuzz_mutated_frames(layout: Layout, how: str) -> None:
    @settings(FUZZ, max_examples=40)
    @given(case=mutated(layout, how))
    def run(case: tuple[bytes, set[str] | None]) -> None:
        check_answer(layout, *case)

    run()


# --- exact limits and examples -----------------------------------------------------------------

def test_job_frames_round_trip() -> None:
    frames = [JobAccepted("r1"), JobResult("r1", b"\x01receipt", "some output"),
              JobDeclined("r1", "full", "100 of 200 tokens in flight")]
    for frame in frames:
        assert wire.decode_job_frame(wire.encode_job_frame(frame)) == frame


@pytest.mark.parametrize("data, reason", [
    (b"", "malformed"),
    (b"\x93\x01\x13\xa2r1", "version"),             # [1, 19, "r1"]: a v1 frame
    (b"\x93\x03\x13\xa2r1", "version"),             # [3, 19, "r1"]
    (b"\x93\x02\x63\xa2r1", "kind"),                # [2, 99, "r1"]
    (b"\x92\x02\x13", "malformed"),                 # [2, 19]: no request id
    (b"\x93\x02\x13\xa0", "bad_field"),             # empty request id
    (b"\x95\x02\x14\xa2r1\xa1x\xa0", "bad_field"),  # receipt is a str, not bytes
    (b"\x93\x02\x13\xd9\x02r1", "non_canonical"),   # str8 where fixstr fits
    (pack([2, 16, ZERO, [ZERO] * 16, ZERO]), "kind"),  # a sync frame on a job stream
])
def test_bad_job_frames_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    assert reason_of(lambda: wire.decode_job_frame(data)) == reason


def test_job_result_output_limit_is_in_bytes() -> None:
    at_limit = JobResult("r1", b"\x01", "é" * 500_000)  # 1,000,000 bytes, 500,000 characters
    assert wire.decode_job_frame(wire.encode_job_frame(at_limit)) == at_limit
    over = pack([V, 20, "r1", b"\x01", "é" * 500_000 + "x"])
    assert reason_of(lambda: wire.decode_job_frame(over)) == "bad_field"
    assert reason_of(lambda: wire.encode_job_frame(JobResult("r1", b"\x01", "x" * 1_000_001))) \
        == "bad_field"
    clipped = wire.clip_utf8("é" * 600_000, wire.MAX_OUTPUT_BYTES)
    assert len(clipped.encode()) == 1_000_000


def test_each_kind_has_its_own_size_limit() -> None:
    """F5: a frame of a small kind above its limit is `oversize` before its items are read."""
    accepted = pack([V, 19, "x" * 1100])            # 1,106 bytes: above 19's 1 KiB
    assert reason_of(lambda: wire.decode_job_frame(accepted)) == "oversize"
    big = pack([1, 21, [["p" * 100, ["a" * 200] * 8]] * 20])
    assert len(big) > 32_768
    assert reason_of(lambda: wire.decode_peer_exchange(big)) == "oversize"
    assert reason_of(lambda: wire.decode_peer_exchange_legacy(b"\x92\x01" + big[3:])) == "oversize"
    assert reason_of(lambda: wire.decode_frame(b"\x00" * (ANY_FRAME + 1))) == "oversize"  # F1


def _entries_of_size(size: int, layout: Callable[[list[Any]], list[Any]]
                     ) -> list[tuple[str, list[str]]]:
    """Valid peer entries (32 peers, 5 addresses each) whose frame is exactly `size` bytes."""
    entries = [[f"peer-{i:02}", ["/" + "a" * 199] * 5] for i in range(32)]
    deficit = size - len(pack(layout(entries)))
    for entry in entries:
        for j, addr in enumerate(entry[1]):
            grow = min(deficit, 255 - len(addr))  # stay a str8: the header keeps its size
            entry[1][j] = addr + "a" * grow
            deficit -= grow
    assert deficit == 0
    return [(p, a) for p, a in entries]


def test_peer_exchange_may_fill_exactly_32_kib() -> None:
    for encode, decode, layout in (
            (wire.encode_peer_exchange, wire.decode_peer_exchange, lambda e: [1, 21, e]),
            (wire.encode_peer_exchange_legacy, wire.decode_peer_exchange_legacy, lambda e: [1, e])):
        entries = _entries_of_size(32_768, layout)
        data = encode(entries)
        assert len(data) == 32_768 and decode(data) == entries
        longer = _entries_of_size(32_769, layout)
        assert reason_of(lambda: encode(longer)) == "oversize"
        assert reason_of(lambda: decode(pack(layout([[p, a] for p, a in longer])))) == "oversize"


def test_peer_exchange_layouts_are_told_apart() -> None:
    entries = [("12D3KooWpeer", ["/ip4/10.0.0.1/tcp/4001"])]
    new, old = wire.encode_peer_exchange(entries), wire.encode_peer_exchange_legacy(entries)
    assert new == bytes.fromhex("9301") + b"\x15" + old[2:]
    assert reason_of(lambda: wire.decode_peer_exchange(old)) == "kind"            # F4
    assert reason_of(lambda: wire.decode_peer_exchange_legacy(new)) == "malformed"  # L2
    assert wire.decode_frame(new) == wire.PeerExchange((("12D3KooWpeer",
                                                         ("/ip4/10.0.0.1/tcp/4001",)),))


@pytest.mark.parametrize("entries", [
    [("p", ["a"])] * 33, [("p", ["a"] * 9)], [("", ["a"])], [("p", [""])], [("p", [b"a"])],
    [("p", "/ip4/1.2.3.4/tcp/1")], [("p",)], [("p", None)], 7,
], ids=["33-peers", "9-addrs", "empty-id", "empty-addr", "bytes-addr", "addrs-a-text",
        "no-addrs-item", "addrs-none", "not-a-list"])
def test_encoders_refuse_peer_entries_out_of_the_limits(entries: Any) -> None:
    assert reason_of(lambda: wire.encode_peer_exchange(entries)) == "bad_field"
    assert reason_of(lambda: wire.encode_peer_exchange_legacy(entries)) == "bad_field"


def test_fit_peer_exchange_keeps_what_can_be_sent() -> None:
    entries = [("p0", ["/ok", "", "x" * 257, *(f"/a{i}" for i in range(10))]), ("", ["/ok"]),
               ("p1", []), ("p2", ["/ok"]), *((f"q{i}", ["/ok"]) for i in range(40))]
    fitted = wire.fit_peer_exchange(entries)
    assert fitted[0] == ("p0", ["/ok", *(f"/a{i}" for i in range(7))])
    assert [p for p, _ in fitted[1:3]] == ["p2", "q0"] and len(fitted) == 32
    big = [(f"peer-{i}", ["/" + "a" * 255] * 8) for i in range(32)]  # ~66 KiB: too much
    fitted = wire.fit_peer_exchange(big)
    assert len(wire.encode_peer_exchange(fitted)) <= 32_768
    assert len(wire.encode_peer_exchange_legacy(fitted)) <= 32_768
    assert fitted == big[:len(fitted)] and len(fitted) == 15


def test_encoders_refuse_frames_of_other_streams() -> None:
    request = SyncRequest(ZERO, (ZERO,) * 16, ZERO)
    assert wire.encode_sync(request) == pack([V, 16, ZERO, [ZERO] * 16, ZERO])
    assert reason_of(lambda: wire.encode_job_frame(request)) == "kind"  # type: ignore[arg-type]
    assert reason_of(lambda: wire.encode_sync(JobAccepted("r1"))) == "kind"  # type: ignore[arg-type]
    assert reason_of(lambda: wire.encode_frame(SyncRequest(ZERO, None, ZERO))) == "bad_field"  # type: ignore[arg-type]
    assert reason_of(lambda: wire.encode_frame(SyncRequest(ZERO, (ZERO,) * 16, ZERO[:31]))) \
        == "bad_field"


# --- old and new nodes on one network -------------------------------------------------------------

#: What a node of the first release (066bf93, `node/host.py` `encode_peers`) answered on
#: `/peers/1.0.0` for two peers with two addresses each: frozen, since that code is gone.
OLD_NODE_PEER_LIST = bytes.fromhex(
    "92019292d93531365569753248416b7556624777483752354773595142545a573469374372774c787a6851427472"
    "4b6866785279587533546a4e6792b62f6970342f31302e302e302e312f7463702f34303031b62f6970342f31302e"
    "302e302e322f7463702f3430303292d93531365569753248416b755a5761356161526661416d59476934774e3332"
    "566a6937443975627278593947356436327577654434685092b62f6970342f31302e302e312e312f7463702f3430"
    "3031b62f6970342f31302e302e312e322f7463702f34303032")


def test_a_new_node_reads_an_old_nodes_peer_list_and_the_other_way_round() -> None:
    """An old node's 1.0.0 answer decodes to its peers, and the legacy encoder writes exactly the
    bytes the old node wrote (so an old node reads a new node's 1.0.0 answer as its own)."""
    from neuroshard_p2p.identity import peer_id_of

    entries = [(peer_id_of(bytes([2]) + bytes([i + 1]) * 32),
                [f"/ip4/10.0.{i}.{a}/tcp/{4000 + a}" for a in range(1, 3)]) for i in range(2)]
    assert wire.decode_peer_exchange_legacy(OLD_NODE_PEER_LIST) == entries
    assert wire.encode_peer_exchange_legacy(entries) == OLD_NODE_PEER_LIST
    assert wire.encode_peer_exchange_legacy([]) == bytes([0x92, 0x01, 0x90])
