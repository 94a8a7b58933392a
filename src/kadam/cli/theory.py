"""``kadam theory``: print the theory document the library and the report follow (``docs/theory.md``).

The package ships a copy (``kadam/theory.md``, read with :mod:`importlib.resources`), so an installed
kadam can show it without the repository; a test checks that the copy equals ``docs/theory.md``.
"""

from __future__ import annotations

import argparse
import re
from importlib import resources

from kadam.cli.options import command, int_at_least

SECTIONS = range(1, 8)


def text() -> str:
    """The whole theory document, as shipped with the package."""
    return resources.files("kadam").joinpath("theory.md").read_text(encoding="utf-8")


def section(number: int) -> str:
    """Section ``§number`` of the document, from its heading to the next one."""
    document = text()
    match = re.search(rf"^## §{number}\b.*?(?=^## |\Z)", document, flags=re.MULTILINE | re.DOTALL)
    if match is None:
        raise ValueError(f"--section must be one of {SECTIONS.start}..{SECTIONS.stop - 1}, got {number}")
    return match.group(0).rstrip() + "\n"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "theory",
        help="print the theory (docs/theory.md): definitions, formulas, protocols, citations",
        description="Print the theory document that the library, its docstrings (THEORY §N) and the report follow.",
    )
    parser.add_argument(
        "--section", type=int_at_least(1), metavar="N", help=f"print only §N ({SECTIONS.start}–{SECTIONS.stop - 1})"
    )
    command(parser, run, check)


def check(args: argparse.Namespace) -> None:
    """--section names a section the document has."""
    if args.section is not None and args.section not in SECTIONS:
        raise ValueError(
            f"argument --section: must be one of {SECTIONS.start}..{SECTIONS.stop - 1}, got {args.section}"
        )


def run(args: argparse.Namespace) -> int:
    print(text() if args.section is None else section(args.section), end="")
    return 0
