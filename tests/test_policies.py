import gymnasium as gym
import numpy as np
import pytest

from esrl import envs
from esrl.errors import InputError
from esrl.es.policies import MLP


def test_parameter_count_and_shapes():
    pol = MLP(envs.spec_of("CartPole-v1"), (8, 4))
    assert pol.num_params == 4 * 8 + 8 + 8 * 4 + 4 + 4 * 2 + 2
    assert list(pol.shapes()) == ["layer0.weight", "layer0.bias", "layer1.weight", "layer1.bias",
                                  "layer2.weight", "layer2.bias"]
    assert pol.init(np.random.default_rng(0)).shape == (pol.num_params,)


def test_batched_forward_equals_row_by_row():
    pol = MLP(envs.spec_of("Acrobot-v1"), (16,))
    gen = np.random.default_rng(1)
    params = gen.standard_normal((5, pol.num_params)).astype(np.float32)
    x = gen.standard_normal((5, 6)).astype(np.float32)
    mean, inv = np.zeros(6, np.float32), np.ones(6, np.float32)
    batched = pol.forward(params, x, mean, inv)
    for i in range(5):
        assert np.array_equal(batched[i], pol.forward(params[i : i + 1], x[i : i + 1], mean, inv)[0])


def test_forward_matches_explicit_layers():
    pol = MLP(envs.spec_of("CartPole-v1"), (3,))
    p = np.random.default_rng(2).standard_normal(pol.num_params).astype(np.float32)
    w0, b0 = p[:12].reshape(3, 4), p[12:15]
    w1, b1 = p[15:21].reshape(2, 3), p[21:23]
    x = np.array([[0.1, -0.2, 0.3, 0.4]], np.float32)
    expected = w1 @ np.tanh(w0 @ x[0] + b0) + b1
    np.testing.assert_allclose(pol.forward(p[None], x, np.zeros(4, np.float32), np.ones(4, np.float32))[0],
                               expected, rtol=1e-5)


def test_box_actions_are_mapped_into_bounds():
    pol = MLP(envs.spec_of("Pendulum-v1"), (4,))
    acts = pol.to_actions(np.array([[-100.0], [0.0], [100.0]], np.float32))
    np.testing.assert_allclose(acts[:, 0], [-2.0, 0.0, 2.0], atol=1e-5)


def test_discrete_actions_are_argmax():
    pol = MLP(envs.spec_of("CartPole-v1"), ())
    assert list(pol.to_actions(np.array([[0.1, 0.2], [3.0, -1.0]]))) == [1, 0]


def test_discrete_observations_are_one_hot():
    pol = MLP(envs.spec_of("FrozenLake-v1"), (4,))
    np.testing.assert_array_equal(pol.preprocess(np.array([2]))[0], np.eye(16)[2])


def test_unsupported_action_space_is_refused():
    env = gym.make("CartPole-v1")
    env.action_space = gym.spaces.MultiDiscrete([2, 2])
    with pytest.raises(InputError, match="action space"):
        envs.describe(env, "CartPole-v1")


def test_unknown_env_is_refused():
    with pytest.raises(InputError, match=r"^env: "):
        envs.spec_of("NoSuchEnv-v9")


def test_flat_get_set_round_trip():
    pol = MLP(envs.spec_of("Pendulum-v1"), (5, 3))
    flat = pol.init(np.random.default_rng(3))
    named = pol.unflatten(flat)
    assert {k: v.shape for k, v in named.items()} == pol.shapes()
    assert np.array_equal(pol.flatten(named), flat)
    # the named tensors are the ones the forward pass uses
    x = np.ones((1, 3), np.float32)
    h = np.tanh(named["layer0.weight"] @ x[0] + named["layer0.bias"])
    h = np.tanh(named["layer1.weight"] @ h + named["layer1.bias"])
    out = named["layer2.weight"] @ h + named["layer2.bias"]
    np.testing.assert_allclose(pol.forward(flat[None], x, np.zeros(3, np.float32), np.ones(3, np.float32))[0], out,
                               rtol=1e-5)
    with pytest.raises(ValueError, match=r"layer0\.weight"):
        pol.flatten({**named, "layer0.weight": np.zeros((2, 2))})
