"""neuroshard-p2p: a peer-to-peer market node that prices and routes AI-inference capacity."""

__version__ = "0.1.0"
