"""A NaN return from an env is dropped and counted, never ranked, and no NaN reaches theta."""

import json

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from esrl.train import train
from tests.conftest import final_state, tiny_es, tiny_run


class NaNCartPole(CartPoleEnv):
    """CartPole whose reward is NaN on the 7th step of episodes reset with an odd seed."""

    def reset(self, *, seed=None, options=None):
        self._poison = seed is not None and seed % 2 == 1
        self._n = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        self._n += 1
        return obs, (float("nan") if self._poison and self._n == 7 else r), term, trunc, info


gym.register("esrl-test/NaNCartPole-v0", entry_point=NaNCartPole, max_episode_steps=200)


def test_nonfinite_returns_are_dropped_and_counted(tmp_path):
    d = tmp_path / "r"
    train(tiny_run(d, env="esrl-test/NaNCartPole-v0", backend="processes", workers=2, max_iterations=4),
          tiny_es(), show_progress=False)
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert sum(m["nonfinite_returns"] for m in lines) > 0
    assert all(m["return_mean"] is not None and np.isfinite(m["return_mean"]) for m in lines)
    assert np.all(np.isfinite(final_state(d)["theta"]))
