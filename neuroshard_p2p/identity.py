"""Node identity: one secp256k1 key is both the libp2p host key and the market signing key.

The libp2p peer id of a secp256k1 key is the identity multihash of its protobuf-encoded public
key, in base58btc. Deriving it here (pure, no libp2p import) lets the core name signers the way
the network does ("16Uiu2…").
"""

from __future__ import annotations

import base58

# protobuf PublicKey { Type = Secp256k1 (2), Data = 33 bytes }
_PB_PREFIX = bytes([0x08, 0x02, 0x12, 0x21])
# identity multihash: code 0x00, length 37
_MH_PREFIX = bytes([0x00, 0x25])


def peer_id_of(public_key: bytes) -> str:
    """The libp2p peer id (base58btc) of a 33-byte compressed secp256k1 public key."""
    if len(public_key) != 33:
        raise ValueError("expected a 33-byte compressed secp256k1 public key")
    return base58.b58encode(_MH_PREFIX + _PB_PREFIX + public_key).decode("ascii")


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Inverse of peer_id_of; raises ValueError for a peer id that is not a secp256k1 key."""
    raw = base58.b58decode(peer_id)
    if len(raw) != 39 or not raw.startswith(_MH_PREFIX + _PB_PREFIX):
        raise ValueError(f"{peer_id!r} is not the peer id of a secp256k1 key")
    return raw[6:]
