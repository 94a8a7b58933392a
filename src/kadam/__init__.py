"""kadam: k-Adam and a continuous-time theory of Adam (Gould & Tanaka, arXiv 2411.05746).

The math lives in THEORY.md; docstrings cite it as ``THEORY §N``.
"""

from kadam.optimizer import KAdam, param_groups_for

__all__ = ["KAdam", "param_groups_for"]
__version__ = "0.1.0"
