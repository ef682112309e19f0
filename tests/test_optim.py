import numpy as np
import pytest

from esrl.es import optim


def test_adam_first_two_steps_hand_computed():
    st = optim.OptimizerState.zeros(2)
    g = np.array([0.5, -2.0], np.float32)
    # step 1: m = 0.1 g, v = 0.001 g^2, a = lr * sqrt(1-.999) / (1-.9); step = a m / (sqrt v + eps) ~= lr * sign(g)
    s1 = optim.adam_step(st, g, lr=0.01)
    np.testing.assert_allclose(s1, [0.01, -0.01], rtol=1e-4)
    assert st.step == 1
    np.testing.assert_allclose(st.m, 0.1 * g, rtol=1e-6)
    np.testing.assert_allclose(st.v, 0.001 * g * g, rtol=1e-6)
    # step 2 with gradient 0: m = 0.09 g, v = 0.000999 g^2
    s2 = optim.adam_step(st, np.zeros(2, np.float32), lr=0.01)
    a = 0.01 * np.sqrt(1 - 0.999**2) / (1 - 0.9**2)
    expected = a * 0.09 * g / (np.sqrt(0.000999 * g * g) + 1e-8)
    np.testing.assert_allclose(s2, expected, rtol=1e-4)


def test_sgd_momentum_hand_computed():
    st = optim.OptimizerState.zeros(1)
    assert optim.sgd_step(st, np.array([1.0], np.float32), lr=0.1, momentum=0.5)[0] == pytest.approx(0.1)
    # m = 0.5 * 1 + 2 = 2.5
    assert optim.sgd_step(st, np.array([2.0], np.float32), lr=0.1, momentum=0.5)[0] == pytest.approx(0.25)
    assert st.step == 2
