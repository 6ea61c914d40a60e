"""nnlab.analysis.width on synthetic frames with known answers, and the coordinate check on real short fits."""
from __future__ import annotations

import itertools

import matplotlib
import numpy as np
import pandas as pd
import pytest

from nnlab.analysis.width import (LR, PAR, SEED, WIDTH, coord_check_figure, coord_frame, coord_slopes, fit_optimum,
                                  lr_frame, lr_optima, lr_transfer_figure, optimum_summary, slope_table,
                                  transfer_table, tuned_runs, tuned_view)
from nnlab.core import MLP, InstrumentConfig, TrainConfig, fit, make_optimizer
from nnlab.data import load_dataset

matplotlib.use("Agg")
DPI = 110  # the report's
WIDTHS = (64, 128, 256, 512)


def legend_labels(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


# --- the coordinate check ----------------------------------------------------------------------

def synthetic_coord(slopes: dict[str, float], steps=(0, 1, 2, 3), seeds=(0, 1)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """History and runs frames where layer l's mean |h| at step t is 0.5 * (w/64)^(slope * t / 3) * (1 + 0.01 seed):
    the seed factor is the same at every width, so the slope of log|h| vs log w is exactly slope * t / 3."""
    runs, rows = [], []
    for par, width, seed in itertools.product(slopes, WIDTHS, seeds):
        run_id = f"{par}-{width}-{seed}"
        runs.append({"run_id": run_id, "failed": False, PAR: par, "optimizer": "adam", WIDTH: width, SEED: seed})
        for step, name in itertools.product(steps, ("coord/layer_1", "coord/layer_2", "coord/logits")):
            value = 0.5 * (width / 64) ** (slopes[par] * step / 3) * (1 + 0.01 * seed)
            rows.append({"run_id": run_id, "metric": name, "step": step, "value": value})
    runs.append({"run_id": "diverged", "failed": True, PAR: "sp", "optimizer": "adam", WIDTH: 64, SEED: 9})
    rows.append({"run_id": "diverged", "metric": "coord/layer_1", "step": 0, "value": 1e9})
    return pd.DataFrame(rows), pd.DataFrame(runs)


def test_coord_slopes_recover_the_width_exponent_and_drop_failed_runs():
    history, runs = synthetic_coord({"mup": 0.0, "sp": 0.75})
    coord = coord_frame(history, runs)
    assert "diverged" not in set(coord["run_id"])
    assert set(coord["layer"]) == {"layer 1", "layer 2", "logits"}
    slopes = coord_slopes(coord)
    at3 = slopes[slopes["step"] == 3].set_index([PAR, "layer"])["slope"]
    assert at3[("sp", "layer 2")] == pytest.approx(0.75, abs=1e-12)
    assert at3[("mup", "layer 1")] == pytest.approx(0.0, abs=1e-12)
    assert slopes[slopes["step"] == 0]["slope"].abs().max() < 1e-12
    table = slope_table(coord)
    assert list(table.columns) == [PAR, "step", "layer 1", "layer 2", "logits"]
    assert table.set_index(PAR).loc["sp", "logits"] == pytest.approx(0.75, abs=1e-12)
    assert (table["step"] == 3).all()


def test_coord_check_figure_is_mups_picture():
    history, runs = synthetic_coord({"mup": 0.0, "sp": 0.75}, steps=tuple(range(9)))
    fig = coord_check_figure(coord_frame(history, runs))
    assert fig.get_figwidth() * DPI <= 1150
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2 * 5  # two configs x at most 5 step panels
    assert sorted(legend_labels(fig)) == ["layer 1", "layer 2", "logits"]  # one entry per line, not per panel
    ax = visible[-1]  # the bottom row carries the shared width axis's labels
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and ax.get_xlabel() == "width"
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(w) for w in WIDTHS]
    assert [a.get_title() for a in visible[:5]] == ["at initialisation (step 0)", "after 2 steps", "after 4 steps",
                                                    "after 6 steps", "after 8 steps"]


def test_coord_check_on_real_short_fits():
    ds = load_dataset("digits")
    history, runs = [], []
    config = TrainConfig(epochs=1, batch_size=32, weight_decay=0.0, probe_size=64, train_eval_size=64,
                         instruments=InstrumentConfig(coord_steps=2, grad_noise_scale=False, update_ratio=False,
                                                      dist_init=False))
    for par, width in itertools.product(("sp", "mup"), (32, 512)):
        model = MLP.from_shape(64, 10, 2, width, parametrization=par, base_width=32, seed=0)
        h = fit(model, make_optimizer("adam", lr=1e-2), ds.x_train[:64], ds.y_train[:64], ds.x_val[:32],
                ds.y_val[:32], config, seed=0)
        run_id = f"{par}-{width}"
        runs.append({"run_id": run_id, "failed": False, PAR: par, "optimizer": "adam", WIDTH: width, SEED: 0})
        history += [{"run_id": run_id, "metric": k, "step": t, "value": v} for t, rec in enumerate(h.coord)
                    for k, v in rec.items()]
    table = slope_table(coord_frame(pd.DataFrame(history), pd.DataFrame(runs))).set_index(PAR)
    assert table.loc["mup", "step"] == 2
    assert abs(table.loc["mup", "layer 2"]) < 0.2 < table.loc["sp", "layer 2"]  # 32 -> 512: flat vs growing
    assert table.loc["sp", "logits"] > 0.5 > table.loc["mup", "logits"]


# --- learning-rate transfer --------------------------------------------------------------------

GRID = np.arange(-12.0, 0.01, 0.5)  # log2 lr, half-octave steps


def optimum(par: str, width: int, seed: int) -> float:
    """The synthetic loss's optimum: SP's moves half an octave down per doubling of width, muP's stays."""
    drift = -0.5 * np.log2(width / 64) if par == "sp" else 0.0
    return -6.0 + drift + 0.1 * seed


def synthetic_lr_runs() -> pd.DataFrame:
    """log(loss) = 0.2 (log2 lr - optimum)^2 + c(width): exactly quadratic, so the fit recovers the optimum;
    c falls with width under muP (wider is better) and rises under SP."""
    rows = []
    for par, width, seed, x in itertools.product(("sp", "mup"), WIDTHS, (0, 1, 2), GRID):
        c = -0.1 * np.log2(width) if par == "mup" else 0.05 * np.log2(width)
        loss = float(np.exp(0.2 * (x - optimum(par, width, seed)) ** 2 + c))
        failed = x >= -0.5  # the two largest rates diverge
        rows.append({"run_id": f"{par}-{width}-{seed}-{x}", "failed": failed, PAR: par, "optimizer": "adam",
                     WIDTH: width, SEED: seed, LR: 2.0 ** x, "train_loss": np.nan if failed else loss})
    return pd.DataFrame(rows)


def test_fit_optimum_finds_the_vertex_between_grid_points_and_flags_edges():
    x = np.arange(-8, -1, 0.5)
    fitted = fit_optimum(x, np.exp((x + 4.3) ** 2), points=5)
    assert fitted["method"] == "quadratic" and fitted["log2_lr"] == pytest.approx(-4.3, abs=1e-9)
    assert fitted["value"] == pytest.approx(1.0, rel=1e-9)
    at_edge = fit_optimum(x, np.exp(x))  # still falling at the smallest rate: the optimum is beyond the grid
    assert at_edge == {"log2_lr": -8.0, "value": pytest.approx(np.exp(-8.0)), "method": "grid", "edge": True}
    bumpy = fit_optimum(np.array([0.0, 1.0, 2.0]), np.array([2.0, 1.0, 2.0]))
    assert bumpy["method"] == "quadratic" and bumpy["log2_lr"] == pytest.approx(1.0)
    assert fit_optimum(x, np.full(len(x), np.nan))["method"] == "none"


def test_lr_transfer_table_reads_the_drift_and_whether_wider_is_better():
    frame = lr_frame(synthetic_lr_runs())
    optima = lr_optima(frame)
    assert (optima["method"] == "quadratic").all()
    expected = [optimum(r[PAR], r[WIDTH], r[SEED]) for _, r in optima.iterrows()]
    np.testing.assert_allclose(optima["log2_lr"], expected, atol=1e-9)
    summary = optimum_summary(optima)
    sp64 = summary[(summary[PAR] == "sp") & (summary[WIDTH] == 64)].iloc[0]
    assert sp64["opt_log2_lr"] == pytest.approx(-5.9, abs=1e-9)  # mean of -6.0, -5.9, -5.8
    assert sp64["opt_log2_lr_std"] == pytest.approx(0.1, abs=1e-9)
    assert sp64["ci_low"] < -5.9 < sp64["ci_high"] and sp64["n"] == 3
    table = transfer_table(summary).set_index(PAR)
    assert table.loc["sp", "octaves_moved"] == pytest.approx(-1.5, abs=1e-9)  # 64 -> 512: 3 doublings x 0.5
    assert table.loc["mup", "octaves_moved"] == pytest.approx(0.0, abs=1e-9)
    assert table.loc["mup", "wider_better"] and table.loc["mup", "monotone_in_width"]
    assert not table.loc["sp", "wider_better"]
    assert (table["width_narrow"] == 64).all() and (table["width_wide"] == 512).all()
    assert not table["optimum_at_grid_edge"].any()


def test_lr_transfer_figure_has_a_curve_per_width_and_readable_axes():
    frame = lr_frame(synthetic_lr_runs())
    summary = optimum_summary(lr_optima(frame))
    fig = lr_transfer_figure(frame, summary)
    assert fig.get_figwidth() * DPI <= 1150
    assert legend_labels(fig) == [f"width {w}" for w in WIDTHS]
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["mup", "sp"]
    ticks = visible[0].get_xticks()
    assert np.allclose(ticks, np.round(ticks))  # integer octaves on the log2 lr axis
    assert visible[0].get_yscale() == "log"


# --- the tuned view ----------------------------------------------------------------------------

def synthetic_ablation() -> pd.DataFrame:
    """init x lr x seed: he peaks at lr 0.1, xavier at 1.0 (the grid's edge); at a fixed lr of 0.01 xavier
    looks worse, tuned it wins. One xavier seed diverges at lr 0.1, so 0.1 is not eligible for xavier."""
    peak = {"he": np.log10(0.1), "xavier": np.log10(1.0)}
    top = {"he": 0.95, "xavier": 0.97}
    rows = []
    for init, lr, seed in itertools.product(("he", "xavier"), (0.01, 0.1, 1.0), (0, 1, 2)):
        val = top[init] - 0.1 * (np.log10(lr) - peak[init]) ** 2 + 0.001 * seed
        failed = init == "xavier" and lr == 0.1 and seed == 2
        rows.append({"run_id": f"{init}-{lr}-{seed}", "failed": failed, "init": init, "optimizer": "sgd", LR: lr,
                     SEED: seed, "val_acc": np.nan if failed else val, "val_loss": 1 - val,
                     "test_acc": np.nan if failed else val - 0.01})
    return pd.DataFrame(rows)


def test_tuned_view_reports_each_configuration_at_its_best_validation_rate():
    runs = synthetic_ablation()
    view = tuned_view(runs).set_index("init")
    assert view.loc["he", "tuned_lr"] == 0.1 and not view.loc["he", "lr_at_edge"]
    assert view.loc["xavier", "tuned_lr"] == 1.0 and view.loc["xavier", "lr_at_edge"]
    assert view.loc["he", "test_acc mean"] == pytest.approx(0.95 - 0.01 + 0.001, abs=1e-12)
    assert view.loc["xavier", "n"] == 3 and view.loc["he", "lrs_tried"] == 3
    assert list(view.index) == ["xavier", "he"]  # best first
    tuned = tuned_runs(runs)
    assert len(tuned) == 6 and set(tuned[LR]) == {0.1, 1.0}
    by_loss = tuned_view(runs, select="val_loss").set_index("init")  # lower is better for a loss
    assert by_loss.loc["he", "tuned_lr"] == 0.1


def test_a_rate_where_a_seed_diverged_is_not_chosen():
    runs = synthetic_ablation()
    # make xavier's best rate 0.1, where one seed diverged: the clean 1.0 must still be chosen
    runs.loc[(runs["init"] == "xavier") & (runs[LR] == 0.1) & ~runs["failed"], "val_acc"] = 0.999
    assert tuned_view(runs).set_index("init").loc["xavier", "tuned_lr"] == 1.0
    with pytest.raises(KeyError, match="needs a sweep over the learning rate"):
        tuned_view(runs.drop(columns=[LR]))


def test_tuned_reading_names_each_configurations_rate_and_compares_with_one_fixed_rate():
    """Two inits x three rates x two seeds, built so that 'a' is best at lr 0.1 and 'b' at lr 0.01: the tuned
    view crowns 'b' (0.95 at its rate) although at the common rate 0.1 'a' wins."""
    import pandas as pd

    from nnlab.analysis.width import tuned_reading

    acc = {("a", 0.01): 0.6, ("a", 0.1): 0.9, ("a", 1.0): 0.5, ("b", 0.01): 0.95, ("b", 0.1): 0.8, ("b", 1.0): 0.4,
           ("c", 0.01): 0.5, ("c", 0.1): 0.7, ("c", 1.0): 0.3}
    rows = [{"run_id": f"{i}{lr}{s}", "init": i, "optimizer.lr": lr, "seed": s, "val_acc": v, "test_acc": v,
             "failed": False} for (i, lr), v in acc.items() for s in (0, 1)]
    lines = tuned_reading(pd.DataFrame(rows))
    assert "best b 0.950 at lr 0.01 (grid edge)" in lines[0] and "a 0.900 at lr 0.1" in lines[0]
    assert lines[1].startswith("At one fixed rate (lr 0.1") and "best configuration is a, not the tuned view" in lines[1]
