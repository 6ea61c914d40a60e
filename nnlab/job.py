"""One job: data -> network -> training (nnlab.core) -> record (nnlab.record), from a RunSpec.

Two phases, so that the caller knows from which one an error came: :func:`prepare` builds everything
that can refuse the run (data, network, optimiser, the store) before any MLflow run exists;
:meth:`Job.run` opens the run, trains, records and closes it (FINISHED, or FAILED/KILLED with its
reason). Nothing here reads the raw config, knows Hydra, or decides anything about a sweep: what the
sweep tells a job arrives as a :class:`JobContext`.
"""
from __future__ import annotations

import contextlib
import functools
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from nnlab.record.names import BLAS_THREADS_TAG, JOB_NUM_TAG, OVERRIDES_TAG, SWEEP_TAG
from nnlab.spec import RunSpec


@dataclass(frozen=True)
class JobContext:
    """What the launcher and the sweep tell a job (all defaults: a plain call, outside Hydra)."""

    cwd: str | None = None  # where the command ran: ./mlflow.db is there even with hydra.job.chdir=True
    overrides: tuple[str, ...] = ()
    multirun: bool = False
    job_num: int = 0
    parallel: bool = False  # beside other workers (joblib): one BLAS thread, no progress bar
    hydra_dir: Path | None = None  # Hydra's .hydra/ folder of the job, attached as an artifact
    parent_id: str | None = None
    sweep_id: str | None = None
    varying: tuple[str, ...] = ()  # the keys the sweep varies
    choices: dict[str, Any] = field(default_factory=dict)  # Hydra's group choices


# --- build (everything that can refuse the run happens before the MLflow run exists) --------------
def load_data(spec: RunSpec):
    """The spec's dataset (cached per process: a sweep loads and splits digits once)."""
    from nnlab.data import load_shared

    return load_shared(**spec.data)


@functools.lru_cache(maxsize=4)
def _cached_inputs(key: tuple[tuple[str, Any], ...]) -> list:
    from nnlab.data import load_shared
    from nnlab.record.store import dataset_inputs

    data = load_shared(**dict(key))
    splits = {s: (getattr(data, f"x_{s}"), getattr(data, f"y_{s}")) for s in ("train", "val", "test")}
    return dataset_inputs(data.name, splits, {"nnlab.data.load_dataset": ", ".join(f"{k}={v}" for k, v in key)})


def dataset_inputs(spec: RunSpec) -> list:
    """The spec's dataset as MLflow inputs (name, digest and size per split; computed once per process)."""
    return _cached_inputs(tuple(sorted(spec.data.items())))


def build(spec: RunSpec, data) -> tuple[Any, Any]:
    """(model, optimizer) from the spec; the core refuses what it cannot build."""
    from nnlab.core import MLP, make_optimizer

    return MLP.from_shape(data.n_features, data.n_classes, **spec.model), make_optimizer(**spec.optimizer)


def probes(spec: RunSpec) -> list:
    """The per-epoch probes the spec turns on (``fit(..., probes=...)``)."""
    from nnlab.core import JacobianProbe

    return [JacobianProbe(spec.jacobian_inputs)] if spec.jacobian_inputs is not None else []


def init_diagnostics(spec: RunSpec, model, data) -> dict[str, float]:
    """Epoch 0's extra record when ``spec.theory``: the measured ``preact_std/layer_{i}`` and
    nnlab.theory's predictions (``theory/...``) for the same probe batch; {} when off or depth 0."""
    if not spec.theory or model.depth == 0:
        return {}
    from nnlab import theory
    from nnlab.core import INITIALIZERS, preactivation_std

    m = spec.model
    x_probe = np.asarray(data.x_train[: spec.train.probe_size], dtype=model.dtype)
    # A net whose signal overflows at initialisation (relu, branch scale 1, depth 256) measures inf/NaN
    # here and then fails in fit with one DivergenceError: no page of RuntimeWarnings on the console.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        measured = preactivation_std(model, x_probe)
    # fixup, lsuv: scales set by the depth or the data; ntk, mup: per-layer scales the theory does not take yet
    if m["init"] not in INITIALIZERS or m["parametrization"] != "sp":
        return measured  # no prediction for this network: theory/* absent
    prediction = theory.predict_network(model.sizes, m["activation"], m["init"], x_probe,
                                        activation_params=m["activation_params"], init_params=m["init_params"],
                                        **{k: m[k] for k in ("residual", "branch_scale", "branch_gate", "norm")})
    return {**measured, **theory.record(prediction)}


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


def data_init(spec: RunSpec, model, data) -> tuple[dict[str, str], dict[str, float]]:
    """Initialisers that need data (``init=lsuv``): run on the first training batch, before the run.
    Returns what the record keeps of it: params (the batch, the tolerance, whether every layer met it)
    and step-0 metrics (``lsuv_passes/layer_{i}``, ``lsuv_var/layer_{i}``, i = 1 nearest the input)."""
    if not getattr(model, "needs_data_init", False):
        return {}, {}
    from nnlab.core import lsuv

    info = lsuv(model, data.x_train[: spec.train.batch_size])
    params = {"lsuv.batch_size": str(info["batch_size"]), "lsuv.converged": str(info["converged"])}
    metrics = {f"lsuv_passes/layer_{i}": float(p) for i, p in enumerate(info["passes"], 1)}
    metrics.update({f"lsuv_var/layer_{i}": float(v) for i, v in enumerate(info["variance"], 1)})
    return params, metrics


def final_metrics(spec: RunSpec, model, data, history) -> dict[str, float]:
    """test_loss (the training loss, ``trainer.loss``), test_acc (computed by the core), best_val_acc,
    epochs_run, train_seconds."""
    from nnlab.core import evaluate, get_loss

    test_loss, test_acc = evaluate(model, data.x_test, data.y_test, loss_fn=get_loss(spec.train.loss))
    return {"test_loss": test_loss, "test_acc": test_acc, "best_val_acc": history.best_val_acc,
            "epochs_run": float(history.epochs_run), "train_seconds": history.train_seconds}


# --- the job ------------------------------------------------------------------------------------
@dataclass
class Job:
    """A run ready to start: everything built, nothing recorded yet."""

    spec: RunSpec
    context: JobContext
    data: Any
    model: Any
    optimizer: Any
    tracker: Any
    name: str  # the spec's name, or with a fingerprint suffix when another configuration has it in the experiment
    init_record: tuple[dict, dict] = ({}, {})  # what a data-dependent initialiser reports (params, step-0 metrics)
    spooled: Path | None = None  # where the run went when the store could not take it
    experiment_id: str | None = None  # once run

    @property
    def blas_limit(self) -> int | None:
        # parallel workers: one BLAS thread each, so two workers on two cores do not fight
        return 1 if self.context.parallel else self.spec.blas_threads

    def tags(self) -> dict[str, str]:
        ctx = self.context
        tags = {OVERRIDES_TAG: " ".join(ctx.overrides), **self.spec.tags()}
        if ctx.sweep_id:
            tags.update({SWEEP_TAG: ctx.sweep_id, JOB_NUM_TAG: str(ctx.job_num)})
        return tags

    def run(self) -> dict[str, float]:
        """Open the run, train, record, close; the final metrics. A run that diverges or raises is
        closed FAILED (KILLED on a signal) with its metrics so far, and the exception propagates."""
        from nnlab.core import fit

        spec, ctx, model, data = self.spec, self.context, self.model, self.data
        # a worker spawned before the parent run existed finds it by the sweep_id tag; a job of a sweep
        # (whose store answered at its start) goes on if the store fails now, and spools its run
        with self.tracker.open_run(spec.store.experiment, self.name, self.tags(), ctx.parent_id,
                                   spec.store.flush_seconds, spool_if_unreachable=ctx.multirun) as run:
            run.log_params({**spec.params, **self.init_record[0]})
            limit = self.blas_limit
            run.set_tags({BLAS_THREADS_TAG: str(limit) if limit is not None else f"default ({_blas_default()})"})
            run.log_inputs(dataset_inputs(spec))
            run.flush()  # params and tags reach the store now: a run killed in its first second is still found
            run.log_metrics({**self.init_record[1], **model.scale_record(spec.optimizer["name"]),
                             **init_diagnostics(spec, model, data)}, step=0)
            bar = progress(self.name, spec.train.epochs, sys.stderr.isatty() and not ctx.parallel)
            with bar as show, blas_threads(limit):
                def record(epoch: int, metrics: dict[str, float]) -> None:
                    run.log_metrics(metrics, step=epoch)
                    show(epoch, metrics)

                history = fit(model, self.optimizer, data.x_train, data.y_train, data.x_val, data.y_val, spec.train,
                              seed=spec.seed, callback=record, probes=probes(spec),
                              coord_callback=lambda step, metrics: run.log_metrics(metrics, step=step))
            final = final_metrics(spec, model, data, history)
            run.log_metrics(final, step=history.epochs_run)
            self._log_artifacts(run)
        self.spooled = run.spooled
        self.experiment_id = run.experiment_id
        return final

    def _log_artifacts(self, run) -> None:
        """config.yaml (resolved), Hydra's .hydra/ folder, weights.npz (np.savez: no pickle), in one call."""
        from omegaconf import OmegaConf

        with tempfile.TemporaryDirectory(prefix="nnlab-") as tmp:
            folder = Path(tmp)
            (folder / "config.yaml").write_text(OmegaConf.to_yaml(dict(self.spec.tree)))
            if self.spec.store.log_weights:
                np.savez(folder / "weights.npz", **self.model.state_dict())
            hydra_dir = self.context.hydra_dir
            if hydra_dir is not None and Path(hydra_dir).is_dir():
                shutil.copytree(hydra_dir, folder / ".hydra")
            run.log_artifact(folder)


def prepare(spec: RunSpec, context: JobContext | None = None) -> Job:
    """Everything the run needs, built before it exists: data, network, optimiser, the store.
    Raises (a bad dataset, a network the core refuses, an unusable store) with no run created."""
    from nnlab.record.run_names import distinct_run_name
    from nnlab.record.store import Tracker

    context = context or JobContext()
    data = load_data(spec)
    model, optimizer = build(spec, data)
    init_record = data_init(spec, model, data)
    tracker = Tracker.from_settings(spec.store, base=context.cwd)
    name = distinct_run_name(tracker, spec.store.experiment, spec.name, spec.fingerprint)
    return Job(spec, context, data, model, optimizer, tracker, name, init_record)
