"""``kadam region``: printed values equal the library's; bad input is one line and exit status 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from kadam import stability
from kadam.cli import main
from tests.cli.helpers import exit_status


def run_region(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["region", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def table_row(output: str, label: str) -> list[str]:
    """Cells of the table line starting with ``label`` (labels and cells are separated by 2+ spaces)."""
    for line in output.splitlines():
        if line.startswith(label):
            return [cell for cell in line[len(label) :].split("  ") if cell.strip()]
    raise AssertionError(f"no line {label!r} in\n{output}")


def test_table_prints_the_library_values(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_region(capsys, "--beta", "0.9", "0.99", "--gamma", "0.999,0.5", "--steps", "7", "500")
    assert status == 0
    pairs = [(0.9, 0.999), (0.99, 0.5)]
    expected = {
        "B_inf (exact sup |u|)": [stability.update_bound(b, g) for b, g in pairs],
        "B_n at n = 7": [stability.update_bound(b, g, 7) for b, g in pairs],
        "B_n at n = 500": [stability.update_bound(b, g, 500) for b, g in pairs],
        "continuous bound, exact rates": [stability.continuous_update_bound(b, g) for b, g in pairs],
        "continuous bound, paper rates": [stability.continuous_update_bound(b, g, rates="paper") for b, g in pairs],
        "growth rate ln(beta) - ln(gamma)/2": [stability.growth_rate(b, g) for b, g in pairs],
        "margin gamma - beta^2": [stability.stability_margin(b, g) for b, g in pairs],
        "margin gamma - beta/(2-beta)": [stability.stability_margin(b, g, "paper") for b, g in pairs],
    }
    for label, values in expected.items():
        cells = table_row(out, label)
        assert [float(cell.strip()) for cell in cells] == [
            pytest.approx(v, rel=1e-5) if math.isfinite(v) else v for v in values
        ]
    assert [c.strip() for c in table_row(out, "stable (gamma > beta^2)")] == ["yes", "NO"]
    efold = [c.strip() for c in table_row(out, "steps per e-fold")]
    assert efold[0].endswith("(fades)") and efold[1].endswith("(grows)")
    assert float(efold[1].split()[0]) == pytest.approx(1 / stability.growth_rate(0.99, 0.5), rel=1e-5)


def test_json_output_equals_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_region(capsys, "--beta", "0.9", "--gamma", "0.999", "0.7", "--json")
    assert status == 0
    rows = json.loads(out)
    assert [(row["beta"], row["gamma"]) for row in rows] == [(0.9, 0.999), (0.9, 0.7)]
    stable, unstable = rows
    assert stable["update_bound"] == stability.update_bound(0.9, 0.999)
    assert stable["update_bound_at"]["1000"] == stability.update_bound(0.9, 0.999, 1000)
    assert stable["continuous_bound_paper"] == stability.continuous_update_bound(0.9, 0.999, rates="paper")
    assert stable["growth_rate"] == stability.growth_rate(0.9, 0.999) and stable["stable"] is True
    assert unstable["stable"] is False and unstable["update_bound"] is None  # infinite -> null (strict JSON)
    assert unstable["steps_per_efold"] == pytest.approx(1 / stability.growth_rate(0.9, 0.7))


def test_decimal_boundary_points_read_as_boundary(capsys: pytest.CaptureFixture[str]) -> None:
    """0.81 is not 0.9**2 in binary; the table says "boundary" rather than a rounding-sized verdict."""
    status, out, _ = run_region(capsys, "--beta", "0.9", "0.5", "--gamma", "0.81", "0.25")
    assert status == 0
    assert [c.strip() for c in table_row(out, "stable (gamma > beta^2)")] == ["boundary", "boundary"]
    assert [c.strip() for c in table_row(out, "steps per e-fold")] == ["none (boundary)", "none (boundary)"]


def test_no_arguments_lists_the_presets(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_region(capsys, "--json")
    assert status == 0
    assert [(row["beta"], row["gamma"]) for row in json.loads(out)] == list(stability.PRESETS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--beta", "1", "--gamma", "0.5"], "argument --beta: must be a number in [0, 1), got '1'"),
        (["--beta", "1.5", "--gamma", "0.5"], "argument --beta: must be a number in [0, 1), got '1.5'"),
        (["--beta", "0.9", "--gamma", "-0.1"], "argument --gamma: must be a number in [0, 1), got '-0.1'"),
        (["--beta", "abc", "--gamma", "0.5"], "argument --beta: must be a number in [0, 1), got 'abc'"),
        (["--beta", "0.9", "--gamma", "nan"], "argument --gamma: must be a number in [0, 1), got 'nan'"),
        (["--beta", ",", "--gamma", "0.5"], "argument --beta: needs at least one value, got ','"),
        (["--beta", "0.9"], "argument --gamma: give both --beta and --gamma"),
        (["--beta", "0.9", "0.8", "--gamma", "0.5", "0.6", "0.7"], "same number of values"),
        (["--beta", "0.9", "--gamma", "0.5", "--steps", "0"], "argument --steps: must be an integer >= 1, got '0'"),
        (["--beta", "0.9", "--gamma", "0.5", "--steps", "2.5"], "argument --steps: must be an integer >= 1, got '2.5'"),
        (["--beta", "2", "--gamma", "0.5", "--plot", "unused.png"], "argument --beta: must be a number in [0, 1)"),
        (["--plot", "r.txt"], "argument --plot: 'r.txt' has extension '.txt'; a figure is written as one of .png"),
    ],
)
def test_bad_input_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    status = exit_status(["region", *args])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert (
        captured.err.count("\n") == 1 and captured.err.startswith("kadam region: error: ") and message in captured.err
    )


def test_bad_input_from_the_command_line_has_no_traceback() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "kadam", "region", "--beta", "0.9x", "--gamma", "0.5"], capture_output=True, text=True
    )
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr and completed.stderr.strip().count("\n") == 0


def test_plot_writes_a_png(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    path = tmp_path / "region.png"
    status, out, _ = run_region(capsys, "--plot", str(path))
    assert status == 0 and str(path) in out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
