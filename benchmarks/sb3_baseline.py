"""Stable-Baselines3 A2C and DQN on the same task, timed the way esrl times itself.

Optional: needs `pip install -e '.[bench]'` (stable-baselines3). Time-to-threshold is wall time
from model construction to the first evaluation (mean of `eval_episodes` deterministic
episodes) at or above the target, evaluation time included, evaluated every `eval_every`
env steps. Hyperparameters are the RL Baselines3 Zoo's tuned ones for CartPole-v1.
"""

from __future__ import annotations

import time
from typing import Any

ZOO: dict[str, dict[str, Any]] = {
    # rl-baselines3-zoo hyperparams/a2c.yml and dqn.yml, CartPole-v1
    "a2c": {"n_envs": 8, "kwargs": {"ent_coef": 0.0}},
    "dqn": {"n_envs": 1, "kwargs": {"learning_rate": 2.3e-3, "batch_size": 64, "buffer_size": 100_000,
                                    "learning_starts": 1000, "gamma": 0.99, "target_update_interval": 10,
                                    "train_freq": 256, "gradient_steps": 128, "exploration_fraction": 0.16,
                                    "exploration_final_eps": 0.04, "policy_kwargs": {"net_arch": [256, 256]}}},
}


def time_to_solve(algo: str, env_id: str, target: float, seed: int, max_seconds: float, max_steps: int = 500_000,
                  eval_every: int = 2000, eval_episodes: int = 10) -> dict[str, Any]:
    import gymnasium as gym
    from stable_baselines3 import A2C, DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    t0 = time.perf_counter()
    zoo = ZOO[algo]
    env = make_vec_env(env_id, n_envs=zoo["n_envs"], seed=seed)
    model = (A2C if algo == "a2c" else DQN)("MlpPolicy", env, seed=seed, verbose=0, **zoo["kwargs"])
    eval_env = gym.make(env_id)
    result: dict[str, Any] = {"solved": False, "time_to_threshold_s": None, "best_eval_return": None}

    class Stop(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.next_eval = eval_every

        def _on_step(self) -> bool:
            if time.perf_counter() - t0 >= max_seconds:
                return False
            if self.num_timesteps < self.next_eval:
                return True
            self.next_eval += eval_every
            eval_env.reset(seed=seed * 1000 + self.num_timesteps)
            mean, _ = evaluate_policy(self.model, eval_env, n_eval_episodes=eval_episodes, deterministic=True)
            best = result["best_eval_return"]
            result["best_eval_return"] = mean if best is None else max(best, mean)
            if mean >= target:
                result.update(solved=True, time_to_threshold_s=time.perf_counter() - t0, env_steps=self.num_timesteps)
                return False
            return True

    model.learn(total_timesteps=max_steps, callback=Stop())
    result.setdefault("env_steps", int(model.num_timesteps))
    result["wall_s"] = time.perf_counter() - t0
    return result


