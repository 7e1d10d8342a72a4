"""Wire messages of protocol v2, as frozen dataclasses.

Layout (see protocols/market-v2.md, the source of truth):

    wire bytes = msgpack array [body: bin, signature: bin(64)]
    body       = msgpack array [version=2, kind, signer: bin(33), issued_at_ms, *fields of the kind]
    signature  = ECDSA secp256k1 over SHA-256(body), compact r‖s, low-s
    message id = SHA-256(wire bytes)

Stream frames (sync request/response, the job stream's declined/accepted/result/settled, peer
exchange)
are unsigned msgpack arrays [version=2, kind, *fields] (peer exchange keeps [1, 21, …]): they travel on a direct stream between two
peers, and whatever in them needs an author (announcements in a sync response, the receipt in a
job result) is itself a signed message.

This module holds the data types only; their bytes are `codec` (signed messages) and `frames`
(stream frames). The dataclasses do not validate themselves: the encoders check every field before
anything is sent, and the decoders check every field of what they receive, so an invalid message
or frame never reaches the wire in either direction. Tests and vector generators can still build
invalid ones on purpose.

Money and prices are integer nano-NEURO (prices per 1M tokens); times are integer milliseconds
since the Unix epoch. The signer is the node's 33-byte compressed secp256k1 public key, which is
also its libp2p identity key, so the libp2p peer id is derived from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from neuroshard_p2p.core.book import TIERS  # the wire names a job's tier by its index here
#: Bid buckets of an announcement on a clearing network (their edges are the core's).
from neuroshard_p2p.core.pricing import DEMAND_BUCKETS

VERSION = 2
#: Peer exchange (frame 21 on /peers/1.1.0) did not change in v2 and keeps its version item.
PEERS_VERSION = 1

KIND_ANNOUNCEMENT = 1
KIND_JOB = 2
KIND_RECEIPT = 3
KIND_CREDENTIAL = 4
KIND_REVOCATIONS = 5
KIND_SYNC_REQUEST = 16
KIND_SYNC_RESPONSE = 17
KIND_JOB_DECLINED = 18
KIND_JOB_ACCEPTED = 19
KIND_JOB_RESULT = 20
KIND_PEER_EXCHANGE = 21
KIND_JOB_SETTLED = 22
#: Revision 2.1 (streaming), on job/2.1.0 only: a piece of the output as it is generated, and
#: the gateway's request to stop serving (its user went away).
KIND_JOB_CHUNK = 23
KIND_JOB_CANCEL = 24

#: Anti-entropy buckets: an announcement's signer falls in bucket SHA-256(signer)[0] >> 4.
SYNC_BUCKETS = 16


@dataclass(frozen=True)
class Announcement:
    """A node's signed market state: the capacity it offers and the demand queued at it.

    One message carries both, so a node's periodic re-announcement (the keep-alive that dominates
    steady-state traffic) is a single gossip message. A withdrawal is an announcement with zero
    capacity and a higher seq. The merged view keeps one last-writer-wins register per signer,
    ordered by seq.
    """

    KIND: ClassVar[int] = KIND_ANNOUNCEMENT

    signer: bytes            # 33-byte compressed public key
    issued_at_ms: int
    seq: int                 # strictly increasing per signer
    tokens_per_second: int   # capacity offered; 0 = withdrawn / none
    min_price_nano: int      # lowest price (per 1M tokens) this node serves at
    pending_tokens: int      # demand tokens waiting at this node
    pending_requests: int
    work_nonce: int = 0      # the signer's identity work (wire.work); 0 when it has none
    credential: bytes = b""  # members networks: a Credential's wire bytes naming this signer
    # Clearing networks only (revision 2.1): pending_tokens split by the requests' max price into
    # the fixed bid buckets (core.pricing.DEMAND_BUCKET_EDGES_NANO), 16 integers summing to
    # pending_tokens; the 12th body item. None (absent from the body) on every other network.
    demand_by_limit: tuple[int, ...] | None = None
    # Filled by the codec: the exact signed bytes and their id. Not part of equality of content.
    signature: bytes = field(default=b"", compare=False, repr=False)
    wire: bytes = field(default=b"", compare=False, repr=False)
    msg_id: bytes = field(default=b"", compare=False, repr=False)
    # Filled by the validator of a members network: the decoded, checked credential.
    member: "Credential | None" = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Job:
    """A gateway hands a matched request to a provider (sent on a direct stream, never gossiped).
    Signed by the gateway; the user's identity and max price are inside."""

    KIND: ClassVar[int] = KIND_JOB

    signer: bytes            # the gateway
    issued_at_ms: int
    request_id: str
    user: str
    provider: bytes          # 33-byte public key of the chosen provider
    tokens: int              # tokens requested
    max_price_nano: int
    locked_price_nano: int
    tier: int                # index into TIERS (the order book's tiers: 0 economy … 2 premium)
    prompt: str
    credential: bytes = b""  # members networks: the gateway's Credential (wire bytes)
    signature: bytes = field(default=b"", compare=False, repr=False)
    wire: bytes = field(default=b"", compare=False, repr=False)
    msg_id: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True)
class Receipt:
    """The provider's signed statement of what it served: what the ledger settles on."""

    KIND: ClassVar[int] = KIND_RECEIPT

    signer: bytes            # the provider
    issued_at_ms: int
    request_id: str
    gateway: bytes           # 33-byte public key of the gateway that sent the job
    user: str
    tokens_served: int
    locked_price_nano: int
    started_at_ms: int
    ended_at_ms: int
    signature: bytes = field(default=b"", compare=False, repr=False)
    wire: bytes = field(default=b"", compare=False, repr=False)
    msg_id: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True)
class Credential:
    """Admission to a members network: a charter authority (the signer) says that `member` may
    take part, in `roles`, within caps, until `expires_at_ms`. It travels inside the member's
    announcements and jobs, never alone."""

    KIND: ClassVar[int] = KIND_CREDENTIAL
    signer: bytes            # the authority
    issued_at_ms: int
    network: bytes           # 32 bytes: the charter hash
    member: bytes            # 33-byte public key of the member
    roles: int               # bit 0 provider, bit 1 gateway (1..3)
    max_tokens_per_second: int
    max_pending_tokens: int
    max_pending_requests: int
    expires_at_ms: int
    signature: bytes = field(default=b"", compare=False, repr=False)
    wire: bytes = field(default=b"", compare=False, repr=False)
    msg_id: bytes = field(default=b"", compare=False, repr=False)


ROLE_PROVIDER = 1
ROLE_GATEWAY = 2


@dataclass(frozen=True)
class RevocationList:
    """An authority's list of members it no longer admits, each from an instant on. The newest
    list of each authority (by seq, then message id) is the one that counts; gossiped and synced."""

    KIND: ClassVar[int] = KIND_REVOCATIONS
    signer: bytes            # the authority
    issued_at_ms: int
    seq: int
    network: bytes           # 32 bytes: the charter hash
    revoked: tuple[tuple[bytes, int], ...]   # (member key, from_ms), sorted by key, no repeats
    signature: bytes = field(default=b"", compare=False, repr=False)
    wire: bytes = field(default=b"", compare=False, repr=False)
    msg_id: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True)
class SyncRequest:
    """Anti-entropy, step 1 (requester → responder): the requester's view digest and one digest
    per bucket. The responder answers with the announcements of every bucket whose digest differs
    from its own (or nothing when the view digests are equal)."""

    KIND: ClassVar[int] = KIND_SYNC_REQUEST

    digest: bytes                     # 32 bytes: digest of the requester's whole view
    bucket_digests: tuple[bytes, ...]  # SYNC_BUCKETS × 32 bytes, bucket i at index i
    revocations_digest: bytes = b"\0" * 32  # digest of the revocation lists it holds


@dataclass(frozen=True)
class SyncResponse:
    """Anti-entropy, step 2 (responder → requester): signed announcements, each the exact wire
    bytes its signer published. The receiver validates each one like a gossiped announcement."""

    KIND: ClassVar[int] = KIND_SYNC_RESPONSE

    announcements: tuple[bytes, ...]


@dataclass(frozen=True)
class JobDeclined:
    """The provider's answer to a Job it will not serve (full, unknown model, backend down): the
    gateway tries the next offer. Unsigned: a decline moves no money."""

    KIND: ClassVar[int] = KIND_JOB_DECLINED

    request_id: str
    reason: str                        # short code, e.g. "full", "backend_error"
    detail: str = ""                   # for people


@dataclass(frozen=True)
class JobAccepted:
    """The provider admitted the job and is serving it; its result follows on the same stream."""

    KIND: ClassVar[int] = KIND_JOB_ACCEPTED

    request_id: str


@dataclass(frozen=True)
class JobResult:
    """What the provider served: its signed receipt (exact wire bytes, checked by the gateway as a
    Receipt) and the completion text."""

    KIND: ClassVar[int] = KIND_JOB_RESULT

    request_id: str
    receipt: bytes
    output: str


@dataclass(frozen=True)
class PeerExchange:
    """A listener's answer on the peer-exchange stream: some of its connected peers, each with the
    addresses it can be dialed at (hints: dialing checks the peer id)."""

    KIND: ClassVar[int] = KIND_PEER_EXCHANGE

    peers: tuple[tuple[str, tuple[str, ...]], ...]   # (libp2p peer id, multiaddrs as text)


@dataclass(frozen=True)
class JobSettled:
    """The gateway's last word on a job stream, after a JobResult: what became of the receipt.
    `receipt_id` is the receipt's message id and `outcome` "settled" when it settled; when the
    gateway refused it, `receipt_id` is empty and `outcome` the refusal reason (§9 R1–R8). It
    lets a provider count the gateways that do not pay instead of guessing."""

    KIND: ClassVar[int] = KIND_JOB_SETTLED

    request_id: str
    receipt_id: bytes                  # 32 bytes when settled, else empty
    outcome: str                       # "settled" or the refusal reason


@dataclass(frozen=True)
class JobChunk:
    """Revision 2.1 (job/2.1.0): a piece of the completion as the backend produced it,
    provider → gateway, between JobAccepted and JobResult, in order. `tokens` is how many tokens
    this piece counts; on a streamed job the receipt charges at most the sum over its chunks."""

    KIND: ClassVar[int] = KIND_JOB_CHUNK

    request_id: str
    tokens: int
    text: str


@dataclass(frozen=True)
class JobCancel:
    """Revision 2.1 (job/2.1.0): the gateway asks the provider to stop serving now (its user
    went away); the provider stops its backend and answers with a JobResult whose receipt
    charges the tokens it served, no more than its chunks counted."""

    KIND: ClassVar[int] = KIND_JOB_CANCEL

    request_id: str


#: The outcome of a JobSettled whose receipt settled.
SETTLED = "settled"

Message = Announcement | Job | Receipt | Credential | RevocationList
JobFrame = JobDeclined | JobAccepted | JobResult | JobSettled | JobChunk | JobCancel
Frame = (SyncRequest | SyncResponse | JobDeclined | JobAccepted | JobResult | PeerExchange
         | JobSettled | JobChunk | JobCancel)

MESSAGE_TYPES: dict[int, type] = {
    KIND_ANNOUNCEMENT: Announcement,
    KIND_JOB: Job,
    KIND_RECEIPT: Receipt,
    KIND_CREDENTIAL: Credential,
    KIND_REVOCATIONS: RevocationList,
}

FRAME_TYPES: dict[int, type] = {
    KIND_SYNC_REQUEST: SyncRequest,
    KIND_SYNC_RESPONSE: SyncResponse,
    KIND_JOB_DECLINED: JobDeclined,
    KIND_JOB_ACCEPTED: JobAccepted,
    KIND_JOB_RESULT: JobResult,
    KIND_PEER_EXCHANGE: PeerExchange,
    KIND_JOB_SETTLED: JobSettled,
    KIND_JOB_CHUNK: JobChunk,
    KIND_JOB_CANCEL: JobCancel,
}


__all__ = [
    "VERSION", "PEERS_VERSION", "KIND_ANNOUNCEMENT", "KIND_JOB", "KIND_RECEIPT",
    "KIND_CREDENTIAL", "KIND_REVOCATIONS", "Credential", "RevocationList", "ROLE_PROVIDER",
    "ROLE_GATEWAY", "KIND_SYNC_REQUEST",
    "KIND_SYNC_RESPONSE", "KIND_JOB_DECLINED", "KIND_JOB_ACCEPTED", "KIND_JOB_RESULT",
    "KIND_PEER_EXCHANGE", "KIND_JOB_SETTLED", "JobSettled", "KIND_JOB_CHUNK",
    "KIND_JOB_CANCEL", "JobChunk", "JobCancel", "SETTLED", "SYNC_BUCKETS", "TIERS",
    "Announcement", "Job", "Receipt", "SyncRequest",
    "SyncResponse", "JobDeclined", "JobAccepted", "JobResult", "PeerExchange", "Message",
    "JobFrame", "Frame", "MESSAGE_TYPES", "FRAME_TYPES", "DEMAND_BUCKETS",
]
