"""The ES update against the paper's formula, computed by hand on a tiny problem."""

import dataclasses

import numpy as np
import pytest

from esrl import envs
from esrl.es import algorithm as es
from esrl.es import optim
from tests.conftest import tiny_es

SPEC = envs.spec_of("CartPole-v1")


def test_gradient_estimate_and_sgd_step_match_the_formula():
    cfg = tiny_es(population=4, optimizer="sgd", momentum=0.0, lr=0.1, l2=0.01, sigma=0.05, shaping="raw")
    rep = es.ESSetup(cfg, SPEC, seed=7).build()
    theta0 = rep.theta.copy()
    offsets, slots, signs = rep.addresses(0)
    eps = [signs[i] * rep.table[offsets[slots[i]] : offsets[slots[i]] + rep.dim].astype(np.float64) for i in range(4)]
    # members 0/1 and 2/3 are mirrored pairs
    assert np.array_equal(eps[0], -eps[1]) and np.array_equal(eps[2], -eps[3])
    shaped = np.array([1.0, -0.5, 0.25, 0.0], np.float32)
    rep.apply(es.Update(0, shaped, None, None, 0.0, 500))
    # the paper's starter: l2 * theta comes off the mean before the division by sigma
    grad = (sum(f * e for f, e in zip(shaped, eps, strict=True)) / 4 - 0.01 * theta0) / 0.05
    np.testing.assert_allclose(rep.theta, theta0 + 0.1 * grad, rtol=1e-4, atol=1e-6)
    assert rep.iteration == 1


def test_mean_is_over_ranked_members_and_fewer_than_two_skip_the_step():
    cfg = tiny_es(population=4, optimizer="sgd", momentum=0.0, lr=0.1, l2=0.0, sigma=0.05, shaping="raw")
    rep = es.ESSetup(cfg, SPEC, seed=7).build()
    theta0 = rep.theta.copy()
    offsets, slots, signs = rep.addresses(0)
    e0 = signs[0] * rep.table[offsets[slots[0]] : offsets[slots[0]] + rep.dim].astype(np.float64)
    shaped = np.array([0.5, -0.5, 0.0, 0.0], np.float32)  # the second pair was dropped (non-finite)
    rep.apply(es.Update(0, shaped, None, None, 0.0, 500, finite=2))
    np.testing.assert_allclose(rep.theta, theta0 + 0.1 * (0.5 * e0 * 2) / 2 / 0.05, rtol=1e-4, atol=1e-6)
    theta1 = rep.theta.copy()
    norm = rep.apply(es.Update(1, np.zeros(4, np.float32), None, None, 0.0, 400, finite=0))
    assert norm == 0.0 and np.array_equal(rep.theta, theta1) and rep.iteration == 2 and rep.step_cap == 400
    res = es.Results(np.array([1.0, np.nan, np.nan, 2.0]), np.array([10, 20, 30, 40]))
    update, nonfinite = es.make_update(cfg, 2, res, 500)
    assert update.finite == 0 and nonfinite == 2  # both pairs lost a member: nothing is ranked


def test_member_params_are_theta_plus_sigma_noise():
    rep = es.ESSetup(tiny_es(), SPEC, seed=1).build()
    p = rep.member_params(np.array([0, 1, 5]))
    offsets, slots, signs = rep.addresses(0)
    for row, m in zip(p, [0, 1, 5], strict=True):
        e = rep.table[offsets[slots[m]] : offsets[slots[m]] + rep.dim] * signs[m]
        np.testing.assert_allclose(row, rep.theta + 0.1 * e, rtol=1e-6)


def test_adam_update_uses_shared_state_and_l2():
    cfg = tiny_es(population=2, l2=0.0)
    rep = es.ESSetup(cfg, SPEC, seed=2).build()
    twin = optim.OptimizerState.zeros(rep.dim)
    theta0 = rep.theta.copy()
    offsets, _, _ = rep.addresses(0)
    e = rep.table[offsets[0] : offsets[0] + rep.dim]
    rep.apply(es.Update(0, np.array([0.5, -0.5], np.float32), None, None, 0.0, 500))
    grad = (0.5 * e - (-0.5) * e) / (2 * cfg.sigma)
    np.testing.assert_allclose(rep.theta, theta0 + optim.adam_step(twin, grad.astype(np.float32), cfg.lr), rtol=1e-5)
    assert rep.opt.step == 1


def test_make_update_drops_nonfinite_pairs_and_adapts_cap():
    cfg = tiny_es(population=4, adaptive_cap=True)
    res = es.Results(np.array([1.0, np.nan, 3.0, 2.0]), np.array([10, 20, 30, 40]))
    up, nonfinite = es.make_update(cfg, 0, res, 500)
    assert nonfinite == 1
    assert up.shaped[0] == 0 and up.shaped[1] == 0  # the whole mirrored pair is dropped
    np.testing.assert_allclose(up.shaped[2:], [0.5, -0.5])
    assert up.step_cap == 2 * 35  # twice the mean length of the kept members


def test_unperturbed_rank():
    assert es.unperturbed_rank(np.array([1.0, 2.0, 3.0, 4.0]), 3.5) == 0.75
    assert es.unperturbed_rank(np.array([1.0, 2.0]), 0.0) == 0.0


def test_obs_stats_merge_in_member_order():
    cfg = tiny_es(population=4)
    obs = [(3, np.array([1.0]), np.array([1.0]), 1), (1, np.array([2.0]), np.array([4.0]), 2)]
    res = es.Results(np.arange(4.0), np.ones(4, np.int64), obs)
    up, _ = es.make_update(dataclasses.replace(cfg), 0, res, 500)
    assert up.obs_count == 3 and up.obs_sum is not None and up.obs_sum[0] == 3.0


def test_greedy_act_on_a_batch_is_bit_identical_to_acting_row_by_row():
    """Evaluation acts on every live env at once: no action may depend on how many share the batch."""
    for env_id, hidden in (("Pendulum-v1", (64, 64)), ("CartPole-v1", (16,)), ("Acrobot-v1", (32, 32))):
        spec = envs.spec_of(env_id)
        rep = es.ESSetup(tiny_es(hidden=hidden), spec, seed=2).build()
        rep.theta = rep.theta + np.random.default_rng(0).standard_normal(rep.dim).astype(np.float32)
        act = rep.greedy_act()
        obs = np.random.default_rng(1).standard_normal((29, spec.obs_dim)).astype(np.float32)
        one_by_one = np.concatenate([act(obs[i : i + 1]) for i in range(len(obs))])
        assert np.array_equal(act(obs), one_by_one), env_id
        assert np.array_equal(act(obs[3:11]), one_by_one[3:11]), env_id


def test_common_seeds_start_each_pair_or_the_whole_population_from_one_state():
    assert len(set(es.episode_seeds(3, 5, 16).tolist())) == 16
    pair = es.episode_seeds(3, 5, 16, "pair")
    assert np.array_equal(pair[0::2], pair[1::2]) and len(set(pair.tolist())) == 8
    assert len(set(es.episode_seeds(3, 5, 16, "population").tolist())) == 1
    # the seeds reach the env: with a vanishing perturbation a pair plays the same episode
    spec = envs.spec_of("Pendulum-v1")
    for common, same in (("pair", True), ("none", False)):
        rep = es.ESSetup(tiny_es(population=4, sigma=1e-9, obs_norm=False, common_seeds=common), spec, seed=1).build()
        returns = rep.run(("pop", 0, 0, 4))["returns"]
        assert np.isclose(returns[0], returns[1], rtol=1e-6) == same, common
        assert not np.isclose(returns[0], returns[2], rtol=1e-6)


def test_common_seeds_refusals(tmp_path):
    from esrl.errors import InputError
    from esrl.train import train
    from tests.conftest import tiny_run

    with pytest.raises(InputError, match=r"^common_seeds: "):
        tiny_es(mirrored=False, common_seeds="pair").validate()
    with pytest.raises(InputError, match=r"^common_seeds: "):
        train(tiny_run(tmp_path / "r", backend="vectorized"), tiny_es(common_seeds="pair"), show_progress=False)
    assert not (tmp_path / "r").exists()
