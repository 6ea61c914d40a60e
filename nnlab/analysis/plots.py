"""The study's figures, shared by the notebooks and ``nnlab.report``. Every function takes frames
from ``nnlab.analysis`` and a ``Design`` and returns a matplotlib Figure; numbers come from
``aggregate``, so a figure and the summary table agree.

One convention across figures: a line or marker is the mean over seeds, its band or bar the 95 %
interval of that mean, computed where the quantity lives (``stats.metric_scale``): cut to [0, 1] for
accuracies and saturated fractions, on log values (geometric mean) for norms, stds and losses, which
are drawn on log axes. With few seeds each seed's value is drawn too. Values that are exactly 0 cannot
sit on a log axis: they are marked at its bottom edge. Figures are laid out to be read at the width
``index.md`` shows them (at most ``MAX_WIDTH`` inches at the report's dpi: panels wrap into rows).
"""
from __future__ import annotations

import math
import textwrap
from typing import Sequence

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import matplotlib.transforms as mtransforms
import numpy as np
import pandas as pd
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .design import Design, deepest, levels
from .records import at_step, with_params
from .stats import aggregate, metric_scale

PHASES = {"init": "at initialisation (epoch 0)", "last": "after training (last epoch)"}
STAT_LABELS = {"grad_norm": "gradient L2 norm", "act_std": "activation std",
               "act_saturation": "saturated / dead fraction", "act_mean": "activation mean"}
N_CLASSES = 10  # digits and MNIST
CHANCE_ACC = 1 / N_CLASSES
CHANCE_LOSS = math.log(N_CLASSES)  # cross-entropy of a uniform guess: ln 10
MAX_WIDTH = 10.0  # inches; at the report's 110 dpi ~1100 px, about what a Markdown page shows unscaled
MAX_COLS = 4
SEED_POINTS_MAX = 5  # draw each seed's value when a configuration has at most this many
BAND = "95% CI over seeds"


# seaborn's "colorblind" palette, written out: the report draws without importing seaborn, whose import
# (scipy.stats with it) was ~1 s of the report's ~10 s
COLORBLIND = ("#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4", "#949494", "#ece133",
              "#56b4e9")


def color_palette(name: str, n: int) -> list[tuple]:
    """``n`` colours as RGB tuples: ``"colorblind"`` (cycled past 10) and matplotlib's qualitative maps
    (``"tab20"``) here; any other name (a seaborn map: ``"flare"``, ``"rocket_r"``) through seaborn."""
    if name == "colorblind":
        return [matplotlib.colors.to_rgb(COLORBLIND[i % len(COLORBLIND)]) for i in range(n)]
    if name in ("tab10", "tab20"):
        colors = matplotlib.colormaps[name].colors
        return [tuple(colors[i % len(colors)]) for i in range(n)]
    import seaborn as sns  # only the figures that use seaborn's own colour maps pay for its import

    return list(sns.color_palette(name, n))


def _palette(frame: pd.DataFrame, hue: str) -> dict:
    return palette(levels(frame, hue))


def palette(names: list) -> dict:
    """A distinguishable colour per name: seaborn's colourblind palette (10 colours), then tab20."""
    colors = color_palette("colorblind", 10) if len(names) <= 10 else color_palette("tab20", 20)
    return {name: colors[i % len(colors)] for i, name in enumerate(names)}


# --- layout: fixed margins in inches, no layout engine at savefig ----------------------------------
# Constrained layout measures every tick label of every panel at each save (a third of the 135-run
# report's time went there); a grid of known panels needs no search: margins are set in inches, and
# only the few things whose size is not known in advance (the wrapped title, the legend) are measured.
LEFT, RIGHT, BOTTOM, PAD = 0.85, 0.12, 0.55, 0.08  # inches: y tick labels + label, right edge, x ticks + label
PANEL_TITLE = 0.16  # inches per line of a panel title at 8 pt


def grid(n_rows: int, n_cols: int, panel_w: float, panel_h: float, *, sharex: bool = False, sharey: bool = False,
         panel_title_lines: int = 2, legend_w: float = 1.5, bottom: float = BOTTOM, left: float = LEFT,
         wgap: float | None = None, hgap: float | None = None) -> tuple[Figure, np.ndarray]:
    """A grid of ``n_rows`` x ``n_cols`` panels at most ``MAX_WIDTH`` wide (panels shrink, down to 1.5 in),
    with room on the right for a legend ``legend_w`` inches wide. Finish it with :func:`finish`."""
    wgap = (0.2 if sharey else 0.75) if wgap is None else wgap
    hgap = (PANEL_TITLE * panel_title_lines + (0.12 if sharex else 0.5)) if hgap is None else hgap
    room = MAX_WIDTH - left - RIGHT - legend_w - wgap * (n_cols - 1)
    panel_w = max(1.5, min(panel_w, room / n_cols))
    width = min(MAX_WIDTH, left + n_cols * panel_w + wgap * (n_cols - 1) + legend_w + RIGHT)
    top = PAD + PANEL_TITLE * panel_title_lines
    height = top + n_rows * panel_h + hgap * (n_rows - 1) + bottom
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, height), squeeze=False, sharex=sharex, sharey=sharey)
    fig._nnlab_box = {"left": left, "right": legend_w + RIGHT, "top": top, "bottom": bottom, "wgap": wgap,
                      "hgap": hgap, "rows": n_rows, "cols": n_cols, "panel_h": panel_h}
    _place(fig)
    return fig, axes


def _place(fig: Figure) -> None:
    """Apply the figure's margins (inches) as fractions of its current size."""
    b = fig._nnlab_box
    width, height = fig.get_size_inches()
    panel_w = (width - b["left"] - b["right"] - b["wgap"] * (b["cols"] - 1)) / b["cols"]
    fig.subplots_adjust(left=b["left"] / width, right=1 - b["right"] / width, bottom=b["bottom"] / height,
                        top=1 - b["top"] / height, wspace=b["wgap"] / panel_w, hspace=b["hgap"] / b["panel_h"])


def _extent(fig: Figure, artist) -> tuple[float, float]:
    """(width, height) of an artist in inches, as it will be drawn."""
    box = artist.get_window_extent(fig.canvas.get_renderer())
    return box.width / fig.dpi, box.height / fig.dpi


def _grow(fig: Figure, side: str, inches: float) -> None:
    """Add ``inches`` of margin on ``side`` (top/bottom: the figure grows; right: the panels shrink)."""
    box = fig._nnlab_box
    box[side] += inches
    if side in ("top", "bottom"):
        fig.set_figheight(fig.get_figheight() + inches)
    _place(fig)


def legend_entries(axes, order: Sequence = ()) -> dict:
    """Label -> handle of every labelled artist of ``axes`` (first occurrence; ``_``-labels skipped); the
    labels in ``order`` (e.g. the hue's levels) first, in that order, then the others as found."""
    seen: dict = {}
    for ax in np.ravel(axes):
        handles, labels = ax.get_legend_handles_labels()
        seen.update((lab, h) for lab, h in zip(labels, handles) if lab not in seen and not lab.startswith("_"))
    first = [str(name) for name in order if str(name) in seen]
    return {**{name: seen[name] for name in first}, **{k: v for k, v in seen.items() if k not in first}}


def finish(fig: Figure, title: str, entries: dict, legend_title: str | None = None, fontsize: float = 11,
           legend_fontsize: float = 9) -> Figure:
    """Title the grid (wrapped to its width) and put the legend beside it (below it when its labels are
    long); the margins grow to what the two measure, the panels keep their size (or shrink in width)."""
    for ax in fig.axes:
        if ax.get_visible():
            _cheap_axes(ax)
    width = fig.get_figwidth()
    chars = max(20, int(width * 72 / (0.55 * fontsize)))
    sup = fig.suptitle(textwrap.fill(title, chars), fontsize=fontsize, y=1 - PAD / fig.get_figheight(), va="top")
    _grow(fig, "top", _extent(fig, sup)[1] + 0.1)
    sup.set_y(1 - PAD / fig.get_figheight())
    if not entries:
        return fig
    below = max(map(len, entries)) > 24
    if below:
        ncols = 1 if max(map(len, entries)) > 45 else 2
        legend = fig.legend(entries.values(), entries.keys(), title=legend_title, loc="lower center",
                            bbox_to_anchor=(0.5, 0.0), frameon=False, fontsize=legend_fontsize, ncols=ncols)
        w, h = _extent(fig, legend)
        _grow(fig, "bottom", h + 0.05)
        _grow(fig, "right", -fig._nnlab_box["right"] + RIGHT)
    else:
        legend = fig.legend(entries.values(), entries.keys(), title=legend_title, loc="center left",
                            frameon=False, fontsize=legend_fontsize)
        w, _ = _extent(fig, legend)
        _grow(fig, "right", w + RIGHT + 0.1 - fig._nnlab_box["right"])
        legend.set_bbox_to_anchor((1 - (w + RIGHT) / fig.get_figwidth(), 0.5), transform=fig.transFigure)
    return fig


def _cheap_axes(ax) -> None:
    """What makes a panel slow to draw, turned off where it adds nothing: minor ticks on log axes (each is
    an object, hundreds per grid; the 1-2-5 or per-decade major ticks and the grid carry the scale), the
    TeX layout of their labels (:func:`power_of_ten`) and the title's search for tick labels above the axes
    (a fixed grid has none there)."""
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_minor_locator(mticker.NullLocator())
            if type(axis.get_major_formatter()) is mticker.LogFormatterSciNotation:  # matplotlib's default
                axis.set_major_formatter(mticker.FuncFormatter(power_of_ten))
    if ax.get_title():
        ax.set_title(ax.get_title(), y=1.0, fontsize=ax.title.get_fontsize())


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def power_of_ten(value: float, _pos=None) -> str:
    """A log axis' tick label: ``10⁻³`` in Unicode superscripts, the look of matplotlib's default label
    without its mathtext (a TeX layout per distinct label: ~0.3 s of the init_depth report, and each worker
    process builds the parser again); a tick off the decades as a plain number."""
    if not np.isfinite(value) or value <= 0:
        return ""
    exponent = math.log10(value)
    if abs(exponent - round(exponent)) < 1e-9:
        return "10" + str(int(round(exponent))).translate(_SUPERSCRIPT)
    return f"{value:g}"


def integer_ticks(axis) -> None:
    """Ticks only at whole numbers (epochs, layers, steps)."""
    axis.set_major_locator(mticker.MaxNLocator(nbins=5, steps=[1, 2, 5, 10], integer=True, min_n_ticks=2))


def band(ax, x, low, high, color, alpha: float = 0.18) -> None:
    """Queue a band (drawn by :func:`draw_bands` as one PolyCollection per panel: 600 ``fill_between``
    calls took 28 s of the 135-run report)."""
    x, low, high = (np.asarray(v, dtype=float) for v in (x, low, high))
    keep = np.isfinite(x) & np.isfinite(low) & np.isfinite(high)
    if keep.sum() < 2:
        return
    x, low, high = x[keep], low[keep], high[keep]
    verts = np.concatenate([np.column_stack([x, low]), np.column_stack([x[::-1], high[::-1]])])
    if not hasattr(ax, "_nnlab_bands"):
        ax._nnlab_bands = []
    ax._nnlab_bands.append((verts, (*matplotlib.colors.to_rgb(color), alpha)))


def draw_bands(fig: Figure) -> None:
    """One PolyCollection per panel for every band queued with :func:`band`."""
    for ax in fig.axes:
        bands = getattr(ax, "_nnlab_bands", [])
        if bands:
            ax.add_collection(PolyCollection([v for v, _ in bands], facecolors=[c for _, c in bands],
                                             linewidths=0, zorder=1), autolim=False)
            ax._nnlab_bands = []


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def _data_limits(values: np.ndarray, chance: float | None, lower: float = 0.0, upper: float = 1.0,
                 min_span: float = 0.02) -> tuple[float, float]:
    """Axis limits around ``values`` (padded, inside [lower, upper]); they reach down to ``chance``
    when the data come within a third of the axis of it, so a chance line is either on the axis where
    it says something or left out."""
    values = values[np.isfinite(values)]
    if not len(values):
        return lower, upper
    lo, hi = float(values.min()), float(values.max())
    span = max(hi - lo, min_span)
    if chance is not None and lo - chance < span / 2:
        lo = min(lo, chance)
        span = max(hi - lo, min_span)
    pad = 0.08 * span
    return max(lower, lo - pad), min(upper + pad * 0.5, hi + pad)


def _chance_line(ax, chance: float, vertical: bool = False) -> None:
    """Dotted chance line when it is on the axis, else a note at the axis' bottom edge."""
    low, high = ax.get_xlim() if vertical else ax.get_ylim()
    if low <= chance <= high:
        (ax.axvline if vertical else ax.axhline)(chance, color="grey", lw=0.9, ls=":", label="chance")
    else:
        ax.annotate(f"chance {chance:.2g} off axis", xy=(0.99, 0.01), xycoords="axes fraction", ha="right",
                    va="bottom", fontsize=7, color="grey")


def _seed_points(ax, values: np.ndarray, pos: float, color, vertical: bool = True) -> None:
    """Each seed's value as a small open marker next to the mean (few seeds only)."""
    values = values[np.isfinite(values)]
    if not 0 < len(values) <= SEED_POINTS_MAX:
        return
    offsets = np.linspace(-0.06, 0.06, len(values)) if len(values) > 1 else np.zeros(1)
    xy = (pos + 0.09 + offsets, values) if vertical else (values, pos + 0.18 + offsets)
    ax.scatter(*xy, s=9, facecolors="none", edgecolors=[color], linewidths=0.7, alpha=0.8, zorder=3,
               label="_seed")


def final_accuracy(runs: pd.DataFrame, design: Design, metric: str = "test_acc") -> Figure:
    """Mean ``metric`` per configuration with its 95% CI over seeds (and each seed's value when
    few): x = design.x, one marker per hue, one panel per design.col. The axis follows the data."""
    if design.x is None and design.col is None:
        return _final_accuracy_rows(runs, design, metric)
    x = design.x or design.hue
    scale = metric_scale(metric)
    agg = aggregate(runs, design.by, metric, scale=scale)
    panels = levels(agg, design.col) if design.col else [None]
    xs, hues = levels(agg, x), levels(agg, design.hue)
    n_cols = min(len(panels), 3)
    fig, axes = grid(math.ceil(len(panels) / n_cols), n_cols, 0.75 * len(xs) + 1.4, 2.9, sharey=True,
                     panel_title_lines=1, bottom=BOTTOM + (0.3 if len(xs) > 4 else 0.0),
                     hgap=PANEL_TITLE + 0.2 + 0.5 + (0.3 if len(xs) > 4 else 0.0))
    colors = _palette(agg, design.hue)
    offsets = np.linspace(-0.25, 0.25, len(hues)) if len(hues) > 1 and design.x else np.zeros(len(hues))
    finished = runs[~runs["failed"]] if "failed" in runs.columns else runs
    for ax, panel in zip(axes.flat, panels):
        part = agg if panel is None else agg[agg[design.col] == panel]
        raw = finished if panel is None else finished[finished[design.col] == panel]
        for offset, hue in zip(offsets, hues):
            rows = part[part[design.hue] == hue].set_index(x).reindex(xs)
            pos = np.arange(len(xs)) + offset
            err = np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]])
            ax.errorbar(pos, rows["mean"], yerr=np.nan_to_num(err), fmt="o", ms=5, capsize=3, color=colors[hue],
                        label=str(hue))
            for p, level in zip(pos, xs):
                seeds = raw[(raw[design.hue] == hue) & (raw[x] == level)][metric].to_numpy(dtype=float)
                _seed_points(ax, seeds, p, colors[hue])
        ax.set_xticks(np.arange(len(xs)), [str(v) for v in xs], rotation=30 if len(xs) > 4 else 0)
        ax.set_title(f"{design.col} = {panel}" if panel is not None else "", fontsize=10)
        ax.set_xlabel(x)
        ax.grid(axis="y", alpha=0.3)
    shown = np.concatenate([agg[["ci_low", "ci_high", "mean"]].to_numpy(dtype=float).ravel(),
                            finished[metric].to_numpy(dtype=float)])
    chance = CHANCE_ACC if scale == "fraction" else None
    axes.flat[0].set_ylim(*_data_limits(shown, chance) if scale == "fraction" else (None, None))
    if chance is not None:
        for ax in axes.flat[:len(panels)]:
            _chance_line(ax, chance)
    for ax in axes[:, 0]:
        ax.set_ylabel(metric)
    _hide_unused(axes, len(panels))
    entries = legend_entries(axes, hues)
    if _few_seeds(agg):
        entries["each seed"] = Line2D([], [], ls="none", marker="o", ms=3.5, mfc="none", mec="0.35", mew=0.7)
    return finish(fig, f"Final {metric} per configuration: mean and {BAND}"
                       + (", open circles = each seed" if _few_seeds(agg) else "") + " (dotted: chance)",
                  entries, design.hue)


def _few_seeds(agg: pd.DataFrame) -> bool:
    return bool(len(agg)) and int(agg["n"].max()) <= SEED_POINTS_MAX


def _final_accuracy_rows(runs: pd.DataFrame, design: Design, metric: str) -> Figure:
    """One configuration per row (for designs with a single, possibly long-labelled factor)."""
    scale = metric_scale(metric)
    agg = aggregate(runs, [design.hue], metric, scale=scale).sort_values("mean")
    labels = [str(v) for v in agg[design.hue]]
    width = min(MAX_WIDTH, 5 + 0.07 * max(map(len, labels)))
    fig, ax = plt.subplots(figsize=(width, 0.45 * len(agg) + 1.6), layout="constrained")
    colors = _palette(agg, design.hue)
    finished = runs[~runs["failed"]] if "failed" in runs.columns else runs
    for pos, (_, row) in enumerate(agg.iterrows()):
        err = [[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]]
        color = colors[row[design.hue]]
        ax.errorbar(row["mean"], pos, xerr=np.nan_to_num(err), fmt="o", capsize=3, color=color)
        seeds = finished[finished[design.hue] == row[design.hue]][metric].to_numpy(dtype=float)
        _seed_points(ax, seeds, pos, color, vertical=False)
        ax.annotate(f"{row['mean']:.3f}", (row["mean"], pos), textcoords="offset points", xytext=(0, -11),
                    ha="center", fontsize=8)
    ax.set_yticks(np.arange(len(agg)), labels)
    ax.set_xlabel(f"{metric}: mean and {BAND}" + (", open circles = seeds" if _few_seeds(agg) else ""))
    if scale == "fraction":
        shown = np.concatenate([agg[["ci_low", "ci_high"]].to_numpy(dtype=float).ravel(),
                                finished[metric].to_numpy(dtype=float)])
        ax.set_xlim(*_data_limits(shown, CHANCE_ACC))
        _chance_line(ax, CHANCE_ACC, vertical=True)
    ax.set_ylim(-0.7, len(agg) - 0.3)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(textwrap.fill(f"Final {metric} per configuration", 60))
    return fig


def accuracy_heatmap(runs: pd.DataFrame, design: Design, metric: str = "test_acc") -> Figure:
    """Mean ``metric`` as a heatmap: rows = hue (x hue when both), columns = col (or x). The colour
    scale spans the data (its ends are on the colour bar), so close values still differ in colour."""
    agg = aggregate(runs, design.by, metric, scale=metric_scale(metric))
    if design.col:
        rows, cols = [design.hue] + ([design.x] if design.x else []), design.col
    elif design.x:
        rows, cols = [design.hue], design.x
    else:
        rows, cols = [design.hue], None
    table = agg.pivot_table(index=rows, columns=cols, values="mean") if cols else agg.set_index(rows)[["mean"]]
    label_chars = max(len(" / ".join(map(str, k if isinstance(k, tuple) else (k,)))) for k in table.index)
    width = min(MAX_WIDTH, 0.8 * table.shape[1] + 3 + 0.07 * label_chars)
    fig, ax = plt.subplots(figsize=(width, 0.42 * table.shape[0] + 1.6), layout="constrained")
    values = table.to_numpy(dtype=float)
    low, high = np.nanmin(values), np.nanmax(values)
    if high - low < 0.01:
        low, high = low - 0.005, high + 0.005
    heatmap(ax, table, ".3f" if high - low < 0.1 else ".2f", low, high, f"mean {metric}")
    ax.set_ylabel(" / ".join(rows))
    ax.set_xlabel(cols or "")
    _constrained_title(fig, f"Mean {metric} over seeds (colours span the data's range)")
    return fig


def _label(key) -> str:
    return " / ".join(map(str, key)) if isinstance(key, tuple) else str(key)


def heatmap(ax, table: pd.DataFrame, fmt: str, vmin: float, vmax: float, label: str, cmap: str = "viridis",
            fontsize: float = 8) -> None:
    """``table`` as coloured cells (first row at the top) with each value written in it (dark on light
    cells, white on dark ones) and a colour bar named ``label``; rows named ``he / relu`` for a MultiIndex.
    Missing values are left blank."""
    values = np.ma.masked_invalid(table.to_numpy(dtype=float))
    n_rows, n_cols = values.shape
    mesh = ax.pcolormesh(np.arange(n_cols + 1), np.arange(n_rows + 1), values, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xlim(0, n_cols)
    ax.set_ylim(n_rows, 0)
    colors = mesh.cmap(mesh.norm(values))
    for (i, j), value in np.ndenumerate(values.filled(np.nan)):
        if np.isfinite(value):
            ax.text(j + 0.5, i + 0.5, format(value, fmt), ha="center", va="center", fontsize=fontsize,
                    color="0.15" if _luminance(colors[i, j]) > 0.408 else "white")
    col_labels = [_label(c) for c in table.columns]
    ax.set_xticks(np.arange(n_cols) + 0.5, col_labels,
                  rotation=30 if max(map(len, col_labels)) * n_cols > 60 else 0)
    ax.set_yticks(np.arange(n_rows) + 0.5, [_label(r) for r in table.index])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.figure.colorbar(mesh, ax=ax, label=label).outline.set_visible(False)


def _luminance(rgba) -> float:
    """Relative luminance of a colour (W3C WCAG 2: linearised sRGB channels weighted 0.2126, 0.7152, 0.0722)."""
    rgb = np.asarray(rgba[:3], dtype=float)
    linear = np.where(rgb <= 0.03928, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def _constrained_title(fig: Figure, text: str, fontsize: float = 11) -> None:
    """A suptitle wrapped to the figure's width (single-panel figures keep constrained layout: cheap there)."""
    chars = max(20, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))
    fig.suptitle(textwrap.fill(text, chars), fontsize=fontsize)


def _band(ax, agg: pd.DataFrame, x: str, color, label: str, style: str = "-", marker: str = "") -> None:
    """The mean as a line, its 95% interval as a band (``aggregate`` already put it in range)."""
    ax.plot(agg[x], agg["mean"], style + marker, color=color, label=label, lw=1.4, ms=3)
    band(ax, agg[x], agg["ci_low"].fillna(agg["mean"]), agg["ci_high"].fillna(agg["mean"]), color)


def panel_layout(design: Design, frame: pd.DataFrame) -> tuple[list[tuple], int, int]:
    """The (x level, col level) of each panel and the grid's rows and columns: x down, col across
    when both vary (shrunk to fit the width), else wrapped into at most ``MAX_COLS`` columns."""
    xs = levels(frame, design.x) if design.x else [None]
    cols = levels(frame, design.col) if design.col else [None]
    panels = [(r, c) for r in xs for c in cols]
    if design.x and design.col:
        return panels, len(xs), len(cols)
    n_cols = min(len(panels), MAX_COLS)
    return panels, math.ceil(len(panels) / n_cols), n_cols


def panel_title(design: Design, r, c) -> str:
    """``activation=tanh`` over ``depth=16``: one line per factor, dotted keys by their last part."""
    return "\n".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in ((design.x, r), (design.col, c)) if v is not None)


def _log_axis_around_means(ax, means: np.ndarray, chance: float | None = None) -> None:
    """A log y axis spanning the means (and chance): a wide band of 3 seeds is cut at the edge rather
    than squeezing every curve into a sliver; plain numbers at 1-2-5 steps when it spans <= 2 decades."""
    means = means[np.isfinite(means) & (means > 0)]
    ax.set_yscale("log")
    if not len(means):
        return
    low, high = means.min(), means.max()
    if chance is not None:
        low, high = min(low, chance), max(high, chance)
    low, high = low / 1.6, high * 1.6
    ax.set_ylim(low, high)
    if high / low <= 150:
        ax.yaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(mticker.NullFormatter())


def learning_curves(history: pd.DataFrame, runs: pd.DataFrame, design: Design,
                    metrics: tuple[str, str] = ("train_loss", "val_loss"), log_y: bool | None = None) -> Figure:
    """Per-epoch ``metrics`` (solid = first, dashed = second): mean and 95% CI over seeds (log-space
    for losses, cut to [0, 1] for accuracies); one panel per (design.x, design.col), one colour per
    hue; the chance level (ln 10 for the loss, 0.1 for accuracy) dotted."""
    scale = metric_scale(metrics[0])
    log_y = scale == "log" if log_y is None else log_y
    frame = with_params(history[history["metric"].isin(metrics)], runs, design.by)
    agg = aggregate(frame, [*design.by, "metric", "step"], "value", scale=scale)
    panels, n_rows, n_cols = panel_layout(design, agg)
    fig, axes = grid(n_rows, n_cols, 2.6, 2.1, sharex=True, sharey=True,
                     panel_title_lines=sum(v is not None for v in (design.x, design.col)) or 1)
    colors = _palette(agg, design.hue)
    for ax, (r, c) in zip(axes.flat, panels):
        part = agg
        if r is not None:
            part = part[part[design.x] == r]
        if c is not None:
            part = part[part[design.col] == c]
        for hue in levels(agg, design.hue):
            for metric, style in zip(metrics, ("-", "--")):
                rows = part[(part[design.hue] == hue) & (part["metric"] == metric)]
                if len(rows):
                    _band(ax, rows, "step", colors[hue], str(hue) if style == "-" else "_nolegend_", style)
        ax.set_title(panel_title(design, r, c), fontsize=8)
        ax.grid(alpha=0.3)
    draw_bands(fig)
    integer_ticks(axes.flat[0].xaxis)
    if log_y:  # once, on the shared axis
        _log_axis_around_means(axes.flat[0], agg["mean"].to_numpy(dtype=float), CHANCE_LOSS)
    chance = CHANCE_LOSS if scale == "log" else CHANCE_ACC if scale == "fraction" else None
    if scale == "fraction":
        axes.flat[0].set_ylim(*_data_limits(agg[["ci_low", "ci_high", "mean"]].to_numpy(dtype=float).ravel(),
                                            CHANCE_ACC))
    if chance is not None:
        for ax in axes.flat[:len(panels)]:
            _chance_line(ax, chance)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("loss" if scale == "log" else "accuracy" if scale == "fraction" else metrics[0])
    _hide_unused(axes, len(panels))
    entries = legend_entries(axes, levels(agg, design.hue))
    entries.update({f"{metrics[0]} (solid)": Line2D([], [], color="0.3", lw=1.4),
                    f"{metrics[1]} (dashed)": Line2D([], [], color="0.3", lw=1.4, ls="--")})
    what = {"log": "loss", "fraction": "accuracy"}.get(scale, "curves")
    chance_text = {"log": "; dotted: chance, ln 10", "fraction": "; dotted: chance, 0.1"}.get(scale, "")
    return finish(fig, f"Learning curves ({what}): {metrics[0]} (solid), {metrics[1]} (dashed); mean and {BAND}"
                       + chance_text, entries, design.hue)


def _mark_zeros(ax, agg: pd.DataFrame, color) -> bool:
    """Layers whose value is exactly 0 (in any seed) as a marker on the log axis' bottom edge."""
    zeros = agg[agg["n_zero"] > 0]
    if zeros.empty:
        return False
    edge = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    ax.plot(zeros["layer"], np.full(len(zeros), 0.02), "v", color=color, ms=6, mec="black", mew=0.5,
            transform=edge, clip_on=False, label="= 0 (some or all seeds)")
    return True


def layer_profile(layers: pd.DataFrame, runs: pd.DataFrame, design: Design, stat: str = "grad_norm",
                  log_y: bool | None = None, theory: pd.DataFrame | None = None) -> Figure:
    """``stat`` (grad_norm, act_std, act_saturation, act_mean) against layer index (1 = input side),
    at initialisation and after training; one panel per design.x level and phase (wrapped into at most
    ``MAX_COLS`` columns), one line per hue. With depth as a facet, only the deepest networks are drawn
    (where vanishing shows). Log axes (norms, stds) use geometric means and mark exact zeros. ``theory``
    (rows run_id, layer, value: ``theory_plots.predicted_profile``) adds the prediction at
    initialisation as dashed lines (mean over seeds)."""
    frame = with_params(layers[layers["stat"] == stat], runs, design.by)
    frame, suffix = deepest(frame, design)
    scale = metric_scale(stat)
    log_y = scale == "log" if log_y is None else log_y
    x_levels = levels(frame, design.x) if design.x else [None]
    n_cols = min(len(x_levels), MAX_COLS)
    block = math.ceil(len(x_levels) / n_cols)  # rows per phase
    fig, axes = grid(2 * block, n_cols, 2.6, 2.2, sharex=True, sharey=True,
                     panel_title_lines=2 if design.x else 1)
    colors = _palette(frame, design.hue)
    any_zero = False
    for i, phase in enumerate(PHASES):
        snap = at_step(frame, phase)
        for j, c in enumerate(x_levels):
            ax = axes[i * block + j // n_cols, j % n_cols]
            part = snap if c is None else snap[snap[design.x] == c]
            for hue in levels(frame, design.hue):
                rows = part[part[design.hue] == hue]
                if len(rows):
                    agg = aggregate(rows, ["layer"], "value", scale=scale)
                    shown = agg[agg["mean"] > 0] if log_y else agg
                    _band(ax, shown, "layer", colors[hue], str(hue), marker="o")
                    if log_y:
                        any_zero |= _mark_zeros(ax, agg, colors[hue])
                    predicted = None if theory is None or phase != "init" else theory[
                        theory["run_id"].isin(rows["run_id"])]
                    if predicted is not None and len(predicted):
                        mean = predicted.groupby("layer")["value"].mean()
                        ax.plot(mean.index, mean.to_numpy(), "--", color=colors[hue], lw=1.2,
                                label="mean-field theory" if hue == levels(frame, design.hue)[0] else "_nolegend_")
            head = f"{design.x}={c}\n" if c is not None else ""
            ax.set_title(head + PHASES[phase], fontsize=8)
            if log_y:
                ax.set_yscale("log")
            ax.grid(alpha=0.3, which="major")
        for j in range(len(x_levels), block * n_cols):  # unused cells of this phase's block
            axes[i * block + j // n_cols, j % n_cols].set_visible(False)
    if scale == "fraction":
        axes.flat[0].set_ylim(-0.03, 1.03)
    for ax in axes[:, 0]:
        ax.set_ylabel(STAT_LABELS.get(stat, stat))
    draw_bands(fig)
    for ax in axes[-1]:
        ax.set_xlabel("layer (1 = nearest the input)")
    integer_ticks(axes.flat[0].xaxis)
    entries = legend_entries(axes, levels(frame, design.hue))
    how = "geometric mean and 95% CI over seeds (log-space)" if scale == "log" else f"mean and {BAND}"
    dashed = "; dashed: mean-field theory" if theory is not None and len(theory) else ""
    return finish(fig, f"{STAT_LABELS.get(stat, stat)} by layer{suffix}: {how}{dashed}"
                       + ("; ▼ at the bottom edge = exactly\u00a00, which a log axis cannot show" if any_zero else ""),
                  entries, design.hue)
