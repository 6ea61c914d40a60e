"""Beyond mean field: the spread of log ||h_L||^2 in narrow deep ReLU nets (Hanin & Rolnick 2018)
against a NumPy simulation over many random nets written here."""
import math

import numpy as np
import pytest

from nnlab import theory as T
from nnlab.data import load_digits_dataset


def log_lengths(x, widths, rng, sigma_w2=2.0):
    """log ||h_L||^2 of each input (B,) in one random plain relu net, Gaussian weights, no bias."""
    h = x
    for n in widths:
        h = np.maximum(h @ rng.normal(0, math.sqrt(sigma_w2 / h.shape[1]), (h.shape[1], n)), 0)
    with np.errstate(divide="ignore"):  # an input whose layer is all off: log 0 = -inf (callers leave it out)
        return np.log(np.einsum("ij,ij->i", h, h))


def test_layer_log_variance_is_exact_and_about_5_over_n():
    rng = np.random.default_rng(0)
    for n in (4, 16, 64):
        # Var log chi^2_K, K ~ Binomial(n, 1/2), by sampling (K = 0 excluded, as in the theory)
        k = rng.binomial(n, 0.5, size=400_000)
        k = k[k > 0]
        sample = np.log(rng.chisquare(k))
        se = np.std(sample) ** 2 * math.sqrt(2 / len(sample))  # the sample variance's standard error
        assert T.layer_log_variance(n) == pytest.approx(np.var(sample), abs=5 * se)
    assert T.layer_log_variance(1000) == pytest.approx(5 / 1000, rel=0.01)  # 4 Var[relu(g)^2] / n


@pytest.mark.slow
@pytest.mark.parametrize("depth, width", [(10, 16), (30, 32), (50, 64)])
def test_log_length_variance_over_nets_for_one_input(depth, width):
    """Over 2000 nets: the sample variance has a standard error of sqrt(2 / 2000) (~3 %) for a
    Gaussian quantity (the log-length is a sum of `depth` independent terms); 4 standard errors."""
    rng = np.random.default_rng(depth)
    x = rng.normal(size=(1, 20))
    logs = np.array([log_lengths(x, [width] * depth, rng)[0] for _ in range(2000)])
    predicted = T.log_length_variance([width] * depth)
    assert np.var(logs) == pytest.approx(predicted, rel=4 * math.sqrt(2 / 2000))
    # Hanin & Rolnick's sum of 1 / n_j, times 5 at large n (V(n) > 5 / n at small n: 1.34x at n = 16)
    assert 5 * depth / width < predicted < 1.4 * 5 * depth / width


@pytest.mark.slow
@pytest.mark.parametrize("depth, width, inputs", [(10, 16, "gaussian"), (30, 32, "digits"), (50, 64, "digits"),
                                                  (20, 24, "gaussian")])
def test_act_len_logvar_matches_the_batch_variance_in_random_nets(depth, width, inputs):
    """act_len_logvar = the expected variance over a batch of 64 inputs of log ||h_L||^2 in one net.
    Mean over 300 nets, within 4 standard errors of that mean (the per-net values' spread / sqrt(300))
    plus 3 % of the prediction for the first-order treatment of the inputs' shared noise."""
    rng = np.random.default_rng(width)
    if inputs == "digits":
        x = load_digits_dataset().x_train[:64].astype(np.float64)
    else:
        x = rng.normal(size=(64, 40)) + 0.5  # a common mean: inputs with cosines ~0.2
    sizes = [x.shape[1], *[width] * depth, 10]
    predicted = T.act_len_logvar(sizes, "relu", "he", x)
    with np.errstate(invalid="ignore"):  # the variance of a batch holding -inf: nan, left out below
        per_net = np.array([np.var(log_lengths(x, [width] * depth, rng)) for _ in range(300)])
    # a net where some input's layer is all off (probability ~ depth * 2^-width per input) has
    # log 0 = -inf; the theory conditions on the signal surviving, so such nets are left out
    per_net = per_net[np.isfinite(per_net)]
    assert len(per_net) > 280
    se = per_net.std() / math.sqrt(len(per_net))
    assert abs(per_net.mean() - predicted) < 4 * se + 0.03 * predicted, (per_net.mean(), predicted, se)
    # the data's own spread is its floor; the inputs' shared noise keeps it below the over-nets variance
    assert np.var(np.log(np.sum(x**2, 1))) < predicted < np.var(np.log(np.sum(x**2, 1))) + \
        T.log_length_variance([width] * depth)


def test_act_len_logvar_is_defined_only_for_plain_bias_free_relu_nets():
    x = np.random.default_rng(0).normal(size=(8, 5))
    sizes = [5, 16, 16, 3]
    assert T.act_len_logvar(sizes, "relu", "he", x) > 0
    assert T.act_len_logvar(sizes, "relu", "xavier", x) > 0  # sigma_w^2 only shifts the log-length
    for kwargs in [dict(activation="tanh", init="he"), dict(activation="relu", init="orthogonal"),
                   dict(activation="relu", init="he", sigma_b2=0.1), dict(activation="relu", init="he", residual=True),
                   dict(activation="relu", init="he", norm="layernorm")]:
        assert T.act_len_logvar(sizes, x=x, **kwargs) is None, kwargs
    pred = T.predict_network(sizes, "relu", "he", x)
    assert T.record(pred)["theory/act_len_logvar"] == pytest.approx(pred.act_len_logvar)
    assert "theory/act_len_logvar" not in T.record(T.predict_network(sizes, "tanh", "he", x))
