"""Wire protocol v1: signed, canonical msgpack messages. See protocols/market-v1.md."""

from neuroshard_p2p.wire.codec import (
    MAX_AGE_S,
    MAX_FRAME_SIZE,
    MAX_FUTURE_S,
    MAX_SIZE,
    MAX_SYNC_ANNOUNCEMENTS,
    body_of,
    check_freshness,
    decode,
    decode_frame,
    decode_sync,
    decode_unchecked_time,
    encode,
    encode_frame,
    encode_sync,
    message_id,
    public_key_of,
    sign,
    split_sync_response,
    with_fields,
)
from neuroshard_p2p.wire.errors import IGNORE, REJECT, WireError
from neuroshard_p2p.wire.framing import FrameReader, length_prefixed
from neuroshard_p2p.wire.validate import Validator
from neuroshard_p2p.wire.messages import (
    SYNC_BUCKETS,
    TIERS,
    VERSION,
    Announcement,
    Frame,
    Job,
    JobDeclined,
    Message,
    Receipt,
    SyncRequest,
    SyncResponse,
)

__all__ = [
    "encode", "decode", "decode_unchecked_time", "sign", "body_of", "message_id",
    "check_freshness", "public_key_of", "with_fields", "MAX_SIZE", "MAX_AGE_S", "MAX_FUTURE_S",
    "encode_frame", "decode_frame", "encode_sync", "decode_sync", "split_sync_response",
    "MAX_FRAME_SIZE", "MAX_SYNC_ANNOUNCEMENTS", "SYNC_BUCKETS",
    "WireError", "REJECT", "IGNORE", "Announcement", "Job", "Receipt", "Message", "TIERS",
    "VERSION", "SyncRequest", "SyncResponse", "JobDeclined", "Frame", "Validator",
    "FrameReader", "length_prefixed",
]
