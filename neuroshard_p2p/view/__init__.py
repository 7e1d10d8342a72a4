"""The merged market view: a CRDT of signed announcements and the price every peer agrees on."""

from neuroshard_p2p.view.view import (
    BUCKETS,
    DEFAULT_MAX_SIGNERS,
    CountedOffer,
    MarketStats,
    MarketView,
    MergeOutcome,
    SharedFacts,
    TickPrice,
    bucket_of,
    default_max_per_signer,
)

__all__ = [
    "MarketView", "MergeOutcome", "SharedFacts", "TickPrice", "MarketStats", "CountedOffer",
    "bucket_of", "BUCKETS", "DEFAULT_MAX_SIGNERS", "default_max_per_signer",
]
