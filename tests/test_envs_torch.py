"""Batched torch envs against Gymnasium, step for step from identical states under identical actions."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from esrl.errors import InputError
from esrl.es.envs_np import NUMPY_ENVS, make_numpy_env
from esrl.es.envs_torch import TORCH_ENVS, make_torch_env

# float32 internals in Gymnasium's MountainCarContinuous: compare it at float32 tolerance
RTOL = {"MountainCarContinuous-v0": 1e-5}


class NumpyAsTorch:
    """The numpy env behind the torch env's (rows, state) tensor interface, for one comparison loop."""

    def __init__(self, env_id):
        self.env = make_numpy_env(env_id)
        self.discrete, self.act_dim = self.env.discrete, self.env.act_dim

    def dynamics(self, s, a):
        nxt, r, term = self.env.dynamics(s.numpy().T.copy(), a.numpy().T.copy() if a.ndim == 2 else a.numpy())
        return torch.from_numpy(nxt.T.copy()), torch.from_numpy(np.asarray(r)), torch.from_numpy(term)

    def observe(self, s):
        return torch.from_numpy(self.env.observe(s.numpy().T.copy()).T.copy())


def test_every_torch_env_has_a_numpy_twin():
    assert sorted(NUMPY_ENVS) == sorted(TORCH_ENVS)


@pytest.mark.parametrize("impl", ["torch", "numpy"])
@pytest.mark.parametrize("env_id", sorted(TORCH_ENVS))
def test_one_step_matches_gymnasium(env_id, impl):
    genv = gym.make(env_id).unwrapped
    tenv = make_torch_env(env_id, 1) if impl == "torch" else NumpyAsTorch(env_id)
    rng = np.random.default_rng(0)
    genv.reset(seed=1)
    rtol = RTOL.get(env_id, 1e-12)
    terminations = 0
    for _ in range(400):
        before = torch.tensor(np.asarray(genv.state, np.float64)).reshape(1, -1)
        if tenv.discrete:
            a = int(rng.integers(tenv.act_dim))
            action, t_action = a, torch.tensor([a])
        else:
            action = rng.uniform(-3, 3, size=(tenv.act_dim,)).astype(np.float32)
            t_action = torch.tensor(action[None].astype(np.float64))
        obs, r, term, _, _ = genv.step(action)
        nxt, t_r, t_term = tenv.dynamics(before, t_action)
        np.testing.assert_allclose(tenv.observe(nxt)[0].numpy(), np.asarray(obs, np.float64), rtol=max(rtol, 1e-6),
                                   atol=1e-7)
        np.testing.assert_allclose(nxt[0].numpy(), np.asarray(genv.state, np.float64), rtol=rtol, atol=1e-12)
        assert float(t_r[0]) == pytest.approx(float(r), rel=max(rtol, 1e-12), abs=1e-9)
        assert bool(t_term[0]) == term
        if term:
            terminations += 1
            genv.reset(seed=int(rng.integers(1000)))
    if env_id == "CartPole-v1":
        assert terminations > 5  # the comparison crossed many terminations


@pytest.mark.parametrize("env_id", sorted(TORCH_ENVS))
def test_batch_contract_time_limit_and_auto_reset(env_id):
    env = make_torch_env(env_id, 4, seed=3)
    obs = env.reset()
    assert obs.shape == (4, env.obs_dim)
    action = torch.zeros(4, dtype=torch.long) if env.discrete else torch.zeros(4, env.act_dim, dtype=torch.float64)
    if env_id == "MountainCar-v0":
        action += 1  # no push: the car never reaches the goal, every episode is truncated
    seen_trunc = False
    for t in range(env.max_episode_steps):
        obs, r, term, trunc, info = env.step(action)
        assert obs.shape == (4, env.obs_dim) and r.shape == (4,)
        assert not bool((term & trunc).any())
        if bool(trunc.any()):
            seen_trunc = True
            assert t == env.max_episode_steps - 1 or bool(term.any()) is False
            assert "final_obs" in info
            assert bool((env.elapsed[trunc] == 0).all())  # auto-reset
    if env_id != "CartPole-v1":  # CartPole with a constant push terminates long before the limit
        assert seen_trunc


def test_same_seed_same_batch_and_unknown_env():
    a, b = make_torch_env("CartPole-v1", 8, seed=5), make_torch_env("CartPole-v1", 8, seed=5)
    assert torch.equal(a.reset(), b.reset())
    assert not torch.equal(a.reset(), make_torch_env("CartPole-v1", 8, seed=6).reset())
    with pytest.raises(InputError, match=r"^env: "):
        make_torch_env("Humanoid-v5", 2)
    with pytest.raises(InputError, match=r"^env: "):
        make_numpy_env("Humanoid-v5")
