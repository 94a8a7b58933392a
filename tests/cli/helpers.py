"""Run ``kadam`` in-process and collect its exit status whether argparse or the command reports it; check
the command line's error convention (one line naming the option, exit status 2, nothing written)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from kadam.cli import main


def exit_status(arguments: Sequence[str]) -> int:
    """``main(arguments)``'s return value, or the status of the ``SystemExit`` argparse raises."""
    try:
        return main(list(arguments))
    except SystemExit as exit_info:
        return int(exit_info.code or 0)


def _listing(folder: Path | None) -> set[Path]:
    return set() if folder is None else set(folder.rglob("*"))


def refused(
    capsys: pytest.CaptureFixture[str],
    arguments: Sequence[str],
    *fragments: str,
    prog: str | None = None,
    unchanged: Path | None = None,
) -> str:
    """Run ``kadam arguments`` and check the convention for a bad value: exit status 2, nothing on stdout,
    exactly one line on stderr starting ``prog: error: `` (default ``kadam <first argument>``) and holding
    every fragment, no traceback, and nothing created or removed under ``unchanged``. Returns the line."""
    before = _listing(unchanged)
    status = exit_status(arguments)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    prefix = f"{prog or 'kadam ' + arguments[0]}: error: "
    assert status == 2, (status, captured.err)
    assert captured.out == "", captured.out
    assert len(lines) == 1 and lines[0].startswith(prefix), captured.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in captured.err and "_positive_float" not in captured.err and "invalid" not in captured.err
    assert _listing(unchanged) == before, sorted(map(str, _listing(unchanged) ^ before))
    return lines[0]


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder no file can be created in: permission bits, or /proc where they do not bind (root)."""
    if os.geteuid() == 0:
        yield Path("/proc")
        return
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    yield folder
    folder.chmod(stat.S_IRWXU)


@pytest.fixture
def no_computation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a command gets as far as computing or drawing anything."""
    import kadam.experiments.cells
    import kadam.experiments.comparison.study
    import kadam.experiments.monitor.plots
    import kadam.experiments.normalization.protocol
    import kadam.experiments.reproduce
    import kadam.experiments.stability.plots
    import kadam.experiments.training.protocol
    import kadam.flow

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("computed before checking its options")

    for module, name in [
        (kadam.flow, "discrete"),
        (kadam.flow, "simulate"),
        (kadam.experiments.reproduce, "reproduce"),
        (kadam.experiments.normalization.protocol, "digits_norms"),
        (kadam.experiments.stability.plots, "plot_region_map"),
        (kadam.experiments.monitor.plots, "plot_history"),
        (kadam.experiments.cells, "CellRunner"),
        (kadam.experiments.comparison.study, "run_study"),
        (kadam.experiments.training.protocol, "train_run"),
    ]:
        monkeypatch.setattr(module, name, forbidden)
