"""Which params a study varies, and which plotting role each one takes (hue, x axis, facet)."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .stats import config_label, varying_params

CONFIG = "config"


@dataclass(frozen=True)
class Design:
    """Plot roles: ``hue`` (one line/colour per value), ``x`` (categories on the x axis; None = the
    hue itself), ``col`` (one facet per value; None = one panel). ``factors`` lists every varying param."""

    hue: str
    x: str | None = None
    col: str | None = None
    factors: tuple[str, ...] = ()

    @property
    def by(self) -> list[str]:
        """The columns that identify a configuration (seeds collapse within it)."""
        return list(dict.fromkeys(c for c in (self.hue, self.x, self.col) if c is not None))


def infer_design(runs: pd.DataFrame) -> tuple[pd.DataFrame, Design]:
    """Roles for the varying params of ``runs``, in the order init/optimizer, activation, depth, lr, ...

    Up to three factors become hue, x and col; more (or none) are folded into one ``config`` label
    column, added to the returned copy of ``runs``.
    """
    factors = tuple(varying_params(runs))
    if 1 <= len(factors) <= 3:
        return runs, Design(*factors, factors=factors)
    out = runs.copy()
    out[CONFIG] = config_label(out, factors) if factors else "all runs"
    return out, Design(CONFIG, factors=factors)


def levels(frame: pd.DataFrame, column: str) -> list:
    """The distinct values of ``column`` in natural order (numbers numerically, text alphabetically)."""
    values = frame[column].dropna().unique().tolist()
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def deepest(frame: pd.DataFrame, design: Design) -> tuple[pd.DataFrame, str]:
    """Rows of the largest ``model.depth`` when depth is a facet, with a title suffix naming it."""
    if design.col == "model.depth" and "model.depth" in frame.columns:
        depth = max(levels(frame, "model.depth"))
        return frame[frame["model.depth"] == depth], f" (depth {depth})"
    return frame, ""
