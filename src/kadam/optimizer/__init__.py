"""The k-Adam optimizer (THEORY §1)."""

from kadam.optimizer.kadam import KAdam

__all__ = ["KAdam"]
