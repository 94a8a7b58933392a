"""kadam: k-Adam and a continuous-time theory of Adam (Gould & Tanaka, arXiv 2411.05746).

The theory is ``docs/theory.md`` (also shipped with the package: ``kadam theory`` prints it); docstrings
cite its sections as ``THEORY §N``.

- :class:`KAdam`, the optimizer (THEORY §1), and :func:`param_groups_for`;
- :mod:`kadam.stability`, closed forms for the stability of (β, γ) (THEORY §2–§3);
- :mod:`kadam.flow`, the continuous-time model (THEORY §3);
- :mod:`kadam.normalization`, scale-invariant parameters and their norms (THEORY §4), with
  :func:`find_scale_invariant` and :class:`NormTracker` here;
- :mod:`kadam.optax`, k-Adam for JAX (needs the ``kadam[jax]`` extra; not imported here).

The names above are imported on first use (PEP 562), so that ``import kadam`` and the command line's
torch-free commands (``kadam --help``, ``kadam region``) do not pay for importing torch.
"""

from __future__ import annotations

import importlib as _importlib
from types import ModuleType as _ModuleType
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

__all__ = ["KAdam", "NormTracker", "find_scale_invariant", "param_groups_for", "stability"]
__version__ = "0.1.0"

_LAZY = {
    "KAdam": "kadam.optimizer",
    "param_groups_for": "kadam.optimizer",
    "NormTracker": "kadam.normalization",
    "find_scale_invariant": "kadam.normalization",
}
_SUBMODULES = ("stability",)

if _TYPE_CHECKING:
    from kadam import stability
    from kadam.normalization import NormTracker, find_scale_invariant
    from kadam.optimizer import KAdam, param_groups_for


def __getattr__(name: str) -> _Any:
    if name in _SUBMODULES:
        return _importlib.import_module(f"kadam.{name}")
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kadam' has no attribute {name!r}")


def __dir__() -> list[str]:
    submodules = {
        name for name, value in globals().items() if isinstance(value, _ModuleType) and not name.startswith("_")
    }
    return sorted({*__all__, "__version__", *submodules})
