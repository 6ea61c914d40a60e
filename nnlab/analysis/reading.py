"""A short written reading of a study, every number computed from the record."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .design import Design, deepest, levels
from .records import at_step, with_params
from .stats import aggregate, config_label, metric_scale

CHANCE_MAX = 0.2  # 10 classes: below this a configuration has not learned anything useful
GRADIENT_LIST_MAX = 12  # configurations listed one by one; beyond, the middle is summarised


def _ci(row: pd.Series) -> str:
    if np.isnan(row["ci_low"]):
        return f"{row['mean']:.3f} (n={row['n']})"
    return f"{row['mean']:.3f} (95% CI {row['ci_low']:.3f}-{row['ci_high']:.3f}, n={row['n']})"


def _label(agg: pd.DataFrame, design: Design) -> pd.Series:
    return config_label(agg, design.by)


def overview(runs: pd.DataFrame, design: Design) -> str:
    """How many runs, configurations, seeds and failures the study holds."""
    n_configs = runs.groupby(design.by, dropna=False).ngroups
    text = f"{len(runs)} runs: {n_configs} configurations"
    if "seed" in runs.columns:
        text += f" x {runs['seed'].nunique()} seeds"
    failed = runs[runs["failed"]]
    if len(failed):
        reasons = failed["failure"].fillna(failed["status"]).astype(str).str.split(" ").str[0].value_counts()
        text += f"; {len(failed)} failed ({', '.join(f'{n} {r}' for r, n in reasons.items())})"
    return text + "."


def best_and_worst(runs: pd.DataFrame, design: Design, metric: str = "test_acc") -> list[str]:
    """The best and worst configuration by mean ``metric`` and the ones that stayed near chance."""
    agg = aggregate(runs, design.by, metric, scale=metric_scale(metric)).dropna(subset=["mean"])
    if agg.empty:
        return [f"No run finished with a {metric}."]
    agg["label"] = _label(agg, design)
    ranked = agg.sort_values("mean", ascending=False, kind="stable")  # the summary table's order
    best, worst = ranked.iloc[0], ranked.iloc[-1]
    out = [f"Best configuration: **{best['label']}**, {metric} {_ci(best)}.",
           f"Worst configuration: **{worst['label']}**, {metric} {_ci(worst)}."]
    stuck = agg[agg["mean"] < CHANCE_MAX]
    if len(stuck):
        names = ", ".join(stuck["label"].head(12)) + (f" and {len(stuck) - 12} more" if len(stuck) > 12 else "")
        out.append(f"{len(stuck)} of {len(agg)} configurations stayed near chance ({metric} < {CHANCE_MAX}): {names}.")
    else:
        out.append(f"Every configuration learned ({metric} >= {CHANCE_MAX} on average).")
    return out


def _value(value: float) -> str:
    """A mean over seeds, or why there is none: every run of that cell failed (diverged or raised)."""
    return f"{value:.2f}" if np.isfinite(value) else "no finished run"


def by_depth(runs: pd.DataFrame, design: Design, metric: str = "test_acc") -> list[str]:
    """Per activation (design.x), each init's mean ``metric`` at the shallowest and deepest depth."""
    if design.col != "model.depth" or design.x is None:
        return []
    agg = aggregate(runs, design.by, metric)
    depths = levels(agg, "model.depth")
    low, high = depths[0], depths[-1]
    out = []
    for x in levels(agg, design.x):
        part = agg[agg[design.x] == x]
        cells = []
        for hue in levels(part, design.hue):
            rows = part[part[design.hue] == hue].set_index("model.depth")["mean"]
            cells.append(f"{hue} {_value(rows.get(low, np.nan))} -> {_value(rows.get(high, np.nan))}")
        out.append(f"{design.x} = {x}, {metric} from depth {low} to depth {high}: " + "; ".join(cells) + ".")
    return out


def gradient_flow(layers: pd.DataFrame, runs: pd.DataFrame, design: Design) -> list[str]:
    """At initialisation (deepest nets): the gradient norm reaching layer 1, and its ratio to the output
    layer's, for the configurations where it is smallest and largest."""
    frame = with_params(at_step(layers[layers["stat"] == "grad_norm"], "init"), runs, design.by)
    frame, suffix = deepest(frame, design)
    if frame.empty:
        return []
    first = frame[frame["layer"] == 1].set_index("run_id")["value"]
    last = frame.loc[frame.groupby("run_id")["layer"].idxmax()].set_index("run_id")["value"]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_run = pd.DataFrame({"first": first, "ratio": first / last}).reset_index()
    per_run = with_params(per_run, runs, design.by)
    by = [c for c in design.by if c != "model.depth"]
    agg = aggregate(per_run, by, "first", scale="log").dropna(subset=["mean"])
    if agg.empty:
        return []
    ratio = aggregate(per_run, by, "ratio", scale="log")[[*by, "mean"]].rename(columns={"mean": "ratio"})
    agg = agg.merge(ratio, on=by, how="left").sort_values("mean")
    agg["label"] = config_label(agg, by)
    def fmt(r: pd.Series) -> str:
        if r["mean"] == 0:  # every seed's norm underflowed to 0 (a geometric mean of zeros)
            return f"{r['label']} exactly 0"
        return f"{r['label']} {r['mean']:.2g} (x{r['ratio']:.2g})"

    items = [fmt(r) for _, r in agg.iterrows()]
    if len(items) > GRADIENT_LIST_MAX:  # the middle is left out, and the sentence says so
        omitted = agg.iloc[4:-4]
        items = items[:4] + [f"… {len(omitted)} more between {omitted['mean'].min():.2g} and "
                             f"{omitted['mean'].max():.2g} (every one in grad_norm_by_layer.png) …"] + items[-4:]
    return [f"At initialisation{suffix}, the gradient norm reaching layer 1 (geometric mean over seeds; in "
            f"brackets: relative to the output layer's, x1 = no vanishing), all {len(agg)} configurations, "
            f"smallest first: " + "; ".join(items) + "."
            if len(agg) <= GRADIENT_LIST_MAX else
            f"At initialisation{suffix}, the gradient norm reaching layer 1 (geometric mean over seeds; in "
            f"brackets: relative to the output layer's, x1 = no vanishing), the 4 smallest and 4 largest of "
            f"{len(agg)} configurations: " + "; ".join(items) + "."]


def saturation(layers: pd.DataFrame, runs: pd.DataFrame, design: Design) -> list[str]:
    """Mean saturated/dead fraction over hidden layers, at init and after training, at the extremes."""
    frame = with_params(layers[layers["stat"] == "act_saturation"], runs, design.by)
    frame, suffix = deepest(frame, design)
    if frame.empty:
        return []
    by = [c for c in design.by if c != "model.depth"]
    out = []
    for phase, words in (("init", "at initialisation"), ("last", "after training")):
        per_run = at_step(frame, phase).groupby(["run_id", *by], dropna=False)["value"].mean().reset_index()
        agg = aggregate(per_run, by, "value").dropna(subset=["mean"]).sort_values("mean", ascending=False)
        agg["label"] = config_label(agg, by)
        top = "; ".join(f"{r['label']} {r['mean']:.0%}" for _, r in agg.head(3).iterrows())
        out.append(f"Saturated/dead fraction of hidden units {words}{suffix}, highest: {top}.")
    return out


def reading(runs: pd.DataFrame, layers: pd.DataFrame, design: Design, metric: str = "test_acc",
            read: pd.DataFrame | None = None) -> list[str]:
    """The whole reading as a list of Markdown sentences: the overview counts ``runs``; the sentences per
    configuration read ``read`` (default ``runs``; the depth study passes each cell at its tuned rate)."""
    read = runs if read is None else read
    ok = read[~read["failed"]]
    return [overview(runs, design), *best_and_worst(read, design, metric), *by_depth(read, design, metric),
            *gradient_flow(layers, ok, design), *saturation(layers, ok, design)]
