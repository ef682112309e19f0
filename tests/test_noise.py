import numpy as np

from esrl.es import noise
from esrl.es.obstat import ObsStat


def test_table_is_a_function_of_the_seed():
    a = noise.noise_table(1, 1000).copy()
    b = noise.noise_table(2, 1000).copy()
    assert np.array_equal(noise.noise_table(1, 1000), a)
    assert not np.array_equal(a, b)
    assert a.dtype == np.float32 and abs(a.mean()) < 0.2 and 0.8 < a.std() < 1.2


def test_offsets_depend_only_on_seed_iteration_and_member():
    o = noise.pair_offsets(0, 5, 8, 1000, 10)
    assert np.array_equal(o, noise.pair_offsets(0, 5, 8, 1000, 10))
    assert not np.array_equal(o, noise.pair_offsets(0, 6, 8, 1000, 10))
    assert not np.array_equal(o, noise.pair_offsets(1, 5, 8, 1000, 10))
    assert o.min() >= 0 and o.max() <= 990


def test_weighted_noise_sum_matches_naive():
    table = np.random.default_rng(0).standard_normal(200).astype(np.float32)
    offsets = np.array([0, 7, 150, 33])
    w = np.array([0.5, -1.0, 0.25, 2.0])
    naive = sum(wk * table[o : o + 20].astype(np.float64) for wk, o in zip(w, offsets, strict=True))
    np.testing.assert_allclose(noise.weighted_noise_sum(table, offsets, w, 20, chunk=3), naive, rtol=1e-5)


def test_obstat_mean_std():
    st = ObsStat.empty((2,))
    x = np.array([[1.0, 10.0], [3.0, 30.0]])
    st.add(x.sum(0), (x * x).sum(0), 2)
    # prior: count 0.01, sumsq 0.01
    np.testing.assert_allclose(st.mean, x.sum(0) / 2.01)
    var = ((x * x).sum(0) + 0.01) / 2.01 - (x.sum(0) / 2.01) ** 2
    np.testing.assert_allclose(st.std, np.sqrt(var))
