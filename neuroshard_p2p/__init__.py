"""neuroshard-p2p: a peer-to-peer market node that prices and routes AI-inference capacity."""

__version__ = "0.1.0"

from neuroshard_p2p.config import MarketConfig  # noqa: E402  (the seed's public names)
from neuroshard_p2p.core.market import InferenceMarket  # noqa: E402

__all__ = ["InferenceMarket", "MarketConfig", "__version__"]
