"""The ``kadam`` command line: one sub-command per capability.

**Sub-command protocol.** Each sub-command lives in its own module of this package, named in
``_SUBCOMMANDS``, and exposes ``register(subparsers)``: it adds its parser with
``subparsers.add_parser(name, help=..., description=...)`` and makes it a command with
:func:`kadam.cli.options.command`: the function that runs it (taking the parsed arguments, returning an
exit status) and, optionally, a check of conditions on several options together, run right after
parsing. Two rules keep the command line fast and its errors uniform:

- ``kadam --help`` imports every sub-command module, so a module imports only the standard library and
  :mod:`kadam.cli.options` at its top; torch, numpy, rich and the experiments are imported inside ``func``.
- Options use the checked types of :mod:`kadam.cli.options` (finite numbers, ranges, output paths checked
  before any computation). A bad argument is one line, ``kadam X: error: argument --opt: …``, and exit
  status 2, whether argparse finds it, the command's check, or its function (``ValueError``).

``kadam --version`` prints ``kadam`` and :data:`kadam.__version__`.

The theory the commands compute is ``docs/theory.md`` (``kadam theory`` prints it); ``THEORY §N`` in
help texts and docstrings is its section N.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from kadam import __version__

_SUBCOMMANDS = ("demo", "region", "reproduce", "flow", "norms", "compare", "monitor", "transfer", "theory")


def _error_line(prog: str, message: str) -> str:
    return f"{prog}: error: {message} (see `{prog} --help`)\n"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``kadam flow: error: argument --lr: … (see `kadam flow --help`)``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, _error_line(self.prog, message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kadam",
        description="k-Adam and the continuous-time theory of Adam (Gould & Tanaka, arXiv 2411.05746). The theory "
        "every command computes is docs/theory.md (print it with `kadam theory`); THEORY §N in the help "
        "texts is its section N.",
    )
    parser.add_argument(
        "--version", action="version", version=f"kadam {__version__}", help="print kadam's version and exit"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = getattr(args, "_prog", None) or f"kadam {args.command}"
    check = getattr(args, "_check", None)
    if check is not None:
        try:
            check(args)
        except ValueError as error:  # conditions on several options: an argparse error, before any work
            parser.exit(2, _error_line(prog, str(error)))
    try:
        return int(args.func(args) or 0)
    except ValueError as error:  # bad input found while running: one line, exit status 2
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
