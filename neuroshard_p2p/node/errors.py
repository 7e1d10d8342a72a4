"""The node's one error type (peering raises it too, so it lives below both)."""

from __future__ import annotations


class NodeError(Exception):
    """The node cannot start or do what was asked; str(error) says why."""


__all__ = ["NodeError"]
