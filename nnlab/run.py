"""The Hydra entry point: compose -> build data and network -> train (nnlab.core) -> record (MLflow).

    python -m nnlab.run                                   # one run, default config
    python -m nnlab.run -m activation=relu,tanh init=he,xavier model.depth=1,2,4
    python -m nnlab.run -m ... hydra/launcher=joblib hydra.launcher.n_jobs=2

``train(cfg)`` is a plain function (tests call it without the CLI); ``main`` is the thin Hydra
wrapper that turns failures into one line and an exit status. Exit status: 0 all good; 1 a run
failed (diverged or raised, or could not be recorded and went to the spool) — in a sweep, after every
job ran; 2 a refused config or an unusable store (no run created).
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from nnlab import spec as C
from nnlab._cli import exit_without_final_collection, freeze_startup_heap
from nnlab.extras import hint_for_hydra_error, refuse_missing_launcher
from nnlab.hints import hydra_refusal
from nnlab.record.names import distinct_run_name
from nnlab.record import signals
from nnlab.sweep.callback import FINGERPRINT_TAG, abort_active, job_context
from nnlab.record.store import RunLogger, RunSpooled, StoreUnavailable, Tracker

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # absolute: works from any cwd and any import path
# conf/hydra/launcher/{submitit_local,ray}.yaml take their plugin's name on purpose (the plugin's schema
# then checks their keys); Hydra 1.3 still does that check but warns about the name match every time
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/\w+' is validated against ConfigStore schema",
                        category=UserWarning)


# --- build (everything that can refuse the config happens before the MLflow run exists) ----------
def load_data(cfg: DictConfig):
    """The configured dataset (cached per process: a sweep loads and splits digits once)."""
    from nnlab.data import load_shared

    return load_shared(**C.dataset_kwargs(cfg))


@functools.lru_cache(maxsize=4)
def _cached_inputs(key: tuple[tuple[str, Any], ...]) -> list:
    from nnlab.data import load_shared
    from nnlab.record.store import dataset_inputs

    data = load_shared(**dict(key))
    splits = {s: (getattr(data, f"x_{s}"), getattr(data, f"y_{s}")) for s in ("train", "val", "test")}
    return dataset_inputs(data.name, splits, {"nnlab.data.load_dataset": ", ".join(f"{k}={v}" for k, v in key)})


def dataset_inputs(cfg: DictConfig) -> list:
    """The configured dataset's MLflow inputs (name, digest and size per split; computed once per process)."""
    return _cached_inputs(tuple(sorted(C.dataset_kwargs(cfg).items())))


def build(cfg: DictConfig, data) -> tuple[Any, Any, Any]:
    """(model, optimizer, TrainConfig) from a validated config; the core refuses what it cannot build."""
    from nnlab.core import MLP, InstrumentConfig, TrainConfig, make_optimizer

    model = MLP.from_shape(data.n_features, data.n_classes, **C.model_kwargs(cfg))
    optimizer = make_optimizer(**C.optimizer_kwargs(cfg))
    instruments = InstrumentConfig(**C.instrument_kwargs(cfg))
    return model, optimizer, TrainConfig(**C.trainer_kwargs(cfg), instruments=instruments)


def fit_probes(cfg: DictConfig) -> list:
    """The per-epoch probes ``diagnostics`` turns on (``fit(..., probes=...)``)."""
    from nnlab.core import JacobianProbe

    return [JacobianProbe(cfg.diagnostics.jacobian_inputs)] if cfg.diagnostics.jacobian else []


def init_diagnostics(cfg: DictConfig, model, data) -> dict[str, float]:
    """Epoch 0's extra record when ``diagnostics.theory``: the measured ``preact_std/layer_{i}`` and
    nnlab.theory's predictions (``theory/...``) for the same probe batch; {} when off or depth 0."""
    if not cfg.diagnostics.theory or model.depth == 0:
        return {}
    from nnlab import theory
    from nnlab.core import preactivation_std

    kwargs = C.model_kwargs(cfg)
    x_probe = np.asarray(data.x_train[: cfg.trainer.probe_size], dtype=model.dtype)
    prediction = theory.predict_network(model.sizes, kwargs["activation"], kwargs["init"], x_probe,
                                        activation_params=kwargs["activation_params"],
                                        init_params=kwargs["init_params"])
    return {**preactivation_std(model, x_probe), **theory.record(prediction)}


@contextlib.contextmanager
def blas_threads(limit: int | None) -> Iterator[None]:
    """Limit BLAS (OpenBLAS/MKL) to ``limit`` threads inside the block; None = leave it alone."""
    if limit is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=limit, user_api="blas"):
        yield


def _blas_default() -> str:
    """How many threads BLAS uses when left alone (what ``blas_threads=null`` runs with)."""
    from threadpoolctl import threadpool_info

    counts = sorted({str(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"})
    return ",".join(counts) or "?"


def _in_parallel_worker(context: dict) -> bool:
    """Whether this job runs in a worker of hydra-joblib-launcher (beside other workers)."""
    return "joblib" in context.get("launcher", "")


def _blas_limit(cfg: DictConfig, context: dict) -> int | None:
    # parallel workers: one BLAS thread each, so two workers on two cores do not fight
    return 1 if _in_parallel_worker(context) else cfg.blas_threads


# --- progress -----------------------------------------------------------------------------------
@contextlib.contextmanager
def progress(name: str, epochs: int, bar: bool) -> Iterator[Callable[[int, dict], None]]:
    """A tqdm bar over epochs when ``bar`` (an interactive terminal), else nothing per epoch."""
    if not bar:
        yield lambda epoch, metrics: None
        return
    from tqdm import tqdm

    with tqdm(total=epochs, desc=name, unit="ep", leave=False, file=sys.stderr, dynamic_ncols=True) as pbar:
        def update(epoch: int, metrics: dict) -> None:
            if epoch > 0:
                pbar.update(1)
            pbar.set_postfix(val_acc=f"{metrics['val_acc']:.3f}", loss=f"{metrics['train_loss']:.3g}", refresh=False)
        yield update


def _show_bar(context: dict) -> bool:
    # parallel workers share the terminal: bars would interleave, so they print summary lines only
    return sys.stderr.isatty() and not _in_parallel_worker(context)


def summary_line(context: dict, name: str, final: dict[str, float], best_val: float) -> str:
    """``[3/24] relu-he-d4-s0  test_acc=0.9750  best_val_acc=0.9815  epochs=30  0.2s  (1 failed, ETA 42s)``:
    in a sweep, the count is of jobs done so far (any worker), then the sweep's failures and time left."""
    progress = sweep_progress(context, ok=True)
    where = progress.counter() if progress else "[1/1]"
    status = f"  ({progress.status()})" if progress and progress.status() else ""
    return (f"{where} {name}  test_acc={final['test_acc']:.4f}  best_val_acc={best_val:.4f}  "
            f"epochs={int(final['epochs_run'])}  {final['train_seconds']:.1f}s{status}")


def sweep_progress(context: dict, ok: bool):
    """Record that this sweep job ended; the sweep's ``nnlab.sweep.progress.Progress`` (None outside a sweep)."""
    if not context.get("multirun"):
        return None
    from hydra.core.hydra_config import HydraConfig

    from nnlab.sweep.progress import record

    hc = HydraConfig.get()
    depth = len(Path(str(hc.sweep.subdir)).parts)  # output_dir = <sweep dir>/<subdir>
    sweep_dir = Path(hc.runtime.output_dir).parents[depth - 1]
    size = str(context.get("sweep_size", "?"))
    return record(sweep_dir, ok, int(size) if size.isdigit() else None)


# --- record -------------------------------------------------------------------------------------
def _run_tags(cfg: DictConfig, context: dict) -> dict[str, str]:
    tags = {"overrides": " ".join(context.get("overrides", [])), "nnlab.dataset": cfg.dataset.name,
            FINGERPRINT_TAG: C.fingerprint(cfg)}
    if context.get("sweep_id"):
        tags.update({"sweep_id": context["sweep_id"], "nnlab.job_num": str(context["job_num"])})
    return tags


def _log_artifacts(run: RunLogger, cfg: DictConfig, model, context: dict) -> None:
    """config.yaml (resolved), Hydra's .hydra/ folder, weights.npz (np.savez: no pickle), in one call."""
    with tempfile.TemporaryDirectory(prefix="nnlab-") as tmp:
        folder = Path(tmp)
        (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if cfg.tracking.log_weights:
            np.savez(folder / "weights.npz", **model.state_dict())
        if context.get("hydra_dir") is not None and Path(context["hydra_dir"]).is_dir():
            shutil.copytree(context["hydra_dir"], folder / ".hydra")
        run.log_artifact(folder)


def final_metrics(model, data, history) -> dict[str, float]:
    """test_loss, test_acc (computed by the core), best_val_acc, epochs_run, train_seconds."""
    from nnlab.core import evaluate

    test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
    return {"test_loss": test_loss, "test_acc": test_acc, "best_val_acc": history.best_val_acc,
            "epochs_run": float(history.epochs_run), "train_seconds": history.train_seconds}


# --- the task function --------------------------------------------------------------------------
def train(cfg: DictConfig) -> dict[str, float]:
    """Validate, build, train and record one run; return its final metrics.

    Raises ``ConfigError`` before any MLflow run exists; a run that diverges or raises is marked
    FAILED in MLflow (with its metrics so far) and the exception propagates.
    """
    from nnlab.core import fit

    context = job_context()
    C.check_added_keys(context.get("overrides", ()))
    C.validate(cfg)
    if context.get("multirun"):  # the sweep is stopping: a job not yet started does not start
        seen = signals.stop_requested()  # seen here, even if swallowed since
        if seen is not None:
            raise signals.Interrupted(seen)
        if context.get("stop_file") and Path(context["stop_file"]).exists():  # seen by the launching process
            raise signals.Interrupted(signal.SIGTERM)
    data = load_data(cfg)
    model, optimizer, train_config = build(cfg, data)
    tracker = Tracker.from_config(cfg.tracking, base=context.get("cwd"))
    name = C.run_name(cfg, context.get("overrides", ()), context.get("varying", ()))
    name = distinct_run_name(tracker, cfg.tracking.experiment, name, C.fingerprint(cfg))  # nnlab.record.names
    # a worker spawned before the parent run existed finds it by the sweep_id tag; a job of a sweep
    # (whose store answered at its start) goes on if the store fails now, and spools its run
    with tracker.open_run(cfg.tracking.experiment, name, _run_tags(cfg, context), context.get("parent_id"),
                          cfg.tracking.flush_seconds, spool_if_unreachable=bool(context.get("multirun"))) as run:
        run.log_params({**C.group_choices(cfg, context.get("choices")), **C.flat_params(cfg)})
        limit = _blas_limit(cfg, context)
        run.set_tags({"nnlab.blas_threads": str(limit) if limit is not None else f"default ({_blas_default()})"})
        run.log_inputs(dataset_inputs(cfg))
        run.flush()  # params and tags reach the store now: a run killed in its first second is still found
        run.log_metrics(init_diagnostics(cfg, model, data), step=0)
        bar = progress(name, train_config.epochs, _show_bar(context))
        with bar as show, blas_threads(limit):
            def record(epoch: int, metrics: dict[str, float]) -> None:
                run.log_metrics(metrics, step=epoch)
                show(epoch, metrics)

            history = fit(model, optimizer, data.x_train, data.y_train, data.x_val, data.y_val, train_config,
                          seed=cfg.seed, callback=record, probes=fit_probes(cfg))
        final = final_metrics(model, data, history)
        run.log_metrics(final, step=history.epochs_run)
        _log_artifacts(run, cfg, model, context)
    print(summary_line(context, name, final, history.best_val_acc), flush=True)
    if run.spooled is not None and not tracker.offline:
        raise RunSpooled(name, run.spooled, tracker.spool_dir, tracker.uri)
    if not context.get("multirun"):
        print(tracker.where(run.experiment_id), file=sys.stderr, flush=True)
    return final


# --- the CLI ---------------------------------------------------------------------------------
def _one_line(err: BaseException, cfg: DictConfig, context: dict) -> str:
    from nnlab.core import DivergenceError

    if isinstance(err, (C.ConfigError, StoreUnavailable)):
        return f"nnlab: {err} -- no run was created"
    first = (str(err).splitlines() or [""])[0]
    kind = "diverged" if isinstance(err, DivergenceError) else type(err).__name__
    name = C.run_name(cfg, context.get("overrides", ()), context.get("varying", ()))
    if getattr(err, "nnlab_run_id", None) is None:
        return f"nnlab: job {name} could not start ({kind}): {first} -- no run was created"
    return f"nnlab: run {name} failed ({kind}): {first}"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra's task function: one job. Returns test_acc (what a tuning sweeper would maximise)."""
    freeze_startup_heap()
    context = job_context()
    try:
        with signals.raising():  # SIGTERM unwinds like Ctrl-C: the run is closed KILLED
            return train(cfg)["test_acc"]
    except Exception as err:  # the run (if any) is already closed as FAILED
        if not isinstance(err, RunSpooled):  # a spooled run has said where it is, in one line
            progress = sweep_progress(context, ok=False)
            print((f"{progress.counter()} " if progress else "") + _one_line(err, cfg, context), file=sys.stderr,
                  flush=True)
        if context.get("multirun"):
            return None  # the sweep goes on; SweepCallback counts failures and exits 1 at the end
        refused = isinstance(err, (C.ConfigError, StoreUnavailable)) or getattr(err, "nnlab_run_id", None) is None
        sys.exit(2 if refused and not isinstance(err, RunSpooled) else 1)
    except KeyboardInterrupt as err:
        if "submitit" not in context.get("launcher", ""):
            raise
        # a Slurm job cancelled (scancel) or preempted: its run is KILLED already. Return, so that
        # submitit writes the job's result and the launching process sees it end: without Slurm
        # accounting (sacct) nothing else would tell it, and it would wait for ever
        print(_one_line(err, cfg, context), file=sys.stderr, flush=True)
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
