"""A multirun's lifecycle, in the launching process (a Hydra callback).

``on_multirun_start`` checks every job of the grid (a refused config creates no run), checks the
data, opens the store, then opens the sweep's parent run -- or, with ``resume=true``, rejoins the
parent of the same grid and skips every job whose config (``nnlab.fingerprint``) already has a
FINISHED run. From then on SIGINT and SIGTERM stop the sweep cleanly (workers told first, their
runs closed KILLED, the parent closed, the command exits 128 + signal). ``on_multirun_end`` -- or
``abort`` when a signal or an error ends the sweep early -- closes the parent with the sweep's
summary. A signal during the set-up or the closing is held until that step is done (a few store
writes), then acts. When a joblib worker dies, nnlab's launcher (hydra_plugins.nnlab_launcher)
reports it here (``worker_lost``): the victim job FAILED ``worker_died``, the runs cut short with
it KILLED ``requeued`` (they run again). Exit status: 0 every job finished, 1 a job failed, 2
refused before any run existed, 130/143 stopped by SIGINT/SIGTERM.

Jobs learn where they belong from the environment (in-process jobs and every launcher's workers
inherit it): ``NNLAB_SWEEP_ID``, ``NNLAB_SWEEP_SIZE``, ``NNLAB_SWEEP_KEYS``, ``NNLAB_PARENT_RUN_ID``
and ``NNLAB_STOP_FILE`` (present once the sweep is stopping: no new job starts).
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shlex
import signal
import socket
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nnlab.record import signals
from nnlab.spec import RunSpec, run_name
from nnlab.sweep.jobs import ENV as _ENV, ENV_PARENT, ENV_STOP_FILE, ENV_SWEEP_ID, ENV_SWEEP_KEYS, ENV_SWEEP_SIZE
from nnlab.sweep.view import parent_run_name
from nnlab.record.names import (FAILURE_EPOCH_TAG, FAILURE_MESSAGE_TAG, FAILURE_TAG, FINGERPRINT_TAG, HOST_TAG,
                                JOBS_FAILED_TAG, JOBS_FINISHED_TAG, JOBS_NOT_RUN_TAG, JOBS_TAG, NOTE_TAG, OVERRIDES_TAG, PID_TAG,
                                POOL_RESTARTS_TAG, ROLE_TAG, SWEEP_AXES_TAG, SWEEP_DIR_TAG, SWEEP_KEY_TAG, SWEEP_ROLE,
                                SWEEP_TAG, WORKER_EXIT_TAG, WORKER_PID_TAG)
from nnlab.record.store import (RunLogger, StoreUnavailable, Tracker, redact,
                            resolve_uri)

# after a signal, how long workers get to close their runs before they are killed and the sweep
# closes what they left RUNNING (KILLED, the signal as reason): the command is gone within 2 s
WORKER_GRACE_SECONDS = 0.5

# override lists of the jobs the sweeper must not launch (finished in an earlier attempt); read by
# hydra_plugins.nnlab_sweeper in this same process
SKIPPED: set[tuple[str, ...]] = set()
_ACTIVE: "SweepCallback | None" = None


class JobsFailed(RuntimeError):
    """Some jobs of a sweep failed (the parent run's ``nnlab.failure`` tag)."""


class SweepAborted(RuntimeError):
    """The sweep stopped before its end (an error raised through Hydra)."""


@dataclass
class Plan:
    """Every job of a grid: its overrides and its run spec (parsed and validated); the keys it varies."""

    jobs: list[list[str]]
    specs: list[RunSpec]
    axes: list[str]

    @property
    def fingerprints(self) -> list[str]:
        return [spec.fingerprint for spec in self.specs]

    @property
    def key(self) -> str:
        """The grid's identity: the same set of job configs gives the same key."""
        return hashlib.sha256(",".join(sorted(set(self.fingerprints))).encode()).hexdigest()[:16]


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [""])[0][:300]




def _refuse(message: str) -> None:
    """One line on stderr and exit 2: refused before any run exists."""
    sys.stderr.write(f"nnlab: {message} -- no run was created\n")
    sys.exit(2)


class SweepCallback(Callback):
    """One MLflow parent run per multirun (rejoined on resume); jobs become its children."""

    def __init__(self) -> None:
        self.tracker: Tracker | None = None
        self.parent: RunLogger | None = None
        self.experiment_id = ""
        self.sweep_dir: Path | None = None
        self.plan: Plan | None = None
        self.to_run: int | None = None
        self.skipped = 0
        self.done_before: set[str] = set()
        self.started = time.monotonic()
        self._exit = contextlib.ExitStack()
        self._joblib = False
        self._stop_file: Path | None = None
        self._warming = None  # the thread starting joblib workers ahead of the launcher
        self.worker_events: list[str] = []  # dead joblib workers and what was done about them

    def __getstate__(self) -> dict:
        # Hydra hands its callbacks to every job (pickled into joblib workers, Slurm jobs): they run
        # no sweep of their own, so they get a blank one -- open runs, signal handlers and stores stay here
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    # --- start ------------------------------------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exceptions into warnings and carries on (a sweep with no parent,
        # exit 0): every failure here ends the command with one line and a non-zero status.
        # A signal during the set-up waits for its end (a few store writes), then stops the sweep
        # cleanly: cut in half, the set-up would leave the parent run RUNNING or workers behind.
        global _ACTIVE
        signals.received.clear()  # what an earlier sweep in this process saw is not this one's
        # the checks create nothing: a signal during them stops the command at once (no run exists)
        checked = self._check(config)
        with signals.held() as pending:
            try:
                started = checked and self._start(config)
            except (SystemExit, KeyboardInterrupt):
                raise
            except Exception as err:
                self._failed_start(err)
            if not started:
                signals.deliver(pending)  # no sweep of nnlab's: stop as any command does
                return
            _ACTIVE = self
        self._exit.enter_context(signals.raising(before=self._stopping))
        atexit.register(self.abort, None)
        signals.deliver(pending)
        if self._warming is not None:
            self._warming.finished.wait()  # interruptible: a signal now stops the sweep, and close() ends the warm-up

    def _failed_start(self, err: BaseException) -> None:
        """One line and exit: 2 if no run exists yet, else 1 (the parent is closed first)."""
        message = f"the sweep could not start: {type(err).__name__}: {_first_line(err)}"
        if self.parent is None:
            _refuse(message)
        with contextlib.suppress(Exception):
            self.abort(err)
        sys.stderr.write(f"nnlab: {message}\n")
        sys.exit(1)

    def _check(self, config: DictConfig) -> bool:
        """The launcher's extra, every job's config and the data, before anything exists (a refusal
        exits 2 with one line); False if Hydra's sweeper is left to report a bad override."""
        from hydra.errors import HydraException

        from nnlab.sweep.workers import uses_joblib

        _check_launcher(config)  # its extra installed (nnlab.extras)
        try:
            self.plan, base = _checked_plan(config)
        except HydraException:
            return False  # e.g. activation=relu,foo: Hydra's sweeper reports it (with the options) before any job
        except Exception as err:
            self._failed_start(err)
        self._joblib = uses_joblib(config)
        self.store = base.store  # one store and experiment per sweep (spec.sweep_jobs refuses more)
        self._report = self.store.sweep_report
        try:
            _check_data(self.plan.specs if self.plan is not None else [base], load=not self._joblib)
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception as err:
            self._failed_start(err)
        return True

    def _start(self, config: DictConfig) -> bool:
        """Open the store and the parent run (the jobs and the data are checked by ``_check``)."""
        from nnlab.sweep.workers import prestart

        self._open_experiment()
        sweep_id, parent_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}", None
        if self.plan is not None:
            parent_id, sweep_id = self._plan_jobs(config, sweep_id)
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self._stop_file = self.sweep_dir / ".nnlab-stopping"
        size = str(self.to_run) if self.to_run is not None else "?"
        axes = self.plan.axes if self.plan is not None else []
        # set before any worker starts: workers inherit the environment they were spawned with
        os.environ.update({ENV_SWEEP_ID: sweep_id, ENV_SWEEP_KEYS: ",".join(axes), ENV_SWEEP_SIZE: size,
                           ENV_STOP_FILE: str(self._stop_file)})
        self._warming = prestart(config)  # joblib workers start and import while the parent run opens
        tags = {SWEEP_TAG: sweep_id, ROLE_TAG: SWEEP_ROLE, OVERRIDES_TAG: " ".join(config.hydra.overrides.task),
                SWEEP_AXES_TAG: " ".join(axes), SWEEP_DIR_TAG: str(self.sweep_dir),
                JOBS_TAG: str(len(self.plan.jobs)) if self.plan is not None else "?"}
        if self.plan is not None:
            tags[SWEEP_KEY_TAG] = self.plan.key
        if parent_id is not None:
            self.parent = self.tracker.reopen(parent_id)
            self.parent.set_tags({k: v for k, v in tags.items() if k != SWEEP_TAG})
        else:
            name = parent_run_name(self.store.experiment, axes, time.time(), sweep_id)
            self.parent = self.tracker.start_run(self.experiment_id, name, tags)
        with contextlib.suppress(Exception):  # the UI's view of the sweep; never a reason to stop it
            self.parent.log_params(sweep_params(self.plan, axes))
            self.parent.set_tags(parent_description(self.experiment_id, self.parent.run_id, self._report))
        self.parent.flush()
        os.environ[ENV_PARENT] = self.parent.run_id  # in-process jobs; prestarted workers look it up
        return True

    def _open_experiment(self) -> None:
        """Create the store and the experiment here, before any worker exists (or exit with one line)."""
        try:
            self.tracker = Tracker.from_settings(self.store)
            self.experiment_id = self.tracker.experiment_id(self.store.experiment)
        except StoreUnavailable as err:
            _refuse(str(err))
        except Exception as err:
            _refuse(f"cannot use the MLflow store {redact(resolve_uri(self.store.uri))}: "
                    f"{type(err).__name__}: {_first_line(err)}")

    def _plan_jobs(self, config: DictConfig, sweep_id: str) -> tuple[str | None, str]:
        """Which jobs run: all, or with ``resume=true`` those without a FINISHED run. Returns the
        parent to rejoin (or None) and the sweep id the jobs carry."""
        plan = self.plan
        SKIPPED.clear()
        self.to_run = len(plan.jobs)
        if self.tracker.offline:  # nothing to compare with: the store is out of reach by design
            if config.get("resume"):
                print("nnlab: resume=true needs the store; with tracking.offline=true every job runs "
                      "(sync earlier spools first to let a later resume skip them)", file=sys.stderr, flush=True)
            return None, sweep_id
        done = finished_fingerprints(self.tracker, self.experiment_id)
        finished = [i for i, fp in enumerate(plan.fingerprints) if fp in done]
        parent_id = None
        if config.get("resume"):
            previous = self.tracker.search(self.experiment_id, f"tags.`{SWEEP_KEY_TAG}` = '{plan.key}'", max_results=1)
            if previous:
                parent_id = previous[0].info.run_id
                sweep_id = previous[0].data.tags.get(SWEEP_TAG, sweep_id)
            stale = mark_stale(self.tracker, self.experiment_id, keep={parent_id})
            SKIPPED.update(tuple(plan.jobs[i]) for i in finished)
            self.done_before = {plan.fingerprints[i] for i in finished}
            self.skipped = len(finished)
            joined = f", rejoining parent run {parent_id}" if parent_id else ""
            cleaned = f"; {stale} stale RUNNING run(s) marked KILLED" if stale else ""
            print(f"nnlab: resume: {len(finished)} skipped (FINISHED before), {len(plan.jobs) - len(finished)} "
                  f"to run{joined}{cleaned}", file=sys.stderr, flush=True)
        elif finished and len(finished) < len(plan.jobs):  # all FINISHED before: resume=true would run nothing
            rest = len(plan.jobs) - len(finished)
            hint = f"to run only the other {rest}, add resume=true"
            print(f"nnlab: {len(finished)} of {len(plan.jobs)} jobs of this sweep already have a FINISHED run in "
                  f"experiment {config.tracking.experiment!r}; running all {len(plan.jobs)} again ({hint})",
                  file=sys.stderr, flush=True)
        self.to_run = len(plan.jobs) - len(SKIPPED)
        return parent_id, sweep_id

    # --- signals ----------------------------------------------------------------------------
    def _stopping(self, signum: int) -> None:
        """First thing on SIGINT/SIGTERM: no new job starts; parallel workers are told and given
        ``WORKER_GRACE_SECONDS`` to close their runs before the launcher kills them."""
        if self._stop_file is not None:
            with contextlib.suppress(OSError):
                self._stop_file.parent.mkdir(parents=True, exist_ok=True)
                self._stop_file.touch()
        if self._joblib:
            from nnlab.sweep.workers import signal_workers

            signal_workers(signum, grace=WORKER_GRACE_SECONDS, settled=self._no_child_running)

    # --- a dead joblib worker (hydra_plugins.nnlab_launcher) -----------------------------------
    def worker_lost(self, victims: dict[int, tuple[list[str], int, str]], others: dict[int, list[str]],
                    dead: dict[int, str]) -> list[int]:
        """Record a broken worker pool: each victim job (number -> (overrides, worker pid, exit
        reason)) FAILED ``worker_died``; every other RUNNING child (its worker killed by the pool)
        KILLED ``requeued``. Returns the jobs among ``others`` that already have a FINISHED run."""
        plan = self.plan
        index = {tuple(job): i for i, job in enumerate(plan.jobs)} if plan is not None else {}
        fp_of = lambda overrides: plan.fingerprints[index[tuple(overrides)]] if tuple(overrides) in index else None
        children = self._children()
        finished = {r.data.tags.get(FINGERPRINT_TAG) for r in children if r.info.status == "FINISHED"}
        running = [r for r in children if r.info.status == "RUNNING"]
        blamed = set()
        for idx, (overrides, pid, why) in victims.items():
            fp = fp_of(overrides)
            if fp is not None and fp in finished:
                continue  # it had finished; its worker died before saying so
            mine = [r.info.run_id for r in running if r.data.tags.get(PID_TAG) == str(pid)
                    and (fp is None or r.data.tags.get(FINGERPRINT_TAG) == fp)]
            run_id = mine[0] if mine else self._unstarted_run(overrides, fp)
            blamed.add(run_id)
            self.tracker.mark_ended(run_id, "FAILED", "worker_died", {
                WORKER_EXIT_TAG: why, WORKER_PID_TAG: pid, FAILURE_MESSAGE_TAG: f"its joblib worker (pid {pid}) died: {why}"})
        requeued = [r for r in running if r.info.run_id not in blamed]
        for run in requeued:
            self.tracker.mark_ended(run.info.run_id, "KILLED", "requeued", {
                FAILURE_MESSAGE_TAG: "its worker was killed when another worker died; the job was run again"})
        done = [i for i, overrides in others.items() if fp_of(overrides) in finished]
        workers = ", ".join(f"pid {pid} ({why})" for pid, why in sorted(dead.items())) or "unknown"
        event = (f"joblib worker(s) died: {workers}; {len(blamed)} job(s) FAILED worker_died, "
                 f"{len(others) - len(done)} unfinished job(s) relaunched in a new pool "
                 f"({len(requeued)} interrupted run(s) closed KILLED requeued)")
        self.worker_events.append(event)
        print(f"nnlab: {event}", file=sys.stderr, flush=True)
        return done

    def _unstarted_run(self, overrides: list[str], fp: str | None) -> str:
        """A run for a job whose worker died before the job created one (so the failure is on record)."""
        spec = self.plan.specs[[tuple(j) for j in self.plan.jobs].index(tuple(overrides))] if fp else None
        name = run_name(spec.tree, overrides, self.plan.axes) if spec is not None else " ".join(overrides)
        tags = {OVERRIDES_TAG: " ".join(overrides), SWEEP_TAG: os.environ.get(ENV_SWEEP_ID, "")}
        if fp is not None:
            tags[FINGERPRINT_TAG] = fp
        return self.tracker.start_run(self.experiment_id, name, tags, self.parent.run_id).run_id

    def _no_child_running(self) -> bool:
        try:
            return not any(r.info.status == "RUNNING" for r in self._children())
        except Exception:  # the store is gone: nothing to wait for
            return True

    # --- end --------------------------------------------------------------------------------
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            failed = self.close()
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception as err:  # e.g. the store went away: Hydra would print a warning and exit 0
            sys.stderr.write(f"nnlab: the sweep could not be closed: {type(err).__name__}: {_first_line(err)}\n")
            sys.exit(1)
        if failed:
            sys.exit(1)

    def abort(self, error: BaseException | None) -> int:
        """The sweep ends early (a signal, or an error raised through Hydra): close it."""
        return self.close(aborted=error if error is not None else SweepAborted("the sweep stopped before all jobs ran"))

    def close(self, aborted: BaseException | None = None) -> int:
        """Close the parent once; print the sweep's summary and the UI hint. Returns #jobs not finished.

        Signals wait until the parent is closed; one that came during a normal end is then acted
        on (the command exits 128 + signal), one that came while the sweep was already being
        stopped is not (it asked for what is being done)."""
        if self.parent is None or self.parent.status != "RUNNING":
            return 0
        missed = signals.stop_requested() if aborted is None else None
        if missed is not None:  # a signal came and was swallowed on its way (e.g. in a library): act on it now
            aborted = signals.Interrupted(missed)
        with self._exit:  # signal handlers back to what they were once closed, whatever happens below
            with signals.held() as pending:
                unfinished = self._close(aborted)
        if aborted is None:
            signals.deliver(pending)
        if missed is not None:
            raise aborted  # the command exits 128 + signal, the sweep closed as stopped by it
        return unfinished

    def _close(self, aborted: BaseException | None) -> int:
        global _ACTIVE
        if self._joblib:
            from nnlab.sweep.workers import stop

            stop(self._warming)  # every job has returned (or the sweep is aborting): release the workers
        for key in _ENV:
            os.environ.pop(key, None)
        reason = signals.signal_of(aborted) if aborted is not None else None
        children = self._children()
        for run in children if not self.tracker.offline else ():
            if run.info.status == "RUNNING":  # its worker was killed before it could close it
                why = signals.Interrupted(reason).name if reason else "interrupted"
                self.tracker.mark_ended(run.info.run_id, "KILLED" if reason else "FAILED", why)
                run.info._status = "KILLED" if reason else "FAILED"
                run.data.tags[FAILURE_TAG] = why  # the summary counts it as the store now has it
        summary = summarize(children, self.plan.fingerprints if self.plan else None, aborted is not None,
                            self.done_before)
        self.parent.set_tags({JOBS_FINISHED_TAG: summary.finished, JOBS_FAILED_TAG: summary.failed,
                              JOBS_NOT_RUN_TAG: summary.not_run if aborted else 0,
                              POOL_RESTARTS_TAG: len(self.worker_events)})
        self._log_summary(summary)
        if self.sweep_dir is not None:
            self.parent.log_artifact(self.sweep_dir / "multirun.yaml")
            if self._report and aborted is None and summary.finished_runs and not self.tracker.offline:
                self._attach_report()
        error = aborted if aborted is not None else (
            JobsFailed(f"{summary.failed} of {summary.total} jobs failed") if summary.failed else None)
        self.parent.close(error)
        print(summary.text(self.parent.run_id, aborted, self.skipped, time.monotonic() - self.started),
              file=sys.stderr)
        for event in self.worker_events:
            print(f"  {event}", file=sys.stderr)
        if aborted is not None and self.plan is not None and summary.total > summary.finished:  # resume runs some
            print(f"  resume with:  {resume_command()}", file=sys.stderr)
        print(self.tracker.where(self.experiment_id), file=sys.stderr, flush=True)
        if self._stop_file is not None:
            with contextlib.suppress(OSError):
                self._stop_file.unlink()
        _ACTIVE = None
        return summary.failed + (summary.not_run if aborted else 0)

    def _log_summary(self, summary: "Summary") -> None:
        """The sweep's outcome on its parent run, comparable across sweeps in the UI (sweep/* metrics,
        the best run's name and id as tags)."""
        from nnlab.sweep.view import JOBS_FAILED, JOBS_FINISHED, SWEEP_SECONDS, parent_summary

        metrics, tags = parent_summary(summary.finished_runs)
        metrics.update({JOBS_FINISHED: float(summary.finished), JOBS_FAILED: float(summary.failed),
                        SWEEP_SECONDS: round(time.monotonic() - self.started, 3)})
        self.parent.set_tags(tags)
        self.parent.log_metrics(metrics, step=0)

    def _attach_report(self) -> None:
        """Draw this sweep's report (``nnlab.analysis.report``) and attach it to the parent run under ``report/``;
        a report that cannot be drawn is one line, never a reason for the sweep to fail
        (``tracking.sweep_report=false`` skips it)."""
        try:
            from nnlab.analysis.records import DuplicateRunsWarning
            from nnlab.analysis.report import write_sweep_report

            out = self.sweep_dir / "report"
            # a few seconds on a small sweep: say so (one line), and how to skip it
            print("nnlab: drawing the sweep's report (tracking.sweep_report=false skips it) ...", file=sys.stderr,
                  flush=True)
            with signals.raising(), warnings.catch_warnings():  # drawing writes nothing: a signal skips it
                # runs of earlier sweeps repeating this one's configurations: noise in this sweep's report
                warnings.simplefilter("ignore", DuplicateRunsWarning)
                write_sweep_report(self.tracker.client, self.experiment_id, self.parent.run_id, out)
            self.parent.log_artifact(out, "report")
        except KeyboardInterrupt as err:  # the sweep's own closing holds signals: hand this one back to it
            print(f"nnlab: no report attached to the sweep: stopped by "
                  f"{signals.Interrupted(signals.signal_of(err)).name}", file=sys.stderr, flush=True)
            signal.raise_signal(signals.signal_of(err))
        except Exception as err:
            print(f"nnlab: no report attached to the sweep: {_first_line(err)}", file=sys.stderr)

    def _children(self) -> list:
        return self.tracker.children(self.experiment_id, self.parent.run_id)


def sweep_params(plan: "Plan | None", axes: list[str]) -> dict[str, str]:
    """The parent run's params: ``sweep.axes`` and every resolved config value (and group choice)
    that all the jobs share -- the sweep's fixed configuration, under the record's names."""
    params = {"sweep.axes": " ".join(axes) or "(none)"}
    if plan is None or not plan.specs:
        return params
    flat = [spec.params for spec in plan.specs]
    first = flat[0]
    params.update({k: v for k, v in first.items() if k not in axes and all(f.get(k) == v for f in flat[1:])})
    return params


def parent_description(experiment_id: str, run_id: str, report: bool) -> dict[str, str]:
    """The parent's description in the UI (``mlflow.note.content``, Markdown): a link to its report."""
    from nnlab.record.ui import report_description

    return {NOTE_TAG: report_description(experiment_id, run_id)} if report else {}


def abort_active(error: BaseException | None) -> bool:
    """Close the sweep this process is running, if any (``nnlab.run``'s CLI, on an interrupt)."""
    if _ACTIVE is None:
        return False
    _ACTIVE.abort(error)
    return True


def worker_lost(victims: dict[int, tuple[list[str], int, str]], others: dict[int, list[str]],
                dead: dict[int, str]) -> list[int]:
    """A parallel launcher lost worker processes: record it in the active sweep (see
    ``SweepCallback.worker_lost``); returns the jobs among ``others`` not to run again."""
    if _ACTIVE is None or _ACTIVE.parent is None:
        print(f"nnlab: joblib worker(s) died: {dead}; relaunching the unfinished jobs", file=sys.stderr, flush=True)
        return []
    return _ACTIVE.worker_lost(victims, others, dead)


def resume_command() -> str:
    """The command line that started this process, with ``resume=true``."""
    args = [a for a in sys.argv[1:] if not a.startswith("resume=")]
    return shlex.join(["python", "-m", "nnlab.run", *args, "resume=true"])


# --- the record of earlier attempts ----------------------------------------------------------------
def finished_fingerprints(tracker: Tracker, experiment_id: str) -> set[str]:
    """Fingerprints of every FINISHED run of the experiment."""
    runs = tracker.search(experiment_id, "attributes.status = 'FINISHED'")
    return {r.data.tags[FINGERPRINT_TAG] for r in runs if FINGERPRINT_TAG in r.data.tags}


def process_alive(pid: int) -> bool:
    """Whether a Python process with this id runs on this machine (a recycled pid of another
    program does not count, where /proc tells)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:
        return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # no /proc (macOS): the pid exists, that is all one can say
        return True


def stale_runs(tracker: Tracker, experiment_id: str, all_hosts: bool = False,
               older_than_s: float | None = None) -> list:
    """RUNNING runs whose process is gone: on this host, the recorded pid no longer exists; on
    another host (``all_hosts``) or without a recorded pid, only runs started over ``older_than_s``
    seconds ago count (nothing else can be known from here)."""
    host, now = socket.gethostname(), time.time()
    stale = []
    for run in tracker.search(experiment_id, "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        old = older_than_s is not None and (now - run.info.start_time / 1000) > older_than_s
        if tags.get(HOST_TAG) == host and tags.get(PID_TAG, "").isdigit():
            if not process_alive(int(tags[PID_TAG])):
                stale.append(run)
        elif old and (all_hosts or HOST_TAG not in tags):
            stale.append(run)
    return stale


def mark_stale(tracker: Tracker, experiment_id: str, keep: set = frozenset(), **kwargs: Any) -> int:
    """Mark every stale RUNNING run (see ``stale_runs``) KILLED, ``nnlab.failure=stale``; returns how many."""
    runs = [r for r in stale_runs(tracker, experiment_id, **kwargs) if r.info.run_id not in keep]
    for run in runs:
        tracker.mark_ended(run.info.run_id, "KILLED", "stale")
    return len(runs)


@dataclass
class Summary:
    """A sweep's jobs by outcome: de-duplicated by fingerprint over every attempt."""

    finished_runs: list
    failed_runs: list  # a None: a job that failed before its run was created
    total: int
    not_run: int
    finished_before: int = 0  # skipped on resume: FINISHED runs outside this parent

    @property
    def finished(self) -> int:
        return len(self.finished_runs) + self.finished_before

    @property
    def failed(self) -> int:
        return len(self.failed_runs)

    def text(self, parent_id: str, aborted: BaseException | None, skipped: int, seconds: float) -> str:
        """A few lines: counts, the best finished run, each failed run with its reason."""
        signum = signals.signal_of(aborted) if aborted is not None else None
        state = f"stopped by {signals.Interrupted(signum).name}" if signum else ("aborted" if aborted else "done")
        stopped = sum(r is not None and r.info.status == "KILLED" and r.data.tags.get(FAILURE_TAG) in ("SIGINT", "SIGTERM")
                      for r in self.failed_runs)  # cut short by the signal: not a failure of theirs
        counts = [f"{self.finished} finished" + (f" ({skipped} skipped: FINISHED before)" if skipped else ""),
                  f"{self.failed - stopped} failed"] + ([f"{stopped} stopped"] if stopped else [])
        if aborted is not None:
            counts.append(f"{self.not_run} not run")
        lines = [f"sweep {state}: {', '.join(counts)} -- of {self.total} jobs, in {seconds:.0f}s "
                 f"(parent run {parent_id})"]
        scored = [r for r in self.finished_runs if "test_acc" in r.data.metrics]
        if scored:
            best = max(scored, key=lambda r: r.data.metrics["test_acc"])
            lines.append(f"  best: {best.info.run_name}  test_acc={best.data.metrics['test_acc']:.4f}")
        for run in self.failed_runs:
            if run is None:
                continue
            tags = run.data.tags
            why = tags.get(FAILURE_TAG, "interrupted")
            if why == "diverged":
                why += f" at epoch {tags.get(FAILURE_EPOCH_TAG, '?')}"
            elif why == "worker_died":
                why += f" (worker pid {tags.get(WORKER_PID_TAG, '?')}: {tags.get(WORKER_EXIT_TAG, '?')})"
            lines.append(f"  {run.info.status} {run.info.run_name}: {why}")
        unknown = sum(r is None for r in self.failed_runs)
        if unknown:
            lines.append(f"  {unknown} job(s) failed before their run was created: see the log above")
        return "\n".join(lines)


def summarize(children: list, fingerprints: list[str] | None, aborted: bool = False,
              done_before: set[str] = frozenset()) -> Summary:
    """Outcome per job: finished if any attempt FINISHED (among ``children``, newest first, or
    ``done_before``); else its latest attempt failed; else not run (an aborted sweep) or failed
    before its run existed."""
    by_fp: dict[str, list] = {}
    for run in children:  # newest first
        by_fp.setdefault(run.data.tags.get(FINGERPRINT_TAG, run.info.run_id), []).append(run)
    if fingerprints is None:  # sweepers nnlab cannot plan: one job per run
        fingerprints = list(by_fp)
    finished, failed, not_run, before = [], [], 0, 0
    for fp in dict.fromkeys(fingerprints):
        attempts = by_fp.get(fp, [])
        done = [r for r in attempts if r.info.status == "FINISHED"]
        if done:
            finished.append(done[0])
        elif fp in done_before:
            before += 1
        elif attempts:
            failed.append(attempts[0])
        elif aborted:
            not_run += 1
        else:
            failed.append(None)
    return Summary(finished, failed, len(dict.fromkeys(fingerprints)), not_run, before)


# --- checks before any run exists ----------------------------------------------------------------
def _check_launcher(config: DictConfig) -> None:
    """The launcher's optional extra is installed (else one line naming its install command, exit 2)."""
    from nnlab.extras import MissingExtra, check_launcher

    if config is None:
        return
    try:
        check_launcher(str(OmegaConf.select(config, "hydra.launcher._target_", default="")))
    except MissingExtra as err:
        _refuse(str(err))


def _checked_plan(config: DictConfig) -> tuple[Plan | None, RunSpec]:
    """Every job of the grid as a run spec (exits 2 with one line on a refused config), and the spec
    the sweep's store and experiment come from; no plan for sweepers other than the grid (each of
    their jobs is checked when it starts, the keys no sweep changes here)."""
    from nnlab.spec import ConfigError, check_added_keys, sweep_jobs, varying_keys

    try:
        check_added_keys(config.hydra.overrides.task)
        plan = sweep_jobs(config)
        if plan is None:
            return None, RunSpec.from_cfg(config)
        jobs, specs = plan
    except ConfigError as err:
        _refuse(str(err))
    return Plan(jobs, specs, varying_keys(jobs)), specs[0]


def _check_data(specs: list[RunSpec], load: bool) -> None:
    """Every dataset the sweep uses is there, before any run exists (else one line and exit 2).

    ``load``: in-process jobs share this process's dataset cache, so load (and split) each dataset
    here, once; parallel workers load their own, so only check the files (no scikit-learn import).
    """
    from nnlab.data import check_dataset, load_shared

    seen: set[tuple] = set()
    for spec in specs:
        kwargs = dict(spec.data)
        key = tuple(sorted((k, str(v)) for k, v in kwargs.items()))
        if key in seen:
            continue
        seen.add(key)
        try:
            (load_shared if load else check_dataset)(**kwargs)
        except Exception as err:  # a missing file, a truncated .npz, a file that is not what it claims
            _refuse(f"dataset={kwargs['name']} cannot be loaded: {(str(err).splitlines() or [type(err).__name__])[0]}")
