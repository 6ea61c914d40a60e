"""The depth study's analysis: plain, residual and normalised networks side by side, from depth 4 to 256.

``experiments/depth_frontier.yaml`` varies the architecture through four raw params (``model.residual``,
``model.branch_scale``, ``model.branch_gate``, ``model.norm``; ``init=fixup|lsuv`` for the initialisers
that know the architecture or the data). This module folds them into one readable ``architecture``
column, so a study reads as architecture x activation x depth, and draws what issue 17 asks for:

* ``depth_accuracy``: test accuracy against depth per architecture, one panel per activation;
* ``signal_at_init``: the measured and predicted signal (``act_std``) and gradient (``grad_norm``
  relative to the readout's) per layer at initialisation, for the deepest networks;
* ``jacobian_spread``: the condition number of the hidden stack's Jacobian at initialisation against depth;
* ``act_len_spread``: the spread of the activation length across inputs (``act_len_logvar``) at
  initialisation against depth / width, with its prediction where recorded;

With an ``optimizer.lr`` axis every figure and sentence reads each cell (architecture x activation x depth)
at its best validation rate (``at_tuned_lr``), and the reading says which rate each cell chose;
``depth_reading`` writes the deepest trainable depth per cell and how many cells a rule on the
theory's predictions gets right. The theory's names (``theory/*``) are drawn where the record has them
and said to be absent where it has not: nothing here fails on a study without them.

Every figure is a function of frames from ``nnlab.analysis`` and returns a matplotlib Figure;
``depth_figures(study)`` hands them to ``nnlab.report`` as ``name -> (caption, make)``.
"""
from __future__ import annotations

import re
import textwrap
from fractions import Fraction
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
from scipy.special import stdtrit  # the t quantile; scipy.stats costs ~0.6 s more to import
from matplotlib.figure import Figure

from .design import CONFIG, Design, infer_design, levels
from .plots import color_palette
from .records import at_step, name_parts
from .stats import aggregate, varying_params
from .width import LR, tuned_runs

# --- what the study's figures read from the record (``load_history(metrics=...)`` patterns) -------------
DEPTH_METRICS = ("act_std/layer_*", "grad_norm/layer_*", "branch_ratio/layer_*", "act_len_logvar",
                 "jacobian_sv_*", "theory/*")

ARCH_PARAMS = ("model.residual", "model.branch_scale", "model.branch_gate", "model.norm")
MODEL_INITS = {"fixup": "Fixup", "lsuv": "LSUV"}  # whole-network initialisers: part of the architecture label
ARCHITECTURE = "architecture"
# the study's five architectures first, in the order the issue names them; any other label after, sorted
ARCH_ORDER = ("plain", "residual α=1", "residual α=1/√L", "residual, gate at 0", "residual + LayerNorm")

TRAINABLE = 0.5  # mean test_acc over seeds at or above which a cell counts as trainable (as trainability_reading)
CHANCE = 0.1  # 10 classes; a diverged run counts as chance (it learned nothing), as trainability_table does
SIGNAL_RANGE = (1e-3, 1e3)  # the theory's rule: trainable iff predicted signal and gradient ratio stay inside
DPI = 110  # nnlab.report's savefig dpi
MAX_WIDTH_IN = 10.4  # inches: 1144 px at DPI, under the 1150 px the report page shows unscaled
INF_STORED = 1e300  # MLflow stores inf as the largest float: read back as inf (off every axis, outside any range)
_LAYER = re.compile(r"^(?P<source>theory/)?(?P<stat>act_std|grad_norm|grad_ratio)/layer_(?P<layer>\d+)$")


# --- the architecture column ----------------------------------------------------------------------------
def _present(value: object) -> bool:
    return value is not None and not (pd.api.types.is_scalar(value) and pd.isna(value))


def architecture_label(residual: object = False, branch_scale: object = None, branch_gate: object = False,
                       norm: object = None, init: object = None) -> str:
    """A readable name for one set of depth options: ``plain``, ``residual α=1``, ``residual α=1/√L``
    (L = depth; ``branch_scale`` null), ``residual, gate at 0``, ``residual + LayerNorm`` (α=1/√L with
    LayerNorm in the branch), and compositions for the rest (``residual α=0.5 + LayerNorm``,
    ``plain + LayerNorm``, ``residual, Fixup``, ``plain, LSUV``). Missing values (NaN, None) are the
    config's defaults."""
    residual = bool(residual) if _present(residual) else False
    gate = bool(branch_gate) if _present(branch_gate) else False
    layernorm = _present(norm) and str(norm) == "layernorm"
    model_init = str(init) if _present(init) and str(init) in MODEL_INITS else None
    if not residual:
        label = "plain"
    elif model_init == "fixup":  # Fixup brings its own zero gate and scalar shift per branch
        label = "residual, Fixup"
    elif gate:
        label = "residual, gate at 0"
    elif _present(branch_scale):
        label = f"residual α={float(branch_scale):g}"
    else:
        label = "residual" if layernorm else "residual α=1/√L"
    if layernorm:
        label += " + LayerNorm"
    elif _present(norm):
        label += f" + {norm}"
    if model_init == "lsuv":
        label += ", LSUV"
    return label


def _folded_init(runs: pd.DataFrame) -> bool:
    """Whether ``init``'s variation is all in the label: fixup/lsuv beside at most one per-layer init."""
    if "init" not in runs.columns:
        return False
    inits = set(runs["init"].dropna().astype(str))
    return bool(inits & set(MODEL_INITS)) and len(inits - set(MODEL_INITS)) <= 1


def with_architecture(runs: pd.DataFrame, drop: bool = True) -> pd.DataFrame:
    """A copy of ``runs`` with an ``architecture`` column (``architecture_label`` of each row).

    ``drop``: remove the raw params the label folds (``ARCH_PARAMS``, and ``init`` when its only
    variation is fixup/lsuv beside one per-layer init), so ``infer_design`` sees architecture x activation
    x depth instead of five factors. Already labelled frames are returned as a copy, unchanged."""
    out = runs.copy()
    if ARCHITECTURE in out.columns:
        return out
    if CONFIG in out.columns:  # infer_design's folded label of the raw params: rebuilt from the new factors
        out = out.drop(columns=CONFIG)
    fold_init = _folded_init(out)

    def column(name: str) -> pd.Series:
        return out[name] if name in out.columns else pd.Series([None] * len(out), index=out.index, dtype=object)

    init = column("init") if fold_init else pd.Series([None] * len(out), index=out.index, dtype=object)
    parts = zip(*(column(c) for c in ARCH_PARAMS), init)
    out[ARCHITECTURE] = pd.Series([architecture_label(*p) for p in parts], index=out.index, dtype=object)
    if drop:
        out = out.drop(columns=[c for c in (*ARCH_PARAMS, *(("init",) if fold_init else ())) if c in out.columns])
    return out


def is_depth_study(runs: pd.DataFrame) -> bool:
    """A study over depth (``model.depth`` takes several values) and over the architecture (the depth
    options or a whole-network init give more than one ``architecture`` label)."""
    if "model.depth" not in runs.columns or runs["model.depth"].nunique() < 2:
        return False
    if ARCHITECTURE in runs.columns:
        return runs[ARCHITECTURE].nunique() > 1
    if not any(c in runs.columns for c in ARCH_PARAMS) and not _folded_init(runs):
        return False
    return with_architecture(runs, drop=False)[ARCHITECTURE].nunique() > 1


def depth_design(runs: pd.DataFrame) -> tuple[pd.DataFrame, Design]:
    """``with_architecture(runs)`` and its plot roles: architecture as the hue (init's place in the
    init_depth study), activation on the x axis and depth as the facet, the layout ``reading.by_depth``
    and ``design.deepest`` expect. More than three factors fall back to ``infer_design``'s folded label."""
    out = with_architecture(runs)
    factors = tuple(varying_params(out))
    if ARCHITECTURE not in factors or len(factors) > 3:
        return infer_design(out)
    rest = [f for f in factors if f not in (ARCHITECTURE, "model.depth")]
    col = "model.depth" if "model.depth" in factors else (rest.pop() if len(rest) == 2 else None)
    x = rest[0] if rest else None
    return out, Design(ARCHITECTURE, x=x, col=col, factors=factors)


def architectures(frame: pd.DataFrame) -> list[str]:
    """The architecture labels of ``frame`` in the study's order (``ARCH_ORDER`` first, then sorted)."""
    present = set(frame[ARCHITECTURE].dropna().astype(str))
    return [a for a in ARCH_ORDER if a in present] + sorted(present - set(ARCH_ORDER))


def _labelled(runs: pd.DataFrame) -> pd.DataFrame:
    return runs if ARCHITECTURE in runs.columns else with_architecture(runs, drop=False)


def _cell_keys(runs: pd.DataFrame) -> list[str]:
    return [ARCHITECTURE] + (["activation"] if "activation" in runs.columns else []) + ["model.depth"]


def at_tuned_lr(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs the depth figures and reading use. Without an ``optimizer.lr`` axis: every run. With
    one, each cell (architecture, activation, depth) at its best validation rate, ``tuned_runs``; a cell
    where every run at every rate failed (no validation accuracy anywhere) keeps its runs at the grid's
    smallest rate, so it is still counted (at chance) instead of silently dropped. Adds ``tuned_lr``."""
    runs = _labelled(runs)
    if LR not in runs.columns or runs[LR].nunique() < 2:
        return runs
    keys = _cell_keys(runs)
    tuned = tuned_runs(runs, "val_acc", LR, keys)
    cell = lambda frame: pd.MultiIndex.from_frame(frame[keys].astype(str))  # noqa: E731
    rest = runs[~cell(runs).isin(cell(tuned))]
    rest = rest[rest[LR] == rest.groupby(keys, dropna=False)[LR].transform("min")]
    rest = rest.assign(tuned_lr=rest[LR], lr_at_edge=True)
    return pd.concat([tuned, rest], ignore_index=True)


def tuned_lr_sentence(runs: pd.DataFrame) -> list[str]:
    """With an lr axis, the rate each cell was read at (``at_tuned_lr``), per architecture / activation
    from the shallowest to the deepest net, and how many cells sit at the grid's edge."""
    runs = _labelled(runs)
    if LR not in runs.columns or runs[LR].nunique() < 2:
        return []
    grid = sorted(runs[LR].dropna().unique())
    tuned = at_tuned_lr(runs)
    keys = _cell_keys(tuned)
    cells = tuned.groupby(keys, dropna=False).agg(lr=("tuned_lr", "first"), edge=("lr_at_edge", "first"))
    cells = cells.reset_index()
    has_act = "activation" in cells.columns
    per = []
    for arch in architectures(cells):
        for act in (levels(cells, "activation") if has_act else [None]):
            rows = cells[(cells[ARCHITECTURE] == arch) & ((cells["activation"] == act) if has_act else True)]
            if len(rows):
                rows = rows.sort_values("model.depth")
                rates = ", ".join(f"{r['lr']:g}" for _, r in rows.iterrows())
                per.append(f"{arch}{f' / {act}' if act is not None else ''} {rates}")
    low, high = cells["lr"] == grid[0], cells["lr"] == grid[-1]
    return [f"Each cell is read at its best validation learning rate of {', '.join(f'{g:g}' for g in grid)} "
            f"(mean val_acc over seeds; a rate where a seed diverged is not eligible if another ran clean). The "
            f"rate chosen, depth {int(cells['model.depth'].min())} -> {int(cells['model.depth'].max())}: "
            + "; ".join(per) + f". {int(low.sum())} of {len(cells)} cells chose the smallest rate and "
            f"{int(high.sum())} the largest (the grid's edges)."]


def _colors(names: Sequence[str]) -> dict[str, tuple]:
    return dict(zip(names, color_palette("colorblind", max(len(names), 1))))


# --- record access ------------------------------------------------------------------------------------------
def _scored(runs: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """Runs that count for accuracy: finished runs at their ``metric``, diverged runs at chance (a net
    whose loss went to NaN learned nothing); runs that failed for another reason are left out."""
    runs = _labelled(runs)
    diverged = runs["failed"] & runs["failure"].fillna("").astype(str).str.startswith("diverged")
    out = runs[~runs["failed"] | diverged].copy()
    out[metric] = out[metric].where(~diverged[out.index], CHANCE).astype(float)
    return out


def _at_init(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs whose initialisation was measured: finished and diverged runs (a net that diverged later was
    measured at epoch 0 like any other); runs that failed for another reason are left out."""
    runs = _labelled(runs)
    return runs[~runs["failed"] | runs["failure"].fillna("").astype(str).str.startswith("diverged")]


def _init_scalar(history: pd.DataFrame, metric: str) -> pd.Series:
    """Epoch-0 value of one metric per run (index run_id)."""
    rows = history[(history["metric"] == metric) & (history["step"] == 0)]
    return rows.drop_duplicates("run_id", keep="last").set_index("run_id")["value"]


def init_layers(history: pd.DataFrame) -> pd.DataFrame:
    """Epoch-0 per-layer rows ``run_id, source, stat, layer, value`` (source ``measured`` or ``theory``)
    of act_std, grad_norm and grad_ratio."""
    init = at_step(history, "init")
    parts = name_parts(init["metric"], _LAYER)
    keep = parts["stat"].notna()
    out = init.loc[keep, ["run_id", "value"]].copy()
    out["source"] = np.where(parts.loc[keep, "source"].notna(), "theory", "measured")
    out["stat"] = parts.loc[keep, "stat"]
    out["layer"] = parts.loc[keep, "layer"].astype("int64")
    out["value"] = out["value"].where(out["value"] < INF_STORED, np.inf)  # MLflow keeps inf as 1.8e308
    return out.reset_index(drop=True)


def signal_profiles(history: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per run and layer at initialisation, rows ``run_id, layer, quantity, source, value`` with
    quantity ``signal`` (std of the hidden output h_i; measured ``act_std``, predicted
    ``theory/act_std``) and ``gradient`` (‖∂L/∂W_i‖ over the readout's: measured ``grad_norm/layer_i``
    divided by ``grad_norm/layer_{depth+1}``, predicted ``theory/grad_ratio/layer_i``)."""
    rows = init_layers(history)
    depth = _labelled(runs).set_index("run_id")["model.depth"].astype(int)
    rows = rows[rows["run_id"].isin(depth.index)]
    signal = rows[rows["stat"] == "act_std"].assign(quantity="signal")
    grads = rows[(rows["stat"] == "grad_norm") & (rows["source"] == "measured")].copy()
    readout = grads[grads["layer"] == grads["run_id"].map(depth) + 1].set_index("run_id")["value"]
    with np.errstate(divide="ignore", invalid="ignore"):
        grads["value"] = grads["value"] / grads["run_id"].map(readout)
    predicted = rows[(rows["stat"] == "grad_ratio") & (rows["source"] == "theory")]
    gradient = pd.concat([grads, predicted]).assign(quantity="gradient")
    out = pd.concat([signal, gradient], ignore_index=True)
    return out[["run_id", "layer", "quantity", "source", "value"]]


def _with(frame: pd.DataFrame, runs: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    runs = _labelled(runs)
    return frame.merge(runs[["run_id", *columns]], on="run_id", how="inner")


def _panels(runs: pd.DataFrame) -> list:
    return levels(runs, "activation") if "activation" in runs.columns else [None]


def _panel(frame: pd.DataFrame, value) -> pd.DataFrame:
    return frame if value is None else frame[frame["activation"] == value]


def _theory_note(has: Sequence[str], lacks: Sequence[str], name: str = "theory") -> str:
    """Which architectures have the prediction ``name`` in the record (drawn) and which have not."""
    if not lacks:
        return f"{name} recorded for every architecture"
    if not has:
        return f"{name} not recorded for any run: no prediction drawn"
    return f"{name} not recorded for " + ", ".join(lacks)


# --- figure helpers -------------------------------------------------------------------------------------------
def _figure(n_panels: int, panel_w: float = 4.0, panel_h: float = 3.6, legend_w: float = 2.6,
            n_rows: int = 1) -> tuple[Figure, np.ndarray]:
    """A constrained-layout grid no wider than ``MAX_WIDTH_IN`` with room for a legend on the right."""
    width = min(MAX_WIDTH_IN, panel_w * n_panels + legend_w)
    return plt.subplots(n_rows, n_panels, figsize=(width, panel_h * n_rows + 0.8), squeeze=False,
                        layout="constrained")


def _depth_axis(ax, depths: Sequence[int], label: str = "depth (hidden layers, log₂ axis)") -> None:
    """A log2 depth axis with a labelled tick at each depth of the study and nothing else."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(mticker.FixedLocator([float(d) for d in depths]))
    ax.xaxis.set_major_formatter(mticker.FixedFormatter([str(int(d)) for d in depths]))
    ax.xaxis.set_minor_locator(mticker.NullLocator())
    if len(depths) > 1:
        ax.set_xlim(depths[0] / 1.3, depths[-1] * 1.3)
    ax.set_xlabel(label)


def _log_y(ax) -> None:
    """A log y axis whose labels fit the data's range: powers of ten over many decades, 1-2-5 (or
    every digit) within two, and plain evenly spaced values where even those leave fewer than two
    labels (a range inside one factor of 2). Call after drawing."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    plain = mticker.FuncFormatter(lambda v, _: f"{v:.3g}")
    choices = [(mticker.LogLocator(base=10, numticks=8), mticker.LogFormatterSciNotation())] if high / low >= 100 \
        else []
    choices += [(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)), plain),
                (mticker.LogLocator(base=10, subs=tuple(range(1, 10))), plain),
                (mticker.MaxNLocator(nbins=4), plain)]
    for locator, formatter in choices:
        ticks = [t for t in locator.tick_values(low, high) if low <= t <= high]
        if len(ticks) >= 2:
            break
    ax.yaxis.set_major_locator(locator)
    ax.yaxis.set_major_formatter(formatter)
    ax.yaxis.set_minor_formatter(mticker.NullFormatter())


def _legend(fig: Figure, axes: np.ndarray, title: str, order: Sequence[str] = ()) -> None:
    """One figure legend: an entry per distinct line label across the panels (labels starting with
    ``_`` stay out, as matplotlib's own convention), architectures in ``order`` first."""
    seen: dict = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if not label.startswith("_"):
                seen.setdefault(label, handle)
    rank = {name: i for i, name in enumerate(order)}
    keys = sorted(seen, key=lambda lab: (rank.get(lab.split(": ")[0], len(rank)), list(seen).index(lab)))
    if keys:
        fig.legend([seen[k] for k in keys], keys, title=title, loc="outside right center",
                   frameon=False, fontsize=8, title_fontsize=9)


def _title(fig: Figure, text: str, fontsize: float = 10) -> None:
    """A suptitle wrapped to the figure's width, so it never runs past the canvas."""
    chars = max(30, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))
    fig.suptitle(textwrap.fill(text, chars), fontsize=fontsize)


def _note(ax, text: str) -> None:
    """A small grey note inside the panel's lower left corner (kept out of the layout's size)."""
    text = "\n".join(textwrap.fill(line, 55) for line in text.split("\n"))
    note = ax.annotate(text, xy=(0.02, 0.02), xycoords="axes fraction", ha="left",
                       va="bottom", fontsize=6.5, color="dimgrey", bbox={"fc": "white", "alpha": 0.75, "lw": 0})
    note.set_in_layout(False)


def _profile_line(ax, x: np.ndarray, y: np.ndarray, color, label: str, ls: str = "-", lw: float = 1.4) -> None:
    """One line over integer positions ``x`` that breaks where ``y`` is missing (NaN), with a marker on
    each point that has no drawn neighbour (else it would not show)."""
    ax.plot(x, y, color=color, lw=lw, ls=ls, label=label)
    present = np.isfinite(y)
    before = np.r_[False, present[:-1]]
    after = np.r_[present[1:], False]
    lone = present & ~before & ~after
    if lone.any():
        ax.plot(x[lone], y[lone], ls="none", marker="o" if ls == "-" else "x", ms=4, color=color, label="_lone")


def _aggregate_log(frame: pd.DataFrame, by: list[str], value: str = "value", level: float = 0.95) -> pd.DataFrame:
    """Per group of ``by``: ``n``, geometric ``mean`` and the 95% t-interval computed on log values
    (``ci_low``, ``ci_high``: always > 0) of a positive quantity, as ``stats.aggregate(scale="log")``
    computes them, vectorised over the groups (a depth-256 profile has thousands); exact zeros and
    non-finite values are left out (NaN rows where nothing is left)."""
    values = frame[value].to_numpy(float)
    keep = np.isfinite(values) & (values > 0)
    part = frame.loc[keep, by].assign(_log=np.log(values[keep]))
    if part.empty:
        return pd.DataFrame(columns=[*by, "n", "mean", "ci_low", "ci_high"])
    stats = part.groupby(by, sort=True)["_log"].agg(["count", "mean", "std"])
    n = stats["count"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stdtrit(np.maximum(n - 1, 1), 0.5 + level / 2) * stats["std"].to_numpy(float) / np.sqrt(n)
    half = np.where(n >= 2, half, np.nan)
    out = pd.DataFrame({"n": n.astype(int), "mean": np.exp(stats["mean"].to_numpy(float)),
                        "ci_low": np.exp(stats["mean"].to_numpy(float) - half),
                        "ci_high": np.exp(stats["mean"].to_numpy(float) + half)}, index=stats.index)
    return out.reset_index()


# --- (1) test accuracy against depth ------------------------------------------------------------------------
def _by_architecture(part: pd.DataFrame, archs: Sequence[str]):
    """Each architecture's aggregated rows of one panel, in depth order, with depth as floats (its x)."""
    for arch in archs:
        rows = part[part[ARCHITECTURE] == arch].sort_values("model.depth")
        if not rows.empty:
            yield arch, rows, rows["model.depth"].astype(float)


def depth_accuracy(runs: pd.DataFrame, metric: str = "test_acc") -> Figure:
    """Mean ``metric`` over seeds against depth (log2 axis), one line per architecture, one panel per
    activation; the band is the 95% t-interval of the mean, cut to [0, 1]. Diverged runs count as
    chance (0.1); the dashed line is the trainability threshold ``TRAINABLE``."""
    scored = _scored(runs, metric)
    by = [ARCHITECTURE, "model.depth"] + (["activation"] if "activation" in scored.columns else [])
    agg = aggregate(scored, by, metric, scale="fraction")
    archs, depths = architectures(scored), [int(d) for d in levels(scored, "model.depth")]
    colors = _colors(archs)
    panels = _panels(scored)
    fig, axes = _figure(len(panels), panel_w=3.9)
    for ax, panel in zip(axes[0], panels):
        part = _panel(agg, panel)
        for arch, rows, x in _by_architecture(part, archs):
            ax.plot(x, rows["mean"], marker="o", ms=4, lw=1.6, color=colors[arch], label=arch)
            ax.fill_between(x, rows["ci_low"].clip(0, 1), rows["ci_high"].clip(0, 1), color=colors[arch],
                            alpha=0.15, lw=0)
        ax.axhline(TRAINABLE, color="black", ls="--", lw=0.9, label=f"trainable threshold ({TRAINABLE:g})")
        ax.axhline(CHANCE, color="grey", ls=":", lw=0.9, label=f"chance ({CHANCE:g})")
        _depth_axis(ax, depths)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(f"{metric} (mean over seeds)")
        ax.set_title(f"activation = {panel}" if panel is not None else "", fontsize=10)
        ax.grid(alpha=0.3)
    _legend(fig, axes, "architecture", archs)
    seeds = int(scored.groupby(by)["run_id"].size().max()) if len(scored) else 0
    _title(fig, f"{metric} after training against depth (band: 95% CI over {seeds} seeds; diverged runs = "
                "chance)")
    return fig


# --- (2) signal and gradient per layer at initialisation, deepest nets --------------------------------------
def signal_at_init(history: pd.DataFrame, runs: pd.DataFrame) -> Figure:
    """At initialisation, for the deepest networks of the study: the hidden output's std per layer (top
    row) and each layer's gradient norm relative to the readout's (bottom row), one panel per
    activation, one colour per architecture; solid = measured (geometric mean over seeds, band = 95%
    CI), dashed = mean-field prediction where the record has ``theory/*``. Log y axes; exact zeros (a
    branch behind a zero gate gets no gradient) cannot sit on them: the line breaks there and a note
    counts them."""
    ok = _at_init(runs)
    depth = int(ok["model.depth"].max())
    ok = ok[ok["model.depth"] == depth]
    cols = [ARCHITECTURE] + (["activation"] if "activation" in ok.columns else [])
    prof = _with(signal_profiles(history, ok), ok, cols)
    archs = architectures(ok)
    colors = _colors(archs)
    panels = _panels(ok)
    fig, axes = _figure(len(panels), panel_w=3.9, panel_h=3.0, legend_w=2.9, n_rows=2)
    quantities = (("signal", "std of hidden output h_i"), ("gradient", "‖∂L/∂W_i‖ / ‖∂L/∂W_readout‖"))
    with_theory = sorted(set(prof.loc[prof["source"] == "theory", ARCHITECTURE]))
    for row, (quantity, ylabel) in enumerate(quantities):
        layers = np.arange(1, depth + (2 if quantity == "gradient" else 1))
        for ax, panel in zip(axes[row], panels):
            part = _panel(prof[prof["quantity"] == quantity], panel)
            zeros, overflow, absent = [], [], []
            for arch in archs:
                sel = part[part[ARCHITECTURE] == arch]
                measured = sel[sel["source"] == "measured"]
                if measured.empty:
                    absent.append(arch)
                if len(measured):
                    agg = _aggregate_log(measured, ["layer"]).set_index("layer").reindex(layers)
                    mean = agg["mean"].where(agg["mean"] > 0).to_numpy(float)
                    _profile_line(ax, layers, mean, colors[arch], f"{arch}: measured")
                    ax.fill_between(layers, agg["ci_low"].to_numpy(float), agg["ci_high"].to_numpy(float),
                                    color=colors[arch], alpha=0.15, lw=0)
                    n_zero = int(((measured["value"] == 0).groupby(measured["layer"]).all()).sum())
                    if n_zero:
                        zeros.append(f"{arch} at {n_zero} of {len(layers)} layers")
                    n_inf = int((~np.isfinite(measured["value"])).groupby(measured["layer"]).all().sum())
                    if n_inf:
                        overflow.append(f"{arch} at {n_inf} of {len(layers)} layers")
                theory = sel[sel["source"] == "theory"].groupby("layer")["value"].median().reindex(layers)
                theory = theory.where(theory > 0).to_numpy(float)
                if np.isfinite(theory).any():
                    _profile_line(ax, layers, theory, colors[arch], f"{arch}: theory", ls="--", lw=1.2)
            notes = (["exactly 0, not drawn (log axis): " + "; ".join(zeros)] if zeros else []) + \
                (["not finite (overflow), not drawn: " + "; ".join(overflow)] if overflow else []) + \
                ([f"no measurement at epoch 0 in the record: {', '.join(absent)}"] if absent else [])
            if notes:
                _note(ax, "\n".join(notes))
            _log_y(ax)
            ax.set_xlim(0.5, layers[-1] + 0.5)
            ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True, nbins=6, steps=[1, 2, 4, 5, 8, 10]))
            ax.set_xlabel("layer i (1 = nearest the input" + (f"; {layers[-1]} = readout)" if row else ")"),
                          fontsize=9)
            ax.set_ylabel(ylabel, fontsize=9)
            ax.set_title(f"activation = {panel}" if panel is not None else "", fontsize=10)
            ax.grid(alpha=0.3, which="major")
    _legend(fig, axes, "solid: measured\ndashed: theory", archs)
    lacks = [a for a in archs if a not in with_theory]
    _title(fig, f"Signal and gradient per layer at initialisation, depth {depth}; measured gradients over the "
                f"training batch, predicted for one example ({_theory_note(with_theory, lacks)})")
    return fig


# --- (3) the Jacobian's spread against depth -----------------------------------------------------------------
def jacobian_frame(history: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per run at initialisation: ``spread`` = jacobian_sv_std / jacobian_sv_mean of the hidden stack's
    Jacobian ∂h_L/∂x (0 = every singular value equal, an isometry up to scale) and ``gain`` =
    jacobian_sv_mean, with the run's architecture, activation and depth. (Not σ_max/σ_min: a ReLU
    net's dead units make σ_min exactly 0, so that ratio is infinite for most ReLU runs.)"""
    frame = pd.DataFrame({"mean": _init_scalar(history, "jacobian_sv_mean"),
                          "std": _init_scalar(history, "jacobian_sv_std")}).dropna()
    frame = frame[frame["mean"] > 0]
    frame["spread"] = frame["std"] / frame["mean"]
    frame = frame.rename_axis("run_id").reset_index()
    cols = [ARCHITECTURE, "model.depth"] + (["activation"] if "activation" in runs.columns else [])
    return _with(frame, _at_init(runs), cols)


def jacobian_spread(history: pd.DataFrame, runs: pd.DataFrame) -> Figure:
    """The spread of the singular values of ∂h_L/∂x at initialisation, std / mean, against depth (log2
    x axis), one line per architecture, one panel per activation: mean over seeds with its 95% CI
    (cut at 0: the ratio is never negative). The y axis is logarithmic where the means span more than
    a factor 20, else linear from 0."""
    runs = _labelled(runs)
    frame = jacobian_frame(history, runs)
    archs, depths = architectures(runs), [int(d) for d in levels(runs, "model.depth")]
    colors = _colors(archs)
    panels = _panels(runs)
    by = [ARCHITECTURE, "model.depth"] + (["activation"] if "activation" in frame.columns else [])
    agg = aggregate(frame, by, "spread").dropna(subset=["mean"])
    log = len(agg) and agg["mean"].min() > 0 and agg["mean"].max() / agg["mean"].min() > 20
    fig, axes = _figure(len(panels), panel_w=3.9)
    for ax, panel in zip(axes[0], panels):
        part = _panel(agg, panel)
        for arch, rows, x in _by_architecture(part, archs):
            ax.plot(x, rows["mean"], marker="o", ms=4, lw=1.6, color=colors[arch], label=arch)
            low = rows["ci_low"].clip(lower=0).where(rows["ci_low"] > 0, rows["mean"] / 10 if log else 0)
            ax.fill_between(x, low, rows["ci_high"], color=colors[arch], alpha=0.15, lw=0)
        _depth_axis(ax, depths)
        if log:
            _log_y(ax)
        else:
            ax.set_ylim(0, max(1.0, float(part["ci_high"].max()) if len(part) else 1.0) * 1.05)
        ax.set_ylabel("std / mean of the singular values of ∂h_L/∂x", fontsize=9)
        ax.set_title(f"activation = {panel}" if panel is not None else "", fontsize=10)
        ax.grid(alpha=0.3)
    _legend(fig, axes, "architecture", archs)
    _title(fig, "Spread of the hidden stack's Jacobian at initialisation against depth (0 = all singular values "
                "equal; mean and 95% CI over seeds)")
    return fig


# --- (4) the activation-length spread against depth / width -------------------------------------------------
def act_len_frame(history: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: measured ``act_len_logvar`` and predicted ``theory/act_len_logvar`` (NaN where not
    recorded) at initialisation, with ``depth_over_width`` = depth / width (Hanin & Rolnick's Σ 1/n_j
    for a constant width; NaN where the width is a list)."""
    frame = pd.DataFrame({"measured": _init_scalar(history, "act_len_logvar"),
                          "theory": _init_scalar(history, "theory/act_len_logvar")})
    frame = frame.dropna(subset=["measured"]).rename_axis("run_id").reset_index()
    runs = _labelled(runs)
    cols = [ARCHITECTURE, "model.depth"] + [c for c in ("activation", "model.width") if c in runs.columns]
    frame = _with(frame, _at_init(runs), cols)
    width = pd.to_numeric(frame["model.width"], errors="coerce") if "model.width" in frame.columns else np.nan
    frame["depth_over_width"] = frame["model.depth"].astype(float) / width
    return frame


def _fraction(value: float) -> str:
    """A depth/width tick: 1/16, 1/4, 1, 4 (exact for powers of two and small ratios), else 3 digits."""
    frac = Fraction(float(value)).limit_denominator(4096)
    if abs(float(frac) - value) < 1e-9 * max(1.0, abs(value)) and frac.denominator <= 4096:
        return str(frac)
    return f"{value:.3g}"


def act_len_spread(history: pd.DataFrame, runs: pd.DataFrame) -> Figure:
    """Var over the probe batch of log ‖h_L‖² at initialisation against depth / width (log2 x, log y),
    one line per architecture, one panel per activation; solid = measured (geometric mean, band 95% CI
    over seeds), dashed = ``theory/act_len_logvar`` where recorded."""
    runs = _labelled(runs)
    frame = act_len_frame(history, runs)
    x_col = "depth_over_width" if frame["depth_over_width"].notna().all() and len(frame) else "model.depth"
    archs = architectures(runs)
    colors = _colors(archs)
    panels = _panels(runs)
    fig, axes = _figure(len(panels), panel_w=3.9, legend_w=3.0)
    xs = sorted(frame[x_col].dropna().unique()) if len(frame) else []
    with_theory = sorted(set(frame.loc[frame["theory"].notna(), ARCHITECTURE]))
    for ax, panel in zip(axes[0], panels):
        part = _panel(frame, panel)
        zeros = []
        for arch in archs:
            sel = part[part[ARCHITECTURE] == arch]
            agg = _aggregate_log(sel, [x_col], "measured").dropna(subset=["mean"])
            agg = agg[agg["mean"] > 0]
            if int((sel["measured"] == 0).sum()):
                zeros.append(arch)
            if len(agg):
                ax.plot(agg[x_col], agg["mean"], marker="o", ms=4, lw=1.6, color=colors[arch],
                        label=f"{arch}: measured")
                ax.fill_between(agg[x_col], agg["ci_low"], agg["ci_high"], color=colors[arch], alpha=0.15, lw=0)
            theory = sel.dropna(subset=["theory"]).groupby(x_col)["theory"].median()
            theory = theory[theory > 0]
            if len(theory):
                ax.plot(theory.index, theory.to_numpy(), color=colors[arch], ls="--", lw=1.2,
                        label=f"{arch}: theory")
        if zeros:
            _note(ax, "exactly 0, not drawn: " + ", ".join(zeros))
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(mticker.FixedLocator([float(v) for v in xs]))
        ax.xaxis.set_major_formatter(mticker.FixedFormatter([_fraction(v) for v in xs]))
        ax.xaxis.set_minor_locator(mticker.NullLocator())
        if len(xs) > 1:
            ax.set_xlim(xs[0] / 1.3, xs[-1] * 1.3)
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlabel("depth / width (log₂ axis)" if x_col == "depth_over_width" else "depth (log₂ axis)")
        _log_y(ax)
        ax.set_ylabel("Var over inputs of log ‖h_L‖²")
        ax.set_title(f"activation = {panel}" if panel is not None else "", fontsize=10)
        ax.grid(alpha=0.3)
    _legend(fig, axes, "solid: measured\ndashed: theory", archs)
    widths = sorted(set(pd.to_numeric(frame.get("model.width", pd.Series(dtype=float)), errors="coerce").dropna()))
    width_text = f"width {int(widths[0])}; " if len(widths) == 1 else ""
    lacks = [a for a in archs if a not in with_theory]
    _title(fig, f"Activation-length spread across inputs at initialisation (geometric mean and 95% CI over seeds; "
                f"{width_text}{_theory_note(with_theory, lacks, 'theory/act_len_logvar')})")
    return fig


# --- what the report draws ----------------------------------------------------------------------------------
def depth_figures(study) -> dict[str, tuple[str, Callable[[], Figure]]]:
    """The depth study's figures for ``nnlab.report``: file name -> (caption, make); ``make()`` returns
    the Figure. ``study`` is report.py's ``Study`` (runs, history, ...). Figures whose metrics the record
    lacks (instruments switched off) are left out."""
    runs, history = at_tuned_lr(study.runs), study.history
    names = set(history["metric"].unique())
    out: dict[str, tuple[str, Callable[[], Figure]]] = {
        "depth_accuracy.png": (f"Test accuracy against depth per architecture (mean and 95% CI over seeds; "
                               f"trainable = mean >= {TRAINABLE:g}"
                               + ("; each cell at its best validation learning rate" if "tuned_lr" in runs else "")
                               + ")", lambda: depth_accuracy(runs))}
    if any(n.startswith("act_std/layer_") for n in names):
        out["depth_signal_at_init.png"] = (
            "Signal (hidden-output std) and gradient (relative to the readout's) per layer at initialisation, "
            "deepest networks: measured (solid) and mean-field prediction (dashed, where recorded)",
            lambda: signal_at_init(history, runs))
    if {"jacobian_sv_mean", "jacobian_sv_std"} <= names:
        out["depth_jacobian_spread.png"] = (
            "Spread (std / mean) of the singular values of the hidden stack's Jacobian at initialisation "
            "against depth",
            lambda: jacobian_spread(history, runs))
    if "act_len_logvar" in names:
        out["depth_act_len_spread.png"] = (
            "Activation-length spread Var log ||h_L||^2 at initialisation against depth/width, with its "
            "prediction where recorded", lambda: act_len_spread(history, runs))
    return out


# --- the written reading ------------------------------------------------------------------------------------
def trainable_cells(runs: pd.DataFrame, metric: str = "test_acc", threshold: float = TRAINABLE) -> pd.DataFrame:
    """One row per (architecture, activation, depth): ``mean`` of ``metric`` over seeds (diverged runs
    at chance) and ``trainable`` = mean >= ``threshold``."""
    scored = _scored(runs, metric)
    by = [ARCHITECTURE] + (["activation"] if "activation" in scored.columns else []) + ["model.depth"]
    agg = aggregate(scored, by, metric, scale="fraction").dropna(subset=["mean"])
    agg["trainable"] = agg["mean"] >= threshold
    return agg[[*by, "n", "mean", "trainable"]]


def _cell_predictions(history: pd.DataFrame, runs: pd.DataFrame, source: str) -> pd.DataFrame:
    """Per (architecture, activation, depth): the median over seeds of the signal at the last hidden
    layer and of layer 1's gradient ratio to the readout at initialisation, from ``source``
    (``theory`` or ``measured``), and ``predicted`` = both inside ``SIGNAL_RANGE``; cells without the
    numbers are left out."""
    runs = _labelled(runs)
    ok = _at_init(runs)
    prof = signal_profiles(history, ok)
    prof = prof[prof["source"] == source]
    depth = ok.set_index("run_id")["model.depth"].astype(int)
    signal = prof[(prof["quantity"] == "signal") & (prof["layer"] == prof["run_id"].map(depth))]
    grad = prof[(prof["quantity"] == "gradient") & (prof["layer"] == 1)]
    frame = pd.DataFrame({"signal": signal.set_index("run_id")["value"],
                          "gradient": grad.set_index("run_id")["value"]}).dropna()
    cols = [ARCHITECTURE] + (["activation"] if "activation" in ok.columns else []) + ["model.depth"]
    frame = _with(frame.rename_axis("run_id").reset_index(), ok, cols)
    if frame.empty:
        return pd.DataFrame(columns=[*cols, "signal", "gradient", "predicted"])
    cells = frame.groupby(cols, dropna=False)[["signal", "gradient"]].median().reset_index()
    low, high = SIGNAL_RANGE
    inside = lambda v: (v >= low) & (v <= high)  # noqa: E731
    cells["predicted"] = inside(cells["signal"]) & inside(cells["gradient"])
    return cells


def _deepest_text(rows: pd.DataFrame) -> str:
    rows = rows.sort_values("model.depth")
    depths = rows["model.depth"].astype(int).tolist()
    good = rows.loc[rows["trainable"], "model.depth"].astype(int).tolist()
    if not good:
        return f"none (not even depth {depths[0]})"
    deepest = max(good)
    text = f"every depth tested, up to {deepest}" if good == depths else f"up to depth {deepest}"
    gaps = [d for d in depths if d < deepest and d not in good]
    if gaps:
        text += f" (but not at {', '.join(map(str, gaps))})"
    return text


def depth_reading(study, metric: str = "test_acc") -> list[str]:
    """Sentences from the depth study's record: the deepest trainable depth per architecture and
    activation, and how many cells a rule on the theory's predictions at initialisation tells in advance
    (beside the same rule on the measured initial signal and the trivial guess "always trainable")."""
    runs, history = at_tuned_lr(study.runs), study.history
    cells = trainable_cells(runs, metric)
    if cells.empty:
        return [f"No run of the depth study finished with a {metric}."]
    has_act = "activation" in cells.columns
    key = [ARCHITECTURE] + (["activation"] if has_act else [])
    depths = [int(d) for d in levels(cells, "model.depth")]
    out = []
    per = []
    for arch in architectures(cells):
        for act in (levels(cells, "activation") if has_act else [None]):
            rows = cells[(cells[ARCHITECTURE] == arch) & ((cells["activation"] == act) if has_act else True)]
            if len(rows):
                per.append(f"{arch}{f' / {act}' if act is not None else ''}: {_deepest_text(rows)}")
    out += tuned_lr_sentence(study.runs)
    out.append(f"Trainable = mean {metric} >= {TRAINABLE:g} over seeds (diverged runs count as chance, "
               f"{CHANCE:g}); depths tested {', '.join(map(str, depths))}. Deepest trainable depth per "
               f"architecture / activation: " + "; ".join(per) + ".")
    low, high = SIGNAL_RANGE
    rule = (f"the rule 'trainable iff, at initialisation, the signal at the last hidden layer (std of h_L) and "
            f"layer 1's gradient relative to the readout's both lie in [{low:g}, {high:g}]'")
    theory = _cell_predictions(history, runs, "theory")
    measured = _cell_predictions(history, runs, "measured")
    n_cells = len(cells)
    if theory.empty:
        out.append(f"The theory was not recorded for this study (no theory/act_std or theory/grad_ratio at "
                   f"epoch 0 for any run), so it told nothing in advance: no cell can be scored against "
                   f"{rule}.")
    else:
        scored = cells.merge(theory, on=[*key, "model.depth"], how="inner")
        right = int((scored["predicted"] == scored["trainable"]).sum())
        base = int(scored["trainable"].sum())
        text = (f"Told in advance by the mean-field theory, with {rule}: {right} of {len(scored)} cells right "
                f"(always guessing 'trainable' gets {base} of {len(scored)})")
        wrong = scored[scored["predicted"] != scored["trainable"]]
        if len(wrong):
            text += "; wrong for " + ", ".join(
                f"{r[ARCHITECTURE]}{' / ' + str(r['activation']) if has_act else ''} depth {int(r['model.depth'])}"
                f" (predicted {'trainable' if r['predicted'] else 'untrainable'})" for _, r in wrong.head(8).iterrows())
            text += f" and {len(wrong) - 8} more" if len(wrong) > 8 else ""
        text += "."
        if right <= base:
            text += (" The rule does no better than the trivial guess: a negative result — the predicted "
                     "initial signal alone does not tell which of these nets train.")
        out.append(text)
        covered = set(scored[ARCHITECTURE])
        lacking = [a for a in architectures(cells) if a not in covered]
        if lacking:
            n_lack = int(cells[ARCHITECTURE].isin(lacking).sum())
            out.append(f"The theory was not recorded for {', '.join(lacking)} ({n_lack} of {n_cells} cells): "
                       f"no prediction there.")
    if not measured.empty:
        scored = cells.merge(measured, on=[*key, "model.depth"], how="inner")
        right = int((scored["predicted"] == scored["trainable"]).sum())
        base = int(scored["trainable"].sum())
        out.append(f"The same rule on the measured initial signal and gradient: {right} of {len(scored)} cells "
                   f"right (always 'trainable': {base})"
                   + (" — no better than the trivial guess." if right <= base else "."))
    out += _act_len_sentence(history, runs)
    out += _branch_sentence(history, runs)
    return out


def _num(value: float) -> str:
    return f"{value:.2g}" if np.isfinite(value) else "not measured"


def _act_len_sentence(history: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    frame = act_len_frame(history, runs)
    if frame.empty:
        return []
    has_act = "activation" in frame.columns
    key = [ARCHITECTURE] + (["activation"] if has_act else [])
    low, high = int(frame["model.depth"].min()), int(frame["model.depth"].max())
    agg = frame.groupby([*key, "model.depth"])["measured"].median().unstack("model.depth")
    theory = frame.groupby([*key, "model.depth"])["theory"].median().unstack("model.depth")
    parts = []
    for idx, row in agg.iterrows():
        label = " / ".join(map(str, idx if isinstance(idx, tuple) else (idx,)))
        text = f"{label} {_num(row.get(low, np.nan))} -> {_num(row.get(high, np.nan))}"
        predicted = theory.loc[idx].get(high, np.nan) if idx in theory.index else np.nan
        if np.isfinite(predicted):
            text += f" (theory {predicted:.2g})"
        parts.append(text)
    note = "" if frame["theory"].notna().any() else " theory/act_len_logvar was not recorded."
    return [f"Activation-length spread Var log ||h_L||^2 at initialisation, median over seeds, depth {low} -> "
            f"{high}: " + "; ".join(parts) + "." + note]


def _branch_sentence(history: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    init = at_step(history[history["metric"].str.startswith("branch_ratio/layer_")], "init")
    if init.empty:
        return []
    ok = _at_init(runs)
    depth = int(ok["model.depth"].max())
    per_run = init.groupby("run_id")["value"].mean().rename("value").reset_index()
    key = [ARCHITECTURE] + (["activation"] if "activation" in ok.columns else [])
    per_run = _with(per_run, ok[ok["model.depth"] == depth], key)
    if per_run.empty:
        return []
    agg = per_run.groupby(key)["value"].median()
    text = "; ".join(f"{' / '.join(map(str, k if isinstance(k, tuple) else (k,)))} {v:.2g}" for k, v in agg.items())
    return [f"Branch-to-skip ratio ||α·φ(z)|| / ||h|| at initialisation, depth {depth}, mean over residual layers "
            f"(median over seeds): {text}."]
