"""Each optimiser's update checked against values worked out by hand; schedules likewise."""
import numpy as np
import pytest

from nnlab.core import get_schedule, make_optimizer


def run_steps(name, grads, **params):
    p = np.array([1.0])
    opt = make_optimizer(name, **params)
    for g in grads:
        opt.step([p], [np.array([g])])
    return p[0]


def test_sgd_step():
    # 1 - 0.1 * 0.5
    assert run_steps("sgd", [0.5], lr=0.1) == pytest.approx(0.95, abs=1e-12)


def test_momentum_two_steps():
    # v1 = -0.1*0.5 = -0.05, p1 = 0.95; v2 = 0.9*(-0.05) - 0.1*0.25 = -0.07, p2 = 0.88
    assert run_steps("momentum", [0.5, 0.25], lr=0.1, momentum=0.9) == pytest.approx(0.88, abs=1e-12)


def test_nesterov_two_steps():
    # v1 = -0.05, p1 = 1 + 0.9*(-0.05) - 0.05 = 0.905
    # v2 = 0.9*(-0.05) - 0.025 = -0.07, p2 = 0.905 + 0.9*(-0.07) - 0.025 = 0.817
    assert run_steps("momentum", [0.5, 0.25], lr=0.1, momentum=0.9, nesterov=True) == pytest.approx(0.817, abs=1e-12)


def test_adam_first_step_is_lr_times_sign():
    # m_hat = g, v_hat = g^2 after bias correction, so the step is lr * g / (|g| + eps'),
    # with eps' = eps / sqrt(1 - beta2) in the folded form
    assert run_steps("adam", [0.5], lr=0.1) == pytest.approx(1 - 0.1 * 0.5 / (0.5 + 1e-8 / 0.001**0.5), abs=1e-12)


def test_adam_two_steps():
    # m2 = 0.9*0.05 + 0.1*0.25 = 0.07          -> m_hat = 0.07 / (1 - 0.81)      = 0.368421053
    # v2 = 0.999*0.00025 + 0.001*0.0625 = 3.1225e-4 -> v_hat = 3.1225e-4 / 1.999e-3 = 0.156203102
    # p2 = 0.9 - 0.1 * 0.368421053 / (sqrt(0.156203102) + 1e-8) = 0.9 - 0.093218 = 0.806782
    assert run_steps("adam", [0.5, 0.25], lr=0.1) == pytest.approx(0.806782, abs=1e-6)


def test_optimizers_update_every_parameter_in_place():
    params = [np.ones((2, 3)), np.ones(3)]
    for name in ("sgd", "momentum", "adam"):
        ps = [p.copy() for p in params]
        ids = [id(p) for p in ps]
        make_optimizer(name, lr=0.1).step(ps, [np.ones((2, 3)), np.ones(3)])
        assert [id(p) for p in ps] == ids
        assert all(np.all(p < 1) for p in ps)


def test_schedules():
    assert get_schedule("constant")(0.1, 7, 10) == 0.1
    step = get_schedule("step", step_size=3, gamma=0.5)
    assert [step(1.0, e, 10) for e in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]
    cosine = get_schedule("cosine")
    assert cosine(1.0, 0, 10) == pytest.approx(1.0)
    assert cosine(1.0, 5, 10) == pytest.approx(0.5)
    assert cosine(1.0, 10, 10) == pytest.approx(0.0, abs=1e-12)
