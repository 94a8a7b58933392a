"""SIGINT to ``kadam reproduce --jobs 2``: one line, exit status 130, no worker tracebacks, cache intact.

Both ways a run is interrupted: a scheduler signals the main process only; a terminal's Ctrl-C signals
the whole process group (workers included). The run is a real smoke profile in a subprocess; the signal
is sent once its worker processes exist.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds worker processes through /proc (Linux)")
@pytest.mark.parametrize("target", ["main process", "process group"])
def test_sigint_exits_130_with_one_line(tmp_path, target):
    out = tmp_path / "report"
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "kadam", "reproduce", "--profile", "smoke", "--jobs", "2", "--out", str(out),
         "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(children(process.pid)) < 3 and time.monotonic() < deadline:  # 2 workers + their message manager
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        assert len(children(process.pid)) >= 3, "the workers did not start"
        time.sleep(1.0)  # let them pick up cells
        if target == "main process":
            process.send_signal(signal.SIGINT)
        else:
            os.killpg(process.pid, signal.SIGINT)
        interrupted = time.monotonic()
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert time.monotonic() - interrupted < 30  # workers terminated, not waited for
    assert "Traceback" not in stderr + stdout
    assert stderr.strip().splitlines() == [
        f"kadam reproduce: interrupted; finished cells are cached in {out}/cache, rerun the same command to resume"
    ]
    for entry in (out / "cache").glob("*.json"):  # whatever was cached is complete
        assert "result" in json.loads(entry.read_text())
