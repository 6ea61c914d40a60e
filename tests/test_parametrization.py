"""Parametrisations (sp, ntk, mup): sp is today's network bit for bit; ntk and mup follow TP-V's Table 3
read relative to a base width; the optimisers' per-element lr multipliers; the MSE loss."""
import math
import tracemalloc

import numpy as np
import pytest

from nnlab.core import (MLP, TrainConfig, evaluate, fit, get_initializer, get_loss, init_variance, l2_penalty,
                        layer_scales, loss_and_grads, make_optimizer, mse_one_hot)
from nnlab.core.initializers import get_bias_initializer
from nnlab.core.optim import MIN_RUN
from nnlab.data import load_dataset

from test_core_gradients import numerical_grads, relative_error


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# --- sp is today's code ------------------------------------------------------------------------

@pytest.mark.parametrize("init, params", [("he", {}), ("xavier", {}), ("orthogonal", {"gain": 1.5}),
                                          ("variance_scaling", {"sigma_w": 1.3, "sigma_b": 0.2})])
def test_sp_draws_exactly_the_initialisers_weights_in_order(init, params):
    sizes = [64, 48, 32, 10]
    model = MLP(sizes, init=init, init_params=params, seed=7, parametrization="sp", base_width=16)
    rng = np.random.default_rng(7)
    w_init, b_init = get_initializer(init, **params), get_bias_initializer(init, **params)
    for layer, fan_in, fan_out in zip(model.layers, sizes[:-1], sizes[1:]):
        np.testing.assert_array_equal(layer.W, w_init(fan_in, fan_out, rng=rng, dtype=np.float32))
        expected_b = np.zeros(fan_out, np.float32) if b_init is None else b_init(fan_out, rng=rng, dtype=np.float32)
        np.testing.assert_array_equal(layer.b, expected_b)
    np.testing.assert_array_equal(model.flat_params, MLP(sizes, init=init, init_params=params, seed=7).flat_params)


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_sp_and_all_ones_multipliers_train_the_same_trajectory_as_no_multipliers(digits, opt):
    ds = digits
    config = TrainConfig(epochs=2, batch_size=64)
    runs = []
    for kwargs, mult in (({}, None), ({"parametrization": "sp", "base_width": 8}, None), ({}, "ones")):
        model = MLP.from_shape(64, 10, 2, 24, seed=1, **kwargs)
        optimizer = make_optimizer(opt, lr=0.01, lr_mult=np.ones_like(model.flat_params) if mult else None)
        history = fit(model, optimizer, ds.x_train[:400], ds.y_train[:400], ds.x_val, ds.y_val, config, seed=2)
        runs.append((model.flat_params.copy(), history.epochs))
    for params, epochs in runs[1:]:
        np.testing.assert_array_equal(params, runs[0][0])
        assert epochs == runs[0][1]


# --- init scales -------------------------------------------------------------------------------

def test_mup_and_ntk_init_stds_follow_the_table_relative_to_the_base_width():
    d, n, n0, c = 64, 512, 64, 10
    m = n / n0
    mup = MLP.from_shape(d, c, 2, n, parametrization="mup", base_width=n0, seed=0)
    ntk = MLP.from_shape(d, c, 2, n, parametrization="ntk", base_width=n0, seed=0)
    sp = MLP.from_shape(d, c, 2, n, seed=0)
    # he: Var = 2/fan_in at the base shape, then input x1, hidden x1/m, output x1/m (ntk) or x1/m^2 (mup)
    expected = {"ntk": [2 / d, 2 / n0 / m, 2 / n0 / m], "mup": [2 / d, 2 / n0 / m, 2 / n0 / m**2]}
    for name, model in (("mup", mup), ("ntk", ntk)):
        for w, var, scale in zip(model.weights, expected[name], model.scales):
            assert float(w.std()) == pytest.approx(math.sqrt(var), rel=0.05)
            assert scale.init_std == pytest.approx(math.sqrt(var), rel=1e-12)
    # with a fan-in initialiser only mup's readout differs from sp's draw, by exactly 1/sqrt(m)
    for a, b in zip(mup.weights[:2] + ntk.weights, sp.weights[:2] + sp.weights):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(mup.weights[2], sp.weights[2] / math.sqrt(m), rtol=1e-6)


def test_xavier_under_mup_keeps_the_input_layers_variance_fixed_as_width_grows():
    # xavier's own variance 2/(d + n) shrinks with width; mup takes it at the base shape instead
    stds = [float(MLP.from_shape(64, 10, 1, n, init="xavier", parametrization="mup", base_width=64,
                                 seed=0).weights[0].std()) for n in (64, 1024)]
    assert stds[1] == pytest.approx(stds[0], rel=0.03)
    assert stds[0] == pytest.approx(math.sqrt(2 / 128), rel=0.03)
    sp_std = float(MLP.from_shape(64, 10, 1, 1024, init="xavier", seed=0).weights[0].std())
    assert sp_std == pytest.approx(math.sqrt(2 / (64 + 1024)), rel=0.03)


@pytest.mark.parametrize("par", ["ntk", "mup"])
@pytest.mark.parametrize("init", ["he", "xavier", "orthogonal", "random", "lecun"])
def test_at_the_base_width_every_parametrization_is_sp(par, init):
    kwargs = dict(init=init, seed=4)
    sp = MLP.from_shape(64, 10, 2, 32, **kwargs)
    other = MLP.from_shape(64, 10, 2, 32, parametrization=par, base_width=32, **kwargs)
    np.testing.assert_array_equal(other.flat_params, sp.flat_params)
    for opt in ("sgd", "adam"):
        assert np.all(other.lr_multipliers(opt) == 1)
        assert other.scale_record(opt) == sp.scale_record(opt)


def test_readout_zero_init_zeroes_the_output_layer_only():
    a = MLP.from_shape(64, 10, 2, 128, parametrization="mup", base_width=64, seed=3)
    b = MLP.from_shape(64, 10, 2, 128, parametrization="mup", base_width=64, seed=3, readout_zero_init=True,
                       init="variance_scaling", init_params={"sigma_w": 2 ** 0.5, "sigma_b": 0.1})
    assert not np.any(b.layers[-1].W) and not np.any(b.layers[-1].b)
    assert np.any(b.layers[0].b)  # sigma_b biases stay below the readout
    assert b.scale_record("adam")["init_std/layer_3"] == 0.0
    assert np.any(a.layers[-1].W)


# --- lr multipliers ----------------------------------------------------------------------------

def _per_array(model, vector):
    """Each parameter array's single multiplier value (asserting it is constant within the array)."""
    out = []
    for view in model.views(vector):
        assert np.all(view == view.flat[0])
        out.append(float(view.flat[0]))
    return out  # [W1, b1, W2, b2, ...]


def test_lr_multipliers_follow_the_table_with_a_width_list():
    # hidden widths 128, 256 over base 64: m = 2, 4; layers: input (m_out 2), hidden (m_in 2, m_out 4), output (m_in 4)
    model = MLP([64, 128, 256, 10], parametrization="mup", base_width=64, seed=0)
    assert _per_array(model, model.lr_multipliers("sgd")) == [2, 2, 2, 4, 0.25, 1]
    assert _per_array(model, model.lr_multipliers("momentum")) == [2, 2, 2, 4, 0.25, 1]
    assert _per_array(model, model.lr_multipliers("adam")) == [1, 1, 0.5, 1, 0.25, 1]
    ntk = MLP([64, 128, 256, 10], parametrization="ntk", base_width=64, seed=0)
    assert _per_array(ntk, ntk.lr_multipliers("sgd")) == [1, 1, 0.5, 1, 0.25, 1]
    assert _per_array(ntk, ntk.lr_multipliers("adam")) == pytest.approx([1, 1, 2 ** -0.5, 1, 0.5, 1])
    per_layer = [64, 32]  # a base width per hidden layer: m = 2, 8
    listed = MLP([64, 128, 256, 10], parametrization="mup", base_width=per_layer, seed=0)
    assert _per_array(listed, listed.lr_multipliers("adam")) == [1, 1, 0.5, 1, 0.125, 1]
    assert listed.scale_record("sgd") == {"lr_mult/layer_1": 2.0, "lr_mult/layer_2": 4.0, "lr_mult/layer_3": 0.125,
                                          **{f"init_std/layer_{i}": s.init_std for i, s in enumerate(listed.scales, 1)}}


def test_scale_record_names_every_layer_and_leaves_an_unknown_std_out():
    model = MLP.from_shape(64, 10, 3, 32, seed=0)
    record = model.scale_record("adam")
    assert sorted(record) == sorted([f"lr_mult/layer_{i}" for i in range(1, 5)] +
                                    [f"init_std/layer_{i}" for i in range(1, 5)])
    assert record["init_std/layer_2"] == pytest.approx(math.sqrt(2 / 32))
    custom = MLP.from_shape(64, 10, 1, 32, init=lambda fi, fo, rng, dtype: np.ones((fi, fo), dtype), seed=0)
    assert sorted(custom.scale_record("sgd")) == ["lr_mult/layer_1", "lr_mult/layer_2"]


def test_optimizer_steps_multiply_each_element_by_its_multiplier():
    g = np.array([0.5, -0.25, 1.0])
    mult = np.array([1.0, 2.0, 0.5])
    p = np.ones(3)
    make_optimizer("sgd", lr=0.1, lr_mult=mult).step([p], [g])
    np.testing.assert_allclose(p, 1 - 0.1 * mult * g, rtol=1e-15)
    p = np.ones(3)
    opt = make_optimizer("momentum", lr=0.1, momentum=0.9, lr_mult=mult)
    opt.step([p], [g])
    opt.step([p], [g])  # v2 = 0.9 v1 - lr m g = -1.9 lr m g; p2 = 1 - 2.9 lr m g
    np.testing.assert_allclose(p, 1 - 2.9 * 0.1 * mult * g, rtol=1e-14)
    opt.lr = 0.05  # a schedule's new rate reaches the cached lr * lr_mult
    before = p.copy()
    opt.step([p], [g])  # v3 = 0.9 v2 - 0.05 m g
    np.testing.assert_allclose(p - before, 0.9 * (-1.9 * 0.1 * mult * g) - 0.05 * mult * g, rtol=1e-12)
    p = np.ones(3)
    make_optimizer("adam", lr=0.1, lr_mult=mult).step([p], [g])  # first Adam step: lr * sign(g), times m
    np.testing.assert_allclose(p, 1 - 0.1 * mult * np.sign(g), rtol=1e-6)


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_multipliers_that_vary_often_take_the_array_path_with_the_same_result(opt):
    """A parametrisation's multipliers are a few runs (applied as scalars); arbitrary ones use an array."""
    rng = np.random.default_rng(0)
    varied = rng.uniform(0.5, 2.0, size=500)  # ~500 runs: the array path
    short = np.repeat([0.5, 2.0], 250)  # 2 runs, too short to be worth a ufunc call each: the array path
    blocks = np.repeat([0.5, 2.0, 1.5, 0.25], MIN_RUN)  # 4 long runs: the scalar path
    for mult in (varied, short, blocks):
        grads = rng.normal(size=(3, len(mult)))
        plain, p_plain = make_optimizer(opt, lr=0.1), np.zeros(len(mult))
        scaled, p = make_optimizer(opt, lr=0.1, lr_mult=mult), np.zeros(len(mult))
        for t, g in enumerate(grads):
            if t == 2:  # a schedule's new rate reaches the multiplied rate on both paths
                plain.lr = scaled.lr = 0.05
            before = p_plain.copy()
            plain.step([p_plain], [g])
            if opt == "sgd":  # SGD's step is lr * g: the multiplied one is lr * m * g
                expected = p + mult * (p_plain - before)
                scaled.step([p], [g])
                np.testing.assert_allclose(p, expected, rtol=1e-12)
            else:
                scaled.step([p], [g])
        if opt != "sgd":  # momentum and Adam are linear in their first moment: every step is multiplied
            np.testing.assert_allclose(p, mult * p_plain, rtol=1e-12)
        assert (scaled._runs[0] is None) == (mult is not blocks)


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_optimizer_steps_allocate_nothing_with_or_without_multipliers(opt):
    """After the first step the update reuses its work arrays on every path, also when a schedule changes lr."""
    rng = np.random.default_rng(0)
    blocks = np.repeat([0.5, 2.0, 1.5, 0.25], MIN_RUN).astype(np.float32)  # the scalar path
    varied = rng.uniform(0.5, 2.0, size=blocks.size).astype(np.float32)  # the array path
    array_bytes = blocks.size * 4
    for mult in (None, blocks, varied):
        p, g = np.zeros(blocks.size, np.float32), rng.normal(size=blocks.size).astype(np.float32)
        optimizer = make_optimizer(opt, lr=0.1, lr_mult=mult)
        optimizer.step([p], [g])  # creates the state, the scratch array and the multiplies
        for lr in (0.1, 0.05):  # the same rate, then a schedule's new one
            optimizer.lr = lr
            tracemalloc.start()
            optimizer.step([p], [g])
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert peak < array_bytes / 10, (mult is None, lr, peak)  # a few Python objects (views), no array


def test_adam_multiplies_each_step_even_when_the_multipliers_change_midway():
    """Adam keeps its first moment in multiplied units (no extra pass); changing lr_mult converts it."""
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(3, 4))
    a, b = np.array([1.0, 2.0, 0.5, 4.0]), np.array([3.0, 1.0, 0.25, 1.0])
    plain, p_plain = make_optimizer("adam", lr=0.1), np.zeros(4)
    deltas = []
    for g in grads:
        before = p_plain.copy()
        plain.step([p_plain], [g])
        deltas.append(p_plain - before)
    opt, p = make_optimizer("adam", lr=0.1, lr_mult=a), np.zeros(4)
    opt.step([p], [grads[0]])
    opt.step([p], [grads[1]])
    opt.lr_mult = b
    opt.step([p], [grads[2]])
    np.testing.assert_allclose(p, a * deltas[0] + a * deltas[1] + b * deltas[2], rtol=1e-12)


def test_optimizer_multipliers_of_one_are_dropped_and_bad_ones_refused():
    assert make_optimizer("adam", lr=0.1, lr_mult=np.ones(4)).lr_mult is None
    with pytest.raises(ValueError, match="lr_mult must be finite and > 0"):
        make_optimizer("sgd", lr=0.1, lr_mult=np.array([1.0, 0.0]))
    opt = make_optimizer("sgd", lr=0.1, lr_mult=np.full(3, 2.0))
    with pytest.raises(ValueError, match="do not match"):
        opt.step([np.ones(4)], [np.ones(4)])


def test_ntk_in_sp_terms_moves_the_weights_as_the_textbook_form_does():
    """Textbook NTK: W = a w with a = 1/sqrt(m_in) (relative to the base), one global rate on w. Its gradient
    is a g_W, so SGD moves W by lr a^2 g_W and Adam by a * (Adam step of a g_W): nnlab's multipliers on W.
    Adam's eps is where the two differ (the textbook's acts as eps / a on W): it is made negligible here."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 8)), rng.integers(0, 3, 16)
    for opt in ("sgd", "adam"):
        model = MLP([8, 64, 64, 3], parametrization="ntk", base_width=16, seed=1, dtype=np.float64)
        # the forward multiplier of each weight (biases have none)
        alpha = np.concatenate([part for s in model.scales for part in
                                (np.full(s.fan_in * s.fan_out, 1 / math.sqrt(s.m_in)), np.ones(s.fan_out))])
        eps = 1e-30  # float64: far below every sqrt(v) that is not exactly 0
        textbook = make_optimizer(opt, lr=0.01, **({"eps": eps} if opt == "adam" else {}))
        ours = make_optimizer(opt, lr=0.01, lr_mult=model.lr_multipliers(opt),
                              **({"eps": eps} if opt == "adam" else {}))
        w = model.flat_params / alpha  # the textbook's stored weights
        for _ in range(3):
            loss_and_grads(model, x, y)
            g_w = alpha * model.flat_grads
            textbook.step([w], [g_w])
            ours.step([model.flat_params], [model.flat_grads])
            np.testing.assert_allclose(model.flat_params, alpha * w, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kwargs, match", [
    ({"parametrization": "foo"}, "unknown parametrization 'foo'; valid choices: sp, ntk, mup"),
    ({"parametrization": "mup", "base_width": 0}, "base_width must be an integer >= 1"),
    ({"parametrization": "mup"}, "parametrization 'mup' needs base_width"),
    ({"parametrization": "ntk", "base_width": [16]}, "got 1 base widths"),
    ({"parametrization": "mup", "base_width": 16, "readout_zero_init": "yes"}, "readout_zero_init must be true"),
    ({"parametrization": "mup", "base_width": 16, "init": lambda fi, fo, rng, dtype: np.ones((fi, fo), dtype)},
     "has no known variance"),
])
def test_bad_parametrizations_are_refused_in_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        MLP.from_shape(64, 10, 2, 32, seed=0, **kwargs)
    assert "\n" not in str(err.value)


def test_unknown_optimizer_has_no_lr_rule():
    with pytest.raises(ValueError, match="no learning-rate rule for optimizer 'rmsprop'; valid choices: adam"):
        MLP.from_shape(64, 10, 1, 32, seed=0).lr_multipliers("rmsprop")


def test_depth_zero_has_no_width_and_is_sp():
    scales = layer_scales([64, 10], "mup", 16)
    assert scales[0].kind == "input+output" and scales[0].init_factor == 1.0
    assert scales[0].lr_weight == {"sgd": 1.0, "adam": 1.0}
    assert init_variance("he", 64, 10) == pytest.approx(2 / 64)


# --- the MSE loss ------------------------------------------------------------------------------

def test_mse_value_and_gradient_on_a_small_case():
    logits = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    y = np.array([0, 2])
    loss, grad = mse_one_hot(logits, y)
    residual = logits - np.eye(3)[y]  # [[0,0,-1],[0.5,0.5,-1]]: squares sum to 1 + 1.5 = 2.5, over 6 entries
    assert loss == pytest.approx(2.5 / 6, rel=1e-15)
    np.testing.assert_allclose(grad, 2 * residual / 6, rtol=1e-15)
    np.testing.assert_array_equal(logits, [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])  # input untouched


@pytest.mark.parametrize("depth", [0, 2])
def test_mse_backprop_matches_central_differences(depth):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.integers(0, 3, size=7)
    model = MLP.from_shape(5, 3, depth, 6, activation="tanh", seed=0, dtype=np.float64)
    loss_and_grads(model, x, y, 0.01, loss_fn=mse_one_hot)
    analytic = [g.copy() for g in model.grads()]
    numeric = numerical_grads(model, lambda: mse_one_hot(model.forward(x), y)[0] + l2_penalty(model.weights, 0.01))
    assert relative_error(analytic, numeric) < 1e-6


def test_mse_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits, y = rng.normal(size=(9, 4)), rng.integers(0, 4, size=9)
    t = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.mse_loss(t, torch.nn.functional.one_hot(torch.tensor(y), 4).double())
    ref.backward()
    loss, grad = mse_one_hot(logits, y)
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-12)


def test_train_config_loss_choice_sets_the_training_and_validation_loss(digits):
    ds = digits
    with pytest.raises(ValueError, match="unknown loss 'hinge'; valid choices: cross_entropy, mse"):
        TrainConfig(loss="hinge")
    model = MLP.from_shape(64, 10, 1, 32, seed=0)
    history = fit(model, make_optimizer("sgd", lr=0.05), ds.x_train[:300], ds.y_train[:300], ds.x_val, ds.y_val,
                  TrainConfig(epochs=2, loss="mse"), seed=0)
    val_mse, val_acc = evaluate(model, ds.x_val, ds.y_val, loss_fn=get_loss("mse"))
    assert history.epochs[-1]["val_loss"] == pytest.approx(val_mse, rel=1e-6)
    assert history.epochs[-1]["val_acc"] == val_acc
    assert history.epochs[-1]["val_loss"] != pytest.approx(evaluate(model, ds.x_val, ds.y_val)[0], rel=1e-3)


def test_residual_layernorm_nets_get_a_multiplier_for_every_parameter():
    """A hidden layer's own parameters (LayerNorm gain and bias, gate) sit after every W and b in the flat
    vector; they are vector-like, so they take their layer's bias multiplier (muP SGD: x m, Adam: x 1)."""
    from nnlab.core import MLP

    model = MLP([64, 32, 32, 32, 10], "relu", "he", seed=0, residual=True, norm="layernorm", branch_gate=True,
                parametrization="mup", base_width=8)
    for optimizer in ("sgd", "adam"):
        mult = model.lr_multipliers(optimizer)
        assert mult.shape == model.flat_params.shape
        tail = mult[sum(p.size for p in model.params[: 2 * len(model.layers)]):]
        expected = [model.scales[i - 1].lr_bias[optimizer] for i, p in model._own_params for _ in range(p.size)]
        np.testing.assert_array_equal(tail, np.asarray(expected, tail.dtype))
    assert model.lr_multipliers("sgd")[-1] == 4.0  # m = 32 / 8 for a bias-like parameter under muP SGD
