"""Checked option types and the conventions every ``kadam`` sub-command follows.

Import-light on purpose (standard library only): ``kadam --help`` imports every sub-command module, so
a sub-command imports torch, numpy or the experiments inside its ``run`` function, never at module top.

- **Numbers** (:func:`positive_float`, :func:`nonnegative_float`, :func:`decay`, :func:`int_at_least`):
  argparse ``type=`` callables that reject non-finite values and out-of-range numbers at parse time, with
  a message that names the option (argparse adds ``argument --lr:``) and the accepted range.
- **Output paths** (:func:`output_path`, behind :func:`output_file`, :func:`output_figure` and
  :func:`output_directory`): every path a command writes is checked at parse time, before any
  computation: not empty, its folder exists (or, for a directory, can be created) and accepts a new
  file, an existing path is of the right kind, and a figure's extension is a format matplotlib writes.
- **Commands** (:func:`command`): the command's function, and a check of conditions on several options
  together that runs right after parsing, so those errors too come before any computation.
- **Threads** (:func:`add_threads_option`, :func:`torch_threads`): a command that runs torch sets its own
  intra-op thread count for its duration and puts the previous one back.
- **Stages** (:class:`Stages`): a command with long stages prints one line per stage to stderr when
  stderr is not a terminal (logs, schedulers); on a terminal, its progress bars do that job.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = [
    "FIGURE_FORMATS",
    "Stages",
    "add_threads_option",
    "available_cores",
    "command",
    "decay",
    "input_file",
    "int_at_least",
    "nonnegative_float",
    "output_directory",
    "output_figure",
    "output_file",
    "output_path",
    "positive_float",
    "torch_threads",
]


def _finite(text: str, accepted: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (argparse ``type=``)."""
    value = _finite(text, "a positive finite number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number ≥ 0 (argparse ``type=``)."""
    value = _finite(text, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def decay(text: str) -> float:
    """A moment decay (β or γ) in [0, 1) (argparse ``type=``)."""
    value = _finite(text, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def int_at_least(least: int) -> Callable[[str], int]:
    """An argparse ``type=`` accepting integers ≥ ``least``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {least}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be an integer >= {least}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {least}"
    return parse


def _accepts_new_files(directory: Path) -> bool:
    """Whether a file can be created in ``directory`` (tried, then removed: permission bits do not bind
    root, and a read-only file system shows only on a real attempt)."""
    try:
        handle, name = tempfile.mkstemp(prefix=".kadam-write-check-", dir=directory)
    except OSError:
        return False
    os.close(handle)
    os.unlink(name)
    return True


FIGURE_FORMATS: tuple[str, ...] = (
    "png",
    "pdf",
    "svg",
    "svgz",
    "eps",
    "ps",
    "jpg",
    "jpeg",
    "tif",
    "tiff",
    "webp",
    "raw",
    "rgba",
)
"""File extensions a figure option accepts: the formats matplotlib's Agg backend writes without an external
program (``pgf`` needs a LaTeX installation, so it is left out). Kept here, not asked of matplotlib, so
that parsing imports no matplotlib; a test checks every one against the installed matplotlib."""


def output_path(text: str, *, directory: bool = False, formats: Sequence[str] | None = None) -> Path:
    """Check a path a command will write, before it computes anything; returns it (creates nothing).

    The one check behind every output option (:func:`output_file`, :func:`output_figure`,
    :func:`output_directory`). It raises :class:`argparse.ArgumentTypeError` (argparse prefixes the option)
    when ``text`` is empty, or

    - for a file (``directory=False``): the path is an existing directory or ends in a separator; its
      folder is missing, is not a directory, or does not accept new files; an existing file is not
      writable; or, with ``formats``, its extension is not one of them (case-insensitive);
    - for a directory: the path exists and is not a directory, or does not accept new files; or it does
      not exist and its nearest existing ancestor is not a directory or does not accept new files (the
      command creates it with its parents when it writes).
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must be a {'directory' if directory else 'file'} path, got {text!r}")
    path = Path(text).expanduser()
    try:
        if directory:
            _check_directory(text, path)
        else:
            _check_file(text, path, formats)
    except OSError as error:  # a path the system refuses to look at (permissions, name too long)
        raise argparse.ArgumentTypeError(f"cannot use {text!r}: {error.strerror or error}") from None
    return path


def _check_file(text: str, path: Path, formats: Sequence[str] | None) -> None:
    if path.is_dir() or text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name")
    if formats is not None and path.suffix.lower().lstrip(".") not in formats:
        shown = f"extension {path.suffix!r}" if path.suffix else "no extension"
        raise argparse.ArgumentTypeError(
            f"{text!r} has {shown}; a figure is written as one of {', '.join('.' + f for f in formats)}"
        )
    folder = path.parent
    if not folder.exists():
        ancestor = _nearest_existing(folder)
        if not ancestor.is_dir():
            raise argparse.ArgumentTypeError(f"{str(ancestor)!r} is not a directory")
        raise argparse.ArgumentTypeError(f"directory {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{str(folder)!r} is not a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not writable")
    if not _accepts_new_files(folder):
        raise argparse.ArgumentTypeError(f"cannot write in {str(folder)!r} (read-only or no permission)")


def _check_directory(text: str, path: Path) -> None:
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
        if not _accepts_new_files(path):
            raise argparse.ArgumentTypeError(f"cannot write in {text!r} (read-only or no permission)")
        return
    ancestor = _nearest_existing(path.absolute().parent)
    if not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {text!r}: {str(ancestor)!r} is not a directory")
    if not _accepts_new_files(ancestor):
        raise argparse.ArgumentTypeError(f"cannot create {text!r}: {str(ancestor)!r} is read-only or not writable")


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def output_file(text: str) -> Path:
    """A file this command will write (argparse ``type=``; :func:`output_path`). An existing file is
    overwritten."""
    return output_path(text)


def output_figure(text: str) -> Path:
    """A figure this command will write (argparse ``type=``): :func:`output_file` whose extension is one of
    :data:`FIGURE_FORMATS` (the extension chooses the format)."""
    return output_path(text, formats=FIGURE_FORMATS)


def output_directory(text: str) -> Path:
    """A folder this command will write into (argparse ``type=``; :func:`output_path`): an existing folder
    that accepts new files, or a new one created with its parents when the command writes."""
    return output_path(text, directory=True)


def input_file(text: str) -> Path:
    """A file this command reads (argparse ``type=``): it exists, is not a directory, and is readable."""
    path = Path(text).expanduser()
    try:
        if not text.strip() or not path.exists():
            raise argparse.ArgumentTypeError(f"{text!r} does not exist")
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file")
        if not os.access(path, os.R_OK):
            raise argparse.ArgumentTypeError(f"{text!r} is not readable")
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {error.strerror or error}") from None
    return path


def command(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], int],
    check: Callable[[argparse.Namespace], None] | None = None,
) -> None:
    """Make ``parser`` a command: ``kadam`` calls ``check(args)`` right after parsing, then ``run(args)``.

    ``check`` holds the conditions on several options together (what a ``type=`` cannot see); it raises
    :class:`ValueError` with a message that starts ``argument --opt:``, reported like an argparse error
    (one line with the command's name, exit status 2) before anything is computed. A :class:`ValueError`
    raised later by ``run`` is reported the same way.
    """
    parser.set_defaults(func=run, _check=check, _prog=parser.prog)


def available_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def add_threads_option(parser: argparse.ArgumentParser, default: int = 1) -> None:
    """``--threads N``: torch intra-op threads for this command (see :func:`torch_threads`)."""
    parser.add_argument(
        "--threads",
        type=int_at_least(1),
        default=default,
        help=f"torch threads for this command (default {default}: its models are small, and extra threads only "
        f"wait on each other, much more so when another process keeps a core busy; {available_cores()} "
        "cores available)",
    )


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the body with ``count`` torch intra-op threads and put the previous count back afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Stages:
    """One line per stage on stderr when stderr is not a terminal: ``kadam flow: [2/3] continuous model``,
    then the seconds it took when the next stage starts or :meth:`done` is called. Silent on a terminal
    (the command's progress bars show it there) unless ``always``."""

    def __init__(self, command: str, total: int, *, always: bool = False) -> None:
        self.command = command
        self.total = total
        self.enabled = always or not sys.stderr.isatty()
        self.index = 0
        self.started: float | None = None

    def _finish_previous(self) -> None:
        if self.started is not None and self.enabled:
            print(
                f"kadam {self.command}: [{self.index}/{self.total}] done in {time.perf_counter() - self.started:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        self.started = None

    def start(self, description: str) -> None:
        self._finish_previous()
        self.index += 1
        self.started = time.perf_counter()
        if self.enabled:
            print(f"kadam {self.command}: [{self.index}/{self.total}] {description}", file=sys.stderr, flush=True)

    def done(self) -> None:
        self._finish_previous()
