"""The command: Hydra composes -> ``RunSpec`` (parsed once) -> ``nnlab.job`` (data, core, record) -> one line.

    python -m nnlab.run                                   # one run, default config
    python -m nnlab.run -m activation=relu,tanh init=he,xavier model.depth=1,2,4
    python -m nnlab.run -m ... hydra/launcher=joblib hydra.launcher.n_jobs=2

``train(cfg)`` is a plain function (tests call it without the CLI); ``main`` is the thin Hydra
wrapper that turns failures into one line and an exit status, chosen by the stage the job reached. Exit status: 0 all good; 1 a run
failed (diverged or raised, or could not be recorded and went to the spool) — in a sweep, after every
job ran; 2 a refused config or an unusable store (no run created).
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nnlab import spec as C
from nnlab._cli import exit_without_final_collection, freeze_startup_heap
from nnlab.extras import hint_for_hydra_error, refuse_missing_launcher
from nnlab.spec import hydra_refusal
from nnlab.record import signals
from nnlab.record.store import RunSpooled, StoreUnavailable
from nnlab.spec import RunSpec
from nnlab.sweep.callback import abort_active
from nnlab.sweep.jobs import SweepJob

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # absolute: works from any cwd and any import path
# conf/hydra/launcher/{submitit_local,ray}.yaml take their plugin's name on purpose (the plugin's schema
# then checks their keys); Hydra 1.3 still does that check but warns about the name match every time
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/\w+' is validated against ConfigStore schema",
                        category=UserWarning)


def summary_line(sweep_job: SweepJob, name: str, final: dict[str, float]) -> str:
    """``[3/24] relu-he-d4-s0  test_acc=0.9750  best_val_acc=0.9815  epochs=30  0.2s  (1 failed, ETA 42s)``:
    in a sweep, the count is of jobs done so far (any worker), then the sweep's failures and time left."""
    progress = sweep_job.ended(ok=True)
    where = progress.counter() if progress else "[1/1]"
    status = f"  ({progress.status()})" if progress and progress.status() else ""
    return (f"{where} {name}  test_acc={final['test_acc']:.4f}  best_val_acc={final['best_val_acc']:.4f}  "
            f"epochs={int(final['epochs_run'])}  {final['train_seconds']:.1f}s{status}")


class Stage:
    """How far a job got: ``start`` (nothing recorded yet: a failure is a refusal, exit 2) or ``run``
    (its MLflow run exists: a failure is the run's, exit 1)."""

    def __init__(self) -> None:
        self.name = "start"


def train(cfg: DictConfig, stage: Stage | None = None) -> dict[str, float]:
    """Parse the config once (``RunSpec``), build, train and record one run; its final metrics.

    Raises ``ConfigError`` before any MLflow run exists; a run that diverges or raises is marked
    FAILED in MLflow (with its metrics so far) and the exception propagates. ``stage`` says how
    far it got (see :class:`Stage`).
    """
    from nnlab import job
    from nnlab.sweep.jobs import current

    stage = stage or Stage()
    sweep_job = current()
    ctx = sweep_job.context
    spec = RunSpec.from_cfg(cfg, ctx.choices, ctx.overrides, ctx.varying)
    sweep_job.check_may_start()  # the sweep is stopping: a job not yet started does not start
    prepared = job.prepare(spec, ctx)
    stage.name = "run"
    final = prepared.run()
    print(summary_line(sweep_job, prepared.name, final), flush=True)
    if prepared.spooled is not None and not prepared.tracker.offline:
        raise RunSpooled(prepared.name, prepared.spooled, prepared.tracker.spool_dir, prepared.tracker.uri)
    if not ctx.multirun:
        print(prepared.tracker.where(prepared.experiment_id), file=sys.stderr, flush=True)
    return final


# --- the CLI ---------------------------------------------------------------------------------
def _one_line(err: BaseException, cfg: DictConfig, stage: Stage, context) -> str:
    from nnlab.core import DivergenceError

    if isinstance(err, (C.ConfigError, StoreUnavailable)):
        return f"nnlab: {err} -- no run was created"
    first = (str(err).splitlines() or [""])[0]
    kind = "diverged" if isinstance(err, DivergenceError) else type(err).__name__
    name = C.run_name(cfg, context.overrides, context.varying)
    if stage.name == "start":
        return f"nnlab: job {name} could not start ({kind}): {first} -- no run was created"
    return f"nnlab: run {name} failed ({kind}): {first}"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra's task function: one job. Returns test_acc (what a tuning sweeper would maximise)."""
    from nnlab.sweep.jobs import current

    freeze_startup_heap()
    stage = Stage()
    try:
        with signals.raising():  # SIGTERM unwinds like Ctrl-C: the run is closed KILLED
            return train(cfg, stage)["test_acc"]
    except Exception as err:  # the run (if any) is already closed as FAILED
        sweep_job = current()
        if not isinstance(err, RunSpooled):  # a spooled run has said where it is, in one line
            progress = sweep_job.ended(ok=False)
            print((f"{progress.counter()} " if progress else "") + _one_line(err, cfg, stage, sweep_job.context),
                  file=sys.stderr, flush=True)
        if sweep_job.context.multirun:
            return None  # the sweep goes on; SweepCallback counts failures and exits 1 at the end
        refused = isinstance(err, (C.ConfigError, StoreUnavailable)) or stage.name == "start"
        sys.exit(2 if refused and not isinstance(err, RunSpooled) else 1)
    except KeyboardInterrupt as err:
        sweep_job = current()
        if "submitit" not in sweep_job.launcher:
            raise
        # a Slurm job cancelled (scancel) or preempted: its run is KILLED already. Return, so that
        # submitit writes the job's result and the launching process sees it end: without Slurm
        # accounting (sacct) nothing else would tell it, and it would wait for ever
        print(_one_line(err, cfg, stage, sweep_job.context), file=sys.stderr, flush=True)
        return None


def _hydra_error_line(err: BaseException) -> str:
    """Hydra's own refusals (an unknown override, a missing option, a malformed YAML) in one line."""
    text = " ".join(str(err).split()).split(" Config search path:")[0]  # Hydra's search path: noise here
    text = hint_for_hydra_error(text)  # a launcher plugin that is absent: name its extra
    if err.__cause__ is not None and str(err.__cause__).strip():
        text += f" ({' '.join(str(err.__cause__).split())})"
    text = hydra_refusal(text) or text  # a typo or a wrong type: nnlab's words, with "did you mean"
    return f"nnlab: {text[:400] or type(err).__name__} -- no run was created"


def cli() -> None:
    """``python -m nnlab.run`` / ``nnlab-run``: Hydra's command line around ``main``.

    Exit status: 0 all good; 1 a run failed; 2 refused before any run existed (nnlab's checks and
    Hydra's own: bad overrides, missing options, malformed YAML); 128 + signal when SIGINT (130) or
    SIGTERM (143) stopped it.
    """
    exit_without_final_collection()
    refuse_missing_launcher(sys.argv[1:])  # an extra that is not installed: one line, exit 2, nothing created
    signals.raise_on_sigterm()  # SIGTERM at any moment unwinds like Ctrl-C: exit 143, never a bare -15
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing a long traceback: one line here
    try:
        try:
            main()
        except Exception as err:
            # an interrupt that landed inside Hydra's or OmegaConf's code between two jobs can come
            # out as another error raised while that code unwound (a half-updated config): it is
            # still the interrupt
            raise signals.interrupt_behind(err) or err
    except KeyboardInterrupt as err:
        signum = signals.signal_of(err)
        if not abort_active(err):
            print(f"nnlab: stopped by {signals.Interrupted(signum).name}", file=sys.stderr, flush=True)
        sys.exit(signals.exit_status(signum))
    except Exception as err:
        if full_error:
            raise
        started = abort_active(err)  # an error raised through Hydra mid-sweep: the sweep is closed
        print(_hydra_error_line(err), file=sys.stderr, flush=True)
        sys.exit(1 if started else 2)
    finally:
        signals.end_at_once()  # the record is closed: a signal from here on ends the exit at once, 128 + signal
        if not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)


if __name__ == "__main__":
    # call main through the importable module, not __main__: joblib workers then unpickle the task
    # function by reference (nnlab.run.main) instead of by value with this module's globals.
    # They need nothing else from __main__, so tell multiprocessing there is no main module to rebuild
    # in them: it would run this file again as __mp_main__ in every worker, where the preloaded
    # nnlab.run already is (runpy's "'nnlab.run' found in sys.modules" RuntimeWarning, once a worker).
    __spec__ = None
    del __file__
    from nnlab.run import cli as _cli

    _cli()
