"""Closed forms of the theory (docs/theory.md). The stability of (β, γ) (THEORY §2–§3) is :mod:`kadam.stability`;
``from kadam.theory import stability`` names that same module."""

from kadam import stability

__all__ = ["stability"]
