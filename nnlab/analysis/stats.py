"""Aggregates across seeds: mean, std and a 95% confidence interval per configuration."""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import pandas as pd

from .records import EPOCH_METRICS, FINAL_METRICS, RUN_COLUMNS

SEED_KEYS = ("seed",)
# Params whose values say *how the run was recorded*, not what was trained: never a design axis.
_NOT_DESIGN = ("tracking.",)
# Preferred order of design axes: the first varying one is the hue, then x, then facets.
_AXIS_ORDER = ("init", "optimizer", "activation", "model.depth", "optimizer.lr", "model.width")
AGG_COLUMNS = ("n", "n_missing", "n_zero", "mean", "std", "sem", "ci_low", "ci_high", "min", "max")


def metric_scale(metric: str) -> str:
    """The ``SCALES`` entry of a record name: fractions for accuracies and saturation, log for norms
    and stds (and losses: positive, spanning decades), linear otherwise."""
    name = metric.split("/", 1)[0]
    if name.endswith("_acc") or name == "act_saturation":
        return "fraction"
    if name in ("grad_norm", "act_std", "preact_std") or name.endswith("_loss"):
        return "log"
    return "linear"


def param_columns(runs: pd.DataFrame) -> list[str]:
    """The param columns of a runs frame (everything that is not run info or a metric)."""
    return [c for c in runs.columns if c not in RUN_COLUMNS and c not in FINAL_METRICS + EPOCH_METRICS]


def varying_params(runs: pd.DataFrame, exclude: Sequence[str] = SEED_KEYS) -> list[str]:
    """Params that take more than one value across ``runs`` (seed excluded), in design order.

    A group choice (``init``) hides the leaves that merely follow it (``init.name``,
    ``init.distribution``): they vary only because the choice does.
    """
    cols = [c for c in param_columns(runs) if c not in exclude and not c.startswith(_NOT_DESIGN)]
    varying = [c for c in cols if runs[c].astype(str).nunique(dropna=False) > 1]
    groups = [c for c in varying if "." not in c]
    varying = [c for c in varying if "." not in c or not _follows_group(runs, c, groups)]
    rank = {name: i for i, name in enumerate(_AXIS_ORDER)}
    return sorted(varying, key=lambda c: (rank.get(c, len(rank)), c))


def _follows_group(runs: pd.DataFrame, column: str, groups: list[str]) -> bool:
    """True when ``column`` (e.g. ``init.std``) lives under a varying group and is fixed within each choice."""
    group = column.split(".", 1)[0]
    if group not in groups:
        return False
    return bool((runs.groupby(group)[column].agg(lambda s: s.astype(str).nunique(dropna=False)) <= 1).all())


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval for the mean of ``values`` (n >= 2; NaN otherwise)."""
    n = len(values)
    if n < 2:
        return (np.nan, np.nan)
    mean, sem = float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(n))
    half = _t_quantile(0.5 + level / 2, n - 1) * sem
    return (mean - half, mean + half)


@functools.lru_cache(maxsize=256)
def _t_quantile(q: float, df: int) -> float:
    """Student's t quantile (scipy's ``stdtrit``, the value ``scipy.stats.t.ppf`` returns), once per (q, df): a
    report asks for it thousands of times with a few seeds' counts."""
    from scipy.special import stdtrit  # here, not at import; scipy.stats (~1 s to import) is not needed for it

    return float(stdtrit(df, q))


def bootstrap_interval(values: np.ndarray, level: float = 0.95, n_boot: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of ``values`` (n >= 2; NaN otherwise)."""
    n = len(values)
    if n < 2:
        return (np.nan, np.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    low, high = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return (float(low), float(high))


# How a quantity's interval respects its range: "linear" (any real), "fraction" (accuracy, saturated
# fraction: the interval is cut to [0, 1], where the mean lives), "log" (norms, stds: positive and
# spanning decades; mean and interval are computed on log values, i.e. a geometric mean with an
# interval that is always > 0; exact zeros are left out of both and counted in ``n_zero``).
SCALES = ("linear", "fraction", "log")


def summarize(values: Sequence[float], level: float = 0.95, method: str = "t", n_boot: int = 2000,
              seed: int = 0, scale: str = "linear") -> dict[str, float]:
    """n, n_missing, n_zero, mean, std (ddof=1), sem, CI, min and max of ``values``; NaNs (failed runs)
    are counted apart. ``scale`` (see ``SCALES``) keeps the mean and CI inside the quantity's range."""
    if method not in ("t", "bootstrap"):
        raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    n = len(finite)
    std = float(np.std(finite, ddof=1)) if n >= 2 else np.nan
    interval = t_interval if method == "t" else lambda v, lv: bootstrap_interval(v, lv, n_boot, seed)
    n_zero = int(np.sum(finite == 0)) if scale == "log" else 0
    if scale == "log":
        positive = finite[finite > 0]
        logs = np.log(positive)
        mean = float(np.exp(np.mean(logs))) if len(positive) else (0.0 if n_zero else np.nan)
        low, high = np.exp(interval(logs, level))
    else:
        mean = float(np.mean(finite)) if n else np.nan
        low, high = interval(finite, level)
        if scale == "fraction":
            low, high = float(np.clip(low, 0.0, 1.0)), float(np.clip(high, 0.0, 1.0))
    return {"n": n, "n_missing": len(arr) - n, "n_zero": n_zero, "mean": mean, "std": std,
            "sem": std / np.sqrt(n) if n >= 2 else np.nan, "ci_low": float(low), "ci_high": float(high),
            "min": float(np.min(finite)) if n else np.nan, "max": float(np.max(finite)) if n else np.nan}


def aggregate(frame: pd.DataFrame, by: Sequence[str], value: str = "test_acc", *, level: float = 0.95,
              method: str = "t", n_boot: int = 2000, seed: int = 0, scale: str = "linear") -> pd.DataFrame:
    """One row per group of ``by`` (e.g. init, activation, depth: the seeds collapse) with
    ``n, n_missing, mean, std, sem, ci_low, ci_high, min, max`` of column ``value``.

    ``method`` is ``"t"`` (Student-t interval) or ``"bootstrap"`` (percentile, ``n_boot`` resamples);
    ``scale`` keeps mean and interval in the quantity's range (``SCALES``: linear, fraction, log).
    Non-finite values (a failed run's missing test_acc) are left out of the statistics and counted
    in ``n_missing``.
    """
    by = list(by)
    missing = [c for c in [*by, value] if c not in frame.columns]
    if missing:
        raise KeyError(f"column(s) {missing} not in frame; available: {list(frame.columns)}")
    if frame.empty:
        return pd.DataFrame(columns=[*by, *AGG_COLUMNS])
    values = frame[value].to_numpy(dtype=float)
    if not by:
        rows = [summarize(values, level, method, n_boot, seed, scale)]
        return pd.DataFrame(rows, columns=AGG_COLUMNS).astype({"n": "int64", "n_missing": "int64", "n_zero": "int64"})
    if method not in ("t", "bootstrap"):
        raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    # group by codes and slices of one sorted array, not by pandas' per-group frames: a report aggregates
    # thousands of (configuration, epoch) groups, and building a frame per group cost more than the statistics
    codes = frame.groupby(by, sort=True, dropna=False).ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    ends = np.r_[starts[1:], len(order)]
    keys = pd.DataFrame(list(frame[by].iloc[order[starts]].itertuples(index=False, name=None)), columns=by)
    if method == "t":  # every group at once (6,500 groups in the init_depth report: 0.3 s one by one)
        stats = _t_statistics(values[order], starts, level, scale)
    else:
        stats = pd.DataFrame([summarize(values[order[a:b]], level, method, n_boot, seed, scale)
                              for a, b in zip(starts, ends)], columns=AGG_COLUMNS)
    out = pd.concat([keys, stats], axis=1)
    return out.astype({"n": "int64", "n_missing": "int64", "n_zero": "int64"})


def _t_statistics(values: np.ndarray, starts: np.ndarray, level: float, scale: str) -> pd.DataFrame:
    """:func:`summarize` with the t interval for every group of ``values`` at once: group ``i`` is
    ``values[starts[i]:starts[i + 1]]`` (non-empty). Columns ``AGG_COLUMNS``."""
    from scipy.special import stdtrit  # as _t_quantile

    sizes = np.diff(np.r_[starts, len(values)])
    group = np.repeat(np.arange(len(starts)), sizes)
    finite = np.isfinite(values)

    def total(x):
        return np.add.reduceat(x, starts)

    def mean_std(x, keep):
        """Per-group count, mean and std (ddof=1) of ``x`` where ``keep``; NaN where undefined."""
        n = total(keep.astype(float))
        x = np.where(keep, x, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total(x) / n
            dev = np.where(keep, x - mean[group], 0.0)
            std = np.sqrt(total(dev * dev) / (n - 1))
        return n, np.where(n > 0, mean, np.nan), np.where(n >= 2, std, np.nan)

    def half_width(n, std):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n >= 2, stdtrit(np.maximum(n - 1, 1), 0.5 + level / 2) * std / np.sqrt(n), np.nan)

    n, mean, std = mean_std(values, finite)
    n_zero = total((finite & (values == 0)).astype(float)) if scale == "log" else np.zeros(len(starts))
    if scale == "log":  # geometric mean, interval on the logs of the positive values
        positive = finite & (values > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            n_pos, log_mean, log_std = mean_std(np.log(np.where(positive, values, 1.0)), positive)
        half = half_width(n_pos, log_std)
        center = np.where(n_pos > 0, np.exp(log_mean), np.where(n_zero > 0, 0.0, np.nan))
        low, high = np.exp(log_mean - half), np.exp(log_mean + half)
    else:
        half = half_width(n, std)
        center, low, high = mean, mean - half, mean + half
        if scale == "fraction":
            low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sem = np.where(n >= 2, std / np.sqrt(n), np.nan)
    lowest = np.minimum.reduceat(np.where(finite, values, np.inf), starts)
    highest = np.maximum.reduceat(np.where(finite, values, -np.inf), starts)
    return pd.DataFrame({"n": n, "n_missing": sizes - n, "n_zero": n_zero, "mean": center, "std": std, "sem": sem,
                         "ci_low": low, "ci_high": high, "min": np.where(n > 0, lowest, np.nan),
                         "max": np.where(n > 0, highest, np.nan)}, columns=AGG_COLUMNS)


def config_label(runs: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """A readable label per row from ``columns``: ``he / relu / depth 4`` (names for non-group keys)."""
    def one(row: pd.Series) -> str:  # a param a run does not have (NaN, e.g. init.gain of a Gaussian init) is left out
        return " / ".join(str(row[c]) if "." not in c else f"{c.rsplit('.', 1)[-1]} {row[c]}" for c in columns
                          if not (np.isscalar(row[c]) and pd.isna(row[c])))
    return runs.apply(one, axis=1) if len(runs) else pd.Series([], dtype=object)


def summary_table(runs: pd.DataFrame, by: Sequence[str], metric: str = "test_acc") -> pd.DataFrame:
    """Per configuration: runs, failed, mean/std/95% CI of ``metric``, mean best_val_acc and train time;
    sorted best first."""
    agg = aggregate(runs, by, metric, scale=metric_scale(metric))
    extra = runs.groupby(list(by), dropna=False).agg(runs=("run_id", "size"), failed=("failed", "sum"),
                                                     best_val_acc=("best_val_acc", "mean"),
                                                     train_seconds=("train_seconds", "mean")).reset_index()
    out = agg.merge(extra, on=list(by), how="left")
    out = out[[*by, "runs", "failed", "mean", "std", "ci_low", "ci_high", "best_val_acc", "train_seconds"]]
    out = out.rename(columns={"mean": f"{metric} mean", "std": f"{metric} std", "ci_low": "95% CI low",
                              "ci_high": "95% CI high"})
    return out.sort_values(f"{metric} mean", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def format_cell(v: object, floatfmt: str = ".3f", exact: bool = False) -> str:
    """One table cell: a statistic to ``floatfmt``; with ``exact`` (a config value such as a learning
    rate of 0.000488) as written (``g``, 6 significant digits); missing = blank."""
    if isinstance(v, (float, np.floating)):
        return "" if np.isnan(v) else format(v, "g" if exact else floatfmt)
    return "" if v is pd.NA else str(v)


def config_columns(frame: pd.DataFrame) -> list[str]:
    """The summary table's configuration columns: those before ``runs`` (``summary_table``'s layout)."""
    columns = list(frame.columns)
    return columns[:columns.index("runs")] if "runs" in columns else []


def to_markdown(frame: pd.DataFrame, floatfmt: str = ".3f", exact: Sequence[str] = ()) -> str:
    """A GitHub Markdown table of ``frame`` (no extra dependency); the ``exact`` columns (config values)
    are written as they are, the rest to ``floatfmt``."""
    flags = [c in exact for c in frame.columns]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(format_cell(v, floatfmt, e).replace("|", "\\|") for v, e in zip(row, flags)) + " |"
              for row in frame.itertuples(index=False)]
    return "\n".join(lines)
