"""How ``kadam reproduce`` and ``kadam compare`` end when interrupted: SIGINT or SIGTERM.

SIGINT, whether from a terminal's Ctrl-C (sent to the whole process group) or from a scheduler (sent to
this process only), and SIGTERM (what ``kill``, a batch system or a container runtime sends) end the run
the same way: the workers are terminated, one line is printed, the exit status is 128 + the signal's number
(130, 143), and the cells already finished stay in the cache. While the run lasts both signals are blocked
in every thread of this process, so the worker processes it starts inherit a mask that blocks them (they
never see them and print nothing). A listener thread takes them (:func:`signals_stop_workers`), interrupts the main
thread (``KeyboardInterrupt``) and kills the workers (cells in flight are lost, as the cache format
allows). The handlers and the mask are put back afterwards.
"""

from __future__ import annotations

import _thread
import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that end a run."""
LISTEN_SECONDS = 0.1
"""How long the listener waits for a pending signal before it looks at the wakeup pipe again."""


@dataclass
class Interruption:
    """Which signal ended the run (None while it has not been interrupted)."""

    signal: int | None = None

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, the shell's convention (130 for SIGINT)."""
        return 128 + (self.signal if self.signal is not None else signal.SIGINT)


def terminate_workers() -> None:
    """End this process's multiprocessing children (the cell workers and their message manager) with
    SIGKILL: they inherit a mask that blocks SIGTERM, so ``terminate()`` would not reach them."""
    children = multiprocessing.active_children()
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout=5)


@contextlib.contextmanager
def signals_stop_workers() -> Iterator[Interruption]:
    """SIGINT and SIGTERM reach this process only, terminate the workers and raise ``KeyboardInterrupt`` in
    the main thread (module docstring); the yielded :class:`Interruption` says which signal it was. Outside
    the main thread, or without ``pthread_sigmask`` (Windows), it changes nothing.

    The signals are blocked from here on, so every thread and process started inside inherits the block,
    but threads started earlier (a library's thread pool created at import) may not block them, and the
    kernel hands a process-directed signal to such a thread. Both routes end at the listener thread: a
    signal every thread blocks stays pending until the listener's ``sigtimedwait`` takes it; one that lands
    on an earlier thread runs Python's C-level handler there, which writes its number to the wakeup pipe
    the listener reads. (Without a Python handler SIGTERM would kill the process there and orphan the
    workers; the Python handler itself only runs when the main thread next executes bytecode.)
    """
    interruption = Interruption()
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield interruption
        return
    from multiprocessing import resource_tracker

    # Starting multiprocessing's resource tracker unblocks the signals in the calling thread afterwards
    # (the standard library blocks them only while the tracker is launched): start it first, so that the
    # mask below still holds when the runner spawns its workers.
    resource_tracker.ensure_running()
    closing = threading.Event()
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_read, False)
    os.set_blocking(wakeup_write, False)

    def received() -> int | None:
        pending = signal.sigtimedwait(set(SIGNALS), LISTEN_SECONDS)
        if pending is not None:
            return pending.si_signo
        try:
            data = os.read(wakeup_read, 64)
        except BlockingIOError:
            return None
        return next((number for number in data if number in SIGNALS), None)

    def listen() -> None:  # every signal that ends the run comes here, by either route
        while not closing.is_set():
            number = received()
            if number is None or closing.is_set():
                continue
            if interruption.signal is None:
                interruption.signal = number
            _thread.interrupt_main(signal.SIGINT)  # the main thread raises at its next instruction
            terminate_workers()  # ... and wakes up if it was waiting for them

    raised = threading.Event()

    def interrupted(signum: int, frame: FrameType | None) -> None:
        # Once only: a second signal while cleaning up changes nothing. (Setting the handlers to SIG_IGN here
        # instead would make CPython raise "Signal 15 ignored due to race condition" for a signal already
        # tripped on another thread.)
        if raised.is_set():
            return
        raised.set()
        if interruption.signal is None:
            interruption.signal = signum
        raise KeyboardInterrupt

    previous_handlers = {number: signal.signal(number, interrupted) for number in SIGNALS}
    previous_wakeup = signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(SIGNALS))
    listener = threading.Thread(target=listen, name="kadam-signal-listener", daemon=True)
    listener.start()  # inherits the mask, as do the threads and processes the runner starts
    try:
        yield interruption
    finally:
        closing.set()
        listener.join()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        signal.set_wakeup_fd(previous_wakeup)
        for number, handler in previous_handlers.items():
            signal.signal(number, handler)
        os.close(wakeup_read)
        os.close(wakeup_write)
