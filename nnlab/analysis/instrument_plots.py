"""Figures of the training instruments (``update_ratio``, ``dist_init``, ``grad_noise_scale``, ``sharpness``)
and the edge-of-stability reading, shared by ``nnlab.report`` and the notebooks.

Inputs are the tidy frames of ``nnlab.analysis``: ``history`` (run_id, metric, step, value) and ``runs``
(one row per run, with a ``design.by`` label); seeds of one configuration are averaged (mean line) with their
range as a band."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from .design import Design, levels
from .stats import config_label

LAYER_INSTRUMENTS = {"update_ratio": "update ratio ||dW|| / ||W|| (last step of the epoch)",
                     "dist_init": "distance from init ||W - W0|| / ||W0||"}
_LAYER_RE = r"^(?P<stat>update_ratio|dist_init)/layer_(?P<layer>\d+)$"


def has_metric(history: pd.DataFrame, prefix: str) -> bool:
    """Whether any run logged a metric named ``prefix`` or ``prefix/...``."""
    names = history["metric"]
    return bool((names == prefix).any() or names.str.startswith(prefix + "/").any())


def _labelled(frame: pd.DataFrame, runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    label = config_label(runs, by) if by else pd.Series("all runs", index=runs.index)
    return frame.merge(runs[["run_id"]].assign(label=label.values), on="run_id", how="inner")


def _band(ax, frame: pd.DataFrame, color, label: str) -> None:
    """Mean over seeds as a line, min..max as a band (on a log axis both stay positive)."""
    agg = frame.groupby("step")["value"].agg(["mean", "min", "max"])
    ax.plot(agg.index, agg["mean"], color=color, lw=1.4, label=label)
    if len(frame["run_id"].unique()) > 1:
        ax.fill_between(agg.index, agg["min"], agg["max"], color=color, alpha=0.2, lw=0)


def layer_instrument(history: pd.DataFrame, runs: pd.DataFrame, design: Design, stat: str) -> Figure:
    """``update_ratio`` or ``dist_init`` by layer (colour) and epoch (x), one panel per configuration, log y."""
    parts = history["metric"].str.extract(_LAYER_RE)
    frame = history.assign(stat=parts["stat"], layer=parts["layer"]).query("stat == @stat")
    frame = frame[frame["value"] > 0].astype({"layer": "int64"})
    frame = _labelled(frame, runs, design.by)
    configs = levels(frame, "label")
    n_cols = min(4, len(configs))
    n_rows = -(-len(configs) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.4 * n_cols, 2.8 * n_rows + 0.6), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    layers = levels(frame, "layer")
    colors = dict(zip(layers, sns.color_palette("viridis", len(layers))))
    for ax, config in zip(axes.flat, configs):
        sub = frame[frame["label"] == config]
        for layer in layers:
            rows = sub[sub["layer"] == layer]
            if len(rows):
                _band(ax, rows, colors[layer], f"layer {layer}")
        ax.set_yscale("log")
        ax.set_title(config, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(configs):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel(stat)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, title="layer (1 = input side)", loc="outside right center", frameon=False)
    fig.suptitle(LAYER_INSTRUMENTS[stat])
    return fig


def grad_noise_scale(history: pd.DataFrame, runs: pd.DataFrame, design: Design) -> Figure:
    """The gradient noise scale B_simple over epochs, one line per configuration (mean over seeds), log y."""
    frame = _labelled(history[(history["metric"] == "grad_noise_scale") & (history["value"] > 0)], runs, design.by)
    configs = levels(frame, "label")
    fig, ax = plt.subplots(figsize=(7.5, 4.0), layout="constrained")
    colors = dict(zip(configs, sns.color_palette("colorblind", len(configs))))
    for config in configs:
        _band(ax, frame[frame["label"] == config], colors[config], config)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("B_simple = tr(Σ) / |G|²  (samples)")
    ax.set_title("Gradient noise scale: the batch size beyond which larger batches stop helping")
    ax.grid(alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right center", frameon=False, fontsize=8)
    return fig


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
    colors = dict(zip(lrs, sns.color_palette("flare", len(lrs))))
    fig, axes = plt.subplots(len(acts), 2, figsize=(11, 3.3 * len(acts) + 0.4), squeeze=False, sharex=True,
                             layout="constrained")
    for row, act in zip(axes, acts):
        for lr in lrs:
            sub = frame[(frame["activation"] == act) & (frame["optimizer.lr"] == lr)]
            sharp = sub[sub["metric"] == "sharpness"]
            if len(sharp):
                _band(row[0], sharp, colors[lr], f"lr {lr:g}")
                row[0].axhline(2 / lr, color=colors[lr], ls="--", lw=1)
            loss = sub[(sub["metric"] == "train_loss") & (sub["value"] > 0)]
            if len(loss):
                _band(row[1], loss, colors[lr], f"lr {lr:g}")
        row[0].set_yscale("log")
        row[0].set_ylabel(f"{act}: sharpness λ_max")
        row[0].set_title(f"{act}: top Hessian eigenvalue (dashed: 2 / lr)", fontsize=10)
        row[1].set_yscale("log")
        row[1].set_ylabel("train_loss")
        row[1].set_title(f"{act}: training loss (full-batch gradient descent)", fontsize=10)
        for ax in row:
            ax.grid(alpha=0.3, which="both")
    for ax in axes[-1]:
        ax.set_xlabel("epoch = one gradient-descent step")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, title="learning rate", loc="outside right center", frameon=False)
    return fig


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
