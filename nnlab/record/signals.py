"""SIGINT and SIGTERM as exceptions that say which signal it was, and the exit status that tells it.

Ctrl-C, ``kill``, ``timeout``, ``docker stop`` and a scheduler's preemption must all unwind a run
or a sweep the same way: every open MLflow run closed (KILLED, with the signal as its reason), the
sweep's parent closed, worker processes gone, then exit with the shell's convention 128 + signal
number (130 for SIGINT, 143 for SIGTERM), so whatever waits on the command can tell what happened.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Every SIGINT/SIGTERM one of nnlab's handlers saw in this process, in order. An interrupt raised
# inside third-party code can be swallowed there (caught, replaced, dropped while it unwinds); a
# sweep consults this record so that a signal it received still stops it (``stop_requested``).
received: list[int] = []


def stop_requested() -> int | None:
    """The last signal this process received (see ``received``), or None."""
    return received[-1] if received else None


class Interrupted(KeyboardInterrupt):
    """The process received SIGINT or SIGTERM (``signum``); a KeyboardInterrupt, so ``except
    Exception`` (Hydra's, a library's) never swallows it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def signal_of(error: BaseException) -> int | None:
    """The signal behind an interrupt (a plain KeyboardInterrupt is Ctrl-C: SIGINT), else None."""
    if isinstance(error, Interrupted):
        return error.signum
    if isinstance(error, KeyboardInterrupt):
        return int(signal.SIGINT)
    return None


def interrupt_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The interrupt an exception was raised while handling (its ``__context__`` chain), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__context__
    return None


def exit_status(signum: int) -> int:
    """The shell's status for a command ended by ``signum``: 128 + signum."""
    return 128 + int(signum)


@contextlib.contextmanager
def _handled_by(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Inside the block ``on_signal(signum)`` handles SIGINT and SIGTERM; the previous handlers come
    back at the end. Main thread only (the callers check).

    An interrupt can land while the handlers are being swapped in or out, and the exception it raises
    would leave one of them behind, swallowing every later signal of its kind. So: the handlers are
    swapped inside ``try``, and a handler of a block that has ended puts the previous handler back
    and passes the signal on to it. A handler installed outside Python (``None``) is left alone."""
    previous: dict[int, Any] = {}
    active = True

    def handler(signum: int, frame) -> None:
        if active:
            on_signal(signum)
            return
        signal.signal(signum, previous[signum])  # left behind by an interrupted restore
        signal.raise_signal(signum)

    try:
        for signum in SIGNALS:
            old = signal.getsignal(signum)
            if old is not None:
                previous[signum] = old  # known before the handler is in place, whatever lands between
                signal.signal(signum, handler)
        yield
    finally:
        active = False
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def raising(before: Callable[[int], None] | None = None) -> Iterator[None]:
    """Inside the block SIGINT and SIGTERM raise :class:`Interrupted` in the main thread.

    ``before(signum)`` runs first, inside the handler (e.g. forward the signal to worker
    processes). Previous handlers come back at the end. Elsewhere than the main thread: a plain
    block (Python delivers signals to the main thread only).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int) -> None:
        received.append(signum)
        if before is not None:
            before(signum)
        raise Interrupted(signum)

    with _handled_by(on_signal):
        yield


def raise_on_sigterm() -> None:
    """From now on SIGTERM raises :class:`Interrupted` (as SIGINT raises KeyboardInterrupt) instead
    of ending the process on the spot, so a command stopped at any moment unwinds and exits 143.
    Main thread only (where a command-line entry point runs)."""
    def handler(signum: int, frame) -> None:
        received.append(signum)
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def held() -> Iterator[list[int]]:
    """Inside the block SIGINT and SIGTERM are only recorded (in the yielded list, once each), for a
    few bounded steps that must not be cut in half: a sweep's set-up, its closing, a write to the
    store. The previous handlers come back at the end; the caller decides what the recorded signals
    do (``deliver``). Elsewhere than the main thread: a plain block."""
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return

    def on_signal(signum: int) -> None:
        received.append(signum)
        if signum not in pending:
            pending.append(signum)

    with _handled_by(on_signal):
        yield pending


def deliver(pending: list[int]) -> None:
    """Act on signals recorded by ``held``, now, with whatever handlers are in place."""
    for signum in pending:
        signal.raise_signal(signum)


def end_at_once() -> None:
    """The command's work is done and its record closed; what is left is the interpreter's exit (exit
    handlers, the teardown of every module: tens of milliseconds with MLflow loaded). From now on SIGINT
    and SIGTERM end the process at once with 128 + signal, stdout and stderr flushed, instead of raising
    into whichever exit handler is running (a traceback after a clean summary). Main thread only."""
    def handler(signum: int, frame) -> None:
        received.append(signum)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(exit_status(signum))

    for signum in SIGNALS:
        signal.signal(signum, handler)
