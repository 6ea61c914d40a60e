"""The report of one study: figures as PNG, an index.md with a summary table and a reading, and the
same page as one self-contained index.html (figures inline) that a browser or MLflow's artifact viewer
shows. ``python -m nnlab.report`` is its command; a sweep draws its own report with
:func:`write_sweep_report`.

The default folder is ./nnlab-report/<experiment>/ (not committed; reports/ holds the committed ones, which
``make report`` regenerates with an explicit --out). Everything is written into a temporary folder next to
the output and moved into place at the end, so a failure (unknown experiment, no runs, missing metrics,
unreachable store) leaves nothing half-written.
"""
from __future__ import annotations

import base64
import gc
import html
import multiprocessing
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import matplotlib

matplotlib.use("Agg")  # headless: before pyplot is imported anywhere below
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mlflow.tracking import MlflowClient  # noqa: E402

from . import depth, instrument_plots, plots, theory_plots, width  # noqa: E402
from .design import Design, infer_design  # noqa: E402
from .reading import reading  # noqa: E402
from .records import (AnalysisError, check_metrics, connect, get_experiment_id, layer_frame, load_history,  # noqa: E402
                      runs_table, search_training_runs)
from .stats import config_columns, format_cell, summary_table, to_markdown  # noqa: E402

CURVE_METRICS = ("train_loss", "val_loss")
ACC_CURVE_METRICS = ("train_acc", "val_acc")
FIGURES = {
    "final_accuracy.png": "Final test accuracy per configuration, mean and 95% CI over seeds",
    "accuracy_heatmap.png": "Mean test accuracy as a heatmap",
    "learning_curves.png": "Train (solid) and validation (dashed) loss per epoch, mean and 95% CI over seeds",
    "accuracy_curves.png": "Train (solid) and validation (dashed) accuracy per epoch, mean and 95% CI over seeds",
    "grad_norm_by_layer.png": "Per-layer gradient norm at initialisation and after training (log scale)",
    "act_std_by_layer.png": "Per-layer activation std at initialisation and after training (log scale)",
    "act_saturation_by_layer.png": "Per-layer saturated (tanh/sigmoid/softsign) or dead (ReLU-like) fraction",
}
# drawn when the runs recorded nnlab.theory's predictions (diagnostics.theory)
THEORY_FIGURES = {
    "theory_vs_measured.png": "Measured vs mean-field-predicted std at initialisation, on the identity line",
    "jacobian_spectrum.png": "Singular values of the hidden stack's Jacobian d a^L / d x at initialisation",
}
# drawn for a variance_scaling grid over init.sigma_w x model.depth (the signal_propagation study)
TRAINABILITY_FIGURE = {"trainability.png": "Trainability over (sigma_w^2, depth) with the theory's chi_1 = 1 line "
                                           "and 6 xi_c depth"}
# drawn when the study recorded them (older studies and instruments switched off: no figure)
INSTRUMENT_FIGURES = {
    "edge_of_stability.png": ("sharpness", "Sharpness (top Hessian eigenvalue) per epoch with the 2/lr line of "
                                           "each learning rate, beside the training loss"),
    "update_ratio_by_layer.png": ("update_ratio", "Update ratio ||dW||/||W|| of the epoch's last step, by layer "
                                                  "and epoch (log scale)"),
    "dist_init_by_layer.png": ("dist_init", "Distance from initialisation ||W - W0||/||W0||, by layer and epoch "
                                            "(log scale)"),
    "grad_noise_scale.png": ("grad_noise_scale", "Gradient noise scale B_simple over training (log scale)"),
}
INSTRUMENT_METRICS = ["update_ratio/layer_*", "dist_init/layer_*", "grad_noise_scale", "sharpness", "sharpness_x_lr"]
DEFAULT_OUT = Path("nnlab-report")  # ./nnlab-report/<experiment>/: never the committed reports/
DPI = 110


@dataclass
class Study:
    """Everything a report draws from: runs, per-epoch history, per-layer rows and the design."""

    experiment: str
    uri: str  # as the user named it (the default store shows as sqlite:///mlflow.db, not an absolute path)
    runs: pd.DataFrame
    history: pd.DataFrame
    layers: pd.DataFrame
    design: Design
    sweeps: tuple[str, ...] = ()  # how the record was built: one sentence per sweep (``sweeps_built``)


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes} min {sec} s" if minutes else f"{sec} s"


def sweeps_built(client: MlflowClient, experiment_id: str, runs: pd.DataFrame) -> tuple[str, ...]:
    """The sweeps that built an experiment, oldest first, from their parent runs: the command's overrides
    (launcher choices are Hydra's and not among them), the jobs of its grid, how many of ``runs`` ran under
    it (a resumed sweep skips what finished before) and the parent's wall time (a resumed sweep that rejoined
    its parent: from the first start to the last end), e.g. ``python -m nnlab.run -m +experiment=lr_transfer
    ...: 540 jobs, 540 of the record's runs from it (0 failed) in 21 min 13 s``."""
    from nnlab.record.names import JOBS_TAG, OVERRIDES_TAG, ROLE_TAG, SWEEP_ROLE

    parents = client.search_runs([experiment_id], f"tags.`{ROLE_TAG}` = '{SWEEP_ROLE}'", max_results=1000,
                                 order_by=["attributes.start_time ASC"])
    children = runs.groupby("parent_run_id")["failed"].agg(["size", "sum"]) if "parent_run_id" in runs else None
    out = []
    for run in parents:
        tags, info = run.data.tags, run.info
        ran, failed = (children.loc[info.run_id].tolist() if children is not None and info.run_id in children.index
                       else (0, 0))
        took = f" in {_duration((info.end_time - info.start_time) / 1000)}" if info.end_time else " (not ended)"
        out.append(f"`python -m nnlab.run -m {tags.get(OVERRIDES_TAG, '').strip()}`: {tags.get(JOBS_TAG, '?')} "
                   f"jobs, {int(ran)} of the record's runs from it ({int(failed)} failed){took}")
    return tuple(out)


def load_study(experiment: str, tracking_uri: str | None = None, metric: str = "test_acc", *,
               client: MlflowClient | None = None, parent_run_id: str | None = None) -> Study:
    """Read and check a study; ``AnalysisError`` if it cannot be reported.

    ``parent_run_id``: only the child runs of that sweep (default: every training run of the experiment).
    """
    with _gc_paused():
        return _load_study(experiment, tracking_uri, metric, client, parent_run_id)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused inside (then resumed, if it ran before).

    Reading a study allocates about a million short-lived objects (the SQL rows, MLflow's entities, pandas'
    frames), which triggers full collections, each walking every live object: on the init_depth study 4 of them
    took ~0.6 s of a ~1.5 s read. The few cycles made meanwhile are collected once it runs again.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def _gc_frozen() -> Iterator[None]:
    """Everything alive now (the study) moved out of the collector's sight inside, back at the end.

    Drawing makes reference cycles (every figure is one), so the collector must run; frozen, its full
    collections no longer walk the study's objects (2 of them took ~0.6 s of drawing the init_depth report),
    and forked workers do not touch the pages those objects share with the parent (what ``gc.freeze`` is for).
    Where something was frozen before (the command froze its imports), everything stays frozen at the end:
    ``gc.unfreeze`` would release that too. Frozen objects are still freed when nothing refers to them.
    """
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


def _load_study(experiment: str, tracking_uri: str | None, metric: str, client: MlflowClient | None,
                parent_run_id: str | None) -> Study:
    client = client or connect(tracking_uri)
    searched = search_training_runs(client, experiment)  # one search for the runs and their histories
    runs = runs_table(experiment, searched, client.tracking_uri)
    if parent_run_id is not None:
        runs = runs[runs["parent_run_id"] == parent_run_id].reset_index(drop=True)
        if runs.empty:
            raise AnalysisError(f"sweep {parent_run_id} of experiment {experiment!r} has no child runs")
    check_metrics(runs, [metric], experiment)
    ok = runs[~runs["failed"]]
    if ok.empty:
        raise AnalysisError(f"every run of experiment {experiment!r} failed ({len(runs)} runs); nothing to report")
    history = load_history(experiment, client=client, run_ids=ok["run_id"], searched=searched,
                           metrics=[*CURVE_METRICS, *ACC_CURVE_METRICS, "grad_norm/layer_*", "act_std/layer_*",
                                    "act_saturation/layer_*", "preact_std/layer_*", "theory/*", *INSTRUMENT_METRICS,
                                    *(depth.DEPTH_METRICS if depth.is_depth_study(runs) else ()), "coord/*"])
    # a few hundred metric names repeated over 165,000 rows: as a category, every name test (.str.startswith,
    # records.name_parts' extract of the layer index) runs once per name instead of once per row
    history = history.astype({"metric": "category"})
    _check_history(history, ok, experiment)
    runs, design = depth.depth_design(runs) if depth.is_depth_study(runs) else infer_design(runs)
    shown = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if parent_run_id is not None:
        shown = f"{shown}, sweep {parent_run_id}"
    sweeps = sweeps_built(client, get_experiment_id(client, experiment), runs) if parent_run_id is None else ()
    return Study(experiment, shown, runs, history, layer_frame(history), design, sweeps)


def _check_history(history: pd.DataFrame, ok: pd.DataFrame, experiment: str) -> None:
    """Every finished run must have the per-epoch curves and per-layer gradient norms."""
    for prefix, name in [(m, m) for m in CURVE_METRICS] + [("grad_norm/layer_", "grad_norm/layer_{i}")]:
        has = set(history.loc[history["metric"].str.startswith(prefix), "run_id"])
        lacking = ok[~ok["run_id"].isin(has)]
        if len(lacking):
            names = ", ".join(lacking["run_name"].astype(str).head(5))
            raise AnalysisError(f"{len(lacking)} finished run(s) of experiment {experiment!r} have no per-epoch "
                                f"metric {name!r}: {names}")


def figures(study: Study) -> dict[str, str]:
    """The figures this study gets (file name -> caption): ``FIGURES``, plus the theory's and the
    instruments' where the record has them."""
    out = dict(FIGURES)
    if theory_plots.has_theory(study.history):
        out.update(THEORY_FIGURES)
        if is_trainability_grid(study.runs):
            out.update(TRAINABILITY_FIGURE)
    out.update({name: caption for name, (caption, _) in instrument_figures(study).items()})
    if depth.is_depth_study(study.runs):
        # theory_plots rebuilds plain nets from the config for the spectrum: not these residual ones
        out.pop("jacobian_spectrum.png", None)
        out.update({name: caption for name, (caption, _) in depth.depth_figures(study).items()})
    out.update({name: caption for name, (caption, _) in width.report_figures(study).items()})
    return out


def is_trainability_grid(runs: pd.DataFrame) -> bool:
    """A variance_scaling study over init.sigma_w and model.depth with one activation."""
    return ({"init.sigma_w", "init.sigma_b", "model.depth"} <= set(runs.columns)
            and runs["init.sigma_w"].nunique() > 1 and runs["model.depth"].nunique() > 1
            and runs["activation"].nunique() == 1)


def make_figures(study: Study, metric: str = "test_acc") -> Iterator[tuple[str, Figure]]:
    """Each figure of :func:`figures` as (file name, matplotlib Figure), one at a time (close each when done)."""
    makers = _makers(study, metric)
    for name in figures(study):
        yield name, makers[name]()


def _makers(study: Study, metric: str) -> dict[str, Callable[[], Figure]]:
    """File name -> the function that draws it (a superset of :func:`figures`)."""
    ok = study.runs[~study.runs["failed"]]
    with_theory = theory_plots.has_theory(study.history)
    theory_line = {stat: theory_plots.predicted_profile(study.history, stat) if with_theory else None
                   for stat in ("grad_norm", "act_std")}
    makers = {
        "final_accuracy.png": lambda: plots.final_accuracy(study.runs, study.design, metric),
        "accuracy_heatmap.png": lambda: plots.accuracy_heatmap(study.runs, study.design, metric),
        "learning_curves.png": lambda: plots.learning_curves(study.history, ok, study.design, CURVE_METRICS),
        "accuracy_curves.png": lambda: plots.learning_curves(study.history, ok, study.design, ACC_CURVE_METRICS),
        "grad_norm_by_layer.png": lambda: plots.layer_profile(study.layers, ok, study.design, "grad_norm",
                                                              theory=theory_line["grad_norm"]),
        "act_std_by_layer.png": lambda: plots.layer_profile(study.layers, ok, study.design, "act_std",
                                                            theory=theory_line["act_std"]),
        "act_saturation_by_layer.png": lambda: plots.layer_profile(study.layers, ok, study.design,
                                                                   "act_saturation"),
        "theory_vs_measured.png": lambda: theory_plots.measured_vs_predicted(study.history, ok, study.design),
        "jacobian_spectrum.png": lambda: theory_plots.jacobian_spectrum(ok, study.design),
        "trainability.png": lambda: theory_plots.trainability_heatmap(study.runs, metric),
    }
    makers.update({name: make for name, (_, make) in instrument_figures(study).items()})
    if depth.is_depth_study(study.runs):
        makers.update({name: make for name, (_, make) in depth.depth_figures(study).items()})
    makers.update({name: make for name, (_, make) in width.report_figures(study).items()})
    return makers


# The 12 figures of the 135-run init_depth study take ~4 s of CPU to draw (matplotlib's cost per panel:
# ticks, text, the PNG); on a 2-core machine two processes draw them in about half the time.
MAX_DRAWING_WORKERS = 2
_DRAWING: tuple[dict, Path] | None = None  # what the forked workers of draw() draw: (makers, folder)


def draw(study: Study, out: Path, metric: str = "test_acc", workers: int | None = None) -> list[str]:
    """Save every figure of :func:`figures` into ``out``; returns their file names.

    ``workers``: processes drawing at once (default :func:`drawing_workers`; 1: in this process, one after the
    other). Workers are forked once the study is read, where the platform forks; each draws whole figures
    from the same data, so the files do not depend on how many processes drew them.
    """
    names = list(figures(study))
    workers = drawing_workers(len(names)) if workers is None else min(workers, len(names))
    with _gc_frozen():
        if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            for name, fig in make_figures(study, metric):
                _save(fig, out / name)
            return names
        global _DRAWING
        _DRAWING = (_makers(study, metric), out)
        # each worker has the study in memory (forked) and sends back only a file name
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_worker_signals)
        try:
            pool.map(_draw_one, names, chunksize=1)
            pool.close()
        except BaseException:  # a figure failed, or this process was interrupted: stop the others at once
            pool.terminate()
            raise
        finally:
            pool.join()
            _DRAWING = None
    return names


def drawing_workers(n_figures: int) -> int:
    """How many processes :func:`draw` uses by default: one per core up to ``MAX_DRAWING_WORKERS``, and 1 unless
    forking is safe here (the platform forks and this process runs a single thread: a thread holding a lock
    at the fork would leave it locked in the child, as could happen in a sweep's own process)."""
    if "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
        return 1
    return max(1, min(MAX_DRAWING_WORKERS, os.cpu_count() or 1, n_figures))


def _worker_signals() -> None:
    """A drawing worker leaves Ctrl-C (SIGINT, sent to the whole process group) to the process that started
    it, which stops its workers with SIGTERM, here the default: the end. The handlers it would otherwise
    inherit are the caller's (a sweep's raise an exception in its main loop)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _draw_one(name: str) -> str:
    """In a forked worker of :func:`draw`: draw and save one figure."""
    makers, out = _DRAWING
    _save(makers[name](), out / name)
    return name


def _save(fig: Figure, path: Path) -> None:
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


def instrument_figures(study: Study) -> dict[str, tuple[str, object]]:
    """The instrument figures this study's record supports: file name -> (caption, draw function)."""
    ok = study.runs[~study.runs["failed"]]
    h = study.history
    makers = {
        "edge_of_stability.png": lambda: instrument_plots.edge_of_stability(h, ok),
        "update_ratio_by_layer.png": lambda: instrument_plots.layer_instrument(h, ok, study.design, "update_ratio"),
        "dist_init_by_layer.png": lambda: instrument_plots.layer_instrument(h, ok, study.design, "dist_init"),
        "grad_noise_scale.png": lambda: instrument_plots.grad_noise_scale(h, ok, study.design),
    }
    out = {}
    for name, (metric_name, caption) in INSTRUMENT_FIGURES.items():
        if not instrument_plots.has_metric(h, metric_name):
            continue
        if name == "edge_of_stability.png" and not {"activation", "optimizer.lr"} <= set(ok.columns):
            continue
        out[name] = (caption, makers[name])
    return out


@dataclass
class Page:
    """The report page's parts, rendered as Markdown (:func:`index_markdown`) and HTML (:func:`index_html`)."""

    title: str
    generated: str  # Markdown: how, from where, when, what the statistics are
    reading: list[str]
    edge: list[str]  # the edge-of-stability section (empty: none)
    summary: pd.DataFrame
    figures: dict[str, str]  # file name -> caption


EDGE_INTRO = ("At the edge, sharpness·lr/2 = 1: gradient descent's step would overshoot along the top Hessian "
              "direction (Cohen et al. 2021). Per run, from the recorded `sharpness` and `train_loss` "
              "(means over seeds):")


def page(study: Study, metric: str = "test_acc") -> Page:
    """What the report says about ``study``: every number computed from the record."""
    # a depth study with an lr axis is read per cell at its best validation rate (depth.at_tuned_lr): the
    # same initial nets at three rates would otherwise be listed three times in every sentence
    runs = depth.at_tuned_lr(study.runs) if depth.is_depth_study(study.runs) else study.runs
    sentences = list(reading(study.runs, study.layers, study.design, metric, read=runs))
    if theory_plots.has_theory(study.history):
        ok = runs[~runs["failed"]]
        sentences += theory_plots.theory_reading(study.history, ok, study.design)
        if is_trainability_grid(study.runs):
            sentences += theory_plots.trainability_reading(runs, metric)
    if depth.is_depth_study(study.runs):
        sentences += depth.depth_reading(study, metric)
    sentences += width.report_reading(study)
    edge = []
    if "edge_of_stability.png" in instrument_figures(study):
        edge = instrument_plots.edge_reading(study.history, study.runs[~study.runs["failed"]])
    built = (f" The record was built by {len(study.sweeps)} sweep{'s' if len(study.sweeps) > 1 else ''}: "
             + "; ".join(study.sweeps) + "." if study.sweeps else "")
    generated = (f"Generated by `python -m nnlab.report --experiment {study.experiment}` from `{study.uri}` "
                 f"on {time.strftime('%Y-%m-%d %H:%M')}.{built} Factors: {', '.join(study.design.factors) or 'none'}; "
                 "statistics are over seeds (mean, std, 95% t-interval, cut to [0, 1] for accuracies); "
                 "failed runs are counted, not averaged.")
    return Page(f"Study `{study.experiment}`", generated, sentences, edge,
                summary_table(study.runs, study.design.by, metric), figures(study))


def index_markdown(study: Study, metric: str = "test_acc", parts: Page | None = None) -> str:
    """The report page: what was read, the reading, the summary table and the figures."""
    parts = parts or page(study, metric)
    lines = [f"# {parts.title}", "", parts.generated, "", "## Reading", ""]
    lines += [f"- {sentence}" for sentence in parts.reading]
    if parts.edge:
        lines += ["", "### Edge of stability", "", EDGE_INTRO, ""]
        lines += [f"- {s}" for s in parts.edge]
    lines += ["", "## Summary", "", to_markdown(parts.summary, exact=config_columns(parts.summary)), "", "## Figures", ""]
    for name, caption in parts.figures.items():
        lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """The report's own Markdown inside a sentence (``**bold**``, ```code```) as HTML, everything else escaped."""
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


HTML_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1150px; margin: 1.5em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; } h3 { font-size: 1.05em; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; }
li { margin: .3em 0; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; } th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1em 0 2em; } img { max-width: 100%; height: auto; display: block; }
nav a { margin-right: 1em; }
"""


def _table_html(frame: pd.DataFrame) -> str:
    """The summary table: statistics right-aligned to 3 decimals, config values as they are, missing
    values blank."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    exact = [c in config_columns(frame) for c in frame.columns]
    rows = []
    for row in frame.itertuples(index=False):
        cells = []
        for v, e in zip(row, exact):
            if isinstance(v, (float, int)) and not isinstance(v, bool):
                cells.append(f'<td class="num">{html.escape(format_cell(v, exact=e))}</td>')
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def index_html(parts: Page, folder: Path) -> str:
    """The report page as one self-contained HTML file: the figures in ``folder`` inline as base64 PNG."""
    body = [f"<h1>{_inline(parts.title)}</h1>", f"<p>{_inline(parts.generated)}</p>",
            '<nav><a href="#reading">Reading</a><a href="#summary">Summary</a><a href="#figures">Figures</a></nav>',
            '<h2 id="reading">Reading</h2>', "<ul>", *[f"<li>{_inline(s)}</li>" for s in parts.reading], "</ul>"]
    if parts.edge:
        body += ["<h3>Edge of stability</h3>", f"<p>{_inline(EDGE_INTRO)}</p>", "<ul>",
                 *[f"<li>{_inline(s)}</li>" for s in parts.edge], "</ul>"]
    body += ['<h2 id="summary">Summary</h2>', _table_html(parts.summary), '<h2 id="figures">Figures</h2>']
    for name, caption in parts.figures.items():
        data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
        body += [f'<figure id="{html.escape(name)}"><h3>{_inline(caption)}</h3>',
                 f'<img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">',
                 f"<figcaption><code>{html.escape(name)}</code></figcaption></figure>"]
    title = html.escape(re.sub(r"`", "", parts.title))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title}</title>"
            f"<style>{HTML_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(experiment: str, out: str | Path, tracking_uri: str | None = None,
                 metric: str = "test_acc", workers: int | None = None) -> Path:
    """Read the study, draw it into a temporary folder, then move that folder to ``out``; ``workers`` as
    in :func:`draw`."""
    return _write(load_study(experiment, tracking_uri, metric), Path(out), metric, workers)


class SweepReportError(RuntimeError):
    """A sweep's report cannot be drawn (no finished run, missing metrics, unreachable store, a plot
    that failed); the message says why in one line."""


def write_sweep_report(client_or_uri: MlflowClient | str, experiment_id: str, parent_run_id: str,
                       out_dir: str | Path, metric: str = "test_acc") -> list[Path]:
    """Draw the report of ONE sweep (the child runs of ``parent_run_id``) into ``out_dir``.

    Returns the written files (``index.md``, ``index.html``, then the figures), e.g. to log them as the parent
    run's artifacts. Raises ``SweepReportError`` (one-line message) if the report cannot be drawn;
    ``out_dir`` is then left as it was (written whole or not at all).
    """
    try:
        client = MlflowClient(client_or_uri) if isinstance(client_or_uri, str) else client_or_uri
        experiment = client.get_experiment(experiment_id).name
        study = load_study(experiment, client.tracking_uri, metric, client=client, parent_run_id=parent_run_id)
        out = _write(study, Path(out_dir), metric)
    except Exception as err:  # the caller closes its sweep whatever happened here
        first = (str(err).splitlines() or [""])[0]
        raise SweepReportError(f"no report for sweep {parent_run_id}: {type(err).__name__}: {first}") from err
    return [out / "index.md", out / "index.html", *(out / name for name in figures(study))]


def _write(study: Study, out: Path, metric: str, workers: int | None = None) -> Path:
    """Draw ``study`` into a temporary folder next to ``out``, then move it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a report is meant to be read
    try:
        draw(study, tmp, metric, workers)
        parts = page(study, metric)
        (tmp / "index.md").write_text(index_markdown(study, metric, parts) + "\n")
        (tmp / "index.html").write_text(index_html(parts, tmp))
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _replace_dir(new: Path, out: Path) -> None:
    """Put ``new`` at ``out``; an existing ``out`` is swapped out and deleted only once ``new`` is in place."""
    old = out.with_name(f".{out.name}-old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)
