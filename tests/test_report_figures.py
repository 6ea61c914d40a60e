"""Every figure the report draws, checked as matplotlib Figure objects on small real stores: it fits the
width a page shows (<= 1150 px), every drawn line can be decoded from a legend (its colour and its line
style each have an entry), integer axes (epochs, layers, counts) tick at whole numbers only, every text
lies inside the canvas and off the other panels, and no label leaves a number unexplained.

The stores are real command-line sweeps at toy size (every instrument on, sharpness included, so the
edge-of-stability figure is drawn; a variance_scaling grid for the trainability map), plus the fake
8-activation sweep of ``nnlab.analysis.fake`` for a hue with many levels."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import Collection  # noqa: E402
from matplotlib.container import Container, ErrorbarContainer  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from nnlab.analysis.fake import log_fake_sweep  # noqa: E402
from nnlab.report import DPI, FIGURES, INSTRUMENT_FIGURES, THEORY_FIGURES, TRAINABILITY_FIGURE  # noqa: E402
from nnlab.report import figures, load_study, make_figures  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAX_PX = 1150
EIGHT = ("relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid", "softsign", "identity")
SWEEPS = {  # experiment -> command-line overrides of a toy sweep
    "figs_grid": ["init=he,random", "activation=relu,sigmoid", "model.depth=1,5", "seed=0,1", "trainer.epochs=3",
                  "model.width=16", "diagnostics.sharpness_every=1", "diagnostics.sharpness_iters=3",
                  "diagnostics.sharpness_size=200"],
    "figs_trainability": ["+experiment=signal_propagation", "init.sigma_w=0.8,1.5", "model.depth=2,4", "seed=0",
                          "trainer.epochs=2", "model.width=16"],
}
INTEGER_AXES = re.compile(r"^(epoch|layer|count|depth)")  # axis labels whose quantity is a whole number


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    work = tmp_path_factory.mktemp("report_figures")
    uri = f"sqlite:///{work}/mlflow.db"
    for experiment, overrides in SWEEPS.items():
        proc = subprocess.run([sys.executable, "-m", "nnlab.run", "-m", *overrides, f"tracking.uri={uri}",
                               f"tracking.experiment={experiment}", "tracking.sweep_report=false",
                               "tracking.log_weights=false", f"hydra.sweep.dir={work}/multirun/{experiment}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "MPLBACKEND": "Agg"})
        assert proc.returncode == 0, proc.stderr[-3000:]
    log_fake_sweep(MlflowClient(uri), "figs_wide", inits=("he", "xavier"), activations=EIGHT, depths=(4,), fail=[])
    return {name: load_study(name, uri) for name in [*SWEEPS, "figs_wide"]}


def _rgb(color) -> tuple:
    return tuple(round(c, 3) for c in mcolors.to_rgb(color))


def _artists(handle) -> list:
    """The drawn artists of a legend handle (an errorbar's container holds its line and bars)."""
    if isinstance(handle, Container):
        return [a for child in handle for a in _artists(child)] if len(handle) else []
    if isinstance(handle, (list, tuple)):
        return [a for child in handle for a in _artists(child)]
    return [handle] if handle is not None else []


def _legend_keys(fig) -> tuple[set, set, set]:
    """(colours, (line style, marker) pairs, label texts) of every legend of ``fig`` (figure and panels)."""
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    colors, styles, texts = set(), set(), set()
    for legend in legends:
        texts |= {t.get_text() for t in legend.get_texts()}
        for handle in legend.legend_handles:
            for artist in _artists(handle):
                if isinstance(artist, Line2D):
                    colors.add(_rgb(artist.get_color()))
                    if artist.get_marker() not in ("", "None", None):  # a marker's own colours count too
                        colors.add(_rgb(artist.get_markeredgecolor()))
                        if str(artist.get_markerfacecolor()).lower() != "none":
                            colors.add(_rgb(artist.get_markerfacecolor()))
                    styles.add(_style(artist))
                elif isinstance(artist, Collection):
                    colors |= {_rgb(c) for c in [*artist.get_facecolors(), *artist.get_edgecolors()]}
                    styles.add(("marker", "o"))
                elif isinstance(artist, Patch):
                    colors |= {_rgb(artist.get_facecolor()), _rgb(artist.get_edgecolor())}
    return colors, styles, texts


def _style(line: Line2D) -> tuple:
    """A line's look apart from its colour: (line style, marker); a marker-only line is ("marker", m)."""
    ls, marker = line.get_linestyle(), line.get_marker()
    if ls in ("None", "none", "", " "):
        return ("marker", marker)
    return (ls, marker if marker not in ("None", "none", "", None) else "")


def _drawn_lines(fig) -> list[tuple]:
    """(axes, line) for every visible line with data in a visible panel (an error bar's caps belong to its
    marker, which is the line checked)."""
    out = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        caps = {id(cap) for container in ax.containers if isinstance(container, ErrorbarContainer)
                for cap in container[1]}
        for line in ax.get_lines():
            if id(line) in caps:
                continue
            x, y = (np.asarray(v, dtype=float) for v in line.get_data())
            if line.get_visible() and np.isfinite(x).any() and np.isfinite(y).any():
                out.append((ax, line))
    return out


def _texts(ax) -> list:
    """A panel's own texts: title, axis labels, tick labels, annotations."""
    out = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
    for axis in (ax.xaxis, ax.yaxis):  # the labels of the ticks inside the view (the others are not drawn)
        low, high = sorted(axis.get_view_interval())
        span = (high - low) * 1e-6
        out += [label for loc, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
                if low - span <= loc <= high + span]
    return [t for t in out if t.get_visible() and t.get_text().strip()]


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 - 1 and b.x0 < a.x1 - 1 and a.y0 < b.y1 - 1 and b.y0 < a.y1 - 1


def check_figure(name: str, fig) -> list[str]:
    """Every rule of this module's docstring for one figure; returns the problems found (empty: none)."""
    problems = []
    fig.set_dpi(DPI)
    width, height = fig.get_size_inches() * DPI
    if width > MAX_PX:
        problems.append(f"{width:.0f} px wide (at most {MAX_PX})")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    # every drawn line decodable from a legend: its colour and its style each have an entry; a labelled line
    # has its own label there
    colors, styles, texts = _legend_keys(fig)
    for ax, line in _drawn_lines(fig):
        what = f"line {line.get_label()!r} in panel {ax.get_title()!r}"
        if _rgb(line.get_color()) not in colors:
            problems.append(f"{what}: colour {_rgb(line.get_color())} is in no legend")
        if _style(line) not in styles:
            problems.append(f"{what}: style {_style(line)} is in no legend")
        if not line.get_label().startswith("_") and line.get_label() not in texts:
            problems.append(f"{what}: its label is not in the legend")
    # integer axes tick at whole numbers
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for axis, siblings, label in ((ax.xaxis, ax.get_shared_x_axes().get_siblings(ax), "get_xlabel"),
                                      (ax.yaxis, ax.get_shared_y_axes().get_siblings(ax), "get_ylabel")):
            # a shared axis is labelled once (bottom row, first column): its label names every panel's axis
            shared_label = next((getattr(o, label)() for o in siblings if getattr(o, label)()), "")
            if INTEGER_AXES.match(shared_label) and axis.get_scale() == "linear":
                low, high = sorted(axis.get_view_interval())
                ticks = [t for t in axis.get_majorticklocs() if low - 1e-9 <= t <= high + 1e-9]
                if any(abs(t - round(t)) > 1e-9 for t in ticks):
                    problems.append(f"{shared_label!r} axis of panel {ax.get_title()!r} ticks at {ticks}")
    # texts inside the canvas, none on another panel's plot area; legends and the title off every plot area
    visible = [ax for ax in fig.axes if ax.get_visible()]
    for ax in visible:
        for text in _texts(ax):
            box = text.get_window_extent(renderer)
            if box.x0 < canvas.x0 - 1 or box.x1 > canvas.x1 + 1 or box.y0 < canvas.y0 - 1 or box.y1 > canvas.y1 + 1:
                problems.append(f"text {text.get_text()!r} of panel {ax.get_title()!r} runs off the canvas")
            for other in visible:
                if other is not ax and _overlap(box, other.bbox):
                    problems.append(f"text {text.get_text()!r} of panel {ax.get_title()!r} lies on panel "
                                    f"{other.get_title()!r}")
    extras = list(fig.legends) + ([fig._suptitle] if fig._suptitle is not None else [])
    for artist in extras:
        box = artist.get_window_extent(renderer)
        if box.x0 < canvas.x0 - 1 or box.x1 > canvas.x1 + 1 or box.y0 < canvas.y0 - 1 or box.y1 > canvas.y1 + 1:
            problems.append(f"{type(artist).__name__} runs off the canvas")
        problems += [f"{type(artist).__name__} lies on panel {ax.get_title()!r}" for ax in visible
                     if _overlap(box, ax.bbox)]
    # labels explain themselves: no bare counts in brackets ("(+62 zero)"), a title on the figure
    every = [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_visible()]
    problems += [f"unexplained label {t!r}" for t in every if re.search(r"\(\+\d+ \w+\)", t)]
    if not (fig._suptitle is not None and fig._suptitle.get_text()) and not any(ax.get_title() for ax in visible):
        problems.append("no title")
    return [f"{name}: {p}" for p in problems]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", [*SWEEPS, "figs_wide"])
def test_every_figure_the_report_draws_passes_the_checks(studies, experiment):
    study = studies[experiment]
    problems, drawn = [], []
    for name, fig in make_figures(study):
        try:
            problems += check_figure(name, fig)
        finally:
            plt.close(fig)
        drawn.append(name)
    assert drawn == list(figures(study))
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_the_toy_stores_cover_every_figure(studies):
    """The checks above saw every figure the report can draw."""
    seen = set().union(*(figures(s) for s in studies.values()))
    assert seen == {*FIGURES, *THEORY_FIGURES, *TRAINABILITY_FIGURE, *INSTRUMENT_FIGURES}


def test_the_checks_catch_what_they_name():
    """A figure with each fault: too wide, a line missing from the legend, epoch ticks at 1.5, a bare count."""
    fig, ax = plt.subplots(figsize=(12, 3))
    ax.plot([0, 1, 2, 3], [1, 2, 3, 4], color="C0", label="shown")
    ax.plot([0, 1, 2, 3], [2, 3, 4, 5], color="C1", ls="--")
    ax.set_xticks([0, 1.5, 3])
    ax.set_xlabel("epoch")
    ax.set_title("he (+62 zero)")
    fig.legend(loc="upper right")
    problems = "\n".join(check_figure("bad.png", fig))
    plt.close(fig)
    for expected in ("px wide", "colour (", "style ('--', '')", "ticks at [", "unexplained label 'he (+62 zero)'"):
        assert expected in problems, (expected, problems)
