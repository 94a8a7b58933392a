"""kadam: k-Adam and a continuous-time theory of Adam (Gould & Tanaka, arXiv 2411.05746).

The math lives in THEORY.md; docstrings cite it as ``THEORY §N``.

- :class:`KAdam`, the optimizer (THEORY §1), and :func:`param_groups_for`;
- :mod:`kadam.stability`, closed forms for the stability of (β, γ) (THEORY §2–§3);
- :mod:`kadam.flow`, the continuous-time model (THEORY §3);
- :mod:`kadam.normalization`, scale-invariant parameters and their norms (THEORY §4), with
  :func:`find_scale_invariant` and :class:`NormTracker` here;
- :mod:`kadam.optax`, k-Adam for JAX (needs the ``kadam[jax]`` extra; not imported here).
"""

from kadam import stability
from kadam.normalization import NormTracker, find_scale_invariant
from kadam.optimizer import KAdam, param_groups_for

__all__ = ["KAdam", "NormTracker", "find_scale_invariant", "param_groups_for", "stability"]
__version__ = "0.1.0"
