"""Admission to a members network (protocols/market-v2.md §6.2, rule V6m): whether a signed
Announcement or Job comes from a member the charter's authorities admitted, in the role it acts in.

Pure: bytes and the charter's admission in, the decoded credential or `WireError("not_member")`
out. An open network (`admission` None) admits everyone and carries no credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import coincurve

from neuroshard_p2p.wire.codec import _decode, encode
from neuroshard_p2p.wire.errors import REJECT, WireError
from neuroshard_p2p.wire.messages import (
    ROLE_GATEWAY,
    ROLE_PROVIDER,
    Announcement,
    Credential,
    Job,
    RevocationList,
)


@dataclass(frozen=True)
class Admission:
    """What a members network's charter says about admission: its hash (every credential names
    it) and the authority keys whose credentials and revocation lists count."""

    network: bytes
    authorities: frozenset[bytes]

    @classmethod
    def of(cls, charter: Any) -> "Admission | None":
        """The admission of a `charter.Charter`; None for an open network."""
        if not charter.members:
            return None
        return cls(charter.hash, frozenset(charter.authorities))


#: Decoded credentials by their wire bytes: the same credential rides in every announcement of a
#: member, so it is verified once. Bounded: cleared when full.
_CACHE: dict[bytes, Credential | WireError] = {}
_CACHE_MAX = 8_192


def _refused(detail: str) -> WireError:
    return WireError("not_member", REJECT, detail)


def credential_of(wire: bytes, admission: Admission) -> Credential:
    """Decode and check a credential against the charter (not yet against who carries it)."""
    cached = _CACHE.get(wire)
    if cached is None:
        try:
            message = _decode(wire, None)
            if type(message) is not Credential:
                raise _refused(f"the credential is a {type(message).__name__}, not a Credential")
            cached = message
        except WireError as error:
            cached = error if error.reason == "not_member" else _refused(
                f"the credential is not valid: {error}")
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[wire] = cached
    if isinstance(cached, WireError):
        raise cached
    if cached.signer not in admission.authorities:
        raise _refused("the credential is not signed by an authority of this network's charter")
    if cached.network != admission.network:
        raise _refused("the credential is for another network")
    return cached


def check_announcement(announcement: Announcement, admission: Admission | None) -> Credential | None:
    """V6m. Open network: the credential must be empty (`bad_field`). Members network: a valid
    credential of an authority, for this network, naming the signer, with the roles of what it
    announces, not expired when the announcement was issued."""
    wire = announcement.credential
    if admission is None:
        if wire:
            raise WireError("bad_field", REJECT, "an open network's announcements carry no credential")
        return None
    if not wire:
        raise _refused("the signer is not a member: its announcement carries no credential")
    credential = credential_of(wire, admission)
    if credential.member != announcement.signer:
        raise _refused("the credential names another member")
    if announcement.tokens_per_second > 0 and not credential.roles & ROLE_PROVIDER:
        raise _refused("the member may not offer capacity (no provider role)")
    if ((announcement.pending_tokens > 0 or announcement.pending_requests > 0)
            and not credential.roles & ROLE_GATEWAY):
        raise _refused("the member may not queue demand (no gateway role)")
    if credential.expires_at_ms <= announcement.issued_at_ms:
        raise _refused("the credential had expired when the announcement was signed")
    return credential


def check_job(job: Job, admission: Admission | None) -> Credential | None:
    """V6m for a Job (the provider's admission): the gateway is a member with the gateway role."""
    wire = job.credential
    if admission is None:
        if wire:
            raise WireError("bad_field", REJECT, "an open network's jobs carry no credential")
        return None
    if not wire:
        raise _refused("the gateway is not a member: its job carries no credential")
    credential = credential_of(wire, admission)
    if credential.member != job.signer:
        raise _refused("the credential names another member")
    if not credential.roles & ROLE_GATEWAY:
        raise _refused("the member may not send jobs (no gateway role)")
    if credential.expires_at_ms <= job.issued_at_ms:
        raise _refused("the credential had expired when the job was signed")
    return credential


def check_revocations(revocations: RevocationList, admission: Admission | None) -> None:
    """A revocation list counts only in a members network, from one of its authorities."""
    if admission is None:
        raise WireError("kind", REJECT, "an open network has no revocation lists")
    if revocations.signer not in admission.authorities:
        raise _refused("the revocation list is not signed by an authority of this charter")
    if revocations.network != admission.network:
        raise _refused("the revocation list is for another network")


def issue_credential(authority: coincurve.PrivateKey, network: bytes, member: bytes, *,
                     roles: int, max_tokens_per_second: int, max_pending_tokens: int,
                     max_pending_requests: int, issued_at_ms: int, expires_at_ms: int) -> bytes:
    """An authority signs a member in (wire bytes of a Credential). Invalid values raise
    WireError before anything is signed."""
    return encode(Credential(authority.public_key.format(compressed=True), issued_at_ms, network,
                             member, roles, max_tokens_per_second, max_pending_tokens,
                             max_pending_requests, expires_at_ms), authority)


def revoke(authority: coincurve.PrivateKey, network: bytes, revoked: dict[bytes, int], *,
           seq: int, issued_at_ms: int) -> bytes:
    """An authority's revocation list (wire bytes): every member in `revoked` stops counting
    from its instant. A new list replaces the authority's previous one, so it lists everyone
    still revoked; `seq` must grow (a node SHOULD use issued_at_ms)."""
    entries = tuple(sorted(revoked.items()))
    return encode(RevocationList(authority.public_key.format(compressed=True), issued_at_ms, seq,
                                 network, entries), authority)


__all__ = ["issue_credential", "revoke", "Admission", "credential_of", "check_announcement", "check_job", "check_revocations"]
