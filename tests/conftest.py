"""Shared by every test module."""
import signal

import pytest

from nnlab.record import signals


@pytest.fixture(autouse=True)
def _signal_state_is_per_test():
    """A test that runs a command in-process (``cli()`` installs a SIGTERM handler for good) or sends
    itself signals must not change how the next test's process handles them."""
    handlers = {s: signal.getsignal(s) for s in signals.SIGNALS}
    yield
    for s, h in handlers.items():
        if h is not None:
            signal.signal(s, h)
    signals.received.clear()
