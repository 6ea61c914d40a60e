"""nnlab.theory's residual and LayerNorm predictions against the core's own networks at width 512.

The theory's tests compare it with a NumPy simulation written beside them; this file closes the loop
with the network users train (``MLP(residual=..., norm=...)``), through the record's own measurements
(``preact_std/layer_{i}``, the hidden outputs' std): within 5 % of the prediction at every layer,
averaged over a few independent networks (one network's variance is a random walk in depth/width).
"""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from nnlab import theory as T
from nnlab.core import MLP, preactivation_std


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("arch", [dict(branch_scale=1.0), dict(branch_scale=None), dict(norm="layernorm")],
                         ids=["alpha=1", "alpha=1/sqrt(L)", "layernorm"])
def test_core_residual_nets_measure_what_the_theory_predicts(activation, arch):
    width, depth, n_nets, n_in = 512, 16, 4, 64
    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 1.0, size=(256, n_in))
    sizes = [n_in, *[width] * depth, 10]
    options = {"residual": True, "branch_scale": None, "norm": None, **arch}
    pred = T.predict_network(sizes, activation, "he", x, **options)
    preact, act = np.zeros(depth), np.zeros(depth)
    for _ in range(n_nets):
        model = MLP(sizes, activation, "he", rng=rng, dtype=np.float64, **options)
        preact += np.array(list(preactivation_std(model, x).values())) / n_nets
        act += np.array([h.std() for _, h in model.hidden_activations()]) / n_nets
    np.testing.assert_allclose(preact, pred.preact_std, rtol=0.05)
    np.testing.assert_allclose(act, pred.act_std, rtol=0.05)


def test_the_check_fails_on_a_plain_prediction_for_a_residual_net():
    """A residual net's growth is not a plain net's: the plain prediction misses it by far more than 5 %."""
    width, depth = 256, 16
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, size=(128, 64))
    sizes = [64, *[width] * depth, 10]
    model = MLP(sizes, "relu", "he", rng=rng, dtype=np.float64, residual=True, branch_scale=1.0)
    model.forward(x)
    act = np.array([h.std() for _, h in model.hidden_activations()])
    plain = T.predict_network(sizes, "relu", "he", x)
    residual = T.predict_network(sizes, "relu", "he", x, residual=True, branch_scale=1.0)
    assert abs(act[-1] / plain.act_std[-1] - 1) > 0.5
    assert abs(act[-1] / residual.act_std[-1] - 1) < 0.15
