"""The one error type of the wire layer."""

from __future__ import annotations

REJECT = "reject"   # the sender misbehaved (forged, malformed, oversize, flooding): penalise it
IGNORE = "ignore"   # stale or duplicate: drop without penalising whoever forwarded it


class WireError(ValueError):
    """A message that is not valid. `reason` is a short stable code used for counters and
    metrics (e.g. "bad_signature"); `action` is REJECT or IGNORE; str(error) is for people."""

    def __init__(self, reason: str, action: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.action = action
        #: For a `future` or `stale` refusal of a message whose signature checked: (signer,
        #: issued_at_ms, work_nonce), what it says of the signer's clock and what the signer
        #: weighs (node/clockwatch.py).
        self.signed_time: tuple[bytes, int, int] | None = None

    def __repr__(self) -> str:
        return f"WireError({self.reason!r}, {self.action!r}, {str(self)!r})"
