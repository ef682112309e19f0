"""A3C and DQN learn on the CPU, and a truncated step bootstraps where a terminated one does not."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from esrl import envs
from esrl.config import A3CConfig, DQNConfig, RunConfig
from esrl.rl import nets
from esrl.rl.a3c import A3CSetup
from esrl.rl.common import Report
from esrl.rl.dqn import DQNSetup
from esrl.rl.optim import OptimSpec
from esrl.stores import make_store
from esrl.train_rl import context, train_rl


class Counting(gym.Env):
    """Observation [t, 0, 0, 0] at step t, reward 1; terminates at step `term_at` if set (else only the time limit)."""

    observation_space = gym.spaces.Box(-1e3, 1e3, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, term_at: int = 0, render_mode: str | None = None) -> None:
        self.term_at, self.t, self.render_mode = term_at, 0, render_mode

    def _obs(self) -> np.ndarray:
        return np.array([self.t, 0, 0, 0], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, self.term_at > 0 and self.t >= self.term_at, False, {}


gym.register("esrl-test/Truncated-v0", entry_point=Counting, max_episode_steps=3)
gym.register("esrl-test/Terminated-v0", entry_point=Counting, kwargs={"term_at": 3}, max_episode_steps=100)


@pytest.mark.parametrize(("env_id", "truncated"), [("esrl-test/Truncated-v0", True),
                                                   ("esrl-test/Terminated-v0", False)])
def test_a3c_bootstraps_a_truncated_step_and_not_a_terminated_one(env_id, truncated):
    c, gamma = 10.0, 0.9
    cfg = A3CConfig(hidden=(), shared_trunk=False, n_steps=5, envs_per_worker=1, gamma=gamma, gae_lambda=1.0)
    setup = A3CSetup(cfg, envs.spec_of(env_id), seed=0)
    model = setup.build_model()
    with torch.no_grad():  # V(s) = c everywhere
        model.v[-1].weight.zero_()
        model.v[-1].bias.fill_(c)
    worker = setup.build_worker(0, make_store("lock", nets.get_flat(model), OptimSpec(), context()).client(0))
    worker.step()
    returns = worker.last_batch[3]
    # steps 1-3 end an episode at step 3; steps 4-5 start the next, cut by the rollout (bootstrap c)
    end = c if truncated else 0.0
    expected = [1 + gamma * (1 + gamma * (1 + gamma * end)), 1 + gamma * (1 + gamma * end), 1 + gamma * end,
                1 + gamma * (1 + gamma * c), 1 + gamma * c]
    torch.testing.assert_close(returns, torch.tensor(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("env_id", "truncated"), [("esrl-test/Truncated-v0", True),
                                                   ("esrl-test/Terminated-v0", False)])
def test_dqn_stores_the_final_observation_and_terminal_only_when_terminated(env_id, truncated):
    cfg = DQNConfig(hidden=(8,), envs_per_worker=1, n_steps=5, learning_starts=64, batch_size=8)
    setup = DQNSetup(cfg, envs.spec_of(env_id), seed=0)
    worker = setup.build_worker(0, make_store("lock", nets.get_flat(setup.build_model()), OptimSpec(),
                                              context()).client(0))
    worker.collect(Report())
    replay = worker.replay
    assert replay.added == 5
    assert replay.obs[:5, 0].tolist() == [0, 1, 2, 0, 1]  # the episode restarted after step 3
    if truncated:  # the target bootstraps from the true last observation, not the reset one
        assert replay.next_obs[2, 0] == 3
    assert replay.done[:5].tolist() == [0, 0, 0 if truncated else 1, 0, 0]


@pytest.mark.parametrize(("algo", "seed", "target"), [("a3c", 0, 200.0), ("dqn", 3, 100.0)])
def test_cpu_a3c_and_dqn_learn_cartpole(tmp_path, algo, seed, target):
    """Serial (an exactly repeatable schedule) with an env-step budget: the outcome does not depend on load."""
    run = RunConfig(env="CartPole-v1", seed=seed, workers=2, backend="serial", max_seconds=0, max_env_steps=40_000,
                    target_return=target, eval_every_steps=2_000, confirm_episodes=20, run_dir=str(tmp_path / algo))
    s = train_rl(algo, run, A3CConfig() if algo == "a3c" else DQNConfig(), show_progress=False)
    first = json.loads((tmp_path / algo / "metrics.jsonl").read_text().splitlines()[0])
    assert first["env_steps"] <= 40 and first["eval_return"] < target  # the (nearly) initial policy does not
    assert s["solved"] and s["confirmed"] and s["env_steps_to_threshold"] > 0, s


def test_ga3c_bootstraps_a_truncated_step(tmp_path, monkeypatch):
    """GA3C's actors compute returns like A3C's workers: the first trajectory, as its trainer receives it."""
    from esrl.rl import a3c

    c, gamma = 10.0, 0.9
    real_build, real_gradient = A3CSetup.build_model, a3c.gradient
    batches = []

    def constant_value(self):  # V(s) = c everywhere, so the expected returns are known in closed form
        model = real_build(self)
        with torch.no_grad():
            model.v[-1].weight.zero_()
            model.v[-1].bias.fill_(c)
        return model

    def capture(model, batch, cfg):
        batches.append((batch[0].clone(), batch[3].clone()))
        return real_gradient(model, batch, cfg)

    monkeypatch.setattr(A3CSetup, "build_model", constant_value)
    monkeypatch.setattr(a3c, "gradient", capture)  # the trainer thread runs in this process
    cfg = A3CConfig(sync="ga3c", hidden=(), shared_trunk=False, n_steps=5, envs_per_worker=1, gamma=gamma,
                    gae_lambda=1.0, lr=1e-12, report_every=1)
    run = RunConfig(env="esrl-test/Truncated-v0", seed=0, workers=1, device="cpu", max_iterations=3, max_seconds=60,
                    target_return=1e9, eval_episodes=1, confirm_episodes=0, run_dir=str(tmp_path / "g"))
    train_rl("a3c", run, cfg, show_progress=False)
    obs, returns = batches[0]
    assert obs[:, 0].tolist() == [0, 1, 2, 0, 1]  # the actor's first trajectory: truncated after step 3
    expected = [1 + gamma * (1 + gamma * (1 + gamma * c)), 1 + gamma * (1 + gamma * c), 1 + gamma * c,
                1 + gamma * (1 + gamma * c), 1 + gamma * c]
    torch.testing.assert_close(returns, torch.tensor(expected), rtol=1e-4, atol=1e-4)
