"""One run, opened up: its network rebuilt from the ``weights.npz`` artifact, its data split, its
predictions. Used by ``notebooks/inspect_run.ipynb``."""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import confusion_matrix

from nnlab import spec as C
from nnlab.core import MLP, predict
from nnlab.data import Dataset, load_dataset

from .records import AnalysisError, load_runs

WEIGHTS, CONFIG = "weights.npz", "config.yaml"


@dataclass
class OpenedRun:
    """A trained run: its record row, resolved config, rebuilt network and data split."""

    run: pd.Series
    config: DictConfig
    model: MLP
    data: Dataset


def pick_run(experiment: str, tracking_uri: str | None = None, run_id: str | None = None,
             client: MlflowClient | None = None, metric: str = "test_acc") -> pd.Series:
    """The run ``run_id`` of ``experiment``, or (``run_id=None``) its finished run with the best ``metric``."""
    runs = load_runs(experiment, tracking_uri, client=client)
    if run_id is not None:
        match = runs[runs["run_id"] == run_id]
        if match.empty:
            raise AnalysisError(f"no training run {run_id!r} in experiment {experiment!r}; "
                                f"e.g. {', '.join(runs['run_id'].head(3))}")
        return match.iloc[0]
    ok = runs[~runs["failed"]].dropna(subset=[metric])
    if ok.empty:
        raise AnalysisError(f"experiment {experiment!r} has no finished run with a {metric!r}")
    return ok.loc[ok[metric].idxmax()]


def _download(client: MlflowClient, run_id: str, path: str, dst: str) -> Path:
    names = {a.path for a in client.list_artifacts(run_id)}
    if path not in names:
        raise AnalysisError(f"run {run_id} has no artifact {path!r} (it has: {', '.join(sorted(names)) or 'none'}); "
                            "was it trained with tracking.log_weights=true?")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return Path(client.download_artifacts(run_id, path, dst))


def open_run(client: MlflowClient, run: pd.Series) -> OpenedRun:
    """Rebuild ``run``'s network from its artifacts (resolved config + weights) and reload its data split."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = OmegaConf.load(_download(client, run["run_id"], CONFIG, tmp))
        with np.load(_download(client, run["run_id"], WEIGHTS, tmp)) as npz:
            state = {k: npz[k] for k in npz.files}
    spec = C.RunSpec.from_cfg(cfg)
    data = load_dataset(**spec.data, dtype=state["W1"].dtype)
    model = MLP.from_shape(data.n_features, data.n_classes, dtype=state["W1"].dtype, **spec.model)
    model.load_state_dict(state)
    return OpenedRun(run, cfg, model, data)


def predictions(opened: OpenedRun, split: str = "test") -> pd.DataFrame:
    """One row per sample of ``split``: ``index, true, pred, correct, confidence`` (softmax max)."""
    x, y = getattr(opened.data, f"x_{split}"), getattr(opened.data, f"y_{split}")
    logits = opened.model.forward(x)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    pred = predict(opened.model, x)
    return pd.DataFrame({"index": np.arange(len(y)), "true": y, "pred": pred, "correct": pred == y,
                         "confidence": probs.max(axis=1)})


def digit_grid(x: np.ndarray, preds: pd.DataFrame, n: int = 24, title: str = "") -> Figure:
    """The first ``n`` rows of ``preds`` as images (features reshaped square), titled true -> pred."""
    rows = preds.head(n)
    side = int(math.isqrt(x.shape[1]))
    cols = min(8, max(1, len(rows)))
    fig, axes = plt.subplots(max(1, math.ceil(len(rows) / cols)), cols, figsize=(1.3 * cols, 1.5 * math.ceil(
        max(1, len(rows)) / cols) + 0.4), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, r) in zip(axes.flat, rows.iterrows()):
        # standardised pixels: clip so near-constant border pixels (tiny std, huge z) do not drown the digit
        ax.imshow(np.clip(x[int(r["index"])].reshape(side, side), -2, 2), cmap="gray_r", vmin=-2, vmax=2)
        ax.set_title(f"{r['true']} -> {r['pred']}", fontsize=9, color="black" if r["correct"] else "crimson")
    fig.suptitle(title or "true -> predicted (red: wrong); standardised pixels")
    return fig


def confusion(preds: pd.DataFrame, n_classes: int) -> Figure:
    """Confusion matrix of true (rows) against predicted (columns) labels, counts annotated."""
    labels = np.arange(n_classes)
    matrix = confusion_matrix(preds["true"], preds["pred"], labels=labels)
    fig, ax = plt.subplots(figsize=(6, 5), layout="constrained")
    sns.heatmap(pd.DataFrame(matrix, index=labels, columns=labels), annot=True, fmt="d", cmap="Blues", cbar=False,
                ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix ({int(preds['correct'].sum())}/{len(preds)} correct)")
    return fig


def run_curves(history: pd.DataFrame) -> Figure:
    """Loss and accuracy per epoch of one run (history rows of that run)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5), layout="constrained")
    for ax, kind in ((left, "loss"), (right, "acc")):
        for split, style in (("train", "-"), ("val", "--")):
            rows = history[history["metric"] == f"{split}_{kind}"].sort_values("step")
            ax.plot(rows["step"], rows["value"], style, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(kind)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig
