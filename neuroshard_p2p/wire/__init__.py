"""Wire protocol v1: signed, canonical msgpack messages. See protocols/market-v1.md."""

from neuroshard_p2p.wire.codec import (
    MAX_AGE_S,
    MAX_FUTURE_S,
    MAX_SIZE,
    body_of,
    check_freshness,
    decode,
    decode_unchecked_time,
    encode,
    message_id,
    public_key_of,
    sign,
    with_fields,
)
from neuroshard_p2p.wire.errors import IGNORE, REJECT, WireError
from neuroshard_p2p.wire.messages import TIERS, VERSION, Announcement, Job, Message, Receipt

__all__ = [
    "encode", "decode", "decode_unchecked_time", "sign", "body_of", "message_id",
    "check_freshness", "public_key_of", "with_fields", "MAX_SIZE", "MAX_AGE_S", "MAX_FUTURE_S",
    "WireError", "REJECT", "IGNORE", "Announcement", "Job", "Receipt", "Message", "TIERS",
    "VERSION",
]
