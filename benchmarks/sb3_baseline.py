"""Stable-Baselines3 A2C and DQN on the same task, measured by esrl's own protocol.

Optional: needs `pip install -e '.[bench]'` (stable-baselines3). The evaluation is esrl's
(esrl.protocol): the same schedule (every `eval_every_steps` training env steps), the same
seeds, the same episode loop, its time kept off the training clock, and the first hit
confirmed on `confirm_episodes` fresh episodes. Time-to-threshold is training wall time from
model construction. Hyperparameters are the RL Baselines3 Zoo's tuned ones for CartPole-v1.
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
                  eval_every_steps: int = 10_000, eval_episodes: int = 10, confirm_episodes: int = 100
                  ) -> dict[str, Any]:
    import numpy as np
    from stable_baselines3 import A2C, DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from esrl import protocol
    from esrl.config import RunConfig

    t0 = time.perf_counter()
    run = RunConfig(env=env_id, seed=seed, target_return=target, eval_every_steps=eval_every_steps,
                    eval_episodes=eval_episodes, confirm_episodes=confirm_episodes)
    spec = run.env_spec()
    m = protocol.Measurement(run, target, protocol.Counters(), t0)
    zoo = ZOO[algo]
    env = make_vec_env(env_id, n_envs=zoo["n_envs"], seed=seed)
    model = (A2C if algo == "a2c" else DQN)("MlpPolicy", env, seed=seed, verbose=0, **zoo["kwargs"])
    threshold: dict[str, Any] = {}

    def play(seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return protocol.play_episodes(spec, lambda obs: model.predict(obs, deterministic=True)[0], seeds)

    class Stop(BaseCallback):
        def _on_step(self) -> bool:
            m.counters.env_steps = int(self.num_timesteps)
            if m.training_s() >= max_seconds:
                return False
            if not m.due():
                return True
            ev = m.evaluate(play)
            if ev.first:
                threshold["params"] = {k: v.clone() for k, v in model.policy.state_dict().items()}
            return not ev.hit

    model.learn(total_timesteps=max_steps, callback=Stop())
    m.counters.env_steps = int(model.num_timesteps)
    m.stop_clock()
    if threshold:
        model.policy.load_state_dict(threshold["params"])
        m.confirm(play)
    no_traffic = type("NoTraffic", (), {"sent": {}, "received": {}, "messages": 0})()
    return m.summary(no_traffic, "in-process")
