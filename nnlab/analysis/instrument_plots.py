"""Figures of the training instruments (``update_ratio``, ``dist_init``, ``grad_noise_scale``, ``sharpness``)
and the edge-of-stability reading, shared by ``nnlab.report`` and the notebooks.

Inputs are the tidy frames of ``nnlab.analysis``: ``history`` (run_id, metric, step, value) and ``runs``
(one row per run, with a ``design.by`` label); seeds of one configuration are averaged (mean line) with their
range as a band."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from . import plots
from .design import Design, deepest, levels
from .records import name_parts
from .stats import config_label

LAYER_INSTRUMENTS = {"update_ratio": "Update ratio ||dW|| / ||W|| of the epoch's last step",
                     "dist_init": "Distance from initialisation ||W - W0|| / ||W0||"}
_LAYER_RE = r"^(?P<stat>update_ratio|dist_init)/layer_(?P<layer>\d+)$"


def has_metric(history: pd.DataFrame, prefix: str) -> bool:
    """Whether any run logged a metric named ``prefix`` or ``prefix/...``."""
    names = history["metric"]
    return bool((names == prefix).any() or names.str.startswith(prefix + "/").any())


def _labelled(frame: pd.DataFrame, runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    label = config_label(runs, by) if by else pd.Series("all runs", index=runs.index)
    return frame.merge(runs[["run_id", *by]].assign(label=label.values), on="run_id", how="inner")


def _band(ax, frame: pd.DataFrame, color, label: str, **style) -> None:
    """Mean over seeds as a line, min..max as a band (on a log axis both stay positive)."""
    agg = frame.groupby("step")["value"].agg(["mean", "min", "max"])
    ax.plot(agg.index, agg["mean"], color=color, lw=1.4, label=label, **style)
    if frame["run_id"].nunique() > 1:
        plots.band(ax, agg.index, agg["min"], agg["max"], color, alpha=0.2)


# Which layers a panel draws: every layer of a net with at most four, else four that tell the story —
# the first (input side), the middle, the last hidden layer and the readout — each in its own colour,
# with the same name in every panel (a depth-16 net drew 17 similar greens and a legend of two).
LAYER_ROLES = ("layer 1 (input side)", "middle hidden layer", "last hidden layer", "output layer (readout)")


def layer_roles(n_layers: int) -> dict[str, int]:
    """Role name -> layer index (1-based) of a net with ``n_layers`` weight layers (hidden + readout)."""
    picks = {LAYER_ROLES[0]: 1, LAYER_ROLES[1]: (n_layers + 1) // 2 if n_layers >= 4 else None,
             LAYER_ROLES[2]: n_layers - 1 if n_layers >= 3 else None, LAYER_ROLES[3]: n_layers}
    return {role: layer for role, layer in picks.items() if layer is not None}


def _grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns for ``n`` panels: one row up to four, else near-square, at most four across."""
    n_cols = n if n <= 4 else min(4, math.ceil(math.sqrt(n)))
    return math.ceil(n / n_cols), n_cols


def layer_instrument(history: pd.DataFrame, runs: pd.DataFrame, design: Design, stat: str) -> Figure:
    """``update_ratio`` or ``dist_init`` over epochs (x), one panel per configuration (with depth as a facet,
    the deepest networks only), one colour per layer role (``layer_roles``), log y; mean over seeds and
    their min..max band."""
    parts = name_parts(history["metric"], _LAYER_RE)
    frame = history.assign(stat=parts["stat"], layer=parts["layer"]).query("stat == @stat")
    frame = _labelled(frame.astype({"layer": "int64"}), runs, design.by)
    frame, suffix = deepest(frame, design)
    frame = frame.assign(n_layers=frame.groupby("run_id")["layer"].transform("max"))
    zero = frame["value"] <= 0  # vanished to exactly 0: off the log axis, named in the panel's title
    frame, zeros = frame[~zero], frame[zero]
    configs = levels(frame, "label")
    n_rows, n_cols = _grid_shape(len(configs))
    fig, axes = plots.grid(n_rows, n_cols, 2.6, 2.0, sharex=True, sharey=True, panel_title_lines=2)
    colors = dict(zip(LAYER_ROLES, plots.color_palette("colorblind", len(LAYER_ROLES))))
    for ax, config in zip(axes.flat, configs):
        sub = frame[frame["label"] == config]
        n_layers = int(max(sub["n_layers"].max(), zeros.loc[zeros["label"] == config, "n_layers"].max()
                               if (zeros["label"] == config).any() else 0))
        roles = layer_roles(n_layers)
        absent = []
        for role, layer in roles.items():
            rows = sub[sub["layer"] == layer]
            if len(rows):
                _band(ax, rows, colors[role], role)
            else:
                absent.append(str(layer))
        ax.set_yscale("log")
        shown = ", ".join(str(v) for v in roles.values())
        gone = f"; {', '.join(absent)} always 0" if absent else ""
        ax.set_title(f"{config}\nlayers {shown} of {n_layers}{gone}", fontsize=8)
        ax.grid(alpha=0.3)
    plots.draw_bands(fig)
    for ax in axes.flat[len(configs):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    plots.integer_ticks(axes.flat[0].xaxis)
    for ax in axes[:, 0]:
        ax.set_ylabel(stat)
    entries = plots.legend_entries(axes, LAYER_ROLES)
    return plots.finish(fig, f"{LAYER_INSTRUMENTS[stat]} by epoch{suffix}: mean over seeds, band = their "
                             f"min..max; log scale (a layer whose value is 0 is named in its panel's title)",
                        entries, "layer")


def grad_noise_scale(history: pd.DataFrame, runs: pd.DataFrame, design: Design) -> Figure:
    """The gradient noise scale B_simple over epochs: one panel per (design.x, design.col) — with depth as the
    facet, per design.x at the deepest depth — one line per hue (mean over seeds, min..max band), log y."""
    frame = _labelled(history[(history["metric"] == "grad_noise_scale") & (history["value"] > 0)], runs, design.by)
    frame, suffix = deepest(frame, design)  # with depth as a facet: the deepest nets, one row of panels
    if suffix:
        design = Design(design.hue, design.x, None, design.factors)
    panels, n_rows, n_cols = plots.panel_layout(design, frame)
    fig, axes = plots.grid(n_rows, n_cols, 2.6, 2.0, sharex=True, sharey=True,
                           panel_title_lines=sum(v is not None for v in (design.x, design.col)) or 1)
    hues = levels(frame, design.hue)
    colors = plots.palette(hues)
    for ax, (r, c) in zip(axes.flat, panels):
        part = frame
        if r is not None:
            part = part[part[design.x] == r]
        if c is not None:
            part = part[part[design.col] == c]
        for hue in hues:
            rows = part[part[design.hue] == hue]
            if len(rows):
                _band(ax, rows, colors[hue], str(hue))
        ax.set_yscale("log")
        ax.set_title(plots.panel_title(design, r, c), fontsize=8)
        ax.grid(alpha=0.3)
    plots.draw_bands(fig)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    plots.integer_ticks(axes.flat[0].xaxis)
    for ax in axes[:, 0]:
        ax.set_ylabel("B_simple (samples)")
    return plots.finish(fig, f"Gradient noise scale B_simple = tr(Σ) / |G|²{suffix}, the batch size beyond which "
                             "larger batches stop helping: mean over seeds, band = their min..max (log scale)",
                        plots.legend_entries(axes, hues), design.hue)


def _eos_frame(history: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    keep = history["metric"].isin(["sharpness", "train_loss"])
    cols = ["run_id", "activation", "optimizer.lr"]
    return history[keep].merge(runs[cols], on="run_id", how="inner")


def edge_of_stability(history: pd.DataFrame, runs: pd.DataFrame) -> Figure:
    """Per activation (row): sharpness over epochs with its 2/lr line per learning rate (left, log y) beside
    the training loss (right, log y). Runs need ``sharpness``; ``runs`` needs ``activation``, ``optimizer.lr``."""
    frame = _eos_frame(history, runs)
    acts = levels(frame, "activation")
    lrs = levels(frame, "optimizer.lr")
    colors = dict(zip(lrs, plots.color_palette("flare", len(lrs))))
    fig, axes = plots.grid(len(acts), 2, 4.2, 2.6, sharex=True, panel_title_lines=1, legend_w=1.2)
    for row, act in zip(axes, acts):
        for lr in lrs:
            sub = frame[(frame["activation"] == act) & (frame["optimizer.lr"] == lr)]
            sharp = sub[sub["metric"] == "sharpness"]
            if len(sharp):
                _band(row[0], sharp, colors[lr], f"lr {lr:g}")
                row[0].axhline(2 / lr, color=colors[lr], ls="--", lw=1, label="_2/lr")
            loss = sub[(sub["metric"] == "train_loss") & (sub["value"] > 0)]
            if len(loss):
                _band(row[1], loss, colors[lr], f"lr {lr:g}")
        row[0].set_yscale("log")
        row[0].set_ylabel(f"{act}: sharpness λ_max")
        row[0].set_title(f"{act}: top Hessian eigenvalue (dashed: 2 / lr)", fontsize=9)
        row[1].set_yscale("log")
        row[1].set_ylabel("train_loss")
        row[1].set_title(f"{act}: training loss (full-batch gradient descent)", fontsize=9)
        for ax in row:
            ax.grid(alpha=0.3, which="both")
    plots.draw_bands(fig)
    for ax in axes[-1]:
        ax.set_xlabel("epoch = one gradient-descent step")
    plots.integer_ticks(axes.flat[0].xaxis)
    entries = plots.legend_entries(axes, [f"lr {lr:g}" for lr in lrs])
    entries["2 / lr (dashed)"] = Line2D([], [], color="0.3", ls="--", lw=1)
    return plots.finish(fig, "Edge of stability: sharpness (mean over seeds, band = min..max) against 2 / lr, "
                             "beside the training loss", entries, "learning rate")


def edge_reading(history: pd.DataFrame, runs: pd.DataFrame, near: float = 0.9) -> list[str]:
    """One sentence per (activation, lr), computed from the record: whether sharpness * lr / 2 started beyond
    the edge (> 1.1) and when it came down, or when it first reached ``near``; how often it stayed within
    [near, 1.1]; the final value; on how many steps the training loss rose. Means over seeds."""
    frame = _eos_frame(history, runs)
    out = []
    for (act, lr), sub in frame.groupby(["activation", "optimizer.lr"]):
        sharp = sub[sub["metric"] == "sharpness"].groupby("step")["value"].mean()
        loss = sub[sub["metric"] == "train_loss"].groupby("step")["value"].mean()
        if sharp.empty:
            continue
        ratio = sharp * lr / 2
        # epochs >= 1 report the running mean over the epoch's batches: under full-batch gradient descent that is
        # the loss at the weights the step started from, so epochs 1, 2, ... are L(theta_0), L(theta_1), ...
        steps = loss[loss.index >= 1].diff().dropna()
        tail = (f"final sharpness {sharp.iloc[-1]:.3g} (sharpness·lr/2 = {ratio.iloc[-1]:.2f}, epoch "
                f"{int(ratio.index[-1])}); the training loss rose on {int((steps > 0).sum())} of {len(steps)} steps.")
        head = f"{act}, lr {lr:g} (2/lr = {2 / lr:.3g}): sharpness {sharp.iloc[0]:.3g} at epoch 0 "
        if ratio.iloc[0] > 1.1:
            back = ratio.index[ratio <= 1.1]
            when = f"fell to the edge or below (≤ 1.1) by epoch {int(back[0])}" if len(back) else "never came back"
            inside = float(np.mean((ratio >= near) & (ratio <= 1.1)))
            out.append(f"{head}— beyond the edge from the start (sharpness·lr/2 = {ratio.iloc[0]:.2f}, at most "
                       f"{ratio.max():.2f} at epoch {int(ratio.idxmax())}); it {when} and was within [{near:g}, 1.1] "
                       f"in {inside:.0%} of the measurements; {tail}")
            continue
        first = ratio.index[ratio >= near]
        if len(first) == 0:
            out.append(f"{head}(sharpness·lr/2 = {ratio.iloc[0]:.2f}, at most {ratio.max():.2f} at epoch "
                       f"{int(ratio.idxmax())}) — it never reached the edge (≥ {near:g}); {tail}")
            continue
        start = int(first[0])
        after = ratio[ratio.index >= start]
        inside = float(np.mean((after >= near) & (after <= 1.1)))
        out.append(f"{head}(sharpness·lr/2 = {ratio.iloc[0]:.2f}) — it reached the edge (≥ {near:g}) at epoch {start} "
                   f"and was within [{near:g}, 1.1] in {inside:.0%} of the measurements from then on; {tail}")
    return out
