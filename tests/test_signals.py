"""nnlab.record.signals: the handlers that hold or raise SIGINT/SIGTERM around writes and a sweep's steps
must never swallow a signal, whenever it lands, including while they are being swapped in or out."""
import os
import random
import select
import signal
import subprocess
import sys
import time

import pytest

from nnlab.record import signals
from nnlab.record.store import uninterrupted


@pytest.fixture
def default_handlers():
    """Python's own handlers to start from (conftest puts the previous ones back afterwards)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize("block", [signals.held, signals.raising, uninterrupted])
def test_a_handler_left_behind_by_an_interrupted_restore_passes_the_signal_on(default_handlers, block):
    """An interrupt landing between two of the restoring ``signal.signal`` calls leaves the block's
    handler in place for the other signal; that handler must hand the signal to the one before it."""
    with block():
        stale = signal.getsignal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    signal.signal(signal.SIGINT, stale)  # as if the restore had been cut short
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # not reached: the signal raises at once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # and it put it back


CHILD = """
import signal, sys
from nnlab.record import signals
from nnlab.record.store import uninterrupted
signals.raise_on_sigterm()
BOTH = {signal.SIGINT, signal.SIGTERM}
print("ready", flush=True)
while True:
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, BOTH)  # the next signal is sent after the report
        while True:
            with uninterrupted():
                with signals.held() as pending:
                    pass
                signals.deliver(pending)
    except KeyboardInterrupt as stop:
        signal.pthread_sigmask(signal.SIG_BLOCK, BOTH)  # the report is not cut by the next signal
        print(signals.signal_of(stop), flush=True)
"""


@pytest.mark.slow
def test_signals_at_random_moments_around_held_blocks_are_never_swallowed():
    """A real process entering and leaving held blocks in a tight loop, so that signals land while
    handlers are swapped; SIGINT and SIGTERM at random moments: each must surface as an interrupt."""
    rng = random.Random(int(os.environ.get("NNLAB_FAULT_SEED", "0")) or None)
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        for n in range(300):
            signum = (signal.SIGINT, signal.SIGTERM)[n % 2]
            time.sleep(rng.uniform(0, 0.01))
            child.send_signal(signum)
            ready, _, _ = select.select([child.stdout], [], [], 10)
            assert ready, f"signal {n} ({signum.name}) was swallowed"
            assert child.stdout.readline().strip() == str(int(signum)), n
    finally:
        child.kill()
        child.wait()


# A command that has done its work and is exiting: a slow exit handler (as MLflow's or logging's can be under
# load), then the interpreter's teardown, made slow by a module-level object whose finaliser waits
ENDING = """
import atexit, gc, os, sys, time
from nnlab import _cli
from nnlab.record import signals
atexit.register(gc.unfreeze)  # runs after nnlab's last handler: a frozen heap is not torn down, this one must be
_cli.exit_without_final_collection()  # as every entry point does first
signals.raise_on_sigterm()

class Teardown:
    def __del__(self, write=os.write, sleep=time.sleep):  # the module's globals may be gone by now
        write(1, b"teardown\\n")
        sleep(1.0)

keep = Teardown()  # finalised when this module is torn down, after every exit handler
atexit.register(lambda: (print("exit handler", flush=True), time.sleep(1.0)))
print("done", flush=True)
signals.end_at_once()  # as nnlab.run's cli once its record is closed
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("phase", ["exit handler", "teardown"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_a_finished_command_exits(phase, sig):
    """In an exit handler: the process ends at once with 128 + signal, no traceback. In the interpreter's
    teardown (where Python has put the default actions back): ignored, the command's own status, not -signal."""
    child = subprocess.Popen([sys.executable, "-c", ENDING, "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        lines = []
        while phase not in lines:
            lines.append(child.stdout.readline().strip())
            assert lines[-1] or child.poll() is None, lines
        sent = time.monotonic()
        child.send_signal(sig)
        _, stderr = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert "Traceback" not in stderr, stderr
    if phase == "exit handler":
        assert child.returncode == 128 + sig
        assert time.monotonic() - sent < 0.5  # not after the handler's second
    else:
        assert child.returncode == 3
