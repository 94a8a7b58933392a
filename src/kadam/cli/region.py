"""``kadam region``: is Adam's (β, γ) stable, how large can its update get, how fast does it grow or fade.

Prints, per (β, γ): stability (γ > β², THEORY §2), the exact bound B_∞ and B_n at a few n, both
continuous-time bounds (THEORY §3), the growth rate ln β − ½ ln γ and its steps per e-fold, and the
margin to each boundary (γ = β² and the paper's γ = β/(2−β)). ``--plot`` draws the (β, γ) map.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from kadam.cli.options import command, decay, int_at_least, output_figure

T = TypeVar("T")

DEFAULT_STEPS = (10, 100, 1000)
ON_BOUNDARY = 1e-12
"""|γ − boundary| at or below this reads "boundary": 0.9 and 0.81 are not exactly 0.9 and 0.9² in binary."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "region",
        help="stability of (beta, gamma): update bounds, growth rate, the stable-region map",
        description=(
            "Stability of Adam's (beta, gamma) (THEORY §2-§3 in docs/theory.md). Lists pair up element by element; a single "
            "value pairs with every value of the other list. Without --beta/--gamma: the common presets."
        ),
    )
    parser.add_argument(
        "--beta",
        type=_comma_list(decay),
        nargs="+",
        metavar="B",
        help="first-moment decay(s) in [0, 1); commas allowed",
    )
    parser.add_argument(
        "--gamma",
        type=_comma_list(decay),
        nargs="+",
        metavar="G",
        help="second-moment decay(s) in [0, 1); commas allowed",
    )
    parser.add_argument(
        "--steps",
        type=_comma_list(int_at_least(1)),
        nargs="+",
        metavar="N",
        help=f"steps n >= 1 at which to print B_n; commas allowed (default {' '.join(map(str, DEFAULT_STEPS))})",
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list, one object per (beta, gamma); infinite values are null"
    )
    parser.add_argument(
        "--plot",
        type=output_figure,
        metavar="PNG",
        help="draw the (beta, gamma) map to this figure (.png, .pdf, .svg, …) instead of the table",
    )
    command(parser, run, check)


def _comma_list(item: Callable[[str], T]) -> Callable[[str], list[T]]:
    """An argparse ``type=`` for one argument of comma-separated values, each checked by ``item``."""

    def parse(text: str) -> list[T]:
        values = [item(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"needs at least one value, got {text!r}")
        return values

    parse.__name__ = getattr(item, "__name__", "value")
    return parse


def _flat(values: Sequence[list[T]] | None) -> list[T] | None:
    return None if values is None else [value for group in values for value in group]


def check(args: argparse.Namespace) -> None:
    """--beta and --gamma together: both or neither, lists that pair up."""
    betas, gammas = _flat(args.beta), _flat(args.gamma)
    if (betas is None) != (gammas is None):
        missing = "--gamma" if gammas is None else "--beta"
        raise ValueError(f"argument {missing}: give both --beta and --gamma (or neither, for the common presets)")
    if betas is not None and gammas is not None and len(betas) != len(gammas) and 1 not in (len(betas), len(gammas)):
        raise ValueError(
            f"argument --gamma: --beta and --gamma must have the same number of values or one of them a single "
            f"value, got {len(betas)} and {len(gammas)}"
        )


def _pairs(betas: list[float] | None, gammas: list[float] | None) -> list[tuple[float, float]]:
    """The (β, γ) pairs of checked lists (:func:`check`); the presets when both are None."""
    from kadam import stability  # NumPy only (no torch); imported here so that `kadam --help` skips it

    if betas is None or gammas is None:
        return list(stability.PRESETS)
    count = max(len(betas), len(gammas))
    return [(betas[i % len(betas)], gammas[i % len(gammas)]) for i in range(count)]


def describe(beta: float, gamma: float, steps: Sequence[int] = DEFAULT_STEPS) -> dict[str, Any]:
    """Every quantity the table shows for one (β, γ), as a JSON-ready dict (inf stays a float)."""
    from kadam import stability

    rate = float(stability.growth_rate(beta, gamma))
    return {
        "beta": beta,
        "gamma": gamma,
        "stable": stability.is_stable(beta, gamma),
        "stable_paper": stability.is_stable(beta, gamma, rates="paper"),
        "update_bound": stability.update_bound(beta, gamma),
        "update_bound_at": {str(n): stability.update_bound(beta, gamma, n) for n in steps},
        "continuous_bound_exact": stability.continuous_update_bound(beta, gamma, rates="exact"),
        "continuous_bound_paper": stability.continuous_update_bound(beta, gamma, rates="paper"),
        "growth_rate": rate,
        "growth_rate_paper": float(stability.growth_rate(beta, gamma, rates="paper")),
        "steps_per_efold": 1.0 / abs(rate) if rate != 0.0 else math.inf,
        "margin": stability.stability_margin(beta, gamma),
        "margin_paper": stability.stability_margin(beta, gamma, rates="paper"),
        "on_boundary": abs(stability.stability_margin(beta, gamma)) <= ON_BOUNDARY,
        "on_boundary_paper": abs(stability.stability_margin(beta, gamma, rates="paper")) <= ON_BOUNDARY,
    }


def _format(value: float) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.6g}"


def _status(row: dict[str, Any], suffix: str = "") -> str:
    if row["on_boundary" + suffix]:
        return "boundary"
    return "yes" if row["stable" + suffix] else "NO"


def _efold(row: dict[str, Any]) -> str:
    if row["growth_rate"] == 0.0 or row["on_boundary"]:
        return "none (boundary)"
    return f"{_format(row['steps_per_efold'])} ({'grows' if row['growth_rate'] > 0 else 'fades'})"


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The compact text table: one column per (β, γ), one line per quantity."""
    lines: list[tuple[str, list[str]]] = [
        ("beta", [_format(r["beta"]) for r in rows]),
        ("gamma", [_format(r["gamma"]) for r in rows]),
        ("stable (gamma > beta^2)", [_status(r) for r in rows]),
        ("stable, paper (gamma > beta/(2-beta))", [_status(r, "_paper") for r in rows]),
        ("B_inf (exact sup |u|)", [_format(r["update_bound"]) for r in rows]),
    ]
    for n in rows[0]["update_bound_at"]:
        lines.append((f"B_n at n = {n}", [_format(r["update_bound_at"][n]) for r in rows]))
    lines += [
        ("continuous bound, exact rates", [_format(r["continuous_bound_exact"]) for r in rows]),
        ("continuous bound, paper rates", [_format(r["continuous_bound_paper"]) for r in rows]),
        ("growth rate ln(beta) - ln(gamma)/2", [_format(r["growth_rate"]) for r in rows]),
        ("steps per e-fold", [_efold(r) for r in rows]),
        ("margin gamma - beta^2", [_format(r["margin"]) for r in rows]),
        ("margin gamma - beta/(2-beta)", [_format(r["margin_paper"]) for r in rows]),
    ]
    label_width = max(len(label) for label, _ in lines)
    widths = [max(len(cells[i]) for _, cells in lines) for i in range(len(rows))]
    return "\n".join(
        f"{label:<{label_width}}  " + "  ".join(f"{cell:>{w}}" for cell, w in zip(cells, widths))
        for label, cells in lines
    )


def run(args: argparse.Namespace) -> int:
    pairs = _pairs(_flat(args.beta), _flat(args.gamma))
    if args.plot is not None:
        from kadam.experiments.stability.plots import plot_region_map  # matplotlib and torch only when drawing

        plot_region_map(args.plot, pairs)
        print(f"wrote {args.plot}")
        return 0
    steps = _flat(args.steps) or list(DEFAULT_STEPS)
    rows = [describe(beta, gamma, steps) for beta, gamma in pairs]
    print(json.dumps(_finite_or_null(rows), indent=2, allow_nan=False) if args.json else table(rows))
    return 0


def _finite_or_null(value: Any) -> Any:
    """JSON has no infinity: an infinite bound (unstable, unbounded) becomes null."""
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(item) for item in value]
    if isinstance(value, float) and math.isinf(value):
        return None
    return value
