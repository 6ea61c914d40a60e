"""nnlab.analysis.depth: architecture labels, the depth study's design, its four figures and its reading,
on a synthetic record (the record's exact names; values chosen so every answer is known)."""
from __future__ import annotations

import fnmatch
import itertools
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from nnlab.analysis import depth  # noqa: E402
from nnlab.analysis.design import infer_design  # noqa: E402

DEPTHS = (4, 16, 64)
SEEDS = (0, 1, 2)
# name -> (model.residual, model.branch_scale, model.branch_gate, model.norm): the study's five
ARCHS = {"plain": (False, None, False, None), "res_1": (True, 1.0, False, None),
         "res_sqrt": (True, None, False, None), "res_gate": (True, None, True, None),
         "res_ln": (True, None, False, "layernorm")}
LABELS = {"plain": "plain", "res_1": "residual α=1", "res_sqrt": "residual α=1/√L",
          "res_gate": "residual, gate at 0", "res_ln": "residual + LayerNorm"}
THEORY_FOR = ("plain", "res_1")  # the synthetic record has theory/* for these two only


def _acc(arch: str, act: str, d: int, seed: int) -> float:
    """plain relu trains up to 16; residual α=1 relu diverges beyond 4; everything else trains."""
    if arch == "plain" and act == "relu":
        return {4: 0.9, 16: 0.6, 64: 0.12}[d] + 0.01 * seed
    return 0.85 + 0.01 * seed


def _theory_std(arch: str, act: str, d: int) -> float:
    """Predicted std of h_L: α=1 ReLU grows like 2^(depth/2) (outside [1e-3, 1e3] from depth 20 on)."""
    return 2.0 ** (d / 2) if (arch, act) == ("res_1", "relu") else 1.0


def make_study(theory: bool = True, theory_std=_theory_std) -> SimpleNamespace:
    runs, hist = [], []
    for (arch, (res, scale, gate, norm)), act, d, seed in itertools.product(ARCHS.items(), ("relu", "tanh"),
                                                                             DEPTHS, SEEDS):
        run_id = f"{arch}-{act}-d{d}-s{seed}"
        diverged = arch == "res_1" and act == "relu" and d > 4
        runs.append({"run_id": run_id, "run_name": run_id, "status": "FAILED" if diverged else "FINISHED",
                     "failed": diverged, "failure": "diverged" if diverged else None, "init": "he",
                     "activation": act, "optimizer": "sgd", "model.branch_gate": gate, "model.branch_scale": scale,
                     "model.depth": d, "model.norm": norm, "model.residual": res, "model.width": 64,
                     "optimizer.lr": 0.01, "seed": seed,
                     "test_acc": np.nan if diverged else _acc(arch, act, d, seed)})

        def log(metric: str, value: float) -> None:
            hist.append((run_id, metric, 0, float(value)))

        for i in range(1, d + 1):
            log(f"act_std/layer_{i}", 1.0 + 0.01 * i + 0.001 * seed)
            if arch in THEORY_FOR and theory:
                log(f"theory/act_std/layer_{i}", theory_std(arch, act, d) if i == d else 1.0)
        for i in range(1, d + 2):  # layer d + 1 is the readout
            zero = arch == "res_gate" and 2 <= i <= d  # a branch behind a zero gate gets no gradient
            log(f"grad_norm/layer_{i}", 0.0 if zero else 0.5 * (1 + 0.01 * seed))
            if arch in THEORY_FOR and theory:
                log(f"theory/grad_ratio/layer_{i}", 1.0)
        if res:
            for i in range(2, d + 1):
                log(f"branch_ratio/layer_{i}", 0.0 if gate else 0.3)
        log("act_len_logvar", 0.01 * d * (1 + 0.05 * seed))
        if arch == "plain" and theory:
            log("theory/act_len_logvar", 0.012 * d)
        log("jacobian_sv_mean", 1.0)
        log("jacobian_sv_std", 0.5 + 0.01 * d + 0.01 * seed)
        log("jacobian_sv_min", 0.0)
        log("jacobian_sv_max", 3.0)
    runs = pd.DataFrame(runs).astype({"model.depth": "Int64", "model.width": "Int64", "seed": "Int64",
                                      "model.residual": "boolean", "model.branch_gate": "boolean"})
    runs["model.branch_scale"] = runs["model.branch_scale"].astype(float)
    history = pd.DataFrame(hist, columns=["run_id", "metric", "step", "value"])
    labelled, design = depth.depth_design(runs)
    return SimpleNamespace(runs=labelled, history=history, layers=None, design=design, raw_runs=runs)


@pytest.fixture(scope="module")
def study() -> SimpleNamespace:
    return make_study()


@pytest.fixture(scope="module")
def figures(study):
    made = {name: make() for name, (_, make) in depth.depth_figures(study).items()}
    yield made
    for fig in made.values():
        plt.close(fig)


# --- labels and design ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, label", [
    ((False, None, False, None), "plain"),
    ((True, 1.0, False, None), "residual α=1"),
    ((True, np.nan, False, None), "residual α=1/√L"),
    ((True, None, True, None), "residual, gate at 0"),
    ((True, None, False, "layernorm"), "residual + LayerNorm"),
    ((True, 0.5, False, "layernorm"), "residual α=0.5 + LayerNorm"),
    ((False, None, False, "layernorm"), "plain + LayerNorm"),
    ((True, None, False, None, "fixup"), "residual, Fixup"),
    ((False, None, False, None, "lsuv"), "plain, LSUV"),
    ((True, None, False, None, "he"), "residual α=1/√L"),
    ((pd.NA, None, pd.NA, None), "plain"),
])
def test_architecture_label(args, label):
    assert depth.architecture_label(*args) == label


def test_with_architecture_folds_the_raw_params(study):
    raw = study.raw_runs
    out = depth.with_architecture(raw)
    assert not set(depth.ARCH_PARAMS) & set(out.columns)
    assert "init" in out.columns  # he everywhere: nothing folded, the init column stays for other figures
    assert dict(zip(out["run_id"].str.split("-").str[0].map(LABELS), out["architecture"])) == \
        {v: v for v in LABELS.values()}
    _, design = infer_design(out)
    assert set(design.factors) == {"architecture", "activation", "model.depth"}
    kept = depth.with_architecture(raw, drop=False)
    assert set(depth.ARCH_PARAMS) <= set(kept.columns)


def test_with_architecture_folds_a_model_init():
    runs = pd.DataFrame({"run_id": list("abc"), "init": ["he", "fixup", "lsuv"], "model.residual": [True] * 3,
                         "model.depth": [4, 4, 4]})
    out = depth.with_architecture(runs)
    assert out["architecture"].tolist() == ["residual α=1/√L", "residual, Fixup", "residual α=1/√L, LSUV"]
    assert "init" not in out.columns
    two_inits = runs.assign(init=["he", "xavier", "fixup"])
    assert "init" in depth.with_architecture(two_inits).columns  # he vs xavier is not in the label


def test_depth_design_roles(study):
    assert study.design.hue == "architecture"
    assert study.design.x == "activation"
    assert study.design.col == "model.depth"
    assert set(study.design.factors) == {"architecture", "activation", "model.depth"}


def test_is_depth_study(study):
    raw = study.raw_runs
    assert depth.is_depth_study(raw)
    assert depth.is_depth_study(study.runs)  # already labelled
    assert not depth.is_depth_study(raw[raw["run_id"].str.startswith("plain")])  # one architecture
    assert not depth.is_depth_study(raw[raw["model.depth"] == 16])  # one depth
    assert not depth.is_depth_study(raw.drop(columns=list(depth.ARCH_PARAMS)))  # a study before this round


def test_depth_metrics_cover_every_name_the_figures_read(study):
    unmatched = [m for m in study.history["metric"].unique()
                 if not any(fnmatch.fnmatchcase(m, p) for p in depth.DEPTH_METRICS)]
    assert unmatched == []


# --- figures --------------------------------------------------------------------------------------------------
def test_depth_figures_names(study, figures):
    assert set(figures) == {"depth_accuracy.png", "depth_signal_at_init.png", "depth_jacobian_spread.png",
                            "depth_act_len_spread.png"}
    bare = SimpleNamespace(runs=study.runs, history=study.history[~study.history["metric"].str.startswith(
        ("jacobian_sv", "act_len_logvar"))])
    assert set(depth.depth_figures(bare)) == {"depth_accuracy.png", "depth_signal_at_init.png"}


def _labelled_lines(fig) -> set[str]:
    return {line.get_label() for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")}


@pytest.mark.parametrize("name", ["depth_accuracy.png", "depth_signal_at_init.png", "depth_jacobian_spread.png",
                                  "depth_act_len_spread.png"])
def test_figure_width_and_legend(figures, name):
    fig = figures[name]
    assert fig.get_size_inches()[0] * depth.DPI <= 1150
    fig.canvas.draw()  # the laid-out figure: the legend must be inside the canvas
    assert len(fig.legends) == 1
    legend = fig.legends[0]
    assert sorted(t.get_text() for t in legend.get_texts()) == sorted(_labelled_lines(fig))
    box = legend.get_window_extent()
    assert box.x1 <= fig.bbox.x1 + 1 and box.x0 >= 0


@pytest.mark.parametrize("name", ["depth_accuracy.png", "depth_jacobian_spread.png"])
def test_depth_axis_has_integer_ticks_at_the_study_depths(figures, name):
    fig = figures[name]
    fig.canvas.draw()
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(d) for d in DEPTHS]
        assert list(ax.get_xticks()) == list(map(float, DEPTHS))


def _band_limits(fig):
    lows, highs = [], []
    for ax in fig.axes:
        for coll in ax.collections:
            for path in coll.get_paths():
                y = path.vertices[:, 1]
                lows.append(y.min())
                highs.append(y.max())
    return min(lows), max(highs)


def test_accuracy_bands_stay_in_0_1_and_means_are_known(study, figures):
    fig = figures["depth_accuracy.png"]
    low, high = _band_limits(fig)
    assert low >= 0 and high <= 1
    relu = next(ax for ax in fig.axes if ax.get_title() == "activation = relu")
    plain = next(line for line in relu.get_lines() if line.get_label() == "plain")
    np.testing.assert_allclose(plain.get_ydata(), [0.91, 0.61, 0.13])  # mean of seeds 0, 1, 2
    res1 = next(line for line in relu.get_lines() if line.get_label() == "residual α=1")
    np.testing.assert_allclose(res1.get_ydata(), [0.86, 0.1, 0.1])  # diverged runs count as chance


def test_jacobian_band_not_below_zero(figures):
    low, _ = _band_limits(figures["depth_jacobian_spread.png"])
    assert low >= 0


def test_signal_figure_draws_theory_only_where_recorded(study, figures):
    fig = figures["depth_signal_at_init.png"]
    labels = _labelled_lines(fig)
    for key, arch in LABELS.items():
        assert f"{arch}: measured" in labels
        assert (f"{arch}: theory" in labels) == (key in THEORY_FOR)
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "depth 64" in title
    assert "theory not recorded for residual α=1/√L, residual, gate at 0, residual + LayerNorm" in title
    notes = [t.get_text().replace("\n", " ") for ax in fig.axes for t in ax.texts]
    assert any("residual, gate at 0 at 63 of 65 layers" in n for n in notes)  # zero gradients, not drawn
    for ax in fig.axes:
        assert ax.get_yscale() == "log"
        for line in ax.get_lines():
            y = np.asarray(line.get_ydata(), float)
            assert not (y[np.isfinite(y)] <= 0).any()


def test_figures_without_any_theory():
    bare = make_study(theory=False)
    made = {name: make() for name, (_, make) in depth.depth_figures(bare).items()}
    try:
        for fig in made.values():
            assert not any(line.get_label().endswith(": theory") for ax in fig.axes for line in ax.get_lines())
        titles = {name: made[name]._suptitle.get_text().replace("\n", " ") for name in made}
        assert "theory not recorded for any run" in titles["depth_signal_at_init.png"]
        assert "theory/act_len_logvar not recorded for any run" in titles["depth_act_len_spread.png"]
    finally:
        for fig in made.values():
            plt.close(fig)


def test_act_len_axis_is_depth_over_width(figures):
    fig = figures["depth_act_len_spread.png"]
    assert "theory/act_len_logvar not recorded for residual α=1," in fig._suptitle.get_text().replace("\n", " ")
    fig.canvas.draw()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1/16", "1/4", "1"]
    assert ax.get_yscale() == "log"
    plain = next(line for line in ax.get_lines() if line.get_label() == "plain: theory")
    np.testing.assert_allclose(plain.get_ydata(), [0.012 * d for d in DEPTHS])


# --- the reading ------------------------------------------------------------------------------------------------
def test_reading_deepest_trainable_and_theory_score(study):
    text = depth.depth_reading(study)
    first = text[0]
    assert "Trainable = mean test_acc >= 0.5 over seeds" in first
    assert "plain / relu: up to depth 16;" in first
    assert "residual α=1 / relu: up to depth 4;" in first
    assert "plain / tanh: every depth tested, up to 64" in first
    told = next(s for s in text if s.startswith("Told in advance"))
    # 12 cells have theory (plain, residual α=1 x relu, tanh x 3 depths); wrong: plain relu 64 (signal fine,
    # yet it does not train) and residual α=1 relu 16 (2^8 = 256 is inside [1e-3, 1e3], yet it diverges)
    assert "10 of 12 cells right" in told
    assert "always guessing 'trainable' gets 9 of 12" in told
    assert "plain / relu depth 64 (predicted trainable)" in told
    assert "residual α=1 / relu depth 16 (predicted trainable)" in told
    assert "negative result" not in told
    assert any("The theory was not recorded for residual α=1/√L, residual, gate at 0, residual + LayerNorm "
               "(18 of 30 cells)" in s for s in text)


def test_reading_states_a_negative_result():
    blind = make_study(theory_std=lambda arch, act, d: 1.0)  # predicts every cell trainable
    told = next(s for s in depth.depth_reading(blind) if s.startswith("Told in advance"))
    assert "9 of 12 cells right" in told
    assert "negative result" in told


def test_reading_without_theory_says_so():
    text = depth.depth_reading(make_study(theory=False))
    assert any(s.startswith("The theory was not recorded for this study") for s in text)
    assert not any(s.startswith("Told in advance") for s in text)
    measured = next(s for s in text if s.startswith("The same rule on the measured"))
    assert "of 30 cells right" in measured


def test_inf_as_stored_by_mlflow_reads_as_inf():
    history = pd.DataFrame({"run_id": ["a", "a"], "metric": ["theory/act_std/layer_1", "act_std/layer_1"],
                            "step": [0, 0], "value": [np.finfo(float).max, 2.0]})
    rows = depth.init_layers(history).set_index("source")["value"]
    assert rows["theory"] == np.inf and rows["measured"] == 2.0


def test_log_aggregate_matches_stats_aggregate(study):
    from nnlab.analysis.stats import aggregate

    frame = depth.jacobian_frame(study.history, study.runs)
    by = ["architecture", "activation", "model.depth"]
    fast = depth._aggregate_log(frame, by, "spread").sort_values(by).reset_index(drop=True)
    ref = aggregate(frame, by, "spread", scale="log").sort_values(by).reset_index(drop=True)
    for column in ("mean", "ci_low", "ci_high"):
        np.testing.assert_allclose(fast[column], ref[column], rtol=1e-12)
    assert fast["n"].tolist() == ref["n"].tolist()


def lr_study() -> SimpleNamespace:
    """The synthetic study at two rates: 0.01 as above and 0.001, where every net is 0.2 worse except plain
    relu at depth 64, which trains there (0.75); residual α=1 relu beyond depth 4 diverges at both."""
    base = make_study()
    slow = base.raw_runs.copy()
    slow["run_id"] = slow["run_id"] + "-slow"
    slow["optimizer.lr"] = 0.001
    deep_plain = (slow["activation"] == "relu") & slow["run_id"].str.startswith("plain-") & (slow["model.depth"] == 64)
    slow["test_acc"] = np.where(deep_plain, 0.75, slow["test_acc"] - 0.2)
    runs = pd.concat([base.raw_runs, slow], ignore_index=True)
    runs["val_acc"] = runs["test_acc"]
    history = pd.concat([base.history, base.history.assign(run_id=base.history["run_id"] + "-slow")],
                        ignore_index=True)
    return SimpleNamespace(runs=depth.with_architecture(runs), history=history, layers=None)


def test_with_an_lr_axis_each_cell_is_read_at_its_best_validation_rate():
    study = lr_study()
    tuned = depth.at_tuned_lr(study.runs)
    cell = lambda arch, act, d: tuned[(tuned["architecture"] == arch) & (tuned["activation"] == act)  # noqa: E731
                                      & (tuned["model.depth"] == d)]
    assert set(cell("plain", "relu", 64)["optimizer.lr"]) == {0.001}
    assert set(cell("plain", "relu", 16)["optimizer.lr"]) == {0.01}
    # diverged at every rate: kept (at the smallest rate), so the cell still counts, at chance
    assert set(cell("residual α=1", "relu", 64)["optimizer.lr"]) == {0.001}
    assert len(cell("residual α=1", "relu", 64)) == 3
    assert len(tuned) == 90  # one rate per cell: 30 cells x 3 seeds
    text = depth.depth_reading(study)
    rates = next(s for s in text if s.startswith("Each cell is read at its best validation learning rate"))
    assert "of 0.001, 0.01" in rates and "plain / relu 0.01, 0.01, 0.001;" in rates
    trainable = next(s for s in text if s.startswith("Trainable = "))
    assert "plain / relu: every depth tested, up to 64;" in trainable
    assert "residual α=1 / relu: up to depth 4;" in trainable
    # the figures draw one rate per cell: 3 seeds in the accuracy figure's band
    fig = depth.depth_figures(study)["depth_accuracy.png"][1]()
    assert "over 3 seeds" in fig.texts[0].get_text()
    plt.close(fig)
