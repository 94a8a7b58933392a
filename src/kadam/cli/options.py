"""Checked option types and the conventions every ``kadam`` sub-command follows.

Import-light on purpose (standard library only): ``kadam --help`` imports every sub-command module, so
a sub-command imports torch, numpy or the experiments inside its ``run`` function, never at module top.

- **Numbers** (:func:`positive_float`, :func:`nonnegative_float`, :func:`decay`, :func:`int_at_least`):
  argparse ``type=`` callables that reject non-finite values and out-of-range numbers at parse time, with
  a message that names the option (argparse adds ``argument --lr:``) and the accepted range.
- **Output paths** (:func:`output_file`, :func:`output_directory`): checked at parse time, before any
  computation: the folder must exist (or, for a directory, be creatable) and accept a new file, and an
  existing path must be of the right kind.
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
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "Stages",
    "add_threads_option",
    "available_cores",
    "decay",
    "int_at_least",
    "nonnegative_float",
    "output_directory",
    "output_file",
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


def output_file(text: str) -> Path:
    """A file this command will write (argparse ``type=``): its folder exists and accepts new files, and
    the path is not a folder. An existing file is overwritten."""
    path = Path(text).expanduser()
    folder = path.parent
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name")
    if not folder.exists():
        raise argparse.ArgumentTypeError(f"directory {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{str(folder)!r} is not a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not writable")
    if not _accepts_new_files(folder):
        raise argparse.ArgumentTypeError(f"cannot write in {str(folder)!r} (read-only or no permission)")
    return path


def output_directory(text: str) -> Path:
    """A folder this command will write into (argparse ``type=``; returns the path, creates nothing):
    either an existing folder that accepts new files, or a new one whose nearest existing ancestor is a
    folder that accepts new files (it is created with its parents when the command writes)."""
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
        if not _accepts_new_files(path):
            raise argparse.ArgumentTypeError(f"cannot write in {text!r} (read-only or no permission)")
        return path
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {text!r}: {str(ancestor)!r} is not a directory")
    if not _accepts_new_files(ancestor):
        raise argparse.ArgumentTypeError(f"cannot create {text!r}: {str(ancestor)!r} is read-only or not writable")
    return path


def available_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def add_threads_option(parser: argparse.ArgumentParser, default: int = 1) -> None:
    """``--threads N``: torch intra-op threads for this command (see :func:`torch_threads`)."""
    parser.add_argument(
        "--threads", type=int_at_least(1), default=default,
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
            print(f"kadam {self.command}: [{self.index}/{self.total}] done in {time.perf_counter() - self.started:.1f} s",
                  file=sys.stderr, flush=True)
        self.started = None

    def start(self, description: str) -> None:
        self._finish_previous()
        self.index += 1
        self.started = time.perf_counter()
        if self.enabled:
            print(f"kadam {self.command}: [{self.index}/{self.total}] {description}", file=sys.stderr, flush=True)

    def done(self) -> None:
        self._finish_previous()
