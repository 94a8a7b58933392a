"""Run ``kadam`` in-process and collect its exit status whether argparse or the command reports it."""

from __future__ import annotations

from collections.abc import Sequence

from kadam.cli import main


def exit_status(arguments: Sequence[str]) -> int:
    """``main(arguments)``'s return value, or the status of the ``SystemExit`` argparse raises."""
    try:
        return main(list(arguments))
    except SystemExit as exit_info:
        return int(exit_info.code or 0)
