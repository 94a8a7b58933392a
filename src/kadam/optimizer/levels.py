r"""KAdam's level arguments and their one parser (THEORY §1).

k-Adam chains k adaptive normalization levels; level i has its own :class:`kadam.vocabulary.Level`
:math:`(\beta_i, \gamma_i, \epsilon_i, \mathrm{norm}_i)`. The arguments that describe them are
shared by :class:`kadam.KAdam` (constructor and parameter groups), :mod:`kadam.flow` and
:mod:`kadam.optax`, and all of them go through :func:`resolve_levels`:

* ``k``: the number of levels, an integer ≥ 1.
* ``betas``: level 1's pair :math:`(\beta_1, \beta_2)` (torch's ``betas``), or a sequence of k pairs
  that sets every level (then ``meta_betas`` must not be given).
* ``meta_betas``: levels 2..k, one pair for all of them or a sequence of k − 1 pairs; default
  ``(0.0, 0.999)``.
* ``eps``: one number for **every** level (as torch's ``eps`` is the ε of the only level Adam has), or a
  sequence of k numbers.
* ``meta_eps``: levels 2..k only (one number or k − 1 numbers); when given it takes precedence over a
  single ``eps`` for those levels. It is what a parameter group stores, so that a group read back from
  ``state_dict()`` or ``param_groups`` resolves to the same levels.
* ``norm``/``meta_norm``: ``"elementwise"`` (Adam) or ``"tensor"``, as ``betas``/``meta_betas``;
  default ``"elementwise"`` for level 1 and ``"tensor"`` for levels 2..k.

In a parameter group (``KAdam.add_param_group`` or a dict in the constructor's ``params``) a key means
what the constructor argument of the same name means, and a key the group does not give keeps the
constructor's value: ``{"eps": 1e-3}`` sets ε of every level of that group, ``{"betas": (0.8, 0.99)}``
sets level 1 and keeps the constructor's meta levels, ``{"k": 3}`` extends the constructor's
``meta_*`` (when they were given once for all levels) to the new levels. :func:`group_entries` stores
the resolved levels in the group in a canonical form: ``betas``/``eps``/``norm`` hold level 1 (so torch's
schedulers that cycle ``betas`` and AdamW checkpoints keep working), ``meta_betas``/``meta_eps``/
``meta_norm`` hold tuples of the k − 1 values of levels 2..k. :func:`group_levels` reads them back
without checking anything; it is all that ``step()`` does with them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from kadam import stability
from kadam.vocabulary import (
    DEFAULT_BETAS,
    DEFAULT_EPS,
    DEFAULT_META_BETAS,
    DEFAULT_META_NORM,
    DEFAULT_NORM,
    NORMS,
    Level,
)

__all__ = [
    "DEFAULT_META_BETAS",
    "DEFAULT_META_NORM",
    "LEVEL_KEYS",
    "NORMS",
    "Level",
    "check_nonnegative",
    "group_entries",
    "group_levels",
    "level_arguments",
    "resolve_levels",
    "warn_if_unstable",
    "with_group_overrides",
]

LEVEL_KEYS = ("k", "betas", "eps", "norm", "meta_betas", "meta_eps", "meta_norm")
"""The keys of a parameter group that describe its levels."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def _is_pair(value: Any) -> bool:
    return _is_sequence(value) and len(value) == 2 and all(_is_number(v) for v in value)


def _is_norm(value: Any) -> bool:
    return isinstance(value, str)


_SINGLE = {"betas": _is_pair, "eps": _is_number, "norm": _is_norm}
_DEFAULTS = {"betas": DEFAULT_BETAS, "eps": DEFAULT_EPS, "norm": DEFAULT_NORM}
_META_DEFAULTS = {"betas": DEFAULT_META_BETAS, "norm": DEFAULT_META_NORM}


def _frozen(value: Any) -> Any:
    """Tuples for sequences (nested), so that arguments compare, hash and deep-copy as values."""
    return tuple(_frozen(v) for v in value) if _is_sequence(value) else value


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return k


def _split(name: str, value: Any, meta_value: Any, k: int) -> tuple[Any, Any]:
    """``name`` given once (level 1, or every level for ``eps``) or per level, as (level 1, levels 2..k).

    A value of ``None`` is "not given" and stays ``None``.
    """
    if value is None:
        return None, meta_value
    if _SINGLE[name](value):
        if name == "eps" and meta_value is None:
            return value, value  # one eps is the eps of every level
        return _frozen(value), meta_value
    if name == "betas":
        _check_pair_attempt("betas", value, f"or a sequence of k = {k} per-level pairs")
    if not _is_sequence(value) or len(value) != k:
        what = {
            "eps": "one number or a sequence of k = {k} numbers",
            "betas": "a pair of numbers (beta, gamma) in [0, 1), or a sequence of k = {k} per-level pairs",
        }.get(name, "one value or a sequence of k = {k} per-level values")
        raise ValueError(f"{name} must be {what.format(k=k)}, got {value!r}")
    if meta_value is not None:
        raise ValueError(f"meta_{name} cannot be given when {name} is a per-level sequence; put level 2..k in {name}")
    value = _frozen(value)
    return value[0], value[1:]


def level_arguments(
    k: int = 2,
    betas: Any = None,
    eps: Any = None,
    norm: Any = None,
    meta_betas: Any = None,
    meta_eps: Any = None,
    meta_norm: Any = None,
) -> dict[str, Any]:
    """The level arguments in *split* form: level 1's value and one spec for levels 2..k each.

    ``None`` (or an omitted argument) takes the default. The meta specs stay as given, one value for
    every meta level or one per level, so that a group with another ``k`` can reuse them. Shapes are
    checked here (``ValueError``); values are checked by :func:`resolve_levels`.
    """
    k = _check_k(k)
    arguments: dict[str, Any] = {"k": k}
    for name, value, meta_value in (("betas", betas, meta_betas), ("eps", eps, meta_eps), ("norm", norm, meta_norm)):
        level1, meta = _split(name, value, _frozen(meta_value), k)
        arguments[name] = _DEFAULTS[name] if level1 is None else level1
        arguments[f"meta_{name}"] = meta
    arguments["meta_betas"] = DEFAULT_META_BETAS if arguments["meta_betas"] is None else arguments["meta_betas"]
    arguments["meta_norm"] = DEFAULT_META_NORM if arguments["meta_norm"] is None else arguments["meta_norm"]
    arguments["meta_eps"] = arguments["eps"] if arguments["meta_eps"] is None else arguments["meta_eps"]
    return arguments


def with_group_overrides(arguments: Mapping[str, Any], group: Mapping[str, Any]) -> dict[str, Any]:
    """Split-form ``arguments`` (the constructor's) with the level keys that ``group`` gives.

    A key of the group means what the constructor argument of that name means (module docstring);
    what the group does not give (or gives as ``None``) is the constructor's.
    """
    k = _check_k(group.get("k", arguments["k"]))
    given = {key: group[key] for key in LEVEL_KEYS[1:] if group.get(key) is not None}
    merged: dict[str, Any] = {"k": k}
    for name in ("betas", "eps", "norm"):
        level1, meta = _split(name, given.get(name), _frozen(given.get(f"meta_{name}")), k)
        merged[name] = arguments[name] if level1 is None else level1
        merged[f"meta_{name}"] = arguments[f"meta_{name}"] if meta is None else meta
    return merged


def check_nonnegative(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number >= 0 (``lr``, ``weight_decay``, ``eps``); else ValueError
    naming ``name`` and the range. NaN and ±inf are refused: torch's AdamW refuses a NaN lr, and an infinite lr,
    weight decay or eps turns every parameter into NaN at the first step."""
    if not _is_number(value) or not 0.0 <= value < math.inf:
        raise ValueError(f"{name} must be a number >= 0 (and finite), got {value!r}")
    return float(value)


def _check_unit_interval(name: str, level: int, value: Any) -> float:
    """``value`` as a float if it is a number in [0, 1) (a level's β or γ; NaN is not); else ValueError."""
    if not _is_number(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} of level {level} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_pair_attempt(name: str, value: Any, alternative: str) -> None:
    """ValueError for a flat sequence (no element is a sequence) that is meant as one (β, γ) pair and is not
    one, naming the element that is not a number; anything else is left to the caller."""
    if not _is_sequence(value) or any(_is_sequence(v) for v in value) or _is_pair(value):
        return
    if len(value) != 2:
        problem = f"a pair holds 2 numbers, not {len(value)}"
    else:
        problem = f"{next(v for v in value if not _is_number(v))!r} is not a number"
    raise ValueError(
        f"{name} must be a pair of numbers (beta, gamma) in [0, 1), {alternative}; got {value!r}: {problem}"
    )


def _per_meta_level(name: str, value: Any, k: int, single: Any) -> list[Any]:
    if single(value):
        return [value] * (k - 1)
    if name == "meta_betas" and _is_sequence(value) and len(value) == 2:  # (not a per-level remainder of betas)
        _check_pair_attempt(name, value, f"one for every level 2..k or a sequence of k - 1 = {k - 1} pairs")
    if not _is_sequence(value) or len(value) != k - 1:
        raise ValueError(
            f"{name} must be one value for every level 2..k or a sequence of k - 1 = {k - 1} values, got {value!r}"
        )
    return list(value)


def resolve_levels(
    k: int = 2,
    betas: Any = None,
    eps: Any = None,
    norm: Any = None,
    meta_betas: Any = None,
    meta_eps: Any = None,
    meta_norm: Any = None,
) -> tuple[Level, ...]:
    """The k validated :class:`Level` s described by KAdam's level arguments (module docstring).

    Raises:
        ValueError: naming the argument, the level and the accepted range.
    """
    split = level_arguments(k, betas, eps, norm, meta_betas, meta_eps, meta_norm)
    k = split["k"]
    pairs = [split["betas"], *_per_meta_level("meta_betas", split["meta_betas"], k, _is_pair)]
    all_eps = [split["eps"], *_per_meta_level("meta_eps", split["meta_eps"], k, lambda v: not _is_sequence(v))]
    norms = [split["norm"], *_per_meta_level("meta_norm", split["meta_norm"], k, _is_norm)]
    levels = []
    for i, (pair, eps_i, norm_i) in enumerate(zip(pairs, all_eps, norms, strict=True), start=1):
        if not _is_sequence(pair) or len(pair) != 2:
            raise ValueError(f"betas of level {i} must be a pair (beta, gamma), got {pair!r}")
        beta = _check_unit_interval("beta", i, pair[0])
        gamma = _check_unit_interval("gamma", i, pair[1])
        check_nonnegative(f"eps of level {i}", eps_i)
        if norm_i not in NORMS:
            raise ValueError(f"norm of level {i} must be one of {NORMS}, got {norm_i!r}")
        levels.append(Level(beta, gamma, float(eps_i), norm_i))
    return tuple(levels)


def group_entries(levels: Sequence[Level]) -> dict[str, Any]:
    """The canonical parameter-group entries of ``levels`` (module docstring); inverse of :func:`group_levels`."""
    first, rest = levels[0], levels[1:]
    return {
        "k": len(levels),
        "betas": (first.beta, first.gamma),
        "eps": first.eps,
        "norm": first.norm,
        "meta_betas": tuple((level.beta, level.gamma) for level in rest),
        "meta_eps": tuple(level.eps for level in rest),
        "meta_norm": tuple(level.norm for level in rest),
    }


def group_levels(group: Mapping[str, Any]) -> tuple[Level, ...]:
    """The levels stored in a group by :func:`group_entries`, read without validation.

    ``betas`` is read as it is now, so a scheduler that cycles ``betas[0]`` (``OneCycleLR``) drives
    level 1's β, as it drives Adam's.
    """
    beta, gamma = group["betas"]
    levels = [Level(beta, gamma, group["eps"], group["norm"])]
    for (meta_beta, meta_gamma), eps, norm in zip(group["meta_betas"], group["meta_eps"], group["meta_norm"]):
        levels.append(Level(meta_beta, meta_gamma, eps, norm))
    return tuple(levels)


def warn_if_unstable(levels: Sequence[Level], who: str = "KAdam") -> None:
    """A :class:`kadam.stability.StabilityWarning` at the user's line for each level outside the stable region
    γ > β² (THEORY §2): :func:`kadam.stability.warn_if_unstable` of the levels' (β, γ)."""
    stability.warn_if_unstable([(level.beta, level.gamma) for level in levels], who)
