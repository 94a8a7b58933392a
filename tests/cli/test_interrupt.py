"""SIGINT to ``kadam reproduce --jobs 2``: one line, exit status 130, no worker tracebacks, cache intact.

Both ways a run is interrupted: a terminal's Ctrl-C signals the whole process group (workers included):
a real smoke profile in a subprocess, signalled once its worker processes exist; a scheduler signals the
main process only (SIGINT, or SIGTERM as ``kill`` sends): the same mechanism around a small process pool
(no torch, fast).
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


def sigint_reaches(pid: int, signum: int = signal.SIGINT) -> bool:
    """Whether ``signum`` would reach process ``pid``'s Python code: neither blocked nor ignored (/proc status)."""
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line
    )
    bit = 1 << (signum - 1)
    return not (int(status["SigBlk"], 16) & bit or int(status["SigIgn"], 16) & bit)


def survivors(pids: list[int], patience: float = 10.0) -> list[int]:
    """The processes of ``pids`` still running after up to ``patience`` seconds: terminated workers (and
    the resource tracker, which exits when its pipe closes) may need a moment after the main process has
    gone, more so on a loaded machine."""

    def alive(pid: int) -> bool:
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + patience
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds worker processes through /proc (Linux)")
@pytest.mark.parametrize("signum,target", [(signal.SIGINT, "process group"), (signal.SIGTERM, "main process")])
def test_a_signal_exits_128_plus_its_number_with_one_line(tmp_path, signum, target):
    """Ctrl-C to the group, and SIGTERM to the main process alone: torch's threads exist before the signals
    are blocked and can receive a SIGTERM, which used to kill the main process there and orphan the workers."""
    out = tmp_path / "report"
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kadam",
            "reproduce",
            "--profile",
            "smoke",
            "--jobs",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(children(process.pid)) < 3 and time.monotonic() < deadline:  # 2 workers + their message manager
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        assert len(children(process.pid)) >= 3, "the workers did not start"
        assert not any(sigint_reaches(child) for child in children(process.pid))  # only the parent handles it
        time.sleep(1.0)  # let them pick up cells
        workers = children(process.pid)
        if target == "main process":
            process.send_signal(signum)
        else:
            os.killpg(process.pid, signum)
        interrupted = time.monotonic()
        stdout, stderr = process.communicate(timeout=60)  # returns once no worker holds the pipes open
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + signum, stderr
    assert not survivors(workers)
    assert time.monotonic() - interrupted < 30  # workers terminated, not waited for
    assert "Traceback" not in stderr + stdout
    assert stderr.strip().splitlines() == [
        f"kadam reproduce: interrupted; finished cells are cached in {out}/cache, rerun the same command to resume"
    ]
    for entry in (out / "cache").glob("*.json"):  # whatever was cached is complete
        assert "result" in json.loads(entry.read_text())


POOL_SCRIPT = """
import concurrent.futures, multiprocessing, sys, time
from kadam.cli.interrupts import signals_stop_workers

def nap(seconds):
    time.sleep(seconds)

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    with signals_stop_workers() as interruption:
        try:
            with context.Manager() as manager, concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
                queue = manager.Queue()
                futures = [pool.submit(nap, 60) for _ in range(4)]
                print("ready", flush=True)
                concurrent.futures.wait(futures)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(interruption.exit_status)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds worker processes through /proc (Linux)")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_main_process_only_terminates_the_workers(tmp_path, signum):
    """SIGTERM used to kill the main process alone and leave the spawned workers running their cells."""
    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT)
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        start_new_session=True,
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while len(children(process.pid)) < 4 and time.monotonic() < deadline:  # tracker, manager, 2 workers
            time.sleep(0.1)
        workers = children(process.pid)
        assert len(workers) >= 4 and not any(sigint_reaches(child, signum) for child in workers)
        process.send_signal(signum)
        interrupted = time.monotonic()
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + signum and stderr.strip() == "interrupted", stderr
    assert time.monotonic() - interrupted < 20  # the 60 s naps were cut short: workers terminated

    assert not survivors([pid for pid in workers if pid != process.pid])
