"""The ``kadam`` command line: one sub-command per capability.

**Sub-command protocol.** Each sub-command lives in its own module of this package, named in
``_SUBCOMMANDS``, and exposes ``register(subparsers)``: it adds its parser with
``subparsers.add_parser(name, help=..., description=...)`` and sets ``func`` (a callable taking the parsed
arguments and returning an exit status) with ``parser.set_defaults(func=...)``. Two rules keep the
command line fast and its errors uniform:

- ``kadam --help`` imports every sub-command module, so a module imports only the standard library and
  :mod:`kadam.cli.options` at its top; torch, numpy, rich and the experiments are imported inside ``func``.
- Options use the checked types of :mod:`kadam.cli.options` (finite numbers, ranges, output paths checked
  before any computation). A bad argument is one line, ``kadam X: error: argument --opt: …``, and exit
  status 2, whether argparse finds it or ``func`` raises ``ValueError``.

The theory the commands compute is ``docs/theory.md`` (``kadam theory`` prints it); ``THEORY §N`` in
help texts and docstrings is its section N.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

_SUBCOMMANDS = ("demo", "region", "reproduce", "flow", "norms", "compare", "monitor", "transfer", "theory")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``kadam flow: error: argument --lr: … (kadam flow --help)``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kadam",
        description="k-Adam and the continuous-time theory of Adam (Gould & Tanaka, arXiv 2411.05746). The theory "
                    "every command computes is docs/theory.md (print it with `kadam theory`); THEORY §N in the help "
                    "texts is its section N.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as error:  # bad input found after parsing: one line, exit status 2
        print(f"kadam {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
