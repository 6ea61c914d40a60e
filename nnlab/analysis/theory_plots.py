"""Theory beside measurement: the record's ``theory/*`` predictions (nnlab.theory, logged at epoch 0)
against the measured statistics, the Jacobian's spectrum at initialisation, and the order-to-chaos
trainability map. Every function reads frames from ``nnlab.analysis`` and returns a matplotlib Figure
(or a frame); the heatmap's lines come from ``nnlab.theory`` itself."""
from __future__ import annotations

import math
import re

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import plots
from .design import Design, levels
from .records import at_step, name_parts, with_params
from .stats import aggregate, config_label

THEORY_STAT = re.compile(r"^(?P<source>theory/)?(?P<stat>preact_std|act_std|chi|grad_ratio)/layer_(?P<layer>\d+)$")
INF_STORED = 1e300  # MLflow stores inf as the largest float


def has_theory(history: pd.DataFrame) -> bool:
    """Whether the runs recorded nnlab.theory's predictions (``diagnostics.theory``)."""
    return bool(history["metric"].str.startswith("theory/").any())


def theory_layers(history: pd.DataFrame) -> pd.DataFrame:
    """Epoch-0 per-layer rows ``run_id, stat, layer, value, source`` (source = "theory" or "measured")
    for preact_std, act_std, chi and grad_ratio."""
    init = at_step(history, "init")
    parts = name_parts(init["metric"], THEORY_STAT)
    keep = parts["stat"].notna()
    out = init.loc[keep, ["run_id", "value"]].copy()
    out["stat"] = parts.loc[keep, "stat"]
    out["layer"] = parts.loc[keep, "layer"].astype("int64")
    out["source"] = np.where(parts.loc[keep, "source"].notna(), "theory", "measured")
    return out.reset_index(drop=True)


def predicted_profile(history: pd.DataFrame, stat: str) -> pd.DataFrame:
    """The theory's line for ``layer_profile``: rows ``run_id, layer, value``.

    act_std: ``theory/act_std/layer_{i}``. grad_norm: the output layer's measured epoch-0 gradient
    norm times ``theory/grad_ratio/layer_{i}`` (the theory predicts how the gradient grows or shrinks
    from layer to layer, not the loss's own gradient, so the line is anchored at the output layer)."""
    rows = theory_layers(history)
    if stat == "act_std":
        return rows[(rows["stat"] == "act_std") & (rows["source"] == "theory")][["run_id", "layer", "value"]]
    if stat == "grad_norm":
        ratio = rows[(rows["stat"] == "grad_ratio") & (rows["source"] == "theory")]
        if ratio.empty:
            return ratio[["run_id", "layer", "value"]]
        out_layer = ratio.groupby("run_id")["layer"].max().rename("out_layer")
        grads = at_step(history[history["metric"].str.startswith("grad_norm/layer_")], "init").copy()
        grads["layer"] = grads["metric"].str.rsplit("_", n=1).str[-1].astype("int64")
        grads = grads.merge(out_layer, on="run_id")
        anchor = grads[grads["layer"] == grads["out_layer"]].set_index("run_id")["value"].rename("anchor")
        ratio = ratio.merge(anchor, on="run_id")
        ratio["value"] = ratio["value"] * ratio["anchor"]
        return ratio[["run_id", "layer", "value"]]
    return pd.DataFrame(columns=["run_id", "layer", "value"])


def measured_vs_predicted(history: pd.DataFrame, runs: pd.DataFrame, design: Design) -> Figure:
    """Measured against predicted std at initialisation, one point per run x hidden layer, on the
    identity line: pre-activation std (left) and hidden-layer output std (right), log-log."""
    rows = theory_layers(history)
    rows = rows[rows["stat"].isin(["preact_std", "act_std"])]
    wide = rows.pivot_table(index=["run_id", "stat", "layer"], columns="source", values="value").reset_index()
    wide = with_params(wide.dropna(subset=["theory", "measured"]), runs, design.by)
    hue = design.hue
    fig, axes = plots.grid(1, 2, 3.7, 3.7, panel_title_lines=2, legend_w=1.6, wgap=0.85)
    axes = axes[0]
    colors = dict(zip(levels(wide, hue), plots.color_palette("colorblind", len(levels(wide, hue)))))
    for ax, stat, label in zip(axes, ("preact_std", "act_std"), ("pre-activation std", "hidden output std")):
        part = wide[wide["stat"] == stat]
        part = part[(part["theory"] > 0) & (part["measured"] > 0)]
        for value in levels(part, hue):
            sel = part[part[hue] == value]
            ax.scatter(sel["theory"], sel["measured"], s=9, alpha=0.6, color=colors[value], label=str(value), lw=0)
        if len(part):
            lo = min(part["theory"].min(), part["measured"].min()) / 1.5
            hi = max(part["theory"].max(), part["measured"].max()) * 1.5
            ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--", label="measured = predicted")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            subs = (1.0, 2.0, 5.0) if hi / lo < 100 else (1.0,)  # labels that fit: 1-2-5 only on short ranges
            for axis, numticks in ((ax.xaxis, 6), (ax.yaxis, 9)):  # x labels sit side by side: fewer fit
                axis.set_major_locator(ticker.LogLocator(subs=subs, numticks=numticks))
                axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(ticker.NullFormatter())
            err = np.median(np.abs(part["measured"] / part["theory"] - 1))
            ax.set_title(f"{label}\nmedian |error| {err:.1%} ({len(part)} run x layer pairs)", fontsize=10)
        ax.set_xlabel("predicted by mean-field theory")
        ax.set_ylabel("measured at initialisation")
        ax.grid(alpha=0.3, which="both")
    fig = plots.finish(fig, "Measured vs predicted std at initialisation (epoch 0; every run and hidden layer)",
                       plots.legend_entries(axes, levels(wide, hue)), hue)
    for handle in fig.legends[0].legend_handles:  # the scatter's 9-point dots, readable in the legend
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([30])
    return fig


def prediction_errors(history: pd.DataFrame) -> pd.DataFrame:
    """Per run and hidden layer: measured / predicted - 1 for preact_std and act_std at epoch 0."""
    rows = theory_layers(history)
    rows = rows[rows["stat"].isin(["preact_std", "act_std"])]
    wide = rows.pivot_table(index=["run_id", "stat", "layer"], columns="source", values="value").reset_index()
    wide = wide.dropna(subset=["theory", "measured"])
    wide["rel_error"] = wide["measured"] / wide["theory"] - 1
    return wide


# --- the Jacobian spectrum at initialisation ----------------------------------------------------
def _width(value: object) -> int | list[int]:
    """``model.width`` as recorded: a number, or a per-layer list (MLflow keeps params as text: "[32, 20]")."""
    if isinstance(value, str) and value.strip().startswith("["):
        return [int(w) for w in value.strip("[] ").split(",")]
    if isinstance(value, (list, tuple)):
        return [int(w) for w in value]
    return int(value)


def _model_args(row: pd.Series) -> dict:
    init = str(row["init"])
    params = {"orthogonal": ("gain",), "variance_scaling": ("sigma_w", "sigma_b"), "random": ("std",),
              "he": ("distribution",), "xavier": ("distribution",), "lecun": ("distribution",)}.get(init, ())
    init_params = {p: row[f"init.{p}"] for p in params if f"init.{p}" in row and pd.notna(row[f"init.{p}"])}
    act_params = {"alpha": float(row["activation.alpha"])} if pd.notna(row.get("activation.alpha", np.nan)) else {}
    return {"depth": int(row["model.depth"]), "width": _width(row["model.width"]), "activation": str(row["activation"]),
            "activation_params": act_params, "init": init,
            "init_params": {k: (float(v) if k != "distribution" else v) for k, v in init_params.items()},
            "seed": int(row["seed"])}


def initial_spectra(runs: pd.DataFrame, n_inputs: int = 4) -> pd.DataFrame:
    """Singular values of each run's hidden-stack Jacobian d a^L / d x *at initialisation*, rebuilt
    from its recorded config and seed (initialisation is deterministic; nothing is trained), at the
    first ``n_inputs`` training inputs of its dataset: rows ``run_id, sv``."""
    from nnlab.core import MLP
    from nnlab.core.jacobian import jacobian_singular_values
    from nnlab.data import load_dataset

    out = []
    cache: dict = {}
    for _, row in runs.iterrows():
        key = (row.get("dataset", "digits"), row.get("dataset.split_seed", 0))
        if key not in cache:
            cache[key] = load_dataset(str(key[0]), split_seed=int(key[1]))
        data = cache[key]
        model = MLP.from_shape(data.n_features, data.n_classes, **_model_args(row))
        if model.depth == 0:
            continue
        sv = jacobian_singular_values(model, data.x_train[:n_inputs], exact=True).ravel()
        out.append(pd.DataFrame({"run_id": row["run_id"], "sv": sv}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["run_id", "sv"])


def _scale(row: pd.Series) -> float:
    """sigma_w^2 of a run whose init has a scale parameter (orthogonal gain^2, variance_scaling sigma_w^2)."""
    for key in ("init.gain", "init.sigma_w"):
        if key in row and pd.notna(row[key]):
            return float(row[key]) ** 2
    return math.nan


def jacobian_spectrum(runs: pd.DataFrame, design: Design, n_inputs: int = 4) -> Figure:
    """Histogram of the Jacobian's singular values at initialisation (log x axis), pooled over seeds,
    one panel per activation, one colour per configuration of the other factors (init and its
    sigma_w^2 = gain^2 or sigma_w^2); with depth as a factor, the deepest networks only."""
    columns = [c for c in design.factors if c in runs.columns]
    if "model.depth" in columns and runs["model.depth"].nunique() > 1:
        runs = runs[runs["model.depth"] == runs["model.depth"].max()]
        columns.remove("model.depth")
    spectra = with_params(initial_spectra(runs, n_inputs), runs,
                          list(dict.fromkeys([*columns, *[c for c in ("init", "init.gain", "init.sigma_w")
                                                          if c in runs.columns]])))
    panel_col = "activation" if "activation" in spectra.columns and spectra["activation"].nunique() > 1 else None
    scale_keys = ("init.gain", "init.sigma_w", "init.sigma_b", "init", panel_col)
    others = [c for c in columns if c not in scale_keys]
    scale = spectra.apply(_scale, axis=1)
    label = spectra["init"].astype(str) if "init" in spectra.columns else pd.Series("", index=spectra.index)
    label = label + np.where(scale.notna(), ", sigma_w^2 " + scale.round(3).map("{:g}".format), "")
    if others:
        label = label + " / " + config_label(spectra, others)
    spectra["config"] = label
    panels = levels(spectra, panel_col) if panel_col else [None]
    fig, axes = plots.grid(1, len(panels), 3.0, 3.0, sharey=False, panel_title_lines=1, legend_w=1.5, wgap=0.7)
    configs = levels(spectra, "config")
    colors = plots.palette(configs)
    for ax, panel in zip(axes[0], panels):
        part = spectra if panel is None else spectra[spectra[panel_col] == panel]
        positive = part.loc[part["sv"] > 0, "sv"]
        lo, hi = np.log10(positive.min()), np.log10(positive.max())
        bins = np.logspace(math.floor(lo * 2) / 2, math.ceil(hi * 2) / 2 + 1e-9, 40)
        zeros = []
        for config in configs:
            mine = part.loc[part["config"] == config, "sv"]
            sv = mine[mine > 0]
            if len(sv):  # a histogram as one step line: a Line2D, like every other figure's curves
                counts, edges = np.histogram(sv, bins=bins)
                ax.plot(edges, np.append(counts, counts[-1]), drawstyle="steps-post", lw=1.5, color=colors[config],
                        label=config)
            if (mine <= 0).any():
                zeros.append(f"{config}: {int((mine <= 0).sum())} of {len(mine)}")
        if zeros:  # singular values that are exactly 0 (dead ReLUs, underflow) have no place on a log axis
            ax.set_ylim(0, ax.get_ylim()[1] * (1.25 + 0.1 * len(zeros)))  # room for the note above the bars
            ax.text(0.02, 0.98, "exactly 0, not drawn:\n" + "\n".join(zeros), transform=ax.transAxes, ha="left",
                    va="top", fontsize=7, color="0.25")
        ax.axvline(1.0, color="grey", ls=":", lw=1, label="1 = isometry")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(numticks=5))
        ax.set_xlabel("singular value of d a^L / d x")
        ax.set_title(f"{panel_col} = {panel}" if panel is not None else "", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("count (all seeds and probe inputs)")
    for ax in axes[0]:
        plots.integer_ticks(ax.yaxis)
    depth = f", depth {int(runs['model.depth'].iloc[0])}" if runs["model.depth"].nunique() == 1 else ""
    return plots.finish(fig, f"Jacobian singular values at initialisation{depth}, pooled over seeds and "
                             f"{n_inputs} probe inputs (exact SVD; log axis: values that are exactly 0 are "
                             f"counted in each panel's corner)", plots.legend_entries(axes, configs), "configuration")


# --- the trainability map (Schoenholz et al. 2017, Fig. 5 in miniature) -------------------------
def sigma_w2_column(runs: pd.DataFrame) -> pd.Series:
    """sigma_w^2 of each run (variance_scaling's init.sigma_w squared), rounded to 3 decimals."""
    return (runs["init.sigma_w"].astype(float) ** 2).round(3)


def theory_lines(activation: str, sigma_b2: float, sigma_w2: np.ndarray) -> tuple[float, np.ndarray]:
    """(the critical sigma_w^2, 6 xi_c at each sigma_w^2) from nnlab.theory (where q* is 0 or inf and
    xi_c is no correlation depth scale, the gradient's xi_grad: ``FixedPoint.xi_trainable``)."""
    from nnlab import theory

    critical = theory.critical_sigma_w2(activation, sigma_b2)
    six_xi = np.array([6 * theory.fixed_point_summary(activation, s, sigma_b2).xi_trainable for s in sigma_w2])
    return critical, six_xi


def trainability_table(runs: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """Mean ``metric`` over seeds per (sigma_w^2, depth): rows depth, columns sigma_w^2 (failed runs
    count as chance, 0.1: a diverged network has not learned)."""
    frame = runs.copy()
    frame["sigma_w2"] = sigma_w2_column(frame)
    frame[metric] = frame[metric].where(~frame["failed"], 0.1)
    return frame.pivot_table(index="model.depth", columns="sigma_w2", values=metric, aggfunc="mean")


def _edges(values: np.ndarray, log: bool) -> np.ndarray:
    v = np.log(values) if log else np.asarray(values, float)
    mid = (v[1:] + v[:-1]) / 2
    edges = np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])
    return np.exp(edges) if log else edges


def trainability_heatmap(runs: pd.DataFrame, metric: str = "test_acc") -> Figure:
    """Mean ``metric`` over (sigma_w^2, depth) as a heatmap, with the theory's critical line
    (chi_1 = 1) and the 6 xi_c depth on top."""
    table = trainability_table(runs, metric)
    sw2, depths = table.columns.to_numpy(float), table.index.to_numpy(float)
    activation = str(runs["activation"].iloc[0])
    sigma_b2 = float(runs["init.sigma_b"].astype(float).iloc[0]) ** 2
    fig, ax = plt.subplots(figsize=(8.4, 5.6), layout="constrained")
    mesh = ax.pcolormesh(_edges(sw2, False), _edges(depths, True), table.to_numpy(), cmap="viridis", vmin=0, vmax=1)
    for i, d in enumerate(depths):
        for j, s in enumerate(sw2):
            value = table.iloc[i, j]
            if np.isfinite(value):
                ax.text(s, d, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value < 0.6 else "black")
    fine = np.linspace(_edges(sw2, False)[0], _edges(sw2, False)[-1], 300)
    critical, six_xi = theory_lines(activation, sigma_b2, fine)
    ax.plot(fine, six_xi, color="red", lw=2, label=r"$6\,\xi_c$ (theory)")
    ax.axvline(critical, color="black", ls="--", lw=1.5, label=rf"$\chi_1 = 1$ ($\sigma_w^2$ = {critical:.2f})")
    ax.set_yscale("log")
    ax.set_ylim(_edges(depths, True)[0], _edges(depths, True)[-1])
    ax.set_xlim(_edges(sw2, False)[0], _edges(sw2, False)[-1])
    ax.set_yticks(depths, [str(int(d)) for d in depths])
    ax.minorticks_off()
    ax.set_xticks(sw2, [f"{s:g}" for s in sw2])
    ax.set_xlabel(r"$\sigma_w^2$ (W ~ N(0, $\sigma_w^2$ / fan_in))")
    ax.set_ylabel("depth (hidden layers)")
    fig.colorbar(mesh, ax=ax, label=f"mean {metric} over seeds")
    fig.legend(loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    ax.set_title(f"Trainability of {activation} networks, $\\sigma_b^2$ = {sigma_b2:.2g}: {metric} after training")
    return fig


# --- the written reading ---------------------------------------------------------------------------
def trainability_reading(runs: pd.DataFrame, metric: str = "test_acc", threshold: float = 0.5) -> list[str]:
    """Where trainability ends, per sigma_w^2, against 6 xi_c."""
    table = trainability_table(runs, metric)
    activation = str(runs["activation"].iloc[0])
    sigma_b2 = float(runs["init.sigma_b"].astype(float).iloc[0]) ** 2
    sw2 = table.columns.to_numpy(float)
    critical, six_xi = theory_lines(activation, sigma_b2, sw2)
    cells, inside, outside = [], 0, 0
    for s, bound in zip(sw2, six_xi):
        col = table[s]
        trained = col[col >= threshold].index
        deepest = int(trained.max()) if len(trained) else None
        cells.append(f"sigma_w^2={s:g}: {'none' if deepest is None else f'up to depth {deepest}'} "
                     f"(6 xi_c = {bound:.0f})")
        for depth, value in col.items():
            predicted = depth <= bound
            if np.isfinite(value):
                inside += int(predicted == (value >= threshold))
                outside += int(predicted != (value >= threshold))
    out = [f"Trainable = mean {metric} >= {threshold} over seeds. Deepest trainable network per sigma_w^2 "
           f"(theory's critical point: sigma_w^2 = {critical:.2f}): " + "; ".join(cells) + ".",
           f"The rule 'trainable iff depth <= 6 xi_c' agrees with the data in {inside} of {inside + outside} "
           f"(sigma_w^2, depth) cells."]
    return out


def theory_reading(history: pd.DataFrame, runs: pd.DataFrame, design: Design) -> list[str]:
    """How close the measured std at initialisation is to the prediction, by configuration."""
    errors = with_params(prediction_errors(history), runs, design.by)
    if errors.empty:
        return []
    out = []
    for stat, words in (("preact_std", "pre-activation std"), ("act_std", "hidden-output std")):
        part = errors[errors["stat"] == stat]
        med = float(np.median(np.abs(part["rel_error"])))
        worst = part.loc[part["rel_error"].abs().idxmax()]
        out.append(f"At initialisation the measured {words} differs from the mean-field prediction by {med:.1%} "
                   f"(median over {len(part)} run x layer pairs); the largest deviation is {worst['rel_error']:+.0%} "
                   f"(layer {int(worst['layer'])} of a {config_label(worst.to_frame().T, design.by).iloc[0]} run).")
    out += gradient_reading(history, runs, design)
    chis = history[history["metric"] == "theory/chi_star"][["run_id", "value"]]
    chis = with_params(chis, runs, design.by)
    if len(chis):
        agg = aggregate(chis, [c for c in design.by if c != "model.depth"], "value")
        agg["label"] = config_label(agg, [c for c in design.by if c != "model.depth"])
        text = "; ".join(f"{r['label']} {r['mean']:.3g}" for _, r in agg.sort_values("mean").iterrows())
        out.append(f"Predicted chi_1 at the fixed point (< 1: ordered, gradients shrink per layer; > 1: chaotic, they "
                   f"grow): {text}.")
    return out


def gradient_reading(history: pd.DataFrame, runs: pd.DataFrame, design: Design) -> list[str]:
    """Deepest networks: the gradient norm of layer 1 relative to the output layer's at initialisation,
    measured (full-batch gradient) and predicted (``theory/grad_ratio/layer_1``), per configuration."""
    from .design import deepest

    init = at_step(history, "init")
    measured = init[init["metric"].str.match(r"^grad_norm/layer_\d+$")].copy()
    if measured.empty or not (init["metric"] == "theory/grad_ratio/layer_1").any():
        return []
    measured["layer"] = measured["metric"].str.rsplit("_", n=1).str[-1].astype("int64")
    first = measured[measured["layer"] == 1].set_index("run_id")["value"]
    last = measured.loc[measured.groupby("run_id")["layer"].idxmax()].set_index("run_id")["value"]
    predicted = init[init["metric"] == "theory/grad_ratio/layer_1"].set_index("run_id")["value"]
    with np.errstate(divide="ignore", invalid="ignore"):
        frame = pd.DataFrame({"measured": first / last, "predicted": predicted}).dropna().reset_index()
    frame = with_params(frame, runs, design.by)
    frame, suffix = deepest(frame, design)
    by = [c for c in design.by if c != "model.depth"] or design.by
    rows = frame.groupby(by, dropna=False)[["measured", "predicted"]].median().reset_index()
    rows["label"] = config_label(rows, by)
    cells = "; ".join(f"{r['label']} {r['measured']:.2g} vs {r['predicted']:.2g}" for _, r in rows.iterrows())
    return [f"Gradient norm of layer 1 relative to the output layer at initialisation{suffix}, measured (full "
            f"training batch) vs predicted (one example), median over seeds: {cells}."]
