"""A Hydra callback that behaves like careless third-party code: a SIGTERM arrives while it runs
(it sends one to its own process at the end of job ``SWALLOW_AT_JOB``) and it swallows the
interrupt. Used by ``test_faults.py`` through ``+hydra.callbacks``."""
import os
import signal
import time

from hydra.experimental.callback import Callback


class SwallowsASignal(Callback):
    def __init__(self, job: int) -> None:
        self.job = job

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if int(config.hydra.job.num) != self.job:
            return
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # not reached: the handler raises first
        except KeyboardInterrupt:
            pass  # swallowed
