import numpy as np
import pytest

from esrl.es import shaping


def test_centered_ranks_hand_computed():
    # ranks of [3, 1, 2, 10] are [2, 0, 1, 3]; /(n-1) - 0.5
    out = shaping.centered_ranks(np.array([3.0, 1.0, 2.0, 10.0]))
    np.testing.assert_allclose(out, [2 / 3 - 0.5, -0.5, 1 / 3 - 0.5, 0.5], rtol=1e-6)
    assert out.dtype == np.float32


def test_centered_ranks_keep_shape_and_sum_to_zero():
    x = np.arange(12, dtype=float).reshape(6, 2)[::-1]
    out = shaping.centered_ranks(x)
    assert out.shape == (6, 2)
    assert abs(out.sum()) < 1e-6
    assert out[0, 1] == pytest.approx(0.5) and out[-1, 0] == pytest.approx(-0.5)


def test_centered_ranks_ties_broken_by_order():
    np.testing.assert_allclose(shaping.centered_ranks(np.array([5.0, 5.0, 5.0])), [-0.5, 0.0, 0.5])


def test_raw_standardizes():
    out = shaping.raw(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(out, np.array([-1.0, 0.0, 1.0]) / np.sqrt(2 / 3), rtol=1e-6)
    np.testing.assert_allclose(shaping.raw(np.array([4.0, 4.0])), [0.0, 0.0])


def test_sign():
    np.testing.assert_array_equal(shaping.sign(np.array([1.0, 5.0, 3.0])), [-1.0, 1.0, 0.0])
