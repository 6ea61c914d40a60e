"""Imported first by the joblib workers' forkserver (``nnlab.sweep.workers.PRELOAD``), nowhere else.

Ctrl-C in a terminal sends SIGINT to every process of the command, the forkserver and the idle
workers included. Python's forkserver ignores SIGINT only once it has imported its preload list
(seconds, on a busy machine): an interrupt before that printed a 20-30 line ``KeyboardInterrupt``
traceback from ``multiprocessing/forkserver.py``, and workers forked later inherited Python's
default handler, so one between two jobs printed loky's. Ignored from here on, in the server and
(inherited through ``fork``) in every worker outside a job; inside a job ``nnlab.run.main`` handles
SIGINT and SIGTERM itself (``nnlab.record.signals.raising``), closing the run KILLED. The sweep's
launching process, which receives the same SIGINT, stops the workers.

The server starts with SIGINT blocked (``nnlab.sweep.workers.start_forkserver``), so that one
during its interpreter's start-up (site, the first imports: seconds on a busy machine) is held
back; here it is ignored, then unblocked, which discards one that came meanwhile.
"""
import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
