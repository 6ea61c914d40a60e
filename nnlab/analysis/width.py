"""Width and parametrisation: the coordinate check, learning-rate transfer, and the tuned view.

Inputs are the tidy frames of ``nnlab.analysis``: ``runs`` (one row per run, ``load_runs``) and ``history``
(``run_id, metric, step, value``, ``load_history``; the coordinate check's ``coord/*`` rows have step =
optimiser step). Columns named by the record: ``model.parametrization``, ``model.width``, ``optimizer``,
``optimizer.lr``, ``seed``. Every function returns a frame or a matplotlib Figure; none trains.

- Coordinate check (mup's picture): mean |h| of each hidden layer and of the logits on a fixed batch, after
  t optimiser steps, against width on a log2 axis, one line per layer (mean over seeds), one panel per step;
  ``coord_slopes`` fits log|h| against log width: 0 is width-independent (muP), > 0 grows (SP).
- Learning-rate transfer (TP-V Figure 3 in miniature): the training loss after the budget against log2 lr,
  one curve per width; each width's optimum is a quadratic fit of log(loss) in log2 lr on the grid points
  around each seed's best, then mean and interval over seeds; ``transfer_table`` says how many octaves the
  optimum moved from the narrowest to the widest net and whether wider was better at its tuned rate.
- Tuned view: any sweep with an ``optimizer.lr`` axis, each configuration at its best validation lr
  (chosen on the mean over seeds), reported on test, with the chosen lr shown.
"""
from __future__ import annotations

import math
import textwrap
from typing import Sequence

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .design import levels
from .plots import MAX_WIDTH, color_palette


# the width figures' own layout (constrained: a handful of panels; the report's big grids use plots.grid)
def _subplots(n_rows: int, n_cols: int, panel_w: float, panel_h: float, extra_w: float = 1.6, **kwargs):
    """A constrained-layout grid no wider than ``MAX_WIDTH`` (panels shrink to fit, down to 1.65 in)."""
    panel_w = max(1.65, min(panel_w, (MAX_WIDTH - extra_w) / n_cols))
    return plt.subplots(n_rows, n_cols, figsize=(panel_w * n_cols + extra_w, panel_h * n_rows + 0.9),
                        squeeze=False, layout="constrained", **kwargs)


def _title(fig: Figure, text: str, fontsize: float = 11) -> None:
    """A suptitle wrapped to the figure's width, so it never runs past the canvas."""
    chars = max(20, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))
    fig.suptitle(textwrap.fill(text, chars), fontsize=fontsize)


def _legend(fig: Figure, axes: np.ndarray, title: str) -> None:
    """One legend for the figure, an entry per labelled line of any panel, beside the panels."""
    seen: dict = {}
    for ax in axes.flat:
        handles, labels = ax.get_legend_handles_labels()
        seen.update((lab, h) for lab, h in zip(labels, handles) if lab not in seen and not lab.startswith("_"))
        if ax.get_legend():
            ax.get_legend().remove()
    if seen:
        fig.legend(seen.values(), seen.keys(), title=title, loc="outside right center", frameon=False)
from .records import name_parts, with_params
from .stats import SEED_KEYS, metric_scale, summarize, varying_params

PAR = "model.parametrization"
WIDTH = "model.width"
LR = "optimizer.lr"
SEED = "seed"
BY = (PAR, "optimizer")  # what a coordinate check or an lr-transfer study compares
_COORD_RE = r"^coord/(?:layer_(?P<layer>\d+)|(?P<logits>logits))$"
MAX_STEP_PANELS = 5


def _present(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The columns of ``columns`` that ``frame`` has and that take more than one value, or all present ones."""
    have = [c for c in columns if c in frame.columns]
    varying = [c for c in have if frame[c].astype(str).nunique(dropna=False) > 1]
    return varying or have[:1]


def _label(frame: pd.DataFrame, by: Sequence[str]) -> pd.Series:
    if not by:
        return pd.Series("all runs", index=frame.index)
    return frame[list(by)].astype(str).agg(" / ".join, axis=1)


# --- the coordinate check ----------------------------------------------------------------------

def coord_frame(history: pd.DataFrame, runs: pd.DataFrame, by: Sequence[str] = BY) -> pd.DataFrame:
    """The coordinate check's rows: ``run_id, <by>, model.width, seed, step, layer, value`` with ``layer`` =
    ``"layer 1"``, ... or ``"logits"``; finished runs only. ``by`` columns a study does not have are dropped."""
    parts = name_parts(history["metric"], _COORD_RE)
    keep = parts["layer"].notna() | parts["logits"].notna()
    if not keep.any():
        raise ValueError("history has no coord/* metrics: run the study with diagnostics.coord_steps > 0")
    rows = history.loc[keep].copy()
    layer = "layer " + parts.loc[keep, "layer"].fillna("")
    rows["layer"] = np.where(parts.loc[keep, "logits"].notna(), "logits", layer)
    finished = runs[~runs["failed"]] if "failed" in runs.columns else runs
    columns = [c for c in (*by, WIDTH, SEED) if c in runs.columns]
    out = with_params(rows, finished, columns)
    return out.astype({WIDTH: "int64"}).reset_index(drop=True)


def _layer_rank(layer: str) -> int:
    """Layers input side first, the logits last."""
    return 10**9 if layer == "logits" else int(layer.split()[-1])


def _layer_order(layers: Sequence[str]) -> list[str]:
    return sorted(layers, key=_layer_rank)


def coord_means(coord: pd.DataFrame, by: Sequence[str] = BY) -> pd.DataFrame:
    """Mean over seeds of each (config, step, layer, width): columns ``<by>, step, layer, model.width, mean, n``."""
    keys = [*_present(coord, by), "step", "layer", WIDTH]
    return coord.groupby(keys, dropna=False)["value"].agg(mean="mean", n="count").reset_index()


def coord_slopes(coord: pd.DataFrame, by: Sequence[str] = BY, step: int | None = None) -> pd.DataFrame:
    """Slope of log(mean |h|) against log(width), per config, step and layer (least squares on the seed means).

    0: the layer's coordinates do not depend on width; 0.5: they grow like sqrt(width); -0.5: they shrink like
    1/sqrt(width) (muP's logits at initialisation). ``step`` keeps one step (default: all)."""
    means = coord_means(coord, by)
    if step is not None:
        means = means[means["step"] == step]
    keys = [*_present(coord, by), "step", "layer"]
    rows = []
    for key, group in means.groupby(keys, dropna=False):
        group = group[group["mean"] > 0]
        slope = (float(np.polyfit(np.log(group[WIDTH]), np.log(group["mean"]), 1)[0])
                 if group[WIDTH].nunique() >= 2 else np.nan)
        rows.append({**dict(zip(keys, key)), "slope": slope, "widths": int(group[WIDTH].nunique()),
                     "width_min": int(group[WIDTH].min()), "width_max": int(group[WIDTH].max())})
    out = pd.DataFrame(rows).assign(_rank=lambda f: f["layer"].map(_layer_rank))
    return out.sort_values([*keys[:-1], "_rank"]).drop(columns="_rank").reset_index(drop=True)


def slope_table(coord: pd.DataFrame, by: Sequence[str] = BY, step: int | None = None) -> pd.DataFrame:
    """``coord_slopes`` at one step (default: the last recorded), one row per config, one column per layer."""
    step = int(coord["step"].max()) if step is None else step
    slopes = coord_slopes(coord, by, step)
    keys = _present(coord, by)
    table = slopes.pivot_table(index=keys, columns="layer", values="slope").reset_index()
    layers = _layer_order([c for c in table.columns if c not in keys])
    table = table[[*keys, *layers]]
    table.columns.name = None
    table.insert(len(keys), "step", step)
    return table


def _log_y_at_least(ax, values: np.ndarray, span: float = 4.0) -> None:
    """A log y axis around ``values`` spanning at least ``span`` times, so that flat lines look flat (not
    magnified noise), with plain numbers at 1-2-5 steps."""
    values = values[np.isfinite(values) & (values > 0)]
    ax.set_yscale("log")
    if not len(values):
        return
    low, high = values.min() / 1.3, values.max() * 1.3
    if high / low < span:
        centre = math.sqrt(low * high)
        low, high = centre / math.sqrt(span), centre * math.sqrt(span)
    ax.set_ylim(low, high)
    if high / low <= 1000:
        ax.yaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(mticker.NullFormatter())


def _log2_width_axis(ax, widths: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(widths), [str(w) for w in widths], rotation=45 if len(widths) > 5 else 0)
    ax.xaxis.set_minor_locator(mticker.NullLocator())


def coord_check_figure(coord: pd.DataFrame, by: Sequence[str] = BY, steps: Sequence[int] | None = None) -> Figure:
    """mup's coordinate check: one row per config (parametrisation x optimiser), one panel per optimiser step
    (at most ``MAX_STEP_PANELS``, spread from 0 to the last), width on a log2 axis, mean |h| on a log axis,
    one line per layer (mean over seeds; the band is the range of the seeds)."""
    keys = _present(coord, by)
    frame = coord.assign(config=_label(coord, keys))
    all_steps = levels(frame, "step")
    if steps is None:
        idx = np.unique(np.linspace(0, len(all_steps) - 1, min(MAX_STEP_PANELS, len(all_steps))).round().astype(int))
        steps = [all_steps[i] for i in idx]
    configs = levels(frame, "config")
    layers = _layer_order(levels(frame, "layer"))
    colors = dict(zip(layers, color_palette("viridis", len(layers))))
    widths = levels(frame, WIDTH)
    fig, axes = _subplots(len(configs), len(steps), 2.6, 2.3, sharex=True)
    agg = frame.groupby(["config", "step", "layer", WIDTH])["value"].agg(["mean", "min", "max"]).reset_index()
    for r, config in enumerate(configs):
        for c, step in enumerate(steps):
            ax = axes[r, c]
            part = agg[(agg["config"] == config) & (agg["step"] == step)]
            for layer in layers:
                rows = part[part["layer"] == layer].sort_values(WIDTH)
                if rows.empty:
                    continue
                style = "--" if layer == "logits" else "-"
                ax.plot(rows[WIDTH], rows["mean"], style, marker="o", ms=3, lw=1.3, color=colors[layer], label=layer)
                ax.fill_between(rows[WIDTH], rows["min"], rows["max"], color=colors[layer], alpha=0.15, lw=0)
            _log_y_at_least(ax, part["mean"].to_numpy(dtype=float))
            _log2_width_axis(ax, widths)
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(f"after {step} step{'s' if step != 1 else ''}" if step else "at initialisation (step 0)",
                             fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{config}\nmean |h|", fontsize=8)
            if r == len(configs) - 1:
                ax.set_xlabel("width")
    _legend(fig, axes, "layer")
    _title(fig, "Coordinate check: mean |value| on a fixed batch vs width (mean over seeds, band = seeds' range); "
                "flat in width = width-independent updates")
    return fig


# --- learning-rate transfer --------------------------------------------------------------------

def lr_frame(runs: pd.DataFrame, metric: str = "train_loss", by: Sequence[str] = BY) -> pd.DataFrame:
    """The lr-transfer rows: ``run_id, <by>, model.width, seed, optimizer.lr, log2_lr, <metric>, failed``
    (failed runs kept with their metric NaN: a diverged rate is part of the picture)."""
    missing = [c for c in (WIDTH, LR, metric) if c not in runs.columns]
    if missing:
        raise KeyError(f"runs frame has no column(s) {missing}; an lr-transfer study varies {WIDTH} and {LR}")
    columns = ["run_id", *[c for c in (*by, WIDTH, SEED) if c in runs.columns], LR, metric]
    out = runs[columns + (["failed"] if "failed" in runs.columns else [])].copy()
    if "failed" not in out.columns:
        out["failed"] = False
    out.loc[out["failed"], metric] = np.nan
    out["log2_lr"] = np.log2(out[LR].astype(float))
    return out.astype({WIDTH: "int64"}).reset_index(drop=True)


def fit_optimum(log2_lr: np.ndarray, value: np.ndarray, points: int = 5) -> dict[str, float | str | bool]:
    """The minimum of one seed's ``value`` (> 0) over an lr grid: a quadratic in log2 lr fitted to log(value)
    on up to ``points`` grid points centred on the best one (3 at least; missing values skipped).

    Returns ``log2_lr`` (the vertex, or the grid's best where the fit is not convex or its vertex leaves the
    fitted points), ``value`` there (the fitted value, or the grid's), ``method`` (``quadratic`` or ``grid``)
    and ``edge`` (the best grid point is the grid's first or last: the optimum may lie beyond it)."""
    order = np.argsort(log2_lr)
    x, y = np.asarray(log2_lr, float)[order], np.asarray(value, float)[order]
    ok = np.isfinite(y) & (y > 0)
    if not ok.any():
        return {"log2_lr": np.nan, "value": np.nan, "method": "none", "edge": False}
    x, y = x[ok], y[ok]
    best = int(np.argmin(y))
    edge = best in (0, len(x) - 1)
    half = points // 2
    lo, hi = max(0, best - half), min(len(x), best + half + 1)
    xs, ys = x[lo:hi], np.log(y[lo:hi])
    if len(xs) >= 3 and not edge:
        a, b, c = np.polyfit(xs, ys, 2)
        vertex = -b / (2 * a) if a > 0 else np.nan
        if a > 0 and xs[0] <= vertex <= xs[-1]:
            return {"log2_lr": float(vertex), "value": float(np.exp(np.polyval([a, b, c], vertex))),
                    "method": "quadratic", "edge": False}
    return {"log2_lr": float(x[best]), "value": float(y[best]), "method": "grid", "edge": bool(edge)}


def lr_optima(frame: pd.DataFrame, metric: str = "train_loss", by: Sequence[str] = BY, points: int = 5) -> pd.DataFrame:
    """Each seed's optimum (``fit_optimum``) per config and width: ``<by>, model.width, seed, log2_lr, value,
    method, edge``."""
    keys = [*[c for c in by if c in frame.columns], WIDTH, *([SEED] if SEED in frame.columns else [])]
    rows = [{**dict(zip(keys, key if isinstance(key, tuple) else (key,))),
             **fit_optimum(group["log2_lr"].to_numpy(), group[metric].to_numpy(), points)}
            for key, group in frame.groupby(keys, dropna=False)]
    return pd.DataFrame(rows)


def optimum_summary(optima: pd.DataFrame, by: Sequence[str] = BY, level: float = 0.95) -> pd.DataFrame:
    """Per config and width: the optimum's mean log2 lr over seeds with its std and t interval (``level``),
    the lr itself, the mean loss at the optimum, seeds, and whether any seed's best sat at the grid's edge."""
    keys = [*[c for c in by if c in optima.columns], WIDTH]
    rows = []
    for key, group in optima.groupby(keys, dropna=False):
        s = summarize(group["log2_lr"].to_numpy(dtype=float), level)
        v = summarize(group["value"].to_numpy(dtype=float), level, scale="log")
        rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))), "n": s["n"],
                     "opt_log2_lr": s["mean"], "opt_log2_lr_std": s["std"], "ci_low": s["ci_low"],
                     "ci_high": s["ci_high"], "opt_lr": 2.0 ** s["mean"], "value_at_opt": v["mean"],
                     "edge": bool(group["edge"].any()), "fitted": int((group["method"] == "quadratic").sum())})
    return pd.DataFrame(rows)


def transfer_table(summary: pd.DataFrame, by: Sequence[str] = BY) -> pd.DataFrame:
    """The reading per config: the optimum (log2 lr) at the narrowest and the widest width, the octaves it
    moved between them (with the interval-derived uncertainty: the two half-widths added), and whether
    the widest net's loss at its tuned rate was below the narrowest's (``wider_better``; also whether the
    loss at the optimum fell monotonically with width)."""
    keys = [c for c in by if c in summary.columns]
    rows = []
    for key, group in summary.groupby(keys, dropna=False) if keys else [((), summary)]:
        group = group.sort_values(WIDTH)
        narrow, wide = group.iloc[0], group.iloc[-1]
        half = lambda r: (r["ci_high"] - r["ci_low"]) / 2 if np.isfinite(r["ci_high"]) else np.nan  # noqa: E731
        values = group["value_at_opt"].to_numpy(dtype=float)
        rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))),
                     "width_narrow": int(narrow[WIDTH]), "width_wide": int(wide[WIDTH]),
                     "opt_log2_lr_narrow": narrow["opt_log2_lr"], "opt_log2_lr_wide": wide["opt_log2_lr"],
                     "octaves_moved": wide["opt_log2_lr"] - narrow["opt_log2_lr"],
                     "octaves_uncertainty": half(narrow) + half(wide),
                     "loss_narrow": narrow["value_at_opt"], "loss_wide": wide["value_at_opt"],
                     "wider_better": bool(wide["value_at_opt"] < narrow["value_at_opt"]),
                     "monotone_in_width": bool(np.all(np.diff(values) < 0)),
                     "optimum_at_grid_edge": bool(group["edge"].any())})
    return pd.DataFrame(rows)


def lr_transfer_figure(frame: pd.DataFrame, summary: pd.DataFrame, metric: str = "train_loss",
                       by: Sequence[str] = BY) -> Figure:
    """TP-V Figure 3 in miniature: ``metric`` after the budget (mean over seeds, log axis) against log2 lr, one
    curve per width (darker = wider), one panel per config; each width's fitted optimum is a marker on its
    curve with a horizontal bar: the interval of the optimum's log2 lr over seeds. Diverged rates are gaps."""
    keys = _present(frame, by)
    frame = frame.assign(config=_label(frame, keys))
    summary = summary.assign(config=_label(summary, keys))
    configs = levels(frame, "config")
    widths = levels(frame, WIDTH)
    colors = dict(zip(widths, color_palette("rocket_r", len(widths) + 1)[1:]))
    n_cols = min(len(configs), 3)
    n_rows = math.ceil(len(configs) / n_cols)
    fig, axes = _subplots(n_rows, n_cols, 3.3, 2.8, sharey=True)
    means = frame.groupby(["config", WIDTH, "log2_lr"])[metric].mean().reset_index()
    for ax, config in zip(axes.flat, configs):
        for width in widths:
            rows = means[(means["config"] == config) & (means[WIDTH] == width)].sort_values("log2_lr")
            if rows.empty:
                continue
            ax.plot(rows["log2_lr"], rows[metric], "-o", ms=2.5, lw=1.3, color=colors[width], label=f"width {width}")
            opt = summary[(summary["config"] == config) & (summary[WIDTH] == width)]
            if len(opt) and np.isfinite(opt["opt_log2_lr"].iloc[0]):
                o = opt.iloc[0]
                err = np.array([[o["opt_log2_lr"] - o["ci_low"]], [o["ci_high"] - o["opt_log2_lr"]]])
                ax.errorbar([o["opt_log2_lr"]], [o["value_at_opt"]], xerr=np.nan_to_num(err), fmt="*", ms=8,
                            mec="black", mew=0.5, color=colors[width], capsize=2, label="_optimum")
        ax.set_yscale("log")
        ax.set_title(config, fontsize=9)
        ax.set_xlabel("log2 learning rate")
        ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{metric} after the budget")
    for ax in axes.flat[len(configs):]:
        ax.set_visible(False)
    _legend(fig, axes, "width")
    _title(fig, f"Learning-rate transfer: {metric} vs log2 lr, mean over seeds; star = fitted optimum "
                "(quadratic around each seed's best), bar = 95% interval over seeds")
    if fig.get_figwidth() > MAX_WIDTH + 0.5:
        fig.set_figwidth(MAX_WIDTH)
    return fig


# --- the tuned view ----------------------------------------------------------------------------

def _higher_is_better(metric: str) -> bool:
    return not metric.endswith("_loss")


def tuned_runs(runs: pd.DataFrame, select: str = "val_acc", lr: str = LR, by: Sequence[str] | None = None,
               seed_keys: Sequence[str] = SEED_KEYS) -> pd.DataFrame:
    """The runs of each configuration at its tuned rate: the ``lr`` whose mean ``select`` over seeds is best
    (higher for accuracies, lower for ``*_loss``). A rate at which any seed failed is not eligible unless no
    rate ran clean. ``by`` (default: every varying param but ``lr`` and the seeds) names a configuration.
    Adds ``tuned_lr``, ``lrs_tried`` and ``lr_at_edge`` (the tuned rate is the grid's smallest or largest)."""
    if lr not in runs.columns:
        raise KeyError(f"runs frame has no {lr!r} column: the tuned view needs a sweep over the learning rate")
    if select not in runs.columns:
        raise KeyError(f"runs frame has no {select!r} column; available metrics include val_acc, val_loss")
    by = [c for c in (varying_params(runs, exclude=tuple(seed_keys)) if by is None else by) if c != lr]
    higher = _higher_is_better(select)
    failed = runs["failed"] if "failed" in runs.columns else pd.Series(False, index=runs.index)
    frame = runs.assign(_failed=failed, _value=runs[select].where(~failed))
    per_lr = frame.groupby([*by, lr], dropna=False).agg(_mean=("_value", "mean"), _failed=("_failed", "any"))
    per_lr = per_lr.reset_index()
    chosen = []
    for key, group in per_lr.groupby(by, dropna=False) if by else [((), per_lr)]:
        clean = group[~group["_failed"] & group["_mean"].notna()]
        pool = clean if len(clean) else group[group["_mean"].notna()]
        grid = sorted(group[lr].dropna().unique())
        if pool.empty:
            continue
        best = pool.loc[pool["_mean"].idxmax() if higher else pool["_mean"].idxmin()]
        chosen.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "tuned_lr": best[lr],
                       "lrs_tried": len(grid), "lr_at_edge": bool(best[lr] in (grid[0], grid[-1]) and len(grid) > 1)})
    chosen = pd.DataFrame(chosen, columns=[*by, "tuned_lr", "lrs_tried", "lr_at_edge"])
    out = runs.merge(chosen, on=by, how="inner") if by else runs.assign(**chosen.iloc[0].to_dict())
    return out[out[lr] == out["tuned_lr"]].reset_index(drop=True)


def tuned_view(runs: pd.DataFrame, select: str = "val_acc", report: str = "test_acc", lr: str = LR,
               by: Sequence[str] | None = None, level: float = 0.95) -> pd.DataFrame:
    """One row per configuration at its best validation rate (``tuned_runs``), reported on ``report``: the
    tuned lr, how many rates were tried, whether the tuned rate is at the grid's edge, the mean ``select`` at
    it, and ``report``'s n, mean, std and interval over seeds; sorted best first."""
    by = [c for c in (varying_params(runs) if by is None else by) if c != lr]
    tuned = tuned_runs(runs, select, lr, by)
    finished = tuned[~tuned["failed"]] if "failed" in tuned.columns else tuned
    rows = []
    for key, group in tuned.groupby(by, dropna=False) if by else [((), tuned)]:
        ok = finished.loc[finished.index.intersection(group.index)]
        s = summarize(ok[report].to_numpy(dtype=float), level, scale=metric_scale(report))
        first = group.iloc[0]
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "tuned_lr": first["tuned_lr"],
                     "lrs_tried": int(first["lrs_tried"]), "lr_at_edge": bool(first["lr_at_edge"]),
                     f"{select} at tuned lr": float(ok[select].mean()) if len(ok) else np.nan,
                     "n": s["n"], f"{report} mean": s["mean"], f"{report} std": s["std"],
                     "ci_low": s["ci_low"], "ci_high": s["ci_high"]})
    out = pd.DataFrame(rows)
    return out.sort_values(f"{report} mean", ascending=not _higher_is_better(report), kind="stable",
                           na_position="last").reset_index(drop=True)



# --- the report's hooks ---------------------------------------------------------------------------------
def is_coord_study(history: pd.DataFrame) -> bool:
    """The record holds the coordinate check (``diagnostics.coord_steps > 0``)."""
    return bool(history["metric"].astype(str).str.startswith("coord/").any())


def is_lr_transfer_study(runs: pd.DataFrame) -> bool:
    """A study over width and learning rate (each width at several rates)."""
    return ({WIDTH, LR} <= set(runs.columns) and runs[WIDTH].nunique() > 1 and runs[LR].nunique() > 2
            and "train_loss" in runs.columns)


def report_figures(study) -> dict:
    """``nnlab.analysis.report``'s extra figures for a width study: file name -> (caption, make)."""
    out = {}
    if is_coord_study(study.history):
        coord = coord_frame(study.history, study.runs)
        out["coord_check.png"] = ("Coordinate check: mean |value| of each layer's output on a fixed batch after "
                                  "optimiser steps, against width (mean over seeds)", lambda: coord_check_figure(coord))
    if is_lr_transfer_study(study.runs):
        frame = lr_frame(study.runs, "train_loss")
        summary = optimum_summary(lr_optima(frame, "train_loss"))
        out["lr_transfer.png"] = ("Learning-rate transfer: training loss after the budget against log2 lr, one "
                                  "curve per width; markers: each width's fitted optimum with its interval over seeds",
                                  lambda: lr_transfer_figure(frame, summary, "train_loss"))
    return out


def is_tuned_study(runs: pd.DataFrame) -> bool:
    """A sweep over the learning rate and at least one other factor: each configuration can be read at its
    own best validation rate (the tuned view)."""
    return (LR in runs.columns and runs[LR].nunique() > 1 and "val_acc" in runs.columns
            and len([c for c in varying_params(runs, exclude=tuple(SEED_KEYS)) if c != LR]) >= 1)


def tuned_reading(runs: pd.DataFrame, metric: str = "test_acc", shown: int = 4) -> list[str]:
    """The tuned view in sentences: the best and worst configurations at their own best validation rate, the
    rate each chose, and whether the ranking at one fixed rate (the grid's most common best) agrees."""
    runs = runs.drop(columns=["config"], errors="ignore")  # the design's folded label: not a factor of its own
    view = tuned_view(runs, "val_acc", metric)
    if view.empty:
        return []
    by = [c for c in view.columns if c not in ("tuned_lr", "lrs_tried", "lr_at_edge", "val_acc at tuned lr", "n",
                                               f"{metric} mean", f"{metric} std", "ci_low", "ci_high")]
    label = lambda row: " / ".join(str(row[c]) for c in by)  # noqa: E731
    cell = lambda row: (f"{label(row)} {row[f'{metric} mean']:.3f} at lr {row['tuned_lr']:g}"  # noqa: E731
                        + (" (grid edge)" if row["lr_at_edge"] else ""))
    rows = [view.iloc[i] for i in range(len(view))]
    head = "; ".join(cell(r) for r in rows[:shown])
    tail = "; ".join(cell(r) for r in rows[-shown:]) if len(rows) > 2 * shown else ""
    out = [f"Tuned view (each configuration at the learning rate with its best mean val_acc over seeds, "
           f"reported on {metric}; {int(rows[0]['lrs_tried'])} rates tried): best {head}"
           + (f"; … worst {tail}" if tail else "") + "."]
    fixed = view["tuned_lr"].mode().iloc[0]
    at_fixed = (runs[(runs[LR] == fixed) & ~runs.get("failed", False)].groupby(by, dropna=False)[metric].mean()
                .sort_values(ascending=False))
    tuned_order = [tuple(r[c] for c in by) for r in rows]
    fixed_order = [k if isinstance(k, tuple) else (k,) for k in at_fixed.index]
    same_best = bool(fixed_order) and fixed_order[0] == tuned_order[0]
    moved = sum(a != b for a, b in zip(tuned_order, fixed_order))
    out.append(f"At one fixed rate (lr {fixed:g}, the rate most configurations chose) the best configuration is "
               f"{' / '.join(map(str, fixed_order[0])) if fixed_order else 'none'}"
               f"{' as well' if same_best else ', not the tuned view’s'}; {moved} of {len(tuned_order)} "
               "configurations change rank between the two views.")
    return out


def report_reading(study) -> list[str]:
    """Sentences from the record for a width study: slopes of log|h| against log width; how far the tuned
    learning rate moved from the narrowest to the widest net, and whether wider was better there; for any
    sweep over the learning rate, the tuned view."""
    out = []
    if is_coord_study(study.history):
        coord = coord_frame(study.history, study.runs)
        last = int(coord["step"].max())
        slopes = slope_table(coord, step=last)
        out.append(f"Coordinate check after {last} optimiser step(s): slope of log mean|h| against log width "
                   "(0 = width-independent; per layer, then the logits):")
        for _, row in slopes.iterrows():
            cells = ", ".join(f"{c} {row[c]:+.2f}" for c in slopes.columns if c not in (*BY, "config", "step")
                              and isinstance(row[c], (int, float, np.floating)) and np.isfinite(row[c]))
            label = " / ".join(str(row[c]) for c in BY if c in slopes.columns)
            out.append(f"  {label}: {cells}")
    if is_lr_transfer_study(study.runs):
        table = transfer_table(optimum_summary(lr_optima(lr_frame(study.runs, "train_loss"), "train_loss")))
        for _, row in table.iterrows():
            label = " / ".join(str(row[c]) for c in BY if c in table.columns)
            edge = " (an optimum sat at the grid's edge: it may lie beyond)" if row["optimum_at_grid_edge"] else ""
            out.append(f"{label}: the tuned learning rate moved {row['octaves_moved']:+.2f} ± "
                       f"{row['octaves_uncertainty']:.2f} octaves from width {row['width_narrow']} "
                       f"(2^{row['opt_log2_lr_narrow']:.2f}) to width {row['width_wide']} (2^{row['opt_log2_lr_wide']:.2f}); "
                       f"at its tuned rate the widest net's training loss was {row['loss_wide']:.3g} against "
                       f"{row['loss_narrow']:.3g} for the narrowest ({'wider was better' if row['wider_better'] else 'wider was not better'}){edge}.")
    elif is_tuned_study(study.runs):
        out += tuned_reading(study.runs)
    return out
