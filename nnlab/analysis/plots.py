"""The study's figures, shared by the notebooks and ``nnlab.report``. Every function takes frames
from ``nnlab.analysis`` and a ``Design`` and returns a matplotlib Figure; numbers come from
``aggregate`` (mean and 95% t-interval over seeds), so a figure and the summary table agree."""
from __future__ import annotations

import math
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from .design import Design, deepest, levels
from .records import at_step, with_params
from .stats import aggregate

PHASES = {"init": "at initialisation (epoch 0)", "last": "after training (last epoch)"}
STAT_LABELS = {"grad_norm": "gradient L2 norm", "act_std": "activation std",
               "act_saturation": "saturated / dead fraction", "act_mean": "activation mean"}


def _palette(frame: pd.DataFrame, hue: str) -> dict:
    names = levels(frame, hue)
    return dict(zip(names, sns.color_palette("colorblind", len(names))))


def _grid(n_panels: int, max_cols: int = 3, width: float = 3.6, height: float = 3.0, sharey: bool = True):
    n_cols = max(1, min(n_panels, max_cols))
    n_rows = math.ceil(n_panels / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows), squeeze=False,
                             sharey=sharey)
    return fig, axes


def _legend(fig: Figure, axes: np.ndarray, title: str) -> None:
    handles, labels = axes.flat[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in axes.flat:
        if ax.get_legend():
            ax.get_legend().remove()
    if max(map(len, seen), default=0) > 20:  # long labels (a folded "config") go below, not beside
        fig.set_figwidth(max(fig.get_figwidth(), 0.09 * max(map(len, seen)) + 2))
        fig.set_figheight(fig.get_figheight() + 0.25 * len(seen))
        fig.legend(seen.values(), seen.keys(), title=title, loc="outside lower center", frameon=False)
    else:
        fig.legend(seen.values(), seen.keys(), title=title, loc="outside right center", frameon=False)


def final_accuracy(runs: pd.DataFrame, design: Design, metric: str = "test_acc") -> Figure:
    """Mean ``metric`` per configuration with 95% CI over seeds: x = design.x, one marker per hue,
    one panel per design.col."""
    if design.x is None and design.col is None:
        return _final_accuracy_rows(runs, design, metric)
    x = design.x or design.hue
    agg = aggregate(runs, design.by, metric)
    panels = levels(agg, design.col) if design.col else [None]
    fig, axes = _grid(len(panels), width=max(3.2, 0.9 * len(levels(agg, x)) + 1.5))
    fig.set_layout_engine("constrained")
    colors, hues, xs = _palette(agg, design.hue), levels(agg, design.hue), levels(agg, x)
    offsets = np.linspace(-0.25, 0.25, len(hues)) if len(hues) > 1 and design.x else np.zeros(len(hues))
    for ax, panel in zip(axes.flat, panels):
        part = agg if panel is None else agg[agg[design.col] == panel]
        for offset, hue in zip(offsets, hues):
            rows = part[part[design.hue] == hue].set_index(x).reindex(xs)
            pos = np.arange(len(xs)) + offset
            # an interval over 3 seeds can reach past [0, 1]; accuracy cannot, so the bars stop there
            err = np.vstack([rows["mean"] - rows["ci_low"].clip(lower=0), rows["ci_high"].clip(upper=1) - rows["mean"]])
            ax.errorbar(pos, rows["mean"], yerr=np.nan_to_num(err), fmt="o", capsize=3, color=colors[hue],
                        label=str(hue))
        ax.set_xticks(np.arange(len(xs)), [str(v) for v in xs], rotation=30 if len(xs) > 4 else 0)
        ax.set_title(f"{design.col} = {panel}" if panel is not None else "")
        ax.set_xlabel(x)
        ax.axhline(0.1, color="grey", lw=0.8, ls=":")  # chance on 10 classes
        ax.set_ylim(-0.05, 1.05)  # a t-interval over 3 seeds can reach past [0, 1]; accuracy cannot
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{metric} (mean, 95% CI)")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    _legend(fig, axes, design.hue)
    fig.suptitle(f"Final {metric} per configuration (dotted: chance)")
    return fig


def _final_accuracy_rows(runs: pd.DataFrame, design: Design, metric: str) -> Figure:
    """One configuration per row (for designs with a single, possibly long-labelled factor)."""
    agg = aggregate(runs, [design.hue], metric).sort_values("mean")
    labels = [str(v) for v in agg[design.hue]]
    fig, ax = plt.subplots(figsize=(5 + 0.07 * max(map(len, labels)), 0.45 * len(agg) + 1.4), layout="constrained")
    colors = _palette(agg, design.hue)
    for pos, (_, row) in enumerate(agg.iterrows()):
        err = [[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]]
        ax.errorbar(row["mean"], pos, xerr=np.nan_to_num(err), fmt="o", capsize=3, color=colors[row[design.hue]])
        ax.annotate(f"{row['mean']:.3f}", (row["mean"], pos), textcoords="offset points", xytext=(0, 7),
                    ha="center", fontsize=8)
    ax.set_yticks(np.arange(len(agg)), labels)
    ax.set_xlabel(f"{metric} (mean, 95% CI over seeds)")
    ax.axvline(0.1, color="grey", lw=0.8, ls=":")
    ax.set_xlim(min(0.0, ax.get_xlim()[0]), 1.02)
    ax.set_ylim(-0.7, len(agg) - 0.3)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Final {metric} per configuration (dotted: chance)")
    return fig


def accuracy_heatmap(runs: pd.DataFrame, design: Design, metric: str = "test_acc") -> Figure:
    """Mean ``metric`` as a heatmap: rows = hue (x hue when both), columns = col (or x)."""
    agg = aggregate(runs, design.by, metric)
    if design.col:
        rows, cols = [design.hue] + ([design.x] if design.x else []), design.col
    elif design.x:
        rows, cols = [design.hue], design.x
    else:
        rows, cols = [design.hue], None
    table = agg.pivot_table(index=rows, columns=cols, values="mean") if cols else agg.set_index(rows)[["mean"]]
    label_chars = max(len(" / ".join(map(str, k if isinstance(k, tuple) else (k,)))) for k in table.index)
    fig, ax = plt.subplots(figsize=(1.0 * table.shape[1] + 3 + 0.07 * label_chars, 0.45 * table.shape[0] + 1.5),
                           layout="constrained")
    with warnings.catch_warnings():  # seaborn draws once before the layout is final; the saved figure is fine
        warnings.filterwarnings("ignore", "constrained_layout not applied", UserWarning)
        sns.heatmap(table, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", ax=ax,
                    cbar_kws={"label": f"mean {metric}"})
    ax.set_ylabel(" / ".join(rows))
    ax.set_xlabel(cols or "")
    ax.set_title(f"Mean {metric} over seeds")
    return fig


def _band(ax, agg: pd.DataFrame, x: str, color, label: str, style: str = "-",
          band: tuple[str, str] = ("ci_low", "ci_high")) -> None:
    low, high = band
    ax.plot(agg[x], agg["mean"], style, color=color, label=label, lw=1.5)
    ax.fill_between(agg[x], agg[low].fillna(agg["mean"]), agg[high].fillna(agg["mean"]), color=color,
                    alpha=0.2, lw=0)


def learning_curves(history: pd.DataFrame, runs: pd.DataFrame, design: Design,
                    metrics: tuple[str, str] = ("train_loss", "val_loss"), log_y: bool = True) -> Figure:
    """Per-epoch ``metrics`` (solid = first, dashed = second): mean over seeds, band = the seeds' range
    (min to max: always positive on a log axis, unlike a t-interval over 3 seeds); rows = design.x,
    columns = design.col, one colour per hue."""
    frame = with_params(history[history["metric"].isin(metrics)], runs, design.by)
    agg = aggregate(frame, [*design.by, "metric", "step"], "value")
    row_levels = levels(agg, design.x) if design.x else [None]
    col_levels = levels(agg, design.col) if design.col else [None]
    fig, axes = plt.subplots(len(row_levels), len(col_levels), figsize=(3.0 * len(col_levels) + 1.5,
                             2.4 * len(row_levels) + 0.8), squeeze=False, sharex=True, sharey=True,
                             layout="constrained")
    colors = _palette(agg, design.hue)
    for i, r in enumerate(row_levels):
        for j, c in enumerate(col_levels):
            ax = axes[i, j]
            part = agg
            if r is not None:
                part = part[part[design.x] == r]
            if c is not None:
                part = part[part[design.col] == c]
            for hue in levels(agg, design.hue):
                for metric, style in zip(metrics, ("-", "--")):
                    rows = part[(part[design.hue] == hue) & (part["metric"] == metric)]
                    if len(rows):
                        _band(ax, rows, "step", colors[hue], str(hue) if style == "-" else "_nolegend_", style,
                              band=("min", "max"))
            title = " · ".join(f"{k}={v}" for k, v in ((design.x, r), (design.col, c)) if v is not None)
            ax.set_title(title, fontsize=9)
            if log_y:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("loss")
    _legend(fig, axes, design.hue)
    fig.suptitle(f"Learning curves: {metrics[0]} (solid), {metrics[1]} (dashed)\nmean over seeds, "
                 "band = min to max")
    return fig


def layer_profile(layers: pd.DataFrame, runs: pd.DataFrame, design: Design, stat: str = "grad_norm",
                  log_y: bool | None = None, theory: pd.DataFrame | None = None) -> Figure:
    """``stat`` (grad_norm, act_std, act_saturation, act_mean) against layer index (1 = input side),
    at initialisation (top row) and after training (bottom row); columns = design.x, one line per hue.
    With depth as a facet, only the deepest networks are drawn (where vanishing shows). ``theory``
    (rows run_id, layer, value: ``theory_plots.predicted_profile``) adds the prediction at
    initialisation as dashed lines (mean over seeds)."""
    frame = with_params(layers[layers["stat"] == stat], runs, design.by)
    frame, suffix = deepest(frame, design)
    log_y = stat in ("grad_norm", "act_std") if log_y is None else log_y  # both span decades
    col_levels = levels(frame, design.x) if design.x else [None]
    fig, axes = plt.subplots(2, len(col_levels), figsize=(3.3 * len(col_levels) + 1.5, 5.6), squeeze=False,
                             sharex=True, sharey="row" if log_y else True, layout="constrained")
    colors = _palette(frame, design.hue)
    for i, phase in enumerate(PHASES):
        snap = at_step(frame, phase)
        for j, c in enumerate(col_levels):
            ax = axes[i, j]
            part = snap if c is None else snap[snap[design.x] == c]
            for hue in levels(frame, design.hue):
                rows = part[part[design.hue] == hue]
                if len(rows):
                    agg = aggregate(rows, ["layer"], "value")
                    if log_y:  # a band reaching zero or below cannot be drawn on a log axis
                        agg["ci_low"] = agg["ci_low"].where(agg["ci_low"] > 0, agg["mean"])
                    _band(ax, agg, "layer", colors[hue], str(hue))
                    ax.plot(agg["layer"], agg["mean"], "o", color=colors[hue], ms=3)
                    predicted = None if theory is None or phase != "init" else theory[
                        theory["run_id"].isin(rows["run_id"])]
                    if predicted is not None and len(predicted):
                        mean = predicted.groupby("layer")["value"].mean()
                        ax.plot(mean.index, mean.to_numpy(), "--", color=colors[hue], lw=1.2,
                                label="mean-field theory" if hue == levels(frame, design.hue)[0] else "_nolegend_")
            if log_y:
                ax.set_yscale("log")
            ax.set_title(f"{design.x}={c}\n{PHASES[phase]}" if c is not None else PHASES[phase], fontsize=9)
            ax.grid(alpha=0.3, which="both" if not log_y else "major")
        axes[i, 0].set_ylabel(STAT_LABELS.get(stat, stat))
    for ax in axes[-1]:
        ax.set_xlabel("layer (1 = nearest the input)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    _legend(fig, axes, design.hue)
    dashed = "\n(dashed: mean-field theory)" if theory is not None and len(theory) else ""
    fig.suptitle(f"{STAT_LABELS.get(stat, stat)} by layer{suffix}: mean and 95% CI over seeds{dashed}")
    return fig
