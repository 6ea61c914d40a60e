"""Depth beyond 40: residual layers, branch gates and shifts, LayerNorm, Fixup and LSUV, and the measurements
of such nets (hidden outputs, Jacobian, branch ratio, activation-length spread, per-sample gradients, HVP).

Gradients against central differences in float64 (and PyTorch autograd where it is installed); every
forward against the formula written out by hand."""
import math
import tracemalloc

import numpy as np
import pytest

from nnlab.core import (MLP, GradNormMeter, LayerNorm, TrainConfig, activation_length_logvar, activation_stats,
                        fit, get_initializer, hidden_jacobians, l2_penalty, loss_and_grads, lsuv, make_optimizer,
                        softmax_cross_entropy)
from nnlab.core import instruments as I
from nnlab.core.norm import EPS

EPS_FD = 1e-6
TOL = 1e-6

# every combination of the new pieces the network offers (init="fixup" adds gate and shift itself)
ARCHITECTURES = {
    "residual": dict(residual=True),
    "residual-alpha": dict(residual=True, branch_scale=0.7),
    "gate": dict(residual=True, branch_gate=True),
    "shift": dict(residual=True, branch_shift=True, branch_scale=1.0),
    "layernorm": dict(norm="layernorm"),
    "residual-layernorm": dict(residual=True, norm="layernorm"),
    "fixup": dict(residual=True, init="fixup"),
    "everything": dict(residual=True, norm="layernorm", branch_gate=True, branch_shift=True),
}


def make(arch: str, activation="tanh", depth=4, width=6, n_in=5, n_out=3, seed=0, jitter=0.3, **kw):
    """A float64 net with every parameter moved off its initial value (gates and gains off 0 and 1: a generic
    point, where each piece's gradient is non-trivial)."""
    rng = np.random.default_rng(seed + 100)
    model = MLP.from_shape(n_in, n_out, depth, width, activation=activation, seed=seed, dtype=np.float64,
                           **{**ARCHITECTURES[arch], **kw})
    model.flat_params[...] += rng.normal(0, jitter, model.flat_params.shape)
    return model


def problem(n_in=5, n_out=3, n=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_in)), rng.integers(0, n_out, size=n)


def numerical_flat_grad(model, loss_fn) -> np.ndarray:
    g = np.zeros_like(model.flat_params)
    for k in range(g.size):
        old = model.flat_params[k]
        model.flat_params[k] = old + EPS_FD
        up = loss_fn()
        model.flat_params[k] = old - EPS_FD
        down = loss_fn()
        model.flat_params[k] = old
        g[k] = (up - down) / (2 * EPS_FD)
    return g


def rel_err(a, b) -> float:
    return float(np.linalg.norm(a - b) / (np.linalg.norm(a) + np.linalg.norm(b)))


# --- gradients ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["tanh", "gelu", "relu"])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_backprop_matches_central_differences(arch, activation):
    model, (x, y) = make(arch, activation), problem()
    wd = 0.1
    loss_and_grads(model, x, y, wd)
    analytic = model.flat_grads.copy()

    def loss_fn():
        return softmax_cross_entropy(model.forward(x), y)[0] + l2_penalty(model.weights, wd)

    assert rel_err(analytic, numerical_flat_grad(model, loss_fn)) < TOL
    # and each new piece's gradient is really in the flat vector (not zero by construction)
    for name, p in model.state_dict().items():
        if not name.startswith(("W", "b")):
            grad = model.views(model.flat_grads)[next(k for k, q in enumerate(model.params) if q is p)]
            assert np.any(grad != 0), name


def test_gradient_check_catches_a_wrong_layernorm_backward(monkeypatch):
    """The check can fail: drop the mean-of-(g * xhat) term of LayerNorm's input gradient."""
    model, (x, y) = make("residual-layernorm"), problem()

    def broken(self, grad_y):
        self.grad_y = grad_y
        np.add.reduce(grad_y, axis=0, out=self.dbias)
        np.add.reduce(grad_y * self.xhat, axis=0, out=self.dgain)
        g = grad_y * self.gain
        return (g - g.mean(axis=1, keepdims=True)) * self.rstd

    monkeypatch.setattr(LayerNorm, "backward", broken)
    loss_and_grads(model, x, y)
    analytic = model.flat_grads.copy()
    assert rel_err(analytic, numerical_flat_grad(model, lambda: softmax_cross_entropy(model.forward(x), y)[0])) > 1e-3


def test_layernorm_forward_and_input_gradient_alone():
    rng = np.random.default_rng(1)
    ln = LayerNorm(6, np.float64)
    ln.gain[...] = rng.normal(1, 0.5, 6)
    ln.bias[...] = rng.normal(0, 0.5, 6)
    x = rng.normal(2.0, 3.0, size=(5, 6))
    expected = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + EPS) * ln.gain + ln.bias
    np.testing.assert_allclose(ln.forward(x), expected, rtol=1e-12)
    weights = rng.normal(size=(5, 6))  # loss = sum(weights * y)
    ln.forward(x)
    dx = ln.backward(weights.copy()).copy()
    numeric = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += EPS_FD
        down[idx] -= EPS_FD
        numeric[idx] = (np.sum(weights * ln.forward(up)) - np.sum(weights * ln.forward(down))) / (2 * EPS_FD)
    assert rel_err(dx, numeric) < TOL


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_gradients_match_pytorch_autograd(arch):
    torch = pytest.importorskip("torch")
    model, (x, y) = make(arch, "tanh"), problem()
    loss_and_grads(model, x, y)
    tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in model.state_dict().items()}
    h = torch.tensor(x)
    for i in range(1, model.depth + 1):
        u = h
        if f"ln_gain{i}" in tensors:
            u = torch.nn.functional.layer_norm(u, (u.shape[1],), tensors[f"ln_gain{i}"], tensors[f"ln_bias{i}"], EPS)
        if f"shift{i}" in tensors:
            u = u + tensors[f"shift{i}"]
        a = torch.tanh(u @ tensors[f"W{i}"] + tensors[f"b{i}"])
        if i > 1 and model.architecture["residual"]:
            alpha = tensors[f"gate{i}"] if f"gate{i}" in tensors else model.architecture["branch_scale"]
            h = h + alpha * a
        else:
            h = a
    out = len(model.layers)
    logits = h @ tensors[f"W{out}"] + tensors[f"b{out}"]
    torch.nn.functional.cross_entropy(logits, torch.tensor(y)).backward()
    ours = dict(zip(model.state_dict(), model.grads()))
    for name, t in tensors.items():
        np.testing.assert_allclose(ours[name], t.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


# --- forward passes written out by hand -------------------------------------------------------------
def test_residual_forward_is_h_plus_alpha_branch_with_alpha_one_over_sqrt_depth():
    model, (x, _) = make("residual", "relu", depth=5), problem()
    alpha = 1 / math.sqrt(5)
    assert model.architecture["branch_scale"] == pytest.approx(alpha)
    ws, bs = model.weights, [layer.b for layer in model.layers]
    h = np.maximum(x @ ws[0] + bs[0], 0)  # the first hidden layer: no skip
    hidden = [h]
    for w, b in zip(ws[1:-1], bs[1:-1]):
        h = h + alpha * np.maximum(h @ w + b, 0)
        hidden.append(h)
    np.testing.assert_allclose(model.forward(x), h @ ws[-1] + bs[-1], rtol=1e-12)
    for (z, got), want in zip(model.hidden_activations(), hidden):  # h is the layer's output: the sum
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_layernorm_forward_in_plain_and_residual_nets():
    x, _ = problem()

    def ln(h, g, b):
        return (h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + EPS) * g + b

    for arch in ("layernorm", "everything"):
        model = make(arch, "tanh")
        s = model.state_dict()
        h = np.tanh(x @ s["W1"] + s["b1"])  # the first hidden layer sees the data: no LayerNorm
        for i in range(2, model.depth + 1):
            u = ln(h, s[f"ln_gain{i}"], s[f"ln_bias{i}"]) + s.get(f"shift{i}", 0.0)
            a = np.tanh(u @ s[f"W{i}"] + s[f"b{i}"])
            h = h + s[f"gate{i}"] * a if arch == "everything" else a
        np.testing.assert_allclose(model.forward(x), h @ s["W5"] + s["b5"], rtol=1e-12, err_msg=arch)


# --- the default network is untouched ----------------------------------------------------------------
def test_the_default_network_draws_the_same_weights_and_computes_the_same_logits():
    """The old contract: layer i's weights are the i-th draw of the initialiser from default_rng(seed), biases 0;
    naming the new options at their defaults changes nothing, bit for bit."""
    sizes = [64, 32, 32, 16, 10]
    rng = np.random.default_rng(7)
    he = get_initializer("he")
    expected = [he(a, b, rng=rng, dtype=np.float32) for a, b in zip(sizes[:-1], sizes[1:])]
    old = MLP(sizes, "relu", "he", seed=7)
    new = MLP(sizes, "relu", "he", seed=7, residual=False, branch_scale=None, branch_gate=False, norm=None)
    for w_old, w_new, w in zip(old.weights, new.weights, expected):
        assert np.array_equal(w_old, w) and np.array_equal(w_new, w)
    assert old.flat_params.size == sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    assert np.array_equal(old.flat_params, new.flat_params)
    assert [type(b).__name__ for b in old.blocks] == ["Dense"] * 3  # no wrapper around a plain layer
    x = np.random.default_rng(0).normal(size=(9, 64)).astype(np.float32)
    assert np.array_equal(old.forward(x), new.forward(x))


def test_residual_nets_draw_the_plain_nets_weights():
    """The new parameters draw nothing: the same seed gives the same W and b with or without skips and norms."""
    plain = MLP.from_shape(10, 3, 6, 8, seed=3)
    for arch in ("residual", "gate", "everything", "layernorm"):
        other = MLP.from_shape(10, 3, 6, 8, seed=3, **ARCHITECTURES[arch])
        assert all(np.array_equal(a, b) for a, b in zip(plain.weights, other.weights)), arch


# --- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(residual=True, width=[8, 8, 6]), r"residual=True needs every hidden layer as wide as the first.*\[8, 8, 6\]"),
    (dict(norm="batchnorm"), r"unknown norm 'batchnorm'; valid choices: None \(no normalisation\), 'layernorm'"),
    (dict(branch_scale=0.5), r"branch_scale=0.5 needs residual=True"),
    (dict(branch_gate=True), r"branch_gate=True needs residual=True"),
    (dict(branch_shift=True), r"branch_shift=True needs residual=True"),
    (dict(init="fixup"), r"init='fixup' needs residual=True"),
    (dict(residual=True, branch_gate=True, branch_scale=0.5), r"branch_scale=0.5 with a gate"),
    (dict(residual=True, init="fixup", branch_scale=0.5), r"branch_scale=0.5 with a gate \(init='fixup'"),
    (dict(residual=True, branch_scale=0.0), r"branch_scale must be a finite number > 0 or None.*got 0.0"),
    (dict(residual=True, branch_scale=float("inf")), r"branch_scale must be a finite number > 0.*got inf"),
    (dict(residual=True, branch_scale=True), r"branch_scale must be a finite number > 0.*got True"),
    (dict(residual="yes"), r"residual must be true or false, got 'yes'"),
    (dict(init="kaiming"), r"unknown initializer 'kaiming'; valid choices: he, .*\(MLP only\): fixup, lsuv"),
])
def test_bad_depth_options_raise_one_clear_line(kwargs, match):
    kwargs = {"width": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        MLP.from_shape(10, 3, 3, kwargs.pop("width"), **kwargs)


def test_fixup_and_lsuv_are_not_per_layer_initialisers():
    with pytest.raises(ValueError, match=r"'fixup' initialises a whole network.*MLP\(init='fixup'\)"):
        get_initializer("fixup")


# --- gates, shifts and Fixup -------------------------------------------------------------------------
def test_zero_gates_make_the_residual_stack_the_identity_and_train():
    x, y = problem(n_in=10)
    model = MLP.from_shape(10, 3, 5, 8, seed=0, residual=True, branch_gate=True, branch_shift=True)
    model.forward(x.astype(np.float32))
    hidden = [h for _, h in model.hidden_activations()]
    assert all(np.array_equal(h, hidden[0]) for h in hidden[1:])  # h_L = h_1 at initialisation
    gates = [b.gate for _, b in model.residual_blocks()]
    assert len(gates) == 4 and all(np.shares_memory(g, model.flat_params) for g in gates)  # optimisers see them
    for name in ("sgd", "adam"):
        opt = make_optimizer(name, lr=0.05)
        for _ in range(2):  # the first step moves the readout; the second reaches the gates through it
            loss_and_grads(model, x.astype(np.float32), y)
            opt.step([model.flat_params], [model.flat_grads])
        assert all(g[0] != 0 for g in gates), name


def test_fixup_initialisation():
    depth = 9
    model = MLP.from_shape(20, 4, depth, 16, seed=0, residual=True, init="fixup")
    he = MLP.from_shape(20, 4, depth, 16, seed=0, residual=True, branch_gate=True, branch_shift=True, init="he")
    assert model.architecture == {"residual": True, "branch_scale": None, "branch_gate": True,
                                  "branch_shift": True, "norm": None}
    assert np.array_equal(model.weights[0], he.weights[0])  # the first layer keeps its He draw
    for w_fix, w_he in zip(model.weights[1:-1], he.weights[1:-1]):  # branches: He / sqrt(L), L = depth - 1
        np.testing.assert_allclose(w_fix, w_he / math.sqrt(depth - 1), rtol=1e-6)
    assert not model.readout.W.any() and not model.readout.b.any()
    assert all(b.gate[0] == 0 and b.shift[0] == 0 for _, b in model.residual_blocks())
    x, y = problem(n_in=20, n_out=4, n=16)
    assert loss_and_grads(model, x.astype(np.float32), y) == pytest.approx(math.log(4), rel=1e-6)


def test_fixups_zero_readout_has_no_distance_from_init_ratio():
    """||W - W_0|| / ||W_0|| is undefined for a readout that starts at 0: absent from the record, not inf/NaN."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 10)).astype(np.float32), rng.integers(0, 3, 64)
    model = MLP.from_shape(10, 3, 4, 8, seed=0, residual=True, init="fixup")
    seen = []
    fit(model, make_optimizer("sgd", lr=0.05), x[:48], y[:48], x[48:], y[48:], TrainConfig(epochs=2, batch_size=16),
        callback=lambda e, m: seen.append(m))
    assert all("dist_init/layer_5" not in m and "dist_init/layer_4" in m for m in seen)
    assert "update_ratio/layer_5" in seen[2] and "update_ratio/layer_4" in seen[2]  # W_out moved off 0 by then
    assert all(np.isfinite(v) for m in seen for v in m.values())


def one_step_output_change(init: str, depth: int, lr: float = 0.01) -> float:
    """||logits after - before|| of one SGD step of a residual net with zero gates and shifts and an O(1) readout
    (as after the first steps, which only move the readout: the zero readout keeps dL/dh at 0)."""
    x, y = problem(n_in=20, n_out=4, n=64, seed=1)
    kw = dict(init="fixup") if init == "fixup" else dict(branch_gate=True, branch_shift=True)
    model = MLP.from_shape(20, 4, depth, 32, seed=0, residual=True, dtype=np.float64, **kw)
    model.readout.W[...] = np.random.default_rng(5).normal(0, 1 / math.sqrt(32), model.readout.W.shape)
    before = model.forward(x)
    loss_and_grads(model, x, y)
    make_optimizer("sgd", lr=lr).step([model.flat_params], [model.flat_grads])
    return float(np.linalg.norm(model.forward(x) - before))


def test_fixups_branch_scaling_keeps_the_first_update_independent_of_depth():
    """The point of L^(-1/2): each zero gate's first step moves the output by lr ||phi(z)||^2 ~ lr / L, so the
    L branches together by O(lr) at any depth; with the branch weights at He scale, by O(lr L)."""
    fixup_ratio = one_step_output_change("fixup", 65) / one_step_output_change("fixup", 5)
    he_ratio = one_step_output_change("he", 65) / one_step_output_change("he", 5)
    assert 0.5 < fixup_ratio < 2.0
    assert he_ratio > 4.0


# --- LSUV --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["plain", "residual", "residual-layernorm"])
def test_lsuv_gives_every_layer_unit_output_variance_on_the_batch(arch):
    kw = {} if arch == "plain" else ARCHITECTURES[arch]
    model = MLP.from_shape(64, 10, 12, 48, activation="tanh", init="lsuv", seed=0, **kw)
    assert model.needs_data_init
    for w in model.weights[1:-1]:  # orthonormal before the data step
        np.testing.assert_allclose(w.T @ w, np.eye(48), atol=1e-5)
    x = np.random.default_rng(0).normal(0, 3.0, size=(128, 64)).astype(np.float32)
    result = lsuv(model, x)
    assert not model.needs_data_init
    assert result["batch_size"] == 128 and result["tol"] == 0.1 and result["max_passes"] == 10
    assert len(result["passes"]) == len(result["variance"]) == 13 and result["converged"]
    assert result["passes"][0] == 1  # inputs of variance 9 through an orthogonal layer: one rescale
    model.forward(x)
    measured = [layer.z.var(dtype=np.float64) for layer in model.layers]
    np.testing.assert_allclose(measured, result["variance"], rtol=1e-5)
    assert all(abs(v - 1) < 0.1 for v in measured)


def test_lsuv_stops_after_max_passes_and_refuses_a_dead_layer():
    model = MLP.from_shape(16, 4, 3, 16, init="lsuv", seed=0)
    x = np.random.default_rng(0).normal(size=(64, 16))
    result = lsuv(model, x, tol=1e-12, max_passes=3)  # float32 never gets that close: every layer hits the cap
    assert result["passes"] == [3, 3, 3, 3] and not result["converged"]
    with pytest.raises(ValueError, match=r"lsuv: layer 1's output has variance 0.0"):
        lsuv(MLP.from_shape(16, 4, 3, 16, init="lsuv", seed=0), np.zeros((8, 16)))
    with pytest.raises(ValueError, match=r"lsuv tol must be a number in \(0, 1\), got 2"):
        lsuv(model, x, tol=2)
    # the config's init group can carry LSUV's settings: they reach lsuv(), not the orthogonal draw
    configured = MLP.from_shape(16, 4, 3, 16, init="lsuv", init_params={"tol": 1e-12, "max_passes": 2, "gain": 1.0},
                                seed=0)
    assert lsuv(configured, x)["passes"] == [2, 2, 2, 2]


# --- measurements -----------------------------------------------------------------------------------
def finite_difference_jacobian(model, x, eps=1e-6):
    """d h_L / d x by central differences of the forward pass, for each row of x -> (k, n_L, n_in)."""
    def last_hidden(v):
        model.forward(v)
        return model.hidden_activations()[-1][1].copy()

    jac = np.zeros((len(x), model.sizes[-2], x.shape[1]))
    for j in range(x.shape[1]):
        up, down = x.copy(), x.copy()
        up[:, j] += eps
        down[:, j] -= eps
        jac[:, :, j] = (last_hidden(up) - last_hidden(down)) / (2 * eps)
    return jac


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_jacobian_probe_matches_finite_differences(arch):
    model = make(arch, "tanh", depth=5, width=7)
    x = np.random.default_rng(2).normal(size=(3, 5))
    np.testing.assert_allclose(hidden_jacobians(model, x), finite_difference_jacobian(model, x), rtol=1e-6,
                               atol=1e-8)


def test_activation_stats_of_a_residual_net():
    model, (x, _) = make("gate", "tanh", depth=4), problem()
    stats = activation_stats(model, x)
    pairs = model.hidden_activations()
    for i, (z, h) in enumerate(pairs, 1):
        assert stats[f"act_std/layer_{i}"] == pytest.approx(h.std())
        assert stats[f"act_mean/layer_{i}"] == pytest.approx(h.mean())
    for i in range(2, 5):  # ||alpha phi(z_i)|| / ||h_{i-1}||, alpha the gate
        gate = model.state_dict()[f"gate{i}"][0]
        expected = np.linalg.norm(gate * np.tanh(pairs[i - 1][0])) / np.linalg.norm(pairs[i - 2][1])
        assert stats[f"branch_ratio/layer_{i}"] == pytest.approx(expected, rel=1e-10)
    assert "branch_ratio/layer_1" not in stats
    assert not any(k.startswith("branch_ratio") for k in activation_stats(make("layernorm"), x))


def test_saturation_of_a_residual_layer_is_its_branchs():
    """|h| > 0.99 says nothing about tanh units when h is a sum; the branch's tanh(z) is what saturates."""
    model = MLP.from_shape(4, 3, 3, 10, activation="tanh", init="random", init_params={"std": 0.01}, seed=0,
                           residual=True, branch_scale=1.0, dtype=np.float64)
    model.layers[0].b[...] = 3.0  # h_1 = tanh(3) ~ 0.995: "saturated", and so is the sum h_2 ~ h_1
    stats = activation_stats(model, np.ones((5, 4)))
    assert stats["act_saturation/layer_1"] == 1.0
    assert stats["act_saturation/layer_2"] == 0.0  # the branch's tanh(~0.1) is far from saturating


def test_act_len_logvar():
    x = np.random.default_rng(0).normal(size=(50, 5)) * np.linspace(0.5, 2, 50)[:, None]
    model = make("residual-layernorm", "relu")
    model.forward(x)
    h = model.hidden_activations()[-1][1]
    expected = np.var(np.log((h**2).sum(axis=1)))
    assert activation_length_logvar(model, x)["act_len_logvar"] == pytest.approx(expected, rel=1e-12)
    assert activation_length_logvar(MLP([5, 3], seed=0), x) == {}  # no hidden layer
    dead = MLP.from_shape(5, 3, 2, 4, seed=0)
    dead.layers[1].b[...] = -100.0  # every unit of the last hidden layer off: log 0 is undefined
    assert activation_length_logvar(dead, x.astype(np.float32)) == {}


def test_fit_records_branch_ratios_every_epoch_and_the_length_spread_at_epoch_zero():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 10)).astype(np.float32), rng.integers(0, 3, 200)
    model = MLP.from_shape(10, 3, 4, 16, seed=0, residual=True, norm="layernorm")
    seen = []
    fit(model, make_optimizer("sgd", lr=0.05), x[:150], y[:150], x[150:], y[150:],
        TrainConfig(epochs=2, batch_size=32, probe_size=64), callback=lambda e, m: seen.append(m))
    ratios = {f"branch_ratio/layer_{i}" for i in (2, 3, 4)}
    assert all(ratios <= set(m) and "branch_ratio/layer_1" not in m for m in seen)
    assert "act_len_logvar" in seen[0] and all("act_len_logvar" not in m for m in seen[1:])
    assert all(np.isfinite(v) for m in seen for v in m.values())
    assert "grad_noise_scale" in seen[1]


@pytest.mark.parametrize("arch", ["everything", "fixup", "layernorm"])
def test_per_sample_gradient_norms_match_a_per_sample_loop(arch):
    model, (x, y) = make(arch, "tanh"), problem(n=9)
    per_sample = []
    for n in range(len(x)):
        loss_and_grads(model, x[n : n + 1], y[n : n + 1])
        per_sample.append(float(np.vdot(model.flat_grads, model.flat_grads)))
    loss_and_grads(model, x, y)
    np.testing.assert_allclose(I.per_sample_grad_sq_norms(model), per_sample, rtol=1e-10)


def test_weight_gradient_norms_per_layer_are_the_weight_layers():
    model, (x, y) = make("everything", "tanh"), problem()
    meter = GradNormMeter(len(model.layers))
    loss_and_grads(model, x, y)
    meter.update(model)
    out = meter.summary()
    for i, layer in enumerate(model.layers, 1):
        assert out[f"grad_norm/layer_{i}"] == pytest.approx(np.linalg.norm(layer.dW))
    assert out["grad_norm/global"] == pytest.approx(np.linalg.norm(model.flat_grads))


def test_hessian_vector_products_of_a_residual_layernorm_net():
    model, (x, y) = make("everything", "tanh", depth=3, width=4), problem()
    theta = model.flat_params.copy()
    v = np.random.default_rng(3).normal(size=theta.shape)
    h = 1e-5
    model.flat_params[...] = theta + h * v
    up = I.loss_gradient(model, x, y)
    model.flat_params[...] = theta - h * v
    down = I.loss_gradient(model, x, y)
    model.flat_params[...] = theta
    np.testing.assert_allclose(I.hvp(model, x, y, v), (up - down) / (2 * h), rtol=1e-4, atol=1e-7)
    float32 = MLP.from_shape(5, 3, 3, 4, seed=0, **ARCHITECTURES["everything"])
    copy = I._as_float64(float32)
    assert copy.architecture == float32.architecture and copy.flat_params.dtype == np.float64
    value, _ = I.sharpness(float32, x, y, iters=5)
    assert np.isfinite(value)


def test_state_dict_round_trip_and_empty_like():
    model = make("everything", "tanh")
    state = model.state_dict()
    assert {"gate2", "shift2", "ln_gain2", "ln_bias2", "W5", "b5"} <= set(state) and "gate1" not in state
    other = model.empty_like()
    assert other.architecture == model.architecture and not any(w.any() for w in other.weights)
    other.load_state_dict(state)
    assert np.array_equal(other.flat_params, model.flat_params)
    with pytest.raises(ValueError, match=r"gate2: missing from the state"):
        other.load_state_dict({k: v for k, v in state.items() if k != "gate2"})
    reloaded = MLP.from_shape(5, 3, 4, 6, seed=0, init="lsuv", **ARCHITECTURES["everything"])
    assert reloaded.needs_data_init
    reloaded.load_state_dict(state)  # trained weights: no data step to do
    assert not reloaded.needs_data_init and np.array_equal(reloaded.flat_params, model.flat_params.astype(np.float32))


# --- the step allocates nothing that grows with the network ----------------------------------------
def step_peak_bytes(depth: int) -> int:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 64)).astype(np.float32), rng.integers(0, 10, 32)
    model = MLP.from_shape(64, 10, depth, 64, seed=0, residual=True, norm="layernorm", branch_gate=True)
    opt = make_optimizer("sgd", lr=0.01)
    for _ in range(2):  # the first steps create the work arrays
        loss_and_grads(model, x, y)
        opt.step([model.flat_params], [model.flat_grads])
    outputs = [id(h) for _, h in model.hidden_activations()]
    tracemalloc.start()
    loss_and_grads(model, x, y)
    opt.step([model.flat_params], [model.flat_grads])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [id(h) for _, h in model.hidden_activations()] == outputs  # the same work arrays, step after step
    return peak


def test_the_training_step_reuses_its_work_arrays():
    one_layer = 32 * 64 * 4  # bytes of one (batch, width) float32 array
    shallow, deep = step_peak_bytes(8), step_peak_bytes(64)
    # temporaries of one layer at a time (the activation's derivative, the loss's softmax) and nothing per layer:
    # a step that allocated its activations would need > 64 such arrays at depth 64
    assert deep < 8 * one_layer
    assert deep < shallow + 2 * one_layer
