"""Who the simulated and real test networks are: keys with identity work, fresh keys, and a
members network's authority and credentials (protocols/market-v2.md §1, §2, §4).

Identity work. With the work ramp on (`identity_work_bits` F > 0) a key counts fully only with a
nonce of at least F work bits, 2^F hashes on average: about 37 s of one core in Python at F = 24.
Honest simulated peers are honest nodes that ground their nonce once and kept it, so peers that
announce take their keys from a pool of *worked keys*: key j is derived from j alone
(`worked_key`) and its nonce is read from `simnet/data/worked-keys.txt`, which holds, for each j,
the first nonce >= 0 with at least 24 work bits (anyone can check a line in microseconds:
`work_bits(signer, nonce) >= 24`; `scripts/simnet_worked_keys.py` writes the file, slowly, and
checks it). A network with F <= 24 uses those nonces; a key the file lacks, or F > 24, is ground
here (fast for small F). Fresh keys (an attacker's sybils) carry nonce 0: they count with the work
bits their key happens to have, 2^(bits − F) of their claim.

Members networks. The simulator plays the charter's one authority: `MembersNetwork` derives the
authority key from the seed, builds the charter around the scenario's market (policy "members"),
and signs a credential for every honest peer (both roles, caps at the charter's per-signer caps,
valid a day beyond the run). Attackers hold none.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import coincurve

from neuroshard_p2p.charter import Charter, charter_for
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.timeline import ms_of
from neuroshard_p2p.wire import encode
from neuroshard_p2p.wire.membership import Admission
from neuroshard_p2p.wire.messages import ROLE_GATEWAY, ROLE_PROVIDER, Credential
from neuroshard_p2p.wire.work import MAX_NONCE, grind, work_bits

#: libp2p peer id bytes of a secp256k1 key: identity multihash of the protobuf public key.
PEER_ID_PREFIX = bytes([0x00, 0x25, 0x08, 0x02, 0x12, 0x21])
#: The work bits the shipped table guarantees for every key in it.
TABLE_BITS = 24
#: Grinding a missing worked key tries this many nonces per call (then looks again).
GRIND_STEP = 1 << 20


@dataclass(frozen=True)
class Identity:
    """A signing identity: its key, public key, work nonce and libp2p peer id (bytes)."""

    key: coincurve.PrivateKey
    signer: bytes
    work_nonce: int = 0

    @property
    def peer_bytes(self) -> bytes:
        return PEER_ID_PREFIX + self.signer

    @property
    def bits(self) -> int:
        return work_bits(self.signer, self.work_nonce)


def identity_of(key: coincurve.PrivateKey, work_nonce: int = 0) -> Identity:
    return Identity(key, key.public_key.format(compressed=True), work_nonce)


def worked_key(j: int) -> coincurve.PrivateKey:
    """Key j of the worked-key pool (independent of any seed: its work is done once)."""
    return coincurve.PrivateKey(hashlib.sha256(b"neuroshard-simnet/worked/%d" % j).digest())


def fresh_key(seed: int, attack: int, j: int) -> coincurve.PrivateKey:
    """Sybil j of attack number `attack` of a run with `seed`: a key nobody did work for."""
    secret = hashlib.sha256(b"neuroshard-simnet/sybil/%d/%d/%d" % (seed, attack, j)).digest()
    return coincurve.PrivateKey(secret)


@lru_cache(maxsize=1)
def worked_table() -> tuple[int, ...]:
    """The shipped nonces of the worked-key pool, index j → nonce (>= TABLE_BITS work bits)."""
    text = (resources.files("simnet") / "data" / "worked-keys.txt").read_text(encoding="ascii")
    nonces = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            j, nonce = (int(x) for x in line.split()[:2])
            if j != len(nonces):
                raise ValueError(f"worked-keys.txt: line for key {j} out of order")
            nonces.append(nonce)
    return tuple(nonces)


def worked_identity(j: int, bits: int) -> Identity:
    """Key j of the pool with a nonce of at least `bits` work bits (the table's, or ground)."""
    key = worked_key(j)
    signer = key.public_key.format(compressed=True)
    table = worked_table()
    if bits <= 0:
        return Identity(key, signer, 0)
    if j < len(table) and bits <= TABLE_BITS:
        return Identity(key, signer, table[j])
    found = None
    start = 0
    while found is None or found.bits < bits:
        if start > MAX_NONCE:
            raise ValueError(f"no nonce with {bits} work bits for worked key {j}")
        found = grind(signer, start, GRIND_STEP, found, stop_at=bits)
        start += GRIND_STEP
    return Identity(key, signer, found.nonce)


class WorkedPool:
    """Hands out worked keys, each once: honest announcing peers from the front of the table,
    attackers that carry full work from its back, so neither depends on how many the other
    took. Beyond the table keys are ground (slow at F = 24: about 37 s of a core each)."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self._used: set[int] = set()
        self._front = 0
        self._back: int | None = None  # read the table only when a worked key is asked for

    def honest(self) -> Identity:
        while self._front in self._used:
            self._front += 1
        return self._take(self._front)

    def attacker(self) -> Identity:
        if self._back is None:
            self._back = len(worked_table()) - 1
        while self._back in self._used:
            self._back -= 1
        if self._back < 0:  # the table is shared out: past its end, where honest keys go too
            return self.honest()
        return self._take(self._back)

    def _take(self, j: int) -> Identity:
        self._used.add(j)
        return worked_identity(j, self.bits)


class MembersNetwork:
    """A members network the simulator runs: its charter (the scenario's market, policy
    "members", one authority), the admission every engine checks, and credentials."""

    def __init__(self, market: MarketConfig, seed: int, *, epoch: float, lifetime_s: float,
                 name: str = "simnet-members") -> None:
        self.authority = coincurve.PrivateKey(
            hashlib.sha256(b"neuroshard-simnet/authority/%d" % seed).digest())
        self.authority_key = self.authority.public_key.format(compressed=True)
        self.charter: Charter = charter_for(market, name=name).replace(
            policy="members", authorities=(self.authority_key,))
        admission = Admission.of(self.charter)
        assert admission is not None
        self.admission: Admission = admission
        self.market = market
        self._issued_ms = ms_of(epoch) - 86_400_000
        self._expires_ms = ms_of(epoch + lifetime_s) + 86_400_000

    def credential(self, member: bytes) -> bytes:
        """Wire bytes of a credential for `member`: both roles, the charter's caps."""
        m = self.market
        return encode(Credential(self.authority_key, self._issued_ms, self.charter.hash, member,
                                 ROLE_PROVIDER | ROLE_GATEWAY, m.max_node_tokens_per_s,
                                 m.max_signer_pending_tokens, m.max_signer_pending_requests,
                                 self._expires_ms), self.authority)


__all__ = ["Identity", "identity_of", "worked_key", "fresh_key", "worked_table",
           "worked_identity", "WorkedPool", "MembersNetwork", "PEER_ID_PREFIX", "TABLE_BITS"]
