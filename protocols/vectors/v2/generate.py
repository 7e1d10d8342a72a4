#!/usr/bin/env python3
"""Generate the test vectors of protocols/market-v2.md, deterministically.

    python protocols/vectors/v2/generate.py          # rewrite the JSON files next to this script
    python protocols/vectors/v2/generate.py --check  # exit 1 if the files differ from a fresh run

Needs only `msgpack` and `coincurve` (and the standard library: hashlib, tomllib). It does NOT
import the project (`neuroshard_p2p`): every byte, hash, reason and count below is built from the
text of market-v2.md by this file's own small implementation of it, so the vectors are a second,
independent statement of the protocol that the project's codec, validator and view are tested
against (the project's tests read the JSON; they never import this script).

`ports.py`, which `documents()` calls, adds the v1 vectors whose behaviour v2 keeps (the validator's
sequences, the receipt checks, the price view and clock, v1's frames), ported to v2 bytes under
the same rules: no project import, every outcome checked by this file's reading of the text.

Two statements inside this file check each other before anything is written: every vector's
expected outcome is written by hand next to the bytes, and the file's own executable reading of
the spec (`g_decode`, `g_validate`, `g_charter_from_toml`, `g_count`, `g_frame`) must give the same
outcome, or the script stops without writing.

Keys are SHA-256("neuroshard vector key: <name>"); signatures are RFC 6979 (libsecp256k1, low-s);
times are fixed: every run writes the same files.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable

import coincurve
import msgpack
from coincurve.ecdsa import cdata_to_der, der_to_cdata, deserialize_compact, serialize_compact

HERE = Path(__file__).resolve().parent
N_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # secp256k1 order
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms: the issued_at of most vectors
BIG = 2**63 - 1
DAY_MS = 86_400_000
HEADER = {"protocol": "neuroshard market v2", "spec": "protocols/market-v2.md",
          "generator": "protocols/vectors/v2/generate.py"}


# --- keys, packing, signing ----------------------------------------------------------------------

def key(label: str) -> coincurve.PrivateKey:
    """A fixed private key: SHA-256 of "neuroshard vector key: <label>"."""
    return coincurve.PrivateKey(hashlib.sha256(f"neuroshard vector key: {label}".encode()).digest())


PROVIDER = key("provider")
GATEWAY = key("gateway")
OTHER = key("other")
AUTHORITY_A = key("authority a")
AUTHORITY_B = key("authority b")
OUTSIDER = key("outsider")   # signs credentials and lists without being a charter authority
KEY_LABELS = ["provider", "gateway", "other", "authority a", "authority b", "outsider"]

#: Nonces ground once (they take 2^24 hashes on average): the first nonce from 0 whose work hash
#: has at least 24 leading zero bits, for the provider (25 bits) and the gateway (24 bits). The
#: generator checks their bits; grinding them again is `python generate.py --grind <label> 24`.
FULL_NONCE = {"provider": 4_372_372, "gateway": 11_630_929}


def pub(k: coincurve.PrivateKey) -> bytes:
    return k.public_key.format(compressed=True)


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def peer_id(public_key: bytes) -> str:
    """§3: base58btc of the identity multihash of the protobuf PublicKey {Secp256k1, key}."""
    return b58(bytes([0x00, 0x25, 0x08, 0x02, 0x12, 0x21]) + public_key)


def pack(obj: Any) -> bytes:
    """Canonical msgpack (§5.2): shortest forms, bin for bytes, str for text, float64 floats."""
    return msgpack.packb(obj, use_bin_type=True, use_single_float=False)


def sign_body(body: bytes, k: coincurve.PrivateKey) -> bytes:
    """Compact r‖s (64 bytes) of ECDSA over SHA-256(body); libsecp256k1 makes it low-s."""
    return serialize_compact(der_to_cdata(k.sign(body)))


def envelope(body: bytes, signature: bytes) -> bytes:
    return pack([body, signature])


def signed(items: list[Any], k: coincurve.PrivateKey, body: bytes | None = None) -> bytes:
    body = pack(items) if body is None else body
    return envelope(body, sign_body(body, k))


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def json_value(value: Any) -> Any:
    """JSON form: bytes as hex, integers above 2^53 as decimal strings, lists element-wise."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        return str(value)
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return value


def key_table() -> dict[str, Any]:
    return {label: {"private_key": key(label).secret.hex(), "signer": pub(key(label)).hex(),
                    "peer_id": peer_id(pub(key(label)))} for label in KEY_LABELS}


# --- charter (§4.1) ------------------------------------------------------------------------------

CHARTER_TAG = "neuroshard/charter/2"
#: §4.1 [params]: every key, its type, and the testnet value.
PARAM_TYPES: dict[str, type] = {
    "burn_rate": float, "capacity_timeout_s": float, "curve": str, "dynamic_pricing": bool,
    "fixed_price": float, "identity_work_bits": int, "max_node_tokens_per_s": int,
    "max_price": float, "max_signer_pending_requests": int, "max_signer_pending_tokens": int,
    "max_step": float, "max_tokens_per_minute": int, "min_price": float, "settle_delay_s": float,
    "smoothing": float, "steepness": float, "target_response_s": float, "tick_s": float,
    "transport": str, "window_ticks": int,
}
#: §4.1 (revision 2.1: relay): the one key a charter may leave out, and what its absence means. It
#: is hashed only when it differs from that value, so every earlier charter keeps its bytes.
OPTIONAL_PARAMS: dict[str, Any] = {"transport": "gossip"}
TESTNET_PARAMS: dict[str, Any] = {
    "burn_rate": 0.05, "capacity_timeout_s": 60.0, "curve": "seed", "dynamic_pricing": True,
    "fixed_price": 0.1, "identity_work_bits": 24, "max_node_tokens_per_s": 50_000,
    "max_price": 1.0, "max_signer_pending_requests": 1000, "max_signer_pending_tokens": 1_000_000,
    "max_step": 0.0, "max_tokens_per_minute": 1_000_000, "min_price": 0.01,
    "settle_delay_s": 2.0, "smoothing": 0.7, "steepness": 3.0, "target_response_s": 60.0,
    "tick_s": 1.0, "window_ticks": 32,
}
LOCAL_KEYS = ("claim_timeout_s", "request_expiry_s", "retention_s")
MODEL = "neuroshard/synthetic-1"


class Charter:
    """A charter as §4.1 states it: the hashed part (name, model, admission, params) and the
    unhashed part (description, bootstrap)."""

    def __init__(self, name: str, params: dict[str, Any], *, model: str = MODEL,
                 policy: str = "open", authorities: list[bytes] | None = None,
                 description: str = "", bootstrap: list[str] | None = None) -> None:
        self.name, self.model, self.policy = name, model, policy
        self.authorities = sorted(authorities or [])
        self.params = dict(params)
        self.description, self.bootstrap = description, list(bootstrap or [])

    @property
    def canonical(self) -> bytes:
        params = [[k, v] for k, v in sorted(self.params.items())
                  if not (k in OPTIONAL_PARAMS and v == OPTIONAL_PARAMS[k])]
        return pack([CHARTER_TAG, self.name, self.model, [self.policy, self.authorities], params])

    @property
    def hash(self) -> bytes:
        return sha(self.canonical)

    @property
    def network_id(self) -> str:
        return f"{self.name}-{self.hash[:8].hex()}"

    @property
    def members(self) -> bool:
        return self.policy == "members"

    def toml(self, authority_order: list[bytes] | None = None) -> str:
        def value(v: Any) -> str:
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, float):
                return repr(v)
            if isinstance(v, int):
                return str(v)
            return json.dumps(v)
        keys = self.authorities if authority_order is None else authority_order
        lines = [
            "format = 2",
            f"name = {json.dumps(self.name)}",
            f"model = {json.dumps(self.model)}",
            f"description = {json.dumps(self.description)}",
            "bootstrap = [" + ", ".join(json.dumps(a) for a in self.bootstrap) + "]",
            "",
            "[admission]",
            f"policy = {json.dumps(self.policy)}",
            "authorities = [" + ", ".join(json.dumps(k.hex()) for k in keys) + "]",
            "",
            "[params]",
            *(f"{k} = {value(self.params[k])}" for k in sorted(self.params)),
        ]
        return "\n".join(lines) + "\n"

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "network_id": self.network_id, "hash": self.hash.hex(),
                "policy": self.policy, "authorities": [a.hex() for a in self.authorities],
                "params": self.params}

    # the values of §7 in integer ms
    def ms(self, param: str) -> int:
        return round(self.params[param] * 1000)


TESTNET = Charter("testnet", TESTNET_PARAMS, description="The open NeuroShard test network.")
SIMNET = Charter("simnet", {**TESTNET_PARAMS, "identity_work_bits": 0},
                 description="Simulated and test networks on one machine (no work ramp).")
GUILD = Charter("guild", {**TESTNET_PARAMS, "identity_work_bits": 8}, policy="members",
                authorities=[pub(AUTHORITY_A), pub(AUTHORITY_B)],
                description="A members network of two authorities that also asks 8 bits of work "
                            "(the vectors' members network).",
                bootstrap=["/dns4/boot.guild.example/tcp/4001/p2p/"
                           + peer_id(pub(AUTHORITY_A))])
#: Revision 2.1: relay (§4.1, §8.5): simnet's and guild's values with `transport = "relay"`, each
#: a network of its own; the vectors' relay networks (relay.json), not built in.
RELAYNET = Charter("relaynet", {**SIMNET.params, "transport": "relay"},
                   description="simnet's values, announcements carried by relay streams.")
GUILD_RELAY = Charter("guild-relay", {**GUILD.params, "transport": "relay"}, policy="members",
                      authorities=[pub(AUTHORITY_A), pub(AUTHORITY_B)],
                      description="guild's members and values, announcements carried by relay "
                                  "streams.")
CHARTERS = {"testnet": TESTNET, "simnet": SIMNET, "guild": GUILD, "relaynet": RELAYNET,
            "guild-relay": GUILD_RELAY}


class CharterRefused(Exception):
    def __init__(self, reason: str, key: str | None) -> None:
        super().__init__(reason, key)
        self.reason, self.key = reason, key


def _valid_point(data: bytes) -> bool:
    if len(data) != 33 or data[0] not in (2, 3):
        return False
    try:
        coincurve.PublicKey(data)
    except Exception:
        return False
    return True


def g_whole_ms(seconds: float) -> bool:
    ms = round(seconds * 1000)
    return abs(ms - seconds * 1000) <= 1e-6 * max(1.0, abs(seconds * 1000))


def g_min_window_ticks(p: dict[str, Any]) -> int:
    """§7.5 min_window_ticks (only with max_step set and dynamic pricing)."""
    if p["max_step"] == 0.0 or not p["dynamic_pricing"]:
        return 1
    lo = max(1, round(p["min_price"] * 1e9))
    hi = round(p["max_price"] * 1e9)
    span = math.log(hi / lo)
    up = math.ceil(span / math.log1p(p["max_step"]))
    down = 1 if p["max_step"] >= 1 else math.ceil(span / -math.log1p(-p["max_step"]))
    s = p["smoothing"]
    settle = 1 if s == 0 else max(1, math.ceil(
        math.log(max(1.0, p["max_step"] * lo) / (hi - lo)) / math.log(s)))
    return max(up, down) + settle


def g_charter_from_toml(text: str) -> Charter:
    """§4.1's rules C1–C8, in order; the first that fails names the reason and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise CharterRefused("toml", None) from None
    top = ("format", "name", "model", "description", "bootstrap", "admission", "params")
    for k in sorted(data):
        if k not in top:
            raise CharterRefused("unknown_key", k)
    if type(data.get("format")) is not int or data["format"] != 2:
        raise CharterRefused("format", "format")
    name = data.get("name")
    if not (isinstance(name, str) and 1 <= len(name) <= 32
            and all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in name)):
        raise CharterRefused("bad_name", "name")
    model = data.get("model")
    if not (isinstance(model, str) and 1 <= len(model.encode()) <= 128):
        raise CharterRefused("bad_model", "model")
    if not isinstance(data.get("description", ""), str):
        raise CharterRefused("wrong_type", "description")
    boot = data.get("bootstrap", [])
    if not (isinstance(boot, list) and all(isinstance(a, str) for a in boot)):
        raise CharterRefused("wrong_type", "bootstrap")
    adm = data.get("admission", {})
    if not isinstance(adm, dict) or set(adm) - {"policy", "authorities"}:
        raise CharterRefused("bad_admission", "admission")
    policy = adm.get("policy", "open")
    hexes = adm.get("authorities", [])
    if policy not in ("open", "members") or not isinstance(hexes, list) \
            or not all(isinstance(h, str) for h in hexes):
        raise CharterRefused("bad_admission", "admission")
    keys = []
    for h in hexes:
        try:
            raw = bytes.fromhex(h)
        except ValueError:
            raise CharterRefused("bad_admission", "admission") from None
        if not _valid_point(raw) or raw in keys:
            raise CharterRefused("bad_admission", "admission")
        keys.append(raw)
    if (policy == "members") != bool(keys):
        raise CharterRefused("bad_admission", "admission")
    params = data.get("params")
    if not isinstance(params, dict):
        raise CharterRefused("missing", "params")
    for k in sorted(PARAM_TYPES):
        if k not in params and k not in OPTIONAL_PARAMS:
            raise CharterRefused("missing", k)
    for k in sorted(params):
        if k not in PARAM_TYPES:
            raise CharterRefused("unknown_key", k)
    values: dict[str, Any] = {}
    for k in sorted(PARAM_TYPES):
        if k not in params:       # an optional key left out (C8a let it through)
            continue
        v, t = params[k], PARAM_TYPES[k]
        if t is float and type(v) is int:
            v = float(v)          # a float written as a TOML integer: `tick_s = 1` is 1.0
        if type(v) is not t:
            raise CharterRefused("wrong_type", k)
        values[k] = v
    p = values
    # C8 ranges, in sorted key order; a float must also be finite (TOML's inf and nan are not).
    ranges: dict[str, Callable[[Any], bool]] = {
        "burn_rate": lambda x: 0.0 <= x < 1.0,
        "capacity_timeout_s": lambda x: x > 0 and g_whole_ms(x),
        "curve": lambda x: x in ("seed", "normalized"),
        "dynamic_pricing": lambda x: True,
        "fixed_price": lambda x: p["min_price"] <= x <= p["max_price"],
        "identity_work_bits": lambda x: 0 <= x <= 48,
        "max_node_tokens_per_s": lambda x: 1 <= x <= BIG,
        "max_price": lambda x: x > p["min_price"],
        "max_signer_pending_requests": lambda x: 1 <= x <= BIG,
        "max_signer_pending_tokens": lambda x: 1 <= x <= BIG,
        "max_step": lambda x: x >= 0.0,
        "max_tokens_per_minute": lambda x: 1 <= x <= BIG,
        "min_price": lambda x: x >= 0.0,
        "settle_delay_s": lambda x: x >= 0 and g_whole_ms(x),
        "smoothing": lambda x: 0.0 <= x < 1.0,
        "steepness": lambda x: x > 0,
        "target_response_s": lambda x: x > 0,
        "tick_s": lambda x: x >= 0.001 and g_whole_ms(x),
        "transport": lambda x: x in ("gossip", "relay"),
        "window_ticks": lambda x: 1 <= x <= 4096 and x >= g_min_window_ticks(p),
    }
    for k in sorted(ranges):
        if k not in p:
            continue
        v = p[k]
        if (isinstance(v, float) and not math.isfinite(v)) or not ranges[k](v):
            raise CharterRefused("bad_value", k)
    for k, absent in OPTIONAL_PARAMS.items():
        if p.get(k) == absent:   # written as its default: the same network as leaving it out
            del p[k]
    return Charter(name, values, model=model, policy=policy, authorities=keys,
                   description=data.get("description", ""), bootstrap=boot)


def g_check_node_market(charter: Charter, market: dict[str, Any]) -> dict[str, Any]:
    """§4.1: a node's [market] may set local keys freely and charter keys only to the charter's
    value (a float given as an integer is that float; max_step 0.0 is unset)."""
    for k in sorted(market):
        if k in LOCAL_KEYS:
            continue
        if k not in PARAM_TYPES:
            return {"refuse": "unknown_key", "key": k}
        v = market[k]
        if PARAM_TYPES[k] is float and type(v) is int:
            v = float(v)
        stated = charter.params.get(k, OPTIONAL_PARAMS.get(k))
        if type(v) is not PARAM_TYPES[k] or v != stated:
            return {"refuse": "charter_value", "key": k, "charter_value": stated,
                    "configured": market[k]}
    return {"accept": True}


def charter_documents() -> dict[str, Any]:
    valid = []
    for c, note in ((TESTNET, "the public test network: open, 24 bits of identity work"),
                    (SIMNET, "the simulator's and tests' network: open, no work ramp"),
                    (GUILD, "a members network with two authorities and 8 bits of work"),
                    (RELAYNET, "revision 2.1: relay: simnet's values and transport = \"relay\" "
                               "(the pair [\"transport\", \"relay\"] between tick_s and "
                               "window_ticks): another network, which has a relay stream"),
                    (GUILD_RELAY, "revision 2.1: relay: guild's members and values and "
                                  "transport = \"relay\"")):
        text = c.toml()
        again = g_charter_from_toml(text)
        assert again.canonical == c.canonical, c.name
        valid.append({
            "name": c.name, "note": note, "toml": text, "policy": c.policy,
            "authorities": [a.hex() for a in c.authorities], "params": c.params,
            "canonical": c.canonical.hex(), "hash": c.hash.hex(), "network_id": c.network_id,
            "topic": f"/neuroshard/{c.network_id}/market/2",
            "streams": {"sync": f"/neuroshard/{c.network_id}/sync/2.0.0",
                        "job": f"/neuroshard/{c.network_id}/job/2.0.0",
                        "peers": f"/neuroshard/{c.network_id}/peers/1.1.0",
                        "peers_legacy": f"/neuroshard/{c.network_id}/peers/1.0.0",
                        # §4.4: only a relay network speaks relay/2.1.0
                        **({"relay": f"/neuroshard/{c.network_id}/relay/2.1.0"}
                           if c.params.get("transport") == "relay" else {})},
        })
    base = TESTNET.toml()

    def edit(old: str, new: str, text: str = base) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    same = [
        ("floats-as-integers", "testnet",
         "tick_s = 1 and capacity_timeout_s = 60 are TOML integers where a float belongs: they "
         "mean 1.0 and 60.0, and the canonical bytes still hold float64 (cb)",
         edit("capacity_timeout_s = 60.0", "capacity_timeout_s = 60",
              edit("tick_s = 1.0", "tick_s = 1"))),
        ("description-and-bootstrap", "testnet",
         "description and bootstrap are not hashed: another text and a bootnode keep the network",
         edit('bootstrap = []', 'bootstrap = ["/ip4/192.0.2.1/tcp/4001/p2p/'
              + peer_id(pub(OTHER)) + '"]',
              edit('description = "The open NeuroShard test network."',
                   'description = "Another description."'))),
        ("authorities-unsorted", "guild",
         "authorities listed in another order: the canonical bytes sort them",
         GUILD.toml(authority_order=sorted(GUILD.authorities, reverse=True))),
        ("no-admission-table", "simnet",
         "no [admission] table: policy open, no authorities",
         edit('[admission]\npolicy = "open"\nauthorities = []\n\n', "", SIMNET.toml())),
        ("transport-gossip-written", "testnet",
         "revision 2.1: relay: transport = \"gossip\" written out is what its absence means: no "
         "transport pair is hashed, the network is testnet",
         edit("tick_s = 1.0\n", 'tick_s = 1.0\ntransport = "gossip"\n')),
        ("transport-gossip-written-guild", "guild",
         "the same on a members network", edit("tick_s = 1.0\n", 'tick_s = 1.0\ntransport = '
                                               '"gossip"\n', GUILD.toml())),
    ]
    equivalent = []
    for name, target, note, text in same:
        got = g_charter_from_toml(text)
        assert got.canonical == CHARTERS[target].canonical, name
        equivalent.append({"name": name, "note": note, "toml": text, "same_as": target,
                           "hash": got.hash.hex(), "network_id": got.network_id})
    bad_point = "02" + "00" * 31 + "05"
    cases = [
        ("missing-param", "missing", "tick_s", "[params] without tick_s: a charter states every "
         "value", edit("tick_s = 1.0\n", "")),
        ("missing-params-table", "missing", "params", "no [params] table at all",
         base.split("[params]")[0]),
        ("unknown-param", "unknown_key", "max_peers", "a key that is not a charter param",
         edit("window_ticks = 32", "window_ticks = 32\nmax_peers = 8")),
        ("unknown-top-level-key", "unknown_key", "version", "an unknown top-level key",
         edit("format = 2", "format = 2\nversion = 2")),
        ("wrong-type-text-for-int", "wrong_type", "window_ticks", 'window_ticks = "32"',
         edit("window_ticks = 32", 'window_ticks = "32"')),
        ("wrong-type-float-for-int", "wrong_type", "max_node_tokens_per_s",
         "50000.0 where an integer belongs (an integer may stand for a float, not the reverse)",
         edit("max_node_tokens_per_s = 50000", "max_node_tokens_per_s = 50000.0")),
        ("wrong-type-int-for-bool", "wrong_type", "dynamic_pricing", "1 is not a boolean",
         edit("dynamic_pricing = true", "dynamic_pricing = 1")),
        ("wrong-type-bool-for-float", "wrong_type", "smoothing", "true is not a number",
         edit("smoothing = 0.7", "smoothing = true")),
        ("bad-name-space", "bad_name", "name", "a space is not allowed in a name",
         edit('name = "testnet"', 'name = "test net"')),
        ("bad-name-33-chars", "bad_name", "name", "names are 1..32 characters",
         edit('name = "testnet"', 'name = "' + "n" * 33 + '"')),
        ("bad-name-empty", "bad_name", "name", "an empty name",
         edit('name = "testnet"', 'name = ""')),
        ("bad-name-non-ascii", "bad_name", "name", "only ASCII letters and digits, '-', '_', '.'",
         edit('name = "testnet"', 'name = "tëstnet"')),
        ("bad-model-empty", "bad_model", "model", "the model is 1..128 bytes",
         edit('model = "neuroshard/synthetic-1"', 'model = ""')),
        ("format-1", "format", "format", "format 1 is not this charter layout",
         edit("format = 2", "format = 1")),
        ("members-without-authorities", "bad_admission", "admission",
         "policy members needs at least one authority", edit('policy = "open"', 'policy = "members"')),
        ("open-with-authorities", "bad_admission", "admission",
         "an open network names no authorities",
         edit("authorities = []", f'authorities = ["{pub(AUTHORITY_A).hex()}"]')),
        ("authority-off-curve", "bad_admission", "admission",
         "an authority key that is not a point of secp256k1",
         edit('authorities = ["', f'authorities = ["{bad_point}", "', GUILD.toml())),
        ("authority-duplicate", "bad_admission", "admission", "the same authority twice",
         edit('authorities = ["', f'authorities = ["{GUILD.authorities[0].hex()}", "',
              GUILD.toml())),
        ("window-ticks-zero", "bad_value", "window_ticks",
         "window_ticks is stated explicitly, >= 1 (0 = automatic is a node setting of v1, not a "
         "charter value)", edit("window_ticks = 32", "window_ticks = 0")),
        ("work-bits-49", "bad_value", "identity_work_bits", "identity_work_bits is 0..48",
         edit("identity_work_bits = 24", "identity_work_bits = 49")),
        ("tick-not-whole-ms", "bad_value", "tick_s", "tick_s = 0.0015 is not a whole number of ms",
         edit("tick_s = 1.0", "tick_s = 0.0015")),
        ("fixed-price-outside-band", "bad_value", "fixed_price",
         "fixed_price must lie within [min_price, max_price]",
         edit("fixed_price = 0.1", "fixed_price = 2.0")),
        ("not-toml", "toml", None, "not TOML", "format = = 2\n"),
        ("transport-unknown-value", "bad_value", "transport",
         "revision 2.1: relay: transport is \"gossip\" or \"relay\"",
         edit("tick_s = 1.0\n", 'tick_s = 1.0\ntransport = "pigeon"\n')),
        ("transport-not-text", "wrong_type", "transport", "transport is text",
         edit("tick_s = 1.0\n", "tick_s = 1.0\ntransport = 1\n")),
        ("transport-relay-capitalised", "bad_value", "transport",
         "values are compared exactly: \"Relay\" is not \"relay\"",
         edit("tick_s = 1.0\n", 'tick_s = 1.0\ntransport = "Relay"\n')),
        ("transport-relay-window-zero", "bad_value", "window_ticks",
         "keys are checked in sorted order: a valid transport, then window_ticks = 0",
         edit("window_ticks = 32", "window_ticks = 0", RELAYNET.toml())),
        ("transport-bad-before-window", "bad_value", "transport",
         "transport sorts before window_ticks: both wrong, transport is named",
         edit("window_ticks = 32", "window_ticks = 0",
              edit("tick_s = 1.0\n", 'tick_s = 1.0\ntransport = "pigeon"\n'))),
    ]
    invalid = []
    for name, reason, bad_key, note, text in cases:
        try:
            g_charter_from_toml(text)
        except CharterRefused as refused:
            assert (refused.reason, refused.key) == (reason, bad_key), (name, refused.reason,
                                                                        refused.key)
        else:
            raise AssertionError(f"charter vector {name} is accepted")
        invalid.append({"name": name, "note": note, "toml": text, "reason": reason,
                        "key": bad_key})
    markets = [
        ("local-keys-only", "testnet", {"claim_timeout_s": 5.0, "request_expiry_s": 120.0,
                                        "retention_s": 10}),
        ("charter-values-repeated", "testnet", {"window_ticks": 32, "tick_s": 1, "max_step": 0.0}),
        ("changes-window", "testnet", {"window_ticks": 16}),
        ("changes-work-bits", "testnet", {"identity_work_bits": 0}),
        ("changes-burn-rate", "testnet", {"burn_rate": 0.1}),
        ("unknown-key", "testnet", {"max_peers": 8}),
        # revision 2.1: relay: a charter without transport states "gossip"
        ("transport-repeated", "relaynet", {"transport": "relay"}),
        ("transport-gossip-repeated", "testnet", {"transport": "gossip"}),
        ("changes-transport", "testnet", {"transport": "relay"}),
    ]
    node_market = []
    for name, charter, market in markets:
        node_market.append({"name": name, "charter": charter, "market": market,
                            "expect": g_check_node_market(CHARTERS[charter], market)})
    return {**HEADER, "tag": CHARTER_TAG,
            "param_types": {k: t.__name__.replace("str", "text") for k, t in PARAM_TYPES.items()},
            "local_keys": list(LOCAL_KEYS), "valid": valid, "equivalent": equivalent,
            "invalid": invalid, "node_market": node_market}


# --- identity work (§7.1) --------------------------------------------------------------------------

WORK_TAG = b"neuroshard/work/v2"


def work_hash(signer: bytes, nonce: int) -> bytes:
    return sha(WORK_TAG + signer + nonce.to_bytes(8, "big"))


def work_bits(signer: bytes, nonce: int) -> int:
    """Leading zero bits of SHA-256("neuroshard/work/v2" ‖ signer ‖ u64be(nonce)): 0..256."""
    return 256 - int.from_bytes(work_hash(signer, nonce), "big").bit_length()


def first_nonce(signer: bytes, at_least: int | None = None, exactly: int | None = None,
                start: int = 0) -> int:
    """The first nonce from `start` whose work bits are >= at_least (or == exactly)."""
    n = start
    while True:
        b = work_bits(signer, n)
        if (at_least is not None and b >= at_least) or (exactly is not None and b == exactly):
            return n
        n += 1


def g_shift(charter: Charter, signer: bytes, nonce: int) -> int:
    return max(0, charter.params["identity_work_bits"] - work_bits(signer, nonce))


# --- signed messages (§5) --------------------------------------------------------------------------

FIELDS = {
    1: ["seq", "tokens_per_second", "min_price_nano", "pending_tokens", "pending_requests",
        "work_nonce", "credential"],
    2: ["request_id", "user", "provider", "tokens", "max_price_nano", "locked_price_nano", "tier",
        "prompt", "credential"],
    3: ["request_id", "gateway", "user", "tokens_served", "locked_price_nano", "started_at_ms",
        "ended_at_ms"],
    4: ["network", "member", "roles", "max_tokens_per_second", "max_pending_tokens",
        "max_pending_requests", "expires_at_ms"],
    5: ["seq", "network", "revoked"],
}
KIND_NAMES = {1: "announcement", 2: "job", 3: "receipt", 4: "credential", 5: "revocation_list"}
ITEMS = {kind: 4 + len(names) for kind, names in FIELDS.items()}        # 11, 13, 11, 11, 7
MAX_SIZE = {1: 2048, 2: 83_968, 3: 1024, 4: 1024, 5: 65_536}
MAX_INPUT = max(MAX_SIZE.values())                                       # W1: 83,968
MAX_AGE_MS, MAX_FUTURE_MS = 300_000, 30_000


def body_items(kind: int, signer: bytes, issued_at_ms: int, fields: dict[str, Any]) -> list[Any]:
    return [2, kind, signer, issued_at_ms, *(fields[name] for name in FIELDS[kind])]


def message(kind: int, k: coincurve.PrivateKey, issued_at_ms: int, fields: dict[str, Any]) -> bytes:
    return signed(body_items(kind, pub(k), issued_at_ms, fields), k)


ANNOUNCE = {"seq": 1, "tokens_per_second": 1000, "min_price_nano": 100_000_000,
            "pending_tokens": 5000, "pending_requests": 3,
            "work_nonce": FULL_NONCE["provider"], "credential": b""}
JOB = {"request_id": "req-0001", "user": "alice", "provider": pub(PROVIDER), "tokens": 500,
       "max_price_nano": 500_000_000, "locked_price_nano": 120_000_000, "tier": 1,
       "prompt": "Write a haiku about gossip protocols.", "credential": b""}
RECEIPT = {"request_id": "req-0001", "gateway": pub(GATEWAY), "user": "alice", "tokens_served": 480,
           "locked_price_nano": 120_000_000, "started_at_ms": T0 + 200, "ended_at_ms": T0 + 1700}


def credential(member: coincurve.PrivateKey | bytes, *, authority: coincurve.PrivateKey = AUTHORITY_A,
               issued_at_ms: int = T0 - 30 * DAY_MS, network: bytes | None = None, roles: int = 3,
               max_tokens_per_second: int = 20_000, max_pending_tokens: int = 400_000,
               max_pending_requests: int = 50, expires_at_ms: int = T0 + 365 * DAY_MS) -> bytes:
    """A credential of the guild charter (by default: authority a, both roles, a year left)."""
    member_key = member if isinstance(member, bytes) else pub(member)
    return message(4, authority, issued_at_ms, {
        "network": GUILD.hash if network is None else network, "member": member_key,
        "roles": roles, "max_tokens_per_second": max_tokens_per_second,
        "max_pending_tokens": max_pending_tokens, "max_pending_requests": max_pending_requests,
        "expires_at_ms": expires_at_ms})


def revocation_list(authority: coincurve.PrivateKey, seq: int, issued_at_ms: int,
                    revoked: list[tuple[bytes, int]], network: bytes | None = None) -> bytes:
    entries = [[m, f] for m, f in sorted(revoked)]
    return message(5, authority, issued_at_ms,
                   {"seq": seq, "network": GUILD.hash if network is None else network,
                    "revoked": entries})


class Rejected(Exception):
    """A refusal: its reason, action (reject | ignore) and the rule that fails."""

    def __init__(self, reason: str, action: str, rule: str) -> None:
        super().__init__(reason, action, rule)
        self.reason, self.action, self.rule = reason, action, rule


def _has_map_or_ext(value: Any) -> bool:
    if isinstance(value, (dict, msgpack.ExtType)):
        return True
    if isinstance(value, list):
        return any(_has_map_or_ext(v) for v in value)
    return False


def _unpack_one(data: bytes) -> Any:
    """One msgpack value with nothing after it, valid UTF-8, no map or ext anywhere."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception:
        raise ValueError from None
    if _has_map_or_ext(value):
        raise ValueError
    return value


def _is_int(v: Any) -> bool:
    return type(v) is int and 0 <= v <= BIG


def _is_text(v: Any, lo: int, hi: int) -> bool:
    return type(v) is str and lo <= len(v.encode()) <= hi


def _is_bin(v: Any, lo: int, hi: int) -> bool:
    return type(v) is bytes and lo <= len(v) <= hi


def _fields_ok(kind: int, items: list[Any], charter: Charter) -> bool:
    """W10: every field's type and range, keys valid points, the rules between fields."""
    if not (_valid_point(items[2]) if type(items[2]) is bytes else False):
        return False
    if not _is_int(items[3]):
        return False
    f = dict(zip(FIELDS[kind], items[4:]))
    cred_hi = 1024 if charter.members else 0          # §5.3: empty in open networks
    if kind == 1:
        return (all(_is_int(f[n]) for n in FIELDS[1][:6])
                and _is_bin(f["credential"], 0, cred_hi))
    if kind == 2:
        return (_is_text(f["request_id"], 1, 128) and _is_text(f["user"], 1, 128)
                and type(f["provider"]) is bytes and _valid_point(f["provider"])
                and f["provider"] != items[2]
                and all(_is_int(f[n]) for n in ("tokens", "max_price_nano", "locked_price_nano",
                                                 "tier"))
                and f["tokens"] >= 1 and f["locked_price_nano"] <= f["max_price_nano"]
                and f["tier"] <= 2 and _is_text(f["prompt"], 0, 65_536)
                and _is_bin(f["credential"], 0, cred_hi))
    if kind == 3:
        return (_is_text(f["request_id"], 1, 128) and type(f["gateway"]) is bytes
                and _valid_point(f["gateway"]) and _is_text(f["user"], 1, 128)
                and all(_is_int(f[n]) for n in FIELDS[3][3:])
                and f["started_at_ms"] <= f["ended_at_ms"] <= items[3])
    if kind == 4:
        return (_is_bin(f["network"], 32, 32) and type(f["member"]) is bytes
                and _valid_point(f["member"])
                and _is_int(f["roles"]) and 1 <= f["roles"] <= 3
                and all(_is_int(f[n]) for n in FIELDS[4][3:])
                and f["expires_at_ms"] > items[3])
    if kind == 5:
        revoked = f["revoked"]
        if not (_is_int(f["seq"]) and _is_bin(f["network"], 32, 32) and type(revoked) is list
                and len(revoked) <= 1000):
            return False
        members = []
        for entry in revoked:
            if not (type(entry) is list and len(entry) == 2 and type(entry[0]) is bytes
                    and _valid_point(entry[0]) and _is_int(entry[1])):
                return False
            members.append(entry[0])
        return all(a < b for a, b in zip(members, members[1:]))   # ascending, no duplicates
    return False


def g_decode(data: bytes, now_ms: int | None, charter: Charter) -> tuple[int, list[Any]]:
    """§6.1 W1–W13 in order; returns (kind, body items) or raises Rejected. now_ms None: no W13
    (a credential inside a message, §6.2 V6m)."""
    if len(data) > MAX_INPUT:
        raise Rejected("oversize", "reject", "W1")
    try:
        outer = _unpack_one(data)
    except ValueError:
        raise Rejected("malformed", "reject", "W2") from None
    if not (type(outer) is list and len(outer) == 2 and all(type(x) is bytes for x in outer)):
        raise Rejected("malformed", "reject", "W2")
    body, signature = outer
    if len(signature) != 64:
        raise Rejected("bad_signature", "reject", "W3")
    if pack(outer) != data:
        raise Rejected("non_canonical", "reject", "W4")
    try:
        items = _unpack_one(body)
    except ValueError:
        raise Rejected("malformed", "reject", "W5") from None
    if not (type(items) is list and len(items) >= 4):
        raise Rejected("malformed", "reject", "W5")
    if type(items[0]) is not int or items[0] != 2:
        raise Rejected("version", "reject", "W6")
    kind = items[1]
    if type(kind) is not int or kind not in FIELDS:
        raise Rejected("kind", "reject", "W7")
    if len(data) > MAX_SIZE[kind]:
        raise Rejected("oversize", "reject", "W8")
    if len(items) != ITEMS[kind]:
        raise Rejected("malformed", "reject", "W9")
    if not _fields_ok(kind, items, charter):
        raise Rejected("bad_field", "reject", "W10")
    if pack(items) != body:
        raise Rejected("non_canonical", "reject", "W11")
    try:
        ok = coincurve.PublicKey(items[2]).verify(
            cdata_to_der(deserialize_compact(signature)), body)
    except Exception:
        ok = False
    if not ok or int.from_bytes(signature[32:], "big") > N_ORDER // 2:
        raise Rejected("bad_signature", "reject", "W12")
    if now_ms is not None and kind in (1, 2, 3):
        if now_ms - items[3] > MAX_AGE_MS:
            raise Rejected("stale", "ignore", "W13")
        if items[3] - now_ms > MAX_FUTURE_MS:
            raise Rejected("future", "reject", "W13")
    return kind, items


def g_credential_ok(cred_bytes: bytes, subject: bytes, issued_at_ms: int, charter: Charter,
                    need_provider: bool, need_gateway: bool) -> bool:
    """§6.2 V6m (and its Job form): the credential makes `subject` a member with these roles at
    `issued_at_ms`."""
    if not cred_bytes:
        return False
    try:
        kind, c = g_decode(cred_bytes, None, charter)
    except Rejected:
        return False
    f = dict(zip(FIELDS[4], c[4:]))
    return (kind == 4 and c[2] in charter.authorities and f["network"] == charter.hash
            and f["member"] == subject
            and (not need_provider or f["roles"] & 1 == 1)
            and (not need_gateway or f["roles"] & 2 == 2)
            and f["expires_at_ms"] > issued_at_ms)


class Validator:
    """§6.2's stateful rules for the topic and for sync (V1, V3, V4, V6, V6m, V7, V8), on a fresh
    state per instance."""

    def __init__(self, charter: Charter) -> None:
        self.charter = charter
        self.seen: set[bytes] = set()
        self.highest: dict[bytes, int] = {}
        self.seq_ids: dict[tuple[bytes, int], set[bytes]] = {}
        self.lists: dict[bytes, tuple[int, bytes]] = {}       # authority → (seq, id) held
        self.bucket: dict[bytes, tuple[float, float]] = {}    # signer → (tokens, refilled_at s)

    def check(self, data: bytes, now_ms: int, path: str, from_signer: bytes | None = None) -> str:
        """'accepted' or raises Rejected. path: 'gossip' | 'sync'."""
        mid = sha(data)
        if mid in self.seen:
            raise Rejected("duplicate", "ignore", "V1")
        kind, items = g_decode(data, now_ms, self.charter)                 # V2
        allowed = {1, 5} if self.charter.members else {1}
        if kind not in allowed:
            raise Rejected("kind", "reject", "V3")
        signer = items[2]
        if kind == 1 and path == "gossip" and from_signer is not None and from_signer != signer:
            raise Rejected("wrong_signer", "reject", "V4")
        if kind == 1:
            f = dict(zip(FIELDS[1], items[4:]))
            if f["tokens_per_second"] > self.charter.params["max_node_tokens_per_s"]:
                raise Rejected("implausible", "reject", "V6")
            if self.charter.members and not g_credential_ok(
                    f["credential"], signer, items[3], self.charter,
                    f["tokens_per_second"] > 0,
                    f["pending_tokens"] > 0 or f["pending_requests"] > 0):
                raise Rejected("not_member", "reject", "V6m")
            seq = f["seq"]
            ids = self.seq_ids.setdefault((signer, seq), set())
            if path == "gossip":
                if seq < self.highest.get(signer, -1):
                    raise Rejected("seq_regression", "ignore", "V7")
                if ids and mid not in ids and len(ids) >= 2:
                    raise Rejected("equivocation", "ignore", "V7")
            self._bucket(signer, now_ms, path)
            ids.add(mid)
            self.highest[signer] = max(self.highest.get(signer, -1), seq)
        else:
            f = dict(zip(FIELDS[5], items[4:]))
            if signer not in self.charter.authorities or f["network"] != self.charter.hash:
                raise Rejected("not_member", "reject", "V6m")
            held = self.lists.get(signer)
            if held is not None and (f["seq"], mid) <= held:
                raise Rejected("duplicate" if held[1] == mid else "seq_regression", "ignore", "V7")
            self._bucket(signer, now_ms, path)
            self.lists[signer] = (f["seq"], mid)
        self.seen.add(mid)
        return "accepted"

    def _bucket(self, signer: bytes, now_ms: int, path: str) -> None:
        """V8: burst 5, one token per tick_s, continuous; sync neither takes nor refills."""
        now = now_ms / 1000
        tick = self.charter.params["tick_s"]
        if signer not in self.bucket:
            self.bucket[signer] = (5.0, now)
        if path != "gossip":
            return
        tokens, at = self.bucket[signer]
        if now > at:
            tokens, at = min(5.0, tokens + (now - at) / tick), now
        elif now < at:  # the receiver's clock went back: the refill restarts from now
            at = now
        if tokens < 1:
            self.bucket[signer] = (tokens, at)
            raise Rejected("rate_limited", "reject", "V8")
        self.bucket[signer] = (tokens - 1, at)


def g_job_admission_member(data: bytes, now_ms: int, charter: Charter) -> str:
    """§9 J.2: the provider's membership check of a Job: 'ok', 'not_member' or 'bad_job'."""
    try:
        kind, items = g_decode(data, now_ms, charter)
    except Rejected:
        return "bad_job"
    if kind != 2:
        return "bad_job"
    f = dict(zip(FIELDS[2], items[4:]))
    if charter.members and not g_credential_ok(f["credential"], items[2], items[3], charter,
                                               False, True):
        return "not_member"
    return "ok"


# --- messages.json ---------------------------------------------------------------------------------

def fields_json(kind: int, items: list[Any]) -> dict[str, Any]:
    return {"issued_at_ms": items[3],
            **{n: json_value(v) for n, v in zip(FIELDS[kind], items[4:])}}


def valid_vector(name: str, kind: int, k: coincurve.PrivateKey, issued_at_ms: int,
                 fields: dict[str, Any], charter: Charter, note: str,
                 now_ms: int | None = None) -> dict[str, Any]:
    signer = pub(k)
    items = body_items(kind, signer, issued_at_ms, fields)
    body = pack(items)
    signature = sign_body(body, k)
    data = envelope(body, signature)
    now = issued_at_ms + 1000 if now_ms is None else now_ms
    got_kind, _ = g_decode(data, now, charter)
    assert got_kind == kind, name
    out = {
        "name": name, "note": note, "kind": KIND_NAMES[kind], "charter": charter.name,
        "private_key": k.secret.hex(), "signer": signer.hex(), "peer_id": peer_id(signer),
        "fields": fields_json(kind, items), "body": body.hex(), "signature": signature.hex(),
        "wire": data.hex(), "id": sha(data).hex(), "size": len(data), "now_ms": now,
    }
    if kind == 1:
        out["work_bits"] = work_bits(signer, fields["work_nonce"])
    return out


PROVIDER_CREDENTIAL = credential(PROVIDER)
GATEWAY_CREDENTIAL = credential(GATEWAY, authority=AUTHORITY_B, roles=2,
                                max_tokens_per_second=0)


def valid_vectors() -> list[dict[str, Any]]:
    pn = FULL_NONCE["provider"]
    return [
        valid_vector("announcement", 1, PROVIDER, T0, ANNOUNCE, TESTNET,
                     f"testnet (open): a provider offering 1000 tokens/s at >= 0.1 NEURO per 1M "
                     f"tokens, 5000 tokens in 3 requests queued at it; work_nonce {pn} gives the "
                     f"key 25 bits of work (>= 24: full weight), credential empty"),
        valid_vector("announcement-withdrawal", 1, PROVIDER, T0 + 5000,
                     {**ANNOUNCE, "seq": 2, "tokens_per_second": 0, "pending_tokens": 0,
                      "pending_requests": 0},
                     TESTNET, "a withdrawal: zero capacity and demand with a higher seq"),
        valid_vector("announcement-int-widths", 1, GATEWAY, T0,
                     {"seq": 2**32, "tokens_per_second": 50_000, "min_price_nano": BIG,
                      "pending_tokens": 200, "pending_requests": 65_536, "work_nonce": BIG,
                      "credential": b""},
                     SIMNET, "integers in every msgpack width: uint64, uint16, uint64 (2^63-1), "
                             "uint8, uint32, and work_nonce 2^63-1 (its largest value)"),
        valid_vector("announcement-zero", 1, OTHER, 0,
                     {"seq": 0, "tokens_per_second": 0, "min_price_nano": 0, "pending_tokens": 0,
                      "pending_requests": 0, "work_nonce": 0, "credential": b""},
                     SIMNET, "all-zero fields are valid (positive fixint 0), an empty credential "
                             "is bin8 of length 0 (c4 00); now_ms only 1 s later"),
        valid_vector("credential", 4, AUTHORITY_A, T0 - 30 * DAY_MS,
                     dict(zip(FIELDS[4], msgpack.unpackb(msgpack.unpackb(
                         PROVIDER_CREDENTIAL)[0])[4:])),
                     GUILD, "guild: authority a admits the provider as provider and gateway (roles "
                            "3), up to 20,000 tokens/s, 400,000 pending tokens, 50 requests, for "
                            "a year; issued 30 days before now_ms: W13 does not apply to a "
                            "credential", now_ms=T0 + 1000),
        valid_vector("announcement-member", 1, PROVIDER, T0,
                     {**ANNOUNCE, "work_nonce": first_nonce(pub(PROVIDER), at_least=8),
                      "credential": PROVIDER_CREDENTIAL},
                     GUILD, "guild (members): the provider's announcement carrying the wire bytes "
                            "of its credential (vector `credential`); its nonce has >= 8 bits, "
                            "the guild's identity_work_bits"),
        valid_vector("credential-gateway", 4, AUTHORITY_B, T0 - 30 * DAY_MS,
                     dict(zip(FIELDS[4], msgpack.unpackb(msgpack.unpackb(
                         GATEWAY_CREDENTIAL)[0])[4:])),
                     GUILD, "guild: authority b admits the gateway as gateway only (roles 2), "
                            "max_tokens_per_second 0", now_ms=T0 + 1000),
        valid_vector("job", 2, GATEWAY, T0, JOB, TESTNET,
                     "a gateway hands a matched request to a provider (open network: empty "
                     "credential)"),
        valid_vector("job-unicode", 2, GATEWAY, T0 + 1,
                     {**JOB, "request_id": "req-0002", "user": "zoë", "tier": 2,
                      "prompt": "Übersetze: 漢字 → kanji 🦉 " + "x" * 300},
                     TESTNET, "text is UTF-8 (str8/str16 by length); a prompt over 255 bytes uses "
                              "str16"),
        valid_vector("job-member", 2, GATEWAY, T0, {**JOB, "credential": GATEWAY_CREDENTIAL},
                     GUILD, "guild: the job carries the gateway's credential (vector "
                            "`credential-gateway`)"),
        valid_vector("receipt", 3, PROVIDER, T0 + 2000, RECEIPT, TESTNET,
                     "the provider's signed statement of what it served (as v1, version 2)"),
        valid_vector("revocation-list", 5, AUTHORITY_A, T0 - DAY_MS,
                     {"seq": 3, "network": GUILD.hash,
                      "revoked": sorted([[pub(OTHER), T0 - 2 * DAY_MS], [pub(GATEWAY), T0 + 60_000]])},
                     GUILD, "authority a revokes two members (entries sorted by member key); "
                            "issued a day before now_ms: lists never expire", now_ms=T0 + 1000),
        valid_vector("revocation-list-empty", 5, AUTHORITY_B, T0,
                     {"seq": 1, "network": GUILD.hash, "revoked": []},
                     GUILD, "an authority's empty list: it revokes nobody (and replaces its older "
                            "lists)"),
    ]


# --- invalid.json --------------------------------------------------------------------------------

def announce_items(k: coincurve.PrivateKey = PROVIDER, issued: int = T0, **changes: Any) -> list[Any]:
    return body_items(1, pub(k), issued, {**ANNOUNCE, **changes})


def member_announcement(k: coincurve.PrivateKey = PROVIDER, issued: int = T0,
                        cred: bytes | None = None, **changes: Any) -> bytes:
    fields = {**ANNOUNCE, "work_nonce": first_nonce(pub(k), at_least=8),
              "credential": credential(k) if cred is None else cred, **changes}
    return message(1, k, issued, fields)


def _with_item_bytes(body: bytes, at: int, old: bytes, new: bytes) -> bytes:
    assert body[at:at + len(old)] == old, (body[at:at + len(old)].hex(), old.hex())
    return body[:at] + new + body[at + len(old):]


SEQ_AT = 1 + 1 + 1 + 35 + 9      # array header, version, kind, signer (bin8 33), issued (uint64)


def invalid(name: str, data: bytes, reason: str, action: str, rule: str, note: str, *,
            charter: Charter = TESTNET, path: str = "decode", now_ms: int = T0 + 1000,
            from_signer: bytes | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "note": note, "rule": rule, "charter": charter.name,
                           "path": path, "wire": data.hex(), "now_ms": now_ms}
    if from_signer is not None:
        out["from_peer"] = peer_id(from_signer)
    out.update({"reason": reason, "action": action})
    got = _outcome(data, now_ms, charter, path, from_signer)
    assert got == (reason, action, rule), (name, got)
    return out


def _outcome(data: bytes, now_ms: int, charter: Charter, path: str,
             from_signer: bytes | None) -> tuple[str, str, str]:
    try:
        if path == "decode":
            g_decode(data, now_ms, charter)
        elif path == "job":
            verdict = g_job_admission_member(data, now_ms, charter)
            if verdict != "ok":
                return (verdict, "reject", "J.2")
        else:
            Validator(charter).check(data, now_ms, path, from_signer)
    except Rejected as r:
        return (r.reason, r.action, r.rule)
    return ("accepted", "", "")


def invalid_vectors() -> list[dict[str, Any]]:
    good_body = pack(announce_items())
    good_sig = sign_body(good_body, PROVIDER)
    good = envelope(good_body, good_sig)
    r, s = int.from_bytes(good_sig[:32], "big"), int.from_bytes(good_sig[32:], "big")
    flipped = bytearray(good_sig)
    flipped[10] ^= 0x01
    off_curve = b"\x02" + b"\x00" * 31 + b"\x05"
    job = lambda **ch: message(2, GATEWAY, T0, {**JOB, **ch})  # noqa: E731
    cred_items = msgpack.unpackb(msgpack.unpackb(PROVIDER_CREDENTIAL)[0])
    cred = lambda **ch: credential(ch.pop("member", PROVIDER), **ch)  # noqa: E731
    list_fields = {"seq": 1, "network": GUILD.hash, "revoked": []}
    many = sorted([pub(key(f"revoked {i}")), T0] for i in range(1001))
    v1_body = pack([1, 1, pub(PROVIDER), T0, 1, 1000, 100_000_000, 5000, 3])
    out = [
        # W1 – W5: the envelope
        invalid("oversize-total", b"\x00" * (MAX_INPUT + 1), "oversize", "reject", "W1",
                "one byte above the largest limit of any kind (83,968, a Job)"),
        invalid("empty", b"", "malformed", "reject", "W2", "zero bytes"),
        invalid("trailing-bytes", good + b"\x00", "malformed", "reject", "W2",
                "a valid message followed by one more byte"),
        invalid("envelope-three-items", pack([good_body, good_sig, b""]), "malformed", "reject",
                "W2", "the envelope has exactly two items"),
        invalid("envelope-str-body", pack([good_body.hex(), good_sig]), "malformed", "reject",
                "W2", "body must be bin, not str"),
        invalid("signature-63-bytes", envelope(good_body, good_sig[:63]), "bad_signature",
                "reject", "W3", "the signature is exactly 64 bytes"),
        invalid("envelope-bin16", b"\x92\xc5" + len(good_body).to_bytes(2, "big") + good_body
                + b"\xc4\x40" + good_sig, "non_canonical", "reject", "W4",
                "a short body announced with a bin16 header instead of bin8"),
        invalid("body-not-array", envelope(pack(7), good_sig), "malformed", "reject", "W5",
                "the body is an array"),
        invalid("body-empty-map", signed([], PROVIDER, _with_item_bytes(good_body, SEQ_AT, b"\x01",
                                                                         b"\x80")),
                "malformed", "reject", "W5", "an empty map where seq belongs; correctly signed"),
        # W6: version
        invalid("version-1-announcement", signed([], PROVIDER, v1_body), "version", "reject", "W6",
                "a version-1 announcement (9 items, correctly signed): v2 nodes speak only v2"),
        invalid("version-3", signed([3, *announce_items()[1:]], PROVIDER), "version", "reject",
                "W6", "version 3 is not this protocol"),
        invalid("version-true", signed([True, *announce_items()[1:]], PROVIDER), "version",
                "reject", "W6", "true is not the integer 2"),
        # W7: kind
        invalid("kind-6", signed([2, 6, *announce_items()[2:]], PROVIDER), "kind", "reject", "W7",
                "kinds are 1..5"),
        invalid("kind-0", signed([2, 0, *announce_items()[2:]], PROVIDER), "kind", "reject", "W7",
                "kind 0 does not exist"),
        # W8: the kind's limit
        invalid("oversize-announcement",
                signed(announce_items(credential=b"\x00" * 1024, min_price_nano=BIG,
                                      pending_tokens=BIG, pending_requests=BIG,
                                      tokens_per_second=BIG)[:10]
                       + [b"\x00" * 1024, "x" * 1000], PROVIDER),
                "oversize", "reject", "W8",
                "an announcement of 2,049 bytes or more (above 2,048; its item count is wrong "
                "too, W8 comes first)", charter=GUILD),
        invalid("oversize-credential",
                signed(body_items(4, pub(AUTHORITY_A), T0, dict(zip(FIELDS[4], cred_items[4:])))
                       + ["x" * 900], AUTHORITY_A),
                "oversize", "reject", "W8", "a credential above 1,024 bytes", charter=GUILD),
        invalid("oversize-revocation-list",
                signed([2, 5, pub(AUTHORITY_A), T0, 1, GUILD.hash, many + many[:500]],
                       AUTHORITY_A),
                "oversize", "reject", "W8", "a revocation list above 65,536 bytes",
                charter=GUILD),
        # W9: item counts
        invalid("announcement-10-items", signed(announce_items()[:-1], PROVIDER), "malformed",
                "reject", "W9", "an announcement has 11 items (here the credential is missing)"),
        invalid("announcement-v1-layout", signed([2, *announce_items()[1:9]], PROVIDER),
                "malformed", "reject", "W9",
                "version 2 with v1's 9 items (no work_nonce, no credential)"),
        invalid("job-12-items", signed(body_items(2, pub(GATEWAY), T0, JOB)[:-1], GATEWAY),
                "malformed", "reject", "W9", "a job has 13 items (v1's 12 + credential)"),
        invalid("credential-10-items", signed(cred_items[:-1], AUTHORITY_A), "malformed", "reject",
                "W9", "a credential has 11 items", charter=GUILD),
        invalid("revocation-list-6-items", signed([2, 5, pub(AUTHORITY_A), T0, 1, GUILD.hash],
                                                  AUTHORITY_A),
                "malformed", "reject", "W9", "a revocation list has 7 items", charter=GUILD),
        # W10: fields
        invalid("work-nonce-2^63", signed(announce_items(work_nonce=2**63), PROVIDER), "bad_field",
                "reject", "W10", "work_nonce is 0..2^63-1 like every integer"),
        invalid("work-nonce-negative", signed(announce_items(work_nonce=-1), PROVIDER),
                "bad_field", "reject", "W10", "no negative integers"),
        invalid("credential-in-open-network",
                signed(announce_items(credential=PROVIDER_CREDENTIAL), PROVIDER), "bad_field",
                "reject", "W10", "testnet is open: the credential must be empty"),
        invalid("job-credential-in-open-network",
                signed(body_items(2, pub(GATEWAY), T0, {**JOB, "credential": GATEWAY_CREDENTIAL}),
                       GATEWAY), "bad_field", "reject", "W10",
                "testnet is open: a job's credential must be empty"),
        invalid("credential-1025-bytes",
                signed(announce_items(credential=b"\x00" * 1025), PROVIDER), "bad_field",
                "reject", "W10", "a credential item is at most 1,024 bytes", charter=GUILD),
        invalid("credential-as-text", signed(announce_items(credential=""), PROVIDER),
                "bad_field", "reject", "W10", "the credential item is bin, not str"),
        invalid("credential-roles-0", cred(roles=0), "bad_field", "reject", "W10",
                "roles are 1..3", charter=GUILD),
        invalid("credential-roles-4", cred(roles=4), "bad_field", "reject", "W10",
                "roles are 1..3", charter=GUILD),
        invalid("credential-expires-at-issue", cred(expires_at_ms=T0 - 30 * DAY_MS), "bad_field",
                "reject", "W10", "expires_at_ms must be above issued_at_ms", charter=GUILD),
        invalid("credential-network-31-bytes", cred(network=GUILD.hash[:31]), "bad_field",
                "reject", "W10", "network is bin(32)", charter=GUILD),
        invalid("credential-member-off-curve", cred(member=off_curve), "bad_field", "reject",
                "W10", "member is a valid point", charter=GUILD),
        invalid("revocation-list-unsorted",
                message(5, AUTHORITY_A, T0, {**list_fields, "revoked": sorted(
                    [[pub(OTHER), T0], [pub(GATEWAY), T0]], reverse=True)}),
                "bad_field", "reject", "W10", "entries are sorted by member, ascending",
                charter=GUILD),
        invalid("revocation-list-duplicate",
                message(5, AUTHORITY_A, T0, {**list_fields, "revoked": [[pub(OTHER), T0],
                                                                        [pub(OTHER), T0 + 1]]}),
                "bad_field", "reject", "W10", "a member at most once", charter=GUILD),
        invalid("revocation-list-1001-entries",
                message(5, AUTHORITY_A, T0, {**list_fields, "revoked": many}),
                "bad_field", "reject", "W10", "at most 1,000 entries", charter=GUILD),
        invalid("revocation-list-entry-3-items",
                message(5, AUTHORITY_A, T0, {**list_fields, "revoked": [[pub(OTHER), T0, 0]]}),
                "bad_field", "reject", "W10", "an entry is [member, from_ms]", charter=GUILD),
        invalid("job-to-itself", job(provider=pub(GATEWAY)), "bad_field", "reject", "W10",
                "provider equals the signing gateway"),
        invalid("signer-off-curve", signed([2, 1, off_curve, *announce_items()[3:]], PROVIDER),
                "bad_field", "reject", "W10", "0x02 ‖ x with no point on the curve"),
        # W11, W12, W13
        invalid("body-work-nonce-uint64",
                signed([], PROVIDER, pack(announce_items(work_nonce=5))[:-3] + b"\xcf" +
                       (5).to_bytes(8, "big") + b"\xc4\x00"),
                "non_canonical", "reject", "W11",
                "work_nonce 5 written as uint64 (cf …05); correctly signed"),
        invalid("forged-signature", envelope(good_body, bytes(flipped)), "bad_signature",
                "reject", "W12", "one bit of the signature flipped"),
        invalid("high-s", envelope(good_body, r.to_bytes(32, "big")
                                   + (N_ORDER - s).to_bytes(32, "big")),
                "bad_signature", "reject", "W12", "s replaced by n - s: not low-s"),
        invalid("credential-forged", bytes(PROVIDER_CREDENTIAL[:-1])
                + bytes([PROVIDER_CREDENTIAL[-1] ^ 1]), "bad_signature", "reject", "W12",
                "a credential's signature is checked like any other", charter=GUILD),
        invalid("stale", good, "stale", "ignore", "W13", "received 300.001 s after issued_at",
                now_ms=T0 + 300_001),
        invalid("future", good, "future", "reject", "W13", "received 30.001 s before issued_at",
                now_ms=T0 - 30_001),
        invalid("job-stale", job(), "stale", "ignore", "W13",
                "W13 applies to jobs and receipts as in v1", now_ms=T0 + 300_001),
    ]
    out += v6m_vectors()
    return out


def v6m_vectors() -> list[dict[str, Any]]:
    """§6.2 V6m on the guild's topic (from_peer = the signer), a list's V6m, V3 in an open
    network, and the Job form of V6m at the provider (JobDeclined not_member)."""
    g = dict(charter=GUILD, path="gossip")
    me = pub(PROVIDER)
    not_member = ("not_member", "reject", "V6m")
    cases = [
        ("v6m-empty-credential", member_announcement(cred=b""),
         "a members network: the credential must be present"),
        ("v6m-credential-not-msgpack", member_announcement(cred=b"\xc1"),
         "credential bytes that are no message (W2 inside): not_member, not malformed"),
        ("v6m-credential-is-announcement",
         member_announcement(cred=message(1, AUTHORITY_A, T0, ANNOUNCE)),
         "a valid signed message of kind 1 by an authority is not a credential"),
        ("v6m-credential-bad-signature",
         member_announcement(cred=PROVIDER_CREDENTIAL[:-1] + bytes([PROVIDER_CREDENTIAL[-1] ^ 1])),
         "the credential's signature fails (W12 inside)"),
        ("v6m-credential-version-1",
         member_announcement(cred=signed([1, *msgpack.unpackb(msgpack.unpackb(
             PROVIDER_CREDENTIAL)[0])[1:]], AUTHORITY_A)),
         "a credential of version 1 (W6 inside)"),
        ("v6m-signer-not-authority", member_announcement(cred=credential(PROVIDER,
                                                                         authority=OUTSIDER)),
         "signed by a key that is not a charter authority"),
        ("v6m-other-network", member_announcement(cred=credential(PROVIDER,
                                                                  network=TESTNET.hash)),
         "a credential for another charter hash"),
        ("v6m-other-member", member_announcement(cred=credential(OTHER)),
         "a credential of another member, carried by the provider"),
        ("v6m-provider-role-missing",
         member_announcement(cred=credential(PROVIDER, roles=2)),
         "tokens_per_second > 0 needs the provider bit (roles 2 is gateway only)"),
        ("v6m-gateway-role-missing-tokens",
         member_announcement(cred=credential(PROVIDER, roles=1)),
         "pending_tokens > 0 needs the gateway bit (roles 1 is provider only)"),
        ("v6m-gateway-role-missing-requests",
         member_announcement(cred=credential(PROVIDER, roles=1), pending_tokens=0),
         "pending_requests > 0 alone needs the gateway bit too"),
        ("v6m-expired-at-issue", member_announcement(cred=credential(PROVIDER,
                                                                     expires_at_ms=T0)),
         "expires_at_ms equal to the announcement's issued_at_ms: not a member then"),
    ]
    out = [invalid(name, data, *not_member, note, from_signer=me, **g)
           for name, data, note in cases]
    out += [
        invalid("v6m-after-v6", member_announcement(cred=b"", tokens_per_second=50_001),
                "implausible", "reject", "V6",
                "over max_node_tokens_per_s and no credential: V6 comes before V6m",
                from_signer=me, **g),
        invalid("v6m-list-not-authority",
                revocation_list(OUTSIDER, 1, T0, []), *not_member,
                "a revocation list signed by a key that is not a charter authority", **g),
        invalid("v6m-list-other-network",
                revocation_list(AUTHORITY_A, 1, T0, [], network=TESTNET.hash), *not_member,
                "a revocation list for another charter hash", **g),
        invalid("v3-list-in-open-network",
                revocation_list(AUTHORITY_A, 1, T0, [], network=TESTNET.hash), "kind", "reject",
                "V3", "an open network carries no revocation lists", charter=TESTNET,
                path="gossip"),
        invalid("v3-credential-alone", PROVIDER_CREDENTIAL, "kind", "reject", "V3",
                "a credential never travels alone, only inside an announcement or a job", **g),
        invalid("job-not-member-empty", message(2, GATEWAY, T0, JOB), "not_member", "reject",
                "J.2", "guild: a job without the gateway's credential → JobDeclined not_member",
                charter=GUILD, path="job"),
        invalid("job-not-member-role",
                message(2, GATEWAY, T0, {**JOB, "credential": credential(GATEWAY, roles=1)}),
                "not_member", "reject", "J.2",
                "guild: the gateway's credential lacks the gateway bit (roles 1)",
                charter=GUILD, path="job"),
        invalid("job-not-member-other",
                message(2, GATEWAY, T0, {**JOB, "credential": PROVIDER_CREDENTIAL}),
                "not_member", "reject", "J.2",
                "guild: a job carrying another member's credential", charter=GUILD, path="job"),
    ]
    return out


def accepted_vectors() -> list[dict[str, Any]]:
    """Boundaries that pass: the rules above are not stricter than the text."""
    g = dict(charter=GUILD, path="gossip")
    me = pub(PROVIDER)
    cases = [
        ("v6m-expires-one-ms-after", member_announcement(cred=credential(PROVIDER,
                                                                         expires_at_ms=T0 + 1)),
         "expires_at_ms = issued_at_ms + 1: a member at issued_at_ms", g, me),
        ("v6m-provider-only", member_announcement(cred=credential(PROVIDER, roles=1),
                                                  pending_tokens=0, pending_requests=0),
         "roles 1 with no demand announced", g, me),
        ("v6m-gateway-only", member_announcement(cred=credential(PROVIDER, roles=2),
                                                 tokens_per_second=0),
         "roles 2 with no capacity announced", g, me),
        ("v6m-credential-old", member_announcement(cred=credential(
            PROVIDER, issued_at_ms=T0 - 400 * DAY_MS, expires_at_ms=T0 + DAY_MS)),
         "a credential issued 400 days ago: W13 does not apply inside", g, me),
        ("v6m-credential-from-authority-b", member_announcement(cred=credential(
            PROVIDER, authority=AUTHORITY_B)), "either authority may admit", g, me),
        ("v6m-ignores-revocations", member_announcement(cred=credential(OTHER), k=OTHER),
         "the member `other`, whom vector `revocation-list` revokes, still passes V6m: validation "
         "does not look at lists (the view ends a revoked member's count, §7.1)", g, pub(OTHER)),
        ("list-old", revocation_list(AUTHORITY_B, 1, T0 - 400 * DAY_MS, [(pub(OTHER), T0)]),
         "a list issued 400 days before now: W13 does not apply to lists", g, None),
        ("list-relayed", revocation_list(AUTHORITY_A, 1, T0, [(pub(OTHER), T0)]),
         "a list arriving on gossip from a peer that is not its authority: V4 does not apply",
         g, pub(GATEWAY)),
        ("job-member", message(2, GATEWAY, T0, {**JOB, "credential": GATEWAY_CREDENTIAL}),
         "guild: the gateway's valid credential", dict(charter=GUILD, path="job"), None),
        ("credential-decoded-late", PROVIDER_CREDENTIAL,
         "a credential decoded alone (W1–W12) a year after issue: no W13", dict(
             charter=GUILD, path="decode"), None),
    ]
    out = []
    for name, data, note, ctx, sender in cases:
        now = T0 + 1000 if name != "credential-decoded-late" else T0 + 365 * DAY_MS - 1
        assert _outcome(data, now, ctx["charter"], ctx["path"], sender) == ("accepted", "", ""), name
        entry: dict[str, Any] = {"name": name, "note": note, "charter": ctx["charter"].name,
                                 "path": ctx["path"], "wire": data.hex(), "now_ms": now}
        if sender is not None:
            entry["from_peer"] = peer_id(sender)
        entry["expect"] = "accepted"
        out.append(entry)
    return out


# --- frames.json (§8.2, §9, §10) -------------------------------------------------------------------

FRAME_ITEMS = {16: 5, 17: 3, 18: 5, 19: 3, 20: 5, 21: 3, 22: 5}
FRAME_LIMIT = {16: 1024, 17: 1_048_576, 18: 1024, 19: 1024, 20: 1_048_576, 21: 32_768, 22: 1024}
#: §8.2 "each stream carries only its own kinds"; relay/2.1.0 (revision 2.1: relay, §8.5) only 17.
STREAM_KINDS = {"sync": {16, 17}, "job": {18, 19, 20, 22}, "peers/1.1.0": {21}, "relay": {17}}
STREAM_VERSION = {"sync": 2, "job": 2, "peers/1.1.0": 1, "relay": 2}
FRAME_NAMES = {16: "sync_request", 17: "sync_response", 18: "job_declined", 19: "job_accepted",
               20: "job_result", 21: "peer_exchange", 22: "job_settled"}


def _peers_ok(peers: Any) -> bool:
    return (type(peers) is list and len(peers) <= 32 and all(
        type(p) is list and len(p) == 2 and _is_text(p[0], 1, 128) and type(p[1]) is list
        and len(p[1]) <= 8 and all(_is_text(a, 1, 256) for a in p[1]) for p in peers))


def _frame_fields_ok(kind: int, f: list[Any]) -> bool:
    if kind == 16:
        return (_is_bin(f[2], 32, 32) and type(f[3]) is list and len(f[3]) == 16
                and all(_is_bin(b, 32, 32) for b in f[3]) and _is_bin(f[4], 32, 32))
    if kind == 17:
        return type(f[2]) is list and len(f[2]) <= 4096 and all(_is_bin(m, 1, 65_536)
                                                              for m in f[2])
    if kind == 18:
        return _is_text(f[2], 1, 128) and _is_text(f[3], 1, 128) and _is_text(f[4], 0, 512)
    if kind == 19:
        return _is_text(f[2], 1, 128)
    if kind == 20:
        return _is_text(f[2], 1, 128) and _is_bin(f[3], 1, 2**32) and _is_text(f[4], 0, 1_000_000)
    if kind == 21:
        return _peers_ok(f[2])
    if kind == 22:
        return (_is_text(f[2], 1, 128) and type(f[3]) is bytes and _is_text(f[4], 1, 128)
                and (len(f[3]) == 32 if f[4] == "settled" else len(f[3]) == 0))
    return False


def g_frame(data: bytes, stream: str) -> list[Any]:
    """§8.2 F1–F8 for `stream` (sync, job, peers/1.1.0); §10 L1–L5 for peers/1.0.0."""
    if stream == "peers/1.0.0":
        if len(data) > 32_768:
            raise Rejected("oversize", "reject", "L1")
        try:
            f = _unpack_one(data)
        except ValueError:
            raise Rejected("malformed", "reject", "L2") from None
        if not (type(f) is list and len(f) == 2):
            raise Rejected("malformed", "reject", "L2")
        if type(f[0]) is not int or f[0] != 1:
            raise Rejected("version", "reject", "L3")
        if not _peers_ok(f[1]):
            raise Rejected("bad_field", "reject", "L4")
        if pack(f) != data:
            raise Rejected("non_canonical", "reject", "L5")
        return f
    if len(data) > max(FRAME_LIMIT.values()):
        raise Rejected("oversize", "reject", "F1")
    try:
        f = _unpack_one(data)
    except ValueError:
        raise Rejected("malformed", "reject", "F2") from None
    if not (type(f) is list and len(f) >= 2):
        raise Rejected("malformed", "reject", "F2")
    if type(f[0]) is not int or f[0] != STREAM_VERSION[stream]:
        raise Rejected("version", "reject", "F3")
    if type(f[1]) is not int or f[1] not in STREAM_KINDS[stream]:
        raise Rejected("kind", "reject", "F4")
    if len(data) > FRAME_LIMIT[f[1]]:
        raise Rejected("oversize", "reject", "F5")
    if len(f) != FRAME_ITEMS[f[1]]:
        raise Rejected("malformed", "reject", "F6")
    if not _frame_fields_ok(f[1], f):
        raise Rejected("bad_field", "reject", "F7")
    if pack(f) != data:
        raise Rejected("non_canonical", "reject", "F8")
    return f


def g_view_digests(announcements: list[bytes], lists: list[bytes]) -> dict[str, Any]:
    """§8.1 v2: 16 bucket digests, the revocations digest, the view digest."""
    count, total = [0] * 16, [0] * 16
    for data in announcements:
        signer = msgpack.unpackb(msgpack.unpackb(data)[0])[2]
        b = sha(signer)[0] >> 4
        count[b] += 1
        total[b] = (total[b] + int.from_bytes(sha(data), "big")) % 2**256
    buckets = [sha(b"neuroshard/view-bucket/v2" + count[i].to_bytes(8, "big")
                   + total[i].to_bytes(32, "big")) for i in range(16)]
    revocations = sha(b"neuroshard/revocations/v2" + b"".join(sorted(sha(x) for x in lists)))
    return {"bucket_digests": buckets, "revocations_digest": revocations,
            "digest": sha(b"neuroshard/view/v2" + b"".join(buckets) + revocations)}


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


PEERS = [
    [peer_id(pub(PROVIDER)), ["/ip4/192.0.2.10/tcp/4001", "/ip6/2001:db8::10/tcp/4001"]],
    [peer_id(pub(GATEWAY)), ["/dns4/gateway.example/tcp/4001"]],
    [peer_id(pub(OTHER)), []],
]


def _wire_of(name: str) -> bytes:
    return next(bytes.fromhex(v["wire"]) for v in valid_vectors() if v["name"] == name)


def frame_vectors() -> dict[str, Any]:
    a = _wire_of("announcement")
    w = _wire_of("announcement-withdrawal")
    rl = _wire_of("revocation-list")
    receipt = _wire_of("receipt")
    rid = sha(receipt)
    empty = g_view_digests([], [])
    held = g_view_digests([a, w], [])
    output = "Gossip spreads the word / every peer hears it in time / the price is the same"
    valid_spec = [
        ("sync-request-empty-view", "sync", [2, 16, empty["digest"], empty["bucket_digests"],
                                            empty["revocations_digest"]],
         "the request of a node that holds nothing (the digests of §8.1 for the empty view)"),
        ("sync-request", "sync", [2, 16, held["digest"], held["bucket_digests"],
                                  held["revocations_digest"]],
         "the request of a node holding the announcement and its withdrawal"),
        ("sync-response", "sync", [2, 17, [a, w]], "two announcements"),
        ("sync-response-with-list", "sync", [2, 17, [rl, a]],
         "a members network's answer: a revocation list first, then announcements"),
        ("sync-response-empty", "sync", [2, 17, []], "no items"),
        ("job-declined", "job", [2, 18, "req-0001", "full", "480 tokens in flight, room for 120"],
         "the provider declines"),
        ("job-declined-not-member", "job", [2, 18, "req-0001", "not_member",
                                            "credential lacks the gateway role"],
         "a members network's provider declines a gateway that is not a member"),
        ("job-accepted", "job", [2, 19, "req-0001"], "the provider accepts"),
        ("job-result", "job", [2, 20, "req-0001", receipt, output], "the result and its receipt"),
        ("job-settled", "job", [2, 22, "req-0001", rid, "settled"],
         "the gateway tells the provider its receipt (this id) settled"),
        ("job-settled-refused", "job", [2, 22, "req-0001", b"", "implausible"],
         "the gateway refused the receipt (R6): empty receipt_id, the reason as outcome"),
        ("peer-exchange", "peers/1.1.0", [1, 21, PEERS],
         "peer exchange is unchanged: version 1, kind 21"),
        ("peer-exchange-legacy", "peers/1.0.0", [1, PEERS], "the 1.0.0 layout, unchanged"),
    ]
    valid = []
    for name, stream, items, note in valid_spec:
        data = pack(items)
        g_frame(data, stream)
        kind = items[1] if stream != "peers/1.0.0" else None
        valid.append({"name": name, "note": note, "stream": stream,
                      "frame": FRAME_NAMES[kind] if kind else "peer_exchange_legacy",
                      "fields": json_value(items[2:] if kind else items[1:]), "bytes": data.hex()})
    z = bytes(32)
    b16 = [z] * 16
    bad = [
        ("sync-request-4-items", "sync", pack([2, 16, z, b16]), "malformed", "F6",
         "v1's 4-item request with version 2: the revocations digest is missing"),
        ("sync-request-v1", "sync", pack([1, 16, z, b16]), "version", "F3",
         "a v1 request on sync/2.0.0"),
        ("sync-request-short-revocations-digest", "sync", pack([2, 16, z, b16, z[:31]]),
         "bad_field", "F7", "the revocations digest is bin(32)"),
        ("sync-request-15-buckets", "sync", pack([2, 16, z, b16[:15], z]), "bad_field", "F7",
         "exactly 16 bucket digests"),
        ("sync-response-item-65537", "sync", pack([2, 17, [b"\x00" * 65_537]]), "bad_field", "F7",
         "an item is at most 65,536 bytes (the largest message that travels in sync, a list)"),
        ("sync-response-empty-item", "sync", pack([2, 17, [b""]]), "bad_field", "F7",
         "an item is at least 1 byte"),
        ("sync-response-4097-items", "sync", pack([2, 17, [b"\x00"] * 4097]), "bad_field", "F7",
         "at most 4,096 items"),
        ("sync-response-str-item", "sync", pack([2, 17, [a.hex()]]), "bad_field", "F7",
         "items are bin"),
        ("job-settled-on-sync", "sync", pack([2, 22, "req-0001", rid, "settled"]), "kind", "F4",
         "sync carries 16 and 17 only"),
        ("job-settled-4-items", "job", pack([2, 22, "req-0001", rid]), "malformed", "F6",
         "JobSettled has 5 items"),
        ("job-settled-id-31", "job", pack([2, 22, "req-0001", rid[:31], "settled"]), "bad_field",
         "F7", "receipt_id is 32 bytes when settled"),
        ("job-settled-without-id", "job", pack([2, 22, "req-0001", b"", "settled"]), "bad_field",
         "F7", "outcome settled needs the receipt id"),
        ("job-settled-refused-with-id", "job", pack([2, 22, "req-0001", rid, "mismatch"]),
         "bad_field", "F7", "a refused receipt is not identified: receipt_id must be empty"),
        ("job-settled-empty-outcome", "job", pack([2, 22, "req-0001", b"", ""]), "bad_field", "F7",
         "outcome is 1..128 bytes"),
        ("job-settled-outcome-129", "job", pack([2, 22, "req-0001", b"", "x" * 129]), "bad_field",
         "F7", "outcome is 1..128 bytes"),
        ("job-settled-empty-request-id", "job", pack([2, 22, "", rid, "settled"]), "bad_field",
         "F7", "request_id is 1..128 bytes"),
        ("job-settled-oversize", "job", pack([2, 22, "r" * 128, rid, "settled" + "x" * 900]),
         "oversize", "F5", "above JobSettled's 1,024 bytes"),
        ("job-declined-v1", "job", pack([1, 18, "req-0001", "full", ""]), "version", "F3",
         "a v1 frame on job/2.0.0"),
        ("job-accepted-uint8-kind", "job", b"\x93\x02\xcc\x13\xa8req-0001", "non_canonical", "F8",
         "kind 19 written as uint8"),
        ("peer-exchange-version-2", "peers/1.1.0", pack([2, 21, PEERS]), "version", "F3",
         "peer exchange stays version 1"),
        ("peer-exchange-on-job", "job", pack([2, 21, PEERS]), "kind", "F4",
         "the job stream carries 18, 19, 20 and 22"),
        ("frame-not-array", "sync", pack("hello"), "malformed", "F2", "not an array"),
        ("peer-list-version-2", "peers/1.0.0", pack([2, PEERS]), "version", "L3",
         "the 1.0.0 list stays version 1"),
    ]
    invalid = []
    for name, stream, data, reason, rule, note in bad:
        try:
            g_frame(data, stream)
        except Rejected as r:
            assert (r.reason, r.rule) == (reason, rule), (name, r.reason, r.rule)
        else:
            raise AssertionError(f"frame vector {name} decodes")
        invalid.append({"name": name, "note": note, "stream": stream, "bytes": data.hex(),
                        "reason": reason, "action": "reject", "rule": rule})
    lengths = [{"length": n, "prefix": _uvarint(n).hex()}
               for n in (0, 1, 127, 128, 300, 16_384, 1_048_576)]
    return {**HEADER, "frame_items": {str(k): v for k, v in FRAME_ITEMS.items()},
            "frame_limits": {str(k): v for k, v in FRAME_LIMIT.items()},
            "valid": valid, "invalid": invalid, "length_prefix": lengths,
            "view_digests": view_digest_vectors(), "sync_sessions": sync_session_vectors(),
            "listener_budget": listener_budget_vectors()}


def view_digest_vectors() -> list[dict[str, Any]]:
    msgs = {v["name"]: bytes.fromhex(v["wire"]) for v in valid_vectors()}
    cases = [
        ("empty-view", [], [], "nothing held: the revocations digest is SHA-256 of the tag alone"),
        ("two-announcements", ["announcement", "announcement-withdrawal"], [],
         "an open network's view"),
        ("members-view", ["announcement-member"], ["revocation-list", "revocation-list-empty"],
         "a members view: one announcement and the newest list of each authority"),
    ]
    out = []
    for name, ann, lists, note in cases:
        d = g_view_digests([msgs[n] for n in ann], [msgs[n] for n in lists])
        out.append({"name": name, "note": note, "announcements": ann, "revocation_lists": lists,
                    "buckets": {n: sha(msgpack.unpackb(msgpack.unpackb(msgs[n])[0])[2])[0] >> 4
                                for n in ann},
                    "list_ids_sorted": sorted(sha(msgs[n]).hex() for n in lists),
                    "bucket_digests": [b.hex() for b in d["bucket_digests"]],
                    "revocations_digest": d["revocations_digest"].hex(),
                    "digest": d["digest"].hex()})
    return out


def g_sync_session(frames: list[bytes], now_ms: int, charter: Charter) -> dict[str, Any]:
    """§8.3: the dialer reads the frames in order and checks each item in order; the first item
    rejected (or a frame that breaks F1–F8) ends the session: the rest is dropped, the stream
    reset and the peer charged one fault."""
    v = Validator(charter)
    outcomes: list[Any] = []
    accepted: list[str] = []
    for data in frames:
        try:
            items = g_frame(data, "sync")
        except Rejected as r:
            outcomes.append({"frame": r.reason})
            return {"outcomes": outcomes, "accepted": accepted, "reset": True, "faults": 1}
        if items[1] != 17:
            outcomes.append({"frame": "kind"})
            return {"outcomes": outcomes, "accepted": accepted, "reset": True, "faults": 1}
        for item in items[2]:
            try:
                v.check(item, now_ms, "sync")
            except Rejected as r:
                outcomes.append({"reason": r.reason, "action": r.action})
                if r.action == "reject":
                    return {"outcomes": outcomes, "accepted": accepted, "reset": True,
                            "faults": 1}
            else:
                outcomes.append("accepted")
                accepted.append(sha(item).hex())
    return {"outcomes": outcomes, "accepted": accepted, "reset": False, "faults": 0}


def sync_session_vectors() -> list[dict[str, Any]]:
    p = lambda seq, issued, **ch: message(1, PROVIDER, issued, {**ANNOUNCE, "seq": seq, **ch})  # noqa
    a1, a2, a3 = p(1, T0), p(2, T0 + 1000), p(3, T0 + 2000)
    old = p(0, T0 - 300_001)
    forged = bytearray(a2)
    forged[-1] ^= 1
    o1 = message(1, OTHER, T0, {**ANNOUNCE, "work_nonce": 0})
    m1 = member_announcement()
    m_other = member_announcement(cred=credential(OTHER), k=OTHER)
    m_bad = member_announcement(k=GATEWAY, cred=credential(GATEWAY, roles=1))
    rl_a = revocation_list(AUTHORITY_A, 1, T0 - DAY_MS, [(pub(OTHER), T0)])
    rl_outsider = revocation_list(OUTSIDER, 1, T0, [(pub(PROVIDER), T0)])
    eq = p(3, T0 + 2000, pending_tokens=1)
    cases = [
        ("ignored-items-do-not-stop", TESTNET, [[a1, old, a2]],
         "a stale item (ignore) is skipped and the session goes on"),
        ("stop-at-bad-signature", TESTNET, [[a1, bytes(forged), a3], [o1]],
         "the second item fails W12 (reject): the third item and the second frame are never "
         "looked at, the stream is reset and the peer charged one fault"),
        ("history-form", TESTNET, [[a3, a1, a2, a3]],
         "V7's history form: seqs below the highest accepted are accepted; the same bytes again "
         "are a duplicate (ignore)"),
        ("equivocation-evidence", TESTNET, [[a3, eq]],
         "a second message with seq 3 is accepted as equivocation evidence"),
        ("members-stop-at-not-member", GUILD, [[rl_a, m1, m_bad, m_other]],
         "a list, a member's announcement, then an announcement whose credential lacks the "
         "gateway role (not_member, reject): the session stops before the last item"),
        ("members-list-from-outsider", GUILD, [[rl_outsider, m1]],
         "a list not signed by a charter authority: not_member, stop at the first item"),
        ("open-network-list", TESTNET, [[a1, revocation_list(AUTHORITY_A, 1, T0, [],
                                                             network=TESTNET.hash)]],
         "an open network carries no lists: V3 kind (reject) ends the session"),
        ("bad-frame", TESTNET, [[a1], None],
         "the second frame is a v1 SyncResponse: F3 ends the session after the first frame's "
         "item was accepted"),
    ]
    out = []
    for name, charter, frames, note in cases:
        raw = [pack([2, 17, items]) if items is not None else pack([1, 17, [a2]])
               for items in frames]
        result = g_sync_session(raw, T0 + 3000, charter)
        out.append({"name": name, "note": note, "charter": charter.name, "now_ms": T0 + 3000,
                    "frames": [f.hex() for f in raw],
                    "item_ids": [[sha(i).hex() for i in items] if items is not None else None
                                 for items in frames],
                    **result})
    return out


def listener_budget_vectors() -> dict[str, Any]:
    """§8.3: per remote peer a bucket of 3, one more every 10 s (continuous, as V8)."""
    times = [0.0, 0.0, 0.0, 0.0, 5.0, 10.0, 10.0, 40.0, 40.0, 40.0, 40.0]
    tokens, at = 3.0, None
    steps = []
    for t in times:
        if at is None:
            at = t
        if t > at:
            tokens, at = min(3.0, tokens + (t - at) / 10.0), t
        if tokens < 1:
            steps.append({"at_s": t, "expect": "reset"})
        else:
            tokens -= 1
            steps.append({"at_s": t, "expect": "served"})
    return {"burst": 3, "refill_s": 10.0, "note": "one remote peer's sync requests at these times "
            "(seconds after its first): served, or reset and charged a fault", "steps": steps}


# --- price (§7.2, §7.3), written from the text, as the v1 generator does ---------------------------

def g_to_nano(neuro: float) -> int:
    """§7.2 N(x): x·10^9 as a double product, rounded to the nearest integer, ties to even."""
    return round(neuro * 1e9)


def g_target(supply: int, demand: int, p: dict[str, Any]) -> int:
    lo, hi = g_to_nano(p["min_price"]), g_to_nano(p["max_price"])
    if not p["dynamic_pricing"]:
        return g_to_nano(p["fixed_price"])
    if supply == 0:
        u = math.inf if demand > 0 else 0.0
    else:
        u = (float(demand) / p["target_response_s"]) / float(supply)
    if math.isinf(u):
        price = p["max_price"]
    else:
        def sigma(x: float) -> float:
            z = -p["steepness"] * x
            return 0.0 if z > 700 else 1.0 / (1.0 + math.exp(z))
        s = sigma(u - 1.0)
        if p["curve"] == "normalized":
            s0 = sigma(-1.0)
            s = (s - s0) / (1.0 - s0)
        price = p["min_price"] + (p["max_price"] - p["min_price"]) * s
        price = min(p["max_price"], max(p["min_price"], price))
    return min(hi, max(lo, g_to_nano(price)))


def g_fold(targets: list[int], p: dict[str, Any]) -> int:
    """§7.3: the fold over the window's targets, oldest first."""
    lo, hi = g_to_nano(p["min_price"]), g_to_nano(p["max_price"])
    if not p["dynamic_pricing"]:
        return g_to_nano(p["fixed_price"])
    price = min(hi, max(lo, targets[0]))
    s = p["smoothing"]
    for target in targets[1:]:
        e = round(s * float(price) + (1.0 - s) * float(target))
        if p["max_step"] != 0.0:
            cap = max(1, int(p["max_step"] * float(price)))
            e = min(price + cap, max(price - cap, e))
        price = min(hi, max(lo, e))
    return price


# --- counting.json (§7.1) ----------------------------------------------------------------------------

class Held:
    """One announcement as the view holds it, with its credential decoded (members networks)."""

    def __init__(self, data: bytes, label: str, note: str, charter: Charter) -> None:
        kind, items = g_decode(data, None, charter)
        assert kind == 1
        self.wire, self.id, self.label, self.note = data, sha(data), label, note
        self.signer, self.issued = items[2], items[3]
        self.f = dict(zip(FIELDS[1], items[4:]))
        self.seq = self.f["seq"]
        self.cred: dict[str, Any] | None = None
        if charter.members:
            _, c = g_decode(self.f["credential"], None, charter)
            self.cred = dict(zip(FIELDS[4], c[4:]))


def g_held_lists(lists: list[bytes], charter: Charter, alt: str | None = None) -> list[bytes]:
    """§6.3: a node holds the newest list of each authority, by (seq, message id)."""
    best: dict[bytes, tuple[int, bytes, bytes]] = {}
    for data in lists:
        _, items = g_decode(data, None, charter)
        k = (items[4], sha(data), data)
        if alt == "revocation_any_list":
            best[sha(data)] = k
        elif items[2] not in best or k[:2] > best[items[2]][:2]:
            best[items[2]] = k
    return [v[2] for v in best.values()]


def g_revoked_from(lists: list[bytes], charter: Charter, alt: str | None = None
                   ) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    for data in g_held_lists(lists, charter, alt):
        _, items = g_decode(data, None, charter)
        for member, from_ms in items[6]:
            pick = max if alt == "revocation_largest" else min
            out[member] = pick(out[member], from_ms) if member in out else from_ms
    return out


def g_count(held: list[Held], lists: list[bytes], t: int, charter: Charter,
            alt: str | None = None) -> dict[str, Any]:
    """§7.1 at instant t: per signer (c, r, d, offer) and the totals."""
    p = charter.params
    tick, settle, timeout = charter.ms("tick_s"), charter.ms("settle_delay_s"), charter.ms(
        "capacity_timeout_s")
    keep = p["window_ticks"] + -(-settle // tick) + 8
    horizon = p["window_ticks"] * tick + settle + timeout + 30_000
    revoked = g_revoked_from(lists, charter, alt) if charter.members else {}
    F = 0 if alt == "no_shift" else p["identity_work_bits"]
    by_signer: dict[bytes, list[Held]] = {}
    for m in held:
        by_signer.setdefault(m.signer, []).append(m)
    rows, supply, demand, requests, nodes = [], 0, 0, 0, 0
    for signer in sorted(by_signer):
        ms = sorted(by_signer[signer], key=lambda m: (m.issued, m.seq, m.id))[-keep:]
        newest = ms[-1].issued
        ms = [m for m in ms if m.issued >= newest - horizon]
        row: dict[str, Any] = {"signer": signer.hex(), "label": ms[-1].label}
        rows.append(row)
        if len({m.seq for m in ms}) < len(ms):
            row.update(counts=False, why="equivocation")
            continue
        issued = [m for m in ms if m.issued <= t]
        if not issued:
            row.update(counts=False, why="nothing issued by t")
            continue
        m = max(issued, key=lambda m: m.seq)
        end, why = m.issued + timeout, "capacity_timeout"
        if m.cred is not None:
            if m.cred["expires_at_ms"] < end:
                end, why = m.cred["expires_at_ms"], "credential expired"
            if signer in revoked and revoked[signer] < end:
                end, why = revoked[signer], "revoked"
        row["announcement"] = m.id.hex()
        row["ends_at_ms"] = end
        inclusive = alt == "expiry_inclusive" and why != "capacity_timeout"
        if not (t < end or (inclusive and t == end)):
            row.update(counts=False, why=why)
            continue
        bits = work_bits(signer, m.f["work_nonce"])
        shift = max(0, F - bits)
        cred = m.cred if (m.cred is not None and alt != "no_cred_caps") else None
        big = 2**64
        cap_c = min(m.f["tokens_per_second"], p["max_node_tokens_per_s"],
                    cred["max_tokens_per_second"] if cred else big)
        no_signer = alt == "no_signer_caps"
        rq = min(m.f["pending_requests"], big if no_signer else p["max_signer_pending_requests"],
                 cred["max_pending_requests"] if cred else big)
        r = rq >> shift
        per_request = r if alt == "d_uses_shifted_r" else rq
        d = min(m.f["pending_tokens"], p["max_tokens_per_minute"] * per_request,
                big if no_signer else p["max_signer_pending_tokens"],
                cred["max_pending_tokens"] if cred else big) >> shift
        c = cap_c >> shift
        available = (cap_c if alt == "available_unshifted" else c) > 0
        row.update(counts=True, work_bits=bits, shift=shift, offer_capacity=cap_c, c=c, r=r, d=d,
                   available=available)
        supply, demand, requests = supply + c, demand + d, requests + r
        nodes += 1 if available else 0
    return {"at_ms": t, "signers": rows, "supply": supply, "demand": demand,
            "requests": requests, "available_nodes": nodes,
            "target_nano": g_target(supply, demand, p)}


COUNT_ALTS = {
    "no_shift": "counted values are shifted right by max(0, F − work_bits)",
    "d_uses_shifted_r": "the per-request demand cap uses the request count before the shift",
    "no_signer_caps": "max_signer_pending_requests and max_signer_pending_tokens cap a signer",
    "no_cred_caps": "a member counts at most its credential's caps",
    "available_unshifted": "an available node has c > 0 after the shift",
    "revocation_any_list": "only the newest list of each authority revokes",
    "revocation_largest": "the smallest from_ms naming a member is its revocation time",
    "expiry_inclusive": "a member stops counting at exactly expires_at_ms / revoked_from",
}


def counting_scenario(name: str, note: str, charter: Charter,
                      spec: list[tuple[str, coincurve.PrivateKey, int, int, dict[str, Any], str]],
                      lists: list[tuple[coincurve.PrivateKey, int, int, list[tuple[bytes, int]],
                                        str]],
                      instants: list[int], ticks: list[int]) -> dict[str, Any]:
    held = []
    for label, k, seq, issued, fields, ann_note in spec:
        data = message(1, k, issued, {**ANNOUNCE, "seq": seq, **fields})
        held.append(Held(data, label, ann_note, charter))
    list_wires = [revocation_list(a, seq, issued, revoked) for a, seq, issued, revoked, _ in lists]
    newest = {sha(w) for w in g_held_lists(list_wires, charter)}
    rows = []
    for t in instants:
        row = g_count(held, list_wires, t, charter)
        row["pins"] = [text for alt, text in COUNT_ALTS.items()
                       if _totals(g_count(held, list_wires, t, charter, alt)) != _totals(row)]
        rows.append(row)
    p = charter.params
    tick_ms, settle = charter.ms("tick_s"), charter.ms("settle_delay_s")
    tick_rows = []
    for k in ticks:
        targets = [g_count(held, list_wires, j * tick_ms - settle, charter)["target_nano"]
                   for j in range(k - p["window_ticks"] + 1, k + 1)]
        at = g_count(held, list_wires, k * tick_ms - settle, charter)
        tick_rows.append({"tick": k, "evaluated_at_ms": k * tick_ms - settle,
                          "supply": at["supply"], "demand": at["demand"],
                          "target_nano": targets[-1], "price_nano": g_fold(targets, p)})
    revoked = g_revoked_from(list_wires, charter) if charter.members else {}
    return {
        "name": name, "note": note, "charter": charter.name,
        "identity_work_bits": p["identity_work_bits"],
        "announcements": [{
            "label": m.label, "note": m.note, "signer": m.signer.hex(), "issued_at_ms": m.issued,
            **{n: json_value(v) for n, v in m.f.items()},
            "work_bits": work_bits(m.signer, m.f["work_nonce"]),
            "credential_fields": ({n: json_value(v) for n, v in m.cred.items()}
                                  if m.cred else None),
            "wire": m.wire.hex(), "id": m.id.hex()} for m in held],
        "revocation_lists": [{
            "authority": pub(a).hex(), "seq": seq, "issued_at_ms": issued,
            "revoked": [[mm.hex(), f] for mm, f in sorted(rv)], "note": ln,
            "wire": w.hex(), "id": sha(w).hex(), "newest": sha(w) in newest}
            for (a, seq, issued, rv, ln), w in zip(lists, list_wires)],
        "revoked_from": {m.hex(): f for m, f in sorted(revoked.items())},
        "instants": rows, "ticks": tick_rows,
    }


def _totals(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["supply"], row["demand"], row["requests"], row["available_nodes"],
            [(s.get("c"), s.get("r"), s.get("d"), s.get("counts")) for s in row["signers"]])


def counting_documents() -> dict[str, Any]:
    z = {"tokens_per_second": 0, "pending_tokens": 0, "pending_requests": 0}
    other16 = first_nonce(pub(OTHER), exactly=16)
    d_key, e_key = key("count d"), key("count e")
    d12 = first_nonce(pub(d_key), exactly=12)
    open_spec = [
        ("provider", PROVIDER, 1, T0 - 5000, {**z, "tokens_per_second": 1000,
                                              "work_nonce": FULL_NONCE["provider"]},
         "25 bits of work (>= 24): full weight, c = 1000"),
        ("gateway", GATEWAY, 1, T0 - 5000,
         {**z, "pending_tokens": 60_000, "pending_requests": 3000,
          "work_nonce": FULL_NONCE["gateway"]},
         "24 bits: full weight; 3000 requests count max_signer_pending_requests = 1000"),
        ("other", OTHER, 1, T0 - 4000,
         {"tokens_per_second": 50_000, "pending_tokens": 2_000_000, "pending_requests": 2,
          "work_nonce": other16},
         "16 bits: shift 8; c = 50,000 >> 8 = 195; d = min(2,000,000, 1,000,000 × 2, "
         "1,000,000) >> 8 = 3906; r = 2 >> 8 = 0 (the per-request cap uses the 2 before the "
         "shift)"),
        ("count d", d_key, 1, T0 - 3000,
         {"tokens_per_second": 40_000, "pending_tokens": 5000, "pending_requests": 0,
          "work_nonce": d12},
         "12 bits: shift 12; c = 40,000 >> 12 = 9; 5000 pending tokens in 0 requests count 0"),
        ("count e", e_key, 1, T0 - 3000,
         {**z, "tokens_per_second": 50_000, "work_nonce": 0},
         f"nonce 0 (work bits {work_bits(pub(e_key), 0)}): shift "
         f"{24 - work_bits(pub(e_key), 0)}, c = 0, not an available node, though its offer "
         f"for routing keeps 50,000"),
    ]
    # guild members: fresh keys, credentials of the guild's authorities
    mk = {x: key(f"member {x}") for x in "abcdefg"}
    full = {x: first_nonce(pub(k), at_least=8) for x, k in mk.items()}
    b5 = first_nonce(pub(mk["b"]), exactly=5)

    def cred(x: str, authority: coincurve.PrivateKey = AUTHORITY_A, **ch: Any) -> bytes:
        caps = {"max_tokens_per_second": 50_000, "max_pending_tokens": 1_000_000,
                "max_pending_requests": 1000, **ch}
        return credential(mk[x], authority=authority, **caps)

    members_spec = [
        ("member a", mk["a"], 1, T0, {**z, "tokens_per_second": 30_000, "work_nonce": full["a"],
                                      "credential": cred("a", roles=1,
                                                         max_tokens_per_second=20_000)},
         "provider; its credential caps 30,000 tokens/s at 20,000"),
        ("member b", mk["b"], 1, T0, {**z, "pending_tokens": 900_000, "pending_requests": 80,
                                      "work_nonce": b5,
                                      "credential": cred("b", AUTHORITY_B, roles=2,
                                                         max_pending_tokens=400_000,
                                                         max_pending_requests=50)},
         "gateway with 5 bits (shift 3): r = min(80, 1000, 50) >> 3 = 6; d = min(900,000, "
         "1,000,000 × 50, 1,000,000, 400,000) >> 3 = 50,000"),
        ("member c", mk["c"], 1, T0, {"tokens_per_second": 5000, "pending_tokens": 30_000,
                                      "pending_requests": 10, "work_nonce": full["c"],
                                      "credential": cred("c", roles=3)},
         "both roles; authority a revokes it from T0 + 10,000"),
        ("member c", mk["c"], 2, T0 + 12_000, {"tokens_per_second": 6000, "pending_tokens": 30_000,
                                               "pending_requests": 10, "work_nonce": full["c"],
                                               "credential": cred("c", roles=3)},
         "… re-announced after its revocation: valid (V6m ignores lists), counts nothing"),
        ("member d", mk["d"], 1, T0, {**z, "tokens_per_second": 8000, "work_nonce": full["d"],
                                      "credential": cred("d", roles=1,
                                                         expires_at_ms=T0 + 5000)},
         "its credential expires at T0 + 5,000: counts at T0 + 4,999, not at T0 + 5,000"),
        ("member e", mk["e"], 1, T0, {**z, "tokens_per_second": 2000, "work_nonce": full["e"],
                                      "credential": cred("e", AUTHORITY_B, roles=1)},
         "revoked by authority b's list 1, which b's list 2 replaces without it: counts"),
        ("member f", mk["f"], 1, T0, {**z, "tokens_per_second": 3000, "work_nonce": full["f"],
                                      "credential": cred("f", roles=1)},
         "named by a's list (from T0 + 25,000) and b's newest (from T0 + 15,000): revoked from "
         "T0 + 15,000, the smaller; b's older list (from T0 + 1,000) no longer counts"),
        ("member g", mk["g"], 1, T0, {**z, "tokens_per_second": 1000, "work_nonce": full["g"],
                                      "credential": cred("g", roles=1, max_tokens_per_second=0)},
         "a credential with max_tokens_per_second 0: c = 0, not an available node"),
    ]
    lists = [
        (AUTHORITY_A, 1, T0 - DAY_MS, [(pub(mk["c"]), T0 + 10_000), (pub(mk["f"]), T0 + 25_000)],
         "authority a's only list"),
        (AUTHORITY_B, 1, T0 - 2 * DAY_MS, [(pub(mk["e"]), T0 - 2000), (pub(mk["f"]), T0 + 1000)],
         "authority b's older list: replaced by its seq 2"),
        (AUTHORITY_B, 2, T0 - DAY_MS, [(pub(mk["f"]), T0 + 15_000)],
         "authority b's newest list"),
    ]
    k0 = T0 // 1000
    scenarios = [
        counting_scenario("testnet-work-ramp", "testnet (open, F = 24): what each signer counts "
                          "after the caps and the work shift", TESTNET, open_spec, [],
                          [T0 - 4500, T0 + 1000], [k0, k0 + 3]),
        counting_scenario("guild-members", "guild (members, F = 8): credential caps, expiry, "
                          "revocation by the newest list of each authority", GUILD,
                          members_spec, lists,
                          [T0 + 1000, T0 + 4999, T0 + 5000, T0 + 9999, T0 + 10_000, T0 + 12_000,
                           T0 + 14_999, T0 + 15_000], [k0 + 10, k0 + 17]),
    ]
    pinned = {p for s in scenarios for row in s["instants"] for p in row["pins"]}
    missing = [text for text in COUNT_ALTS.values() if text not in pinned]
    assert not missing, f"no counting vector pins: {missing}"
    return {**HEADER, "alternatives": COUNT_ALTS, "scenarios": scenarios,
            "max_age": max_age_vectors(), "bounds": bounds_document()}


def max_age_vectors() -> list[dict[str, Any]]:
    """§7.1 view retention v2: at clock t (s, → ms by nearest) the view drops announcements with
    issued_at_ms < ms(t) − 300,000; lists stay."""
    held = [(T0 - 1, message(1, PROVIDER, T0 - 1, {**ANNOUNCE, "seq": 1})),
            (T0, message(1, PROVIDER, T0, {**ANNOUNCE, "seq": 2})),
            (T0 + 20_000, message(1, PROVIDER, T0 + 20_000, {**ANNOUNCE, "seq": 3}))]
    out = []
    for clock_s in ((T0 + 300_000) / 1000 + 0.0004, (T0 + 300_000) / 1000 + 0.0006,
                    (T0 + 320_001) / 1000):
        ms = round(clock_s * 1000)
        kept = [sha(w).hex() for issued, w in held if issued >= ms - MAX_AGE_MS]
        out.append({"clock_s": clock_s, "clock_ms": ms,
                    "held": [{"issued_at_ms": i, "id": sha(w).hex(), "wire": w.hex()}
                             for i, w in held],
                    "kept": kept})
    return out


def bounds_document() -> dict[str, Any]:
    """§13's worked numbers, computed with §7.2 and the testnet charter."""
    p = TESTNET.params
    c1, d1 = p["max_node_tokens_per_s"], p["max_signer_pending_tokens"]
    cases = []
    for supply in (1000, 100_000):
        demand = 30 * supply            # u = D / (60 S) = 0.5
        cases.append({
            "supply": supply, "demand": demand, "u": demand / 60 / supply,
            "target_nano": g_target(supply, demand, p),
            "plus_demand": {"demand": demand + d1, "u": (demand + d1) / 60 / supply,
                            "target_nano": g_target(supply, demand + d1, p)},
            "plus_capacity": {"supply": supply + c1, "u": demand / 60 / (supply + c1),
                              "target_nano": g_target(supply + c1, demand, p)}})
    s = p["smoothing"]
    ema = [{"ticks": k, "fraction": round(1 - s**k, 6)} for k in (1, 2, 3, 5, 10, 32)]
    F = p["identity_work_bits"]
    # Expected counted capacity of one key that tried h nonces, per hash, relative to the
    # nominal c1 / 2^F: the gain of spreading hashes thinly over many keys (§13 b).
    lottery = []
    for log_h in (0, 4, 8, 12, 16, 20, 24):
        h = 2**log_h
        expect_c = expect_d = 0.0
        for b in range(0, 257):
            at_least = -math.expm1(h * math.log1p(-2.0**-b)) if b else 1.0
            more = -math.expm1(h * math.log1p(-2.0**-(b + 1))) if b < 256 else 0.0
            pb = at_least - more
            shift = max(0, F - b)
            expect_c += pb * (c1 >> shift)
            expect_d += pb * (d1 >> shift)
        lottery.append({"hashes_per_key": h,
                        "capacity_gain": round(expect_c / h / (c1 / 2**F), 3),
                        "demand_gain": round(expect_d / h / (d1 / 2**F), 3)})
    return {"charter": "testnet", "c1": c1, "d1": d1, "price_moves": cases, "ema": ema,
            "work_bits": F, "hashes_per_full_identity": 2**F, "lottery": lottery}


# --- work.json ---------------------------------------------------------------------------------------

def work_documents() -> dict[str, Any]:
    vectors = []
    for label, nonce, note in [
        ("provider", 0, "nonce 0"),
        ("provider", 1, "nonce 1"),
        ("provider", BIG, "the largest nonce, 2^63-1 (u64be 7fff…ff)"),
        ("provider", FULL_NONCE["provider"], "the first nonce from 0 with >= 24 bits: 25 bits"),
        ("gateway", FULL_NONCE["gateway"], "the first nonce from 0 with >= 24 bits: exactly 24"),
        ("other", 0, "nonce 0 of another key"),
    ]:
        signer = pub(key(label))
        vectors.append({"label": label, "signer": signer.hex(), "nonce": json_value(nonce),
                        "input": (WORK_TAG + signer + nonce.to_bytes(8, "big")).hex(),
                        "hash": work_hash(signer, nonce).hex(),
                        "work_bits": work_bits(signer, nonce), "note": note})
    assert work_bits(pub(PROVIDER), FULL_NONCE["provider"]) >= 24
    assert work_bits(pub(GATEWAY), FULL_NONCE["gateway"]) >= 24
    ground = []
    for label, bits in (("provider", 8), ("provider", 12), ("gateway", 12), ("other", 16)):
        signer = pub(key(label))
        nonce = first_nonce(signer, at_least=bits)
        ground.append({"label": label, "signer": signer.hex(), "at_least": bits, "start": 0,
                       "nonce": nonce, "work_bits": work_bits(signer, nonce),
                       "hash": work_hash(signer, nonce).hex(),
                       "note": "the first nonce from 0 whose hash has at least this many bits"})
    shifts = [{"identity_work_bits": F, "work_bits": b, "shift": max(0, F - b),
               "c_of_50000": 50_000 >> max(0, F - b)}
              for F, b in ((24, 25), (24, 24), (24, 23), (24, 16), (24, 9), (24, 8), (24, 0),
                           (8, 5), (0, 0))]
    return {**HEADER, "tag": WORK_TAG.decode(), "vectors": vectors, "ground": ground,
            "shifts": shifts}


# --- write -----------------------------------------------------------------------------------------

def documents() -> dict[str, Any]:
    # ports.py: the v1 vectors whose behaviour v2 keeps (validator, receipts, the price view and
    # clock, v1's frames), in v2 bytes. It imports this module as `generate`.
    sys.modules.setdefault("generate", sys.modules[__name__])
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import ports
    import gen_recon
    return {
        "charter.json": charter_documents(),
        "messages.json": {**HEADER, "keys": key_table(),
                          "charters": {n: c.summary() for n, c in CHARTERS.items()},
                          "vectors": valid_vectors()},
        "work.json": work_documents(),
        "invalid.json": {**HEADER, "vectors": invalid_vectors(), "accepted": accepted_vectors()},
        "frames.json": ports.with_v1_frames(frame_vectors()),
        "counting.json": counting_documents(),
        **ports.documents(),
        **__import__("gen_clearing").documents(),  # revision 2.1: clearing
        **__import__("gen_streaming").documents(),  # revision 2.1: streaming (issue 16)
        **__import__("gen_sampling").documents(),  # revision 2.1: sampling (job/2.2.0)
        **gen_recon.documents(),
        **__import__("gen_relay").documents(),  # revision 2.1: relay (§8.5)
    }


def render(doc: Any) -> str:
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def grind(label: str, bits: int) -> None:
    signer = pub(key(label))
    print(label, first_nonce(signer, at_least=bits))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--grind"]:
        grind(argv[1], int(argv[2]))
        return 0
    docs = documents()
    stale = [name for name, doc in docs.items()
             if not (HERE / name).exists() or (HERE / name).read_text("utf-8") != render(doc)]
    if "--check" in argv:
        for name in stale:
            print(f"{name} differs from a fresh generation", file=sys.stderr)
        return 1 if stale else 0
    for name, doc in docs.items():
        (HERE / name).write_text(render(doc), "utf-8")
    print(f"wrote {', '.join(docs)} ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
