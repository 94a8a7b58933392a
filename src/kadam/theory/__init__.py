"""Closed forms of the theory (docs/theory.md): stability of (β, γ) (THEORY §2–§3)."""

from kadam.theory import stability

__all__ = ["stability"]
