"""Imported first by the joblib workers' forkserver (``nnlab.sweep.workers.PRELOAD``), nowhere else.

Ctrl-C in a terminal sends SIGINT to every process of the command, the forkserver and the idle
workers included. Python's forkserver ignores SIGINT only once it has imported its preload list
(seconds, on a busy machine): an interrupt before that printed a 20-30 line ``KeyboardInterrupt``
traceback from ``multiprocessing/forkserver.py``, and workers forked later inherited Python's
default handler, so one between two jobs printed loky's. Ignored from here on, in the server and
(inherited through ``fork``) in every worker outside a job; inside a job ``nnlab.run.main`` handles
SIGINT and SIGTERM itself (``nnlab.record.signals.raising``), closing the run KILLED. The sweep's
launching process, which receives the same SIGINT, stops the workers.

The server is spawned with SIGINT ignored already (``nnlab.sweep.workers.start_forkserver``), which
covers its interpreter's start-up; this keeps it so if it was started some other way.
"""
import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
