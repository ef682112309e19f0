"""Stable-Baselines3 A2C, PPO and DQN with the RL Baselines3 Zoo's settings, measured by esrl's own protocol.

Optional: needs `pip install -e '.[bench]'` (stable-baselines3). The evaluation is esrl's
(esrl.protocol): the same schedule (every `eval_every_steps` training env steps), the same
seeds, the same episode loop, its time kept off the training clock, and the first hit
confirmed on `confirm_episodes` fresh episodes. Time-to-threshold is training wall time from
the construction of the envs and the model. Where the zoo normalizes (VecNormalize), the
evaluation sees observations normalized with the training statistics, frozen (the zoo's own
evaluation does the same), and the confirmation uses the statistics saved with the threshold
parameters.

One run from the command line (benchmarks/zoo.py runs these in subprocesses):
    .venv/bin/python benchmarks/sb3_baseline.py ppo Pendulum-v1 --seed 0 --max-seconds 300 --summary OUT.json
        [--eval-every-steps N] [--eval-episodes N] [--confirm-episodes N] [--target R]
The measurement settings default to the env's in configs/zoo/envs.toml (the ones every esrl arm uses).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# The RL Baselines3 Zoo's settings per (algorithm, env), transcribed from DLR-RM/rl-baselines3-zoo
# hyperparams/a2c.yml, hyperparams/ppo.yml and hyperparams/dqn.yml at commit 22e3ff2 (2026-04-23).
# Values as the yml files write them: "lin_X" is the zoo's linear schedule from X to 0 over n_timesteps,
# policy_kwargs is the zoo's Python text (evaluated as the zoo evaluates it, with torch.nn as nn).
# `zoo_key` names the yml entry where it is not the env id itself: the zoo lists MuJoCo tasks as -v4
# (InvertedPendulum only as -v2), the same tasks as Gymnasium's -v5 here; Atari games use its `atari` entry.
# `n_timesteps` is the zoo's training length; the time budget replaces it as the stopping rule, except
# that schedules defined over it are kept (see `measure`).
SETTINGS: dict[tuple[str, str], dict[str, Any]] = {
    # hyperparams/a2c.yml
    ("a2c", "CartPole-v1"): {"n_envs": 8, "n_timesteps": 500_000, "policy": "MlpPolicy", "ent_coef": 0.0},
    ("a2c", "Acrobot-v1"): {"normalize": True, "n_envs": 16, "n_timesteps": 500_000, "policy": "MlpPolicy",
                            "ent_coef": 0.0},
    ("a2c", "MountainCar-v0"): {"normalize": True, "n_envs": 16, "n_timesteps": 1_000_000, "policy": "MlpPolicy",
                                "ent_coef": 0.0},
    ("a2c", "MountainCarContinuous-v0"): {
        "normalize": True, "n_envs": 4, "n_steps": 100, "n_timesteps": 100_000, "policy": "MlpPolicy",
        "ent_coef": 0.0, "use_sde": True, "sde_sample_freq": 16,
        "policy_kwargs": "dict(log_std_init=0.0, ortho_init=False)"},
    ("a2c", "Pendulum-v1"): {
        "normalize": True, "n_envs": 8, "n_timesteps": 1_000_000, "policy": "MlpPolicy", "ent_coef": 0.0,
        "max_grad_norm": 0.5, "n_steps": 8, "gae_lambda": 0.9, "vf_coef": 0.4, "gamma": 0.9, "use_rms_prop": True,
        "normalize_advantage": False, "learning_rate": "lin_7e-4", "use_sde": True,
        "policy_kwargs": "dict(log_std_init=-2, ortho_init=False)"},
    ("a2c", "LunarLander-v3"): {"n_envs": 8, "n_timesteps": 200_000, "policy": "MlpPolicy", "gamma": 0.995,
                                "n_steps": 5, "learning_rate": "lin_0.00083", "ent_coef": 0.00001},
    ("a2c", "LunarLanderContinuous-v3"): {
        "normalize": True, "n_envs": 4, "n_timesteps": 5_000_000, "policy": "MlpPolicy", "ent_coef": 0.0,
        "max_grad_norm": 0.5, "n_steps": 8, "gae_lambda": 0.9, "vf_coef": 0.4, "gamma": 0.99, "use_rms_prop": True,
        "normalize_advantage": False, "learning_rate": "lin_7e-4", "use_sde": True,
        "policy_kwargs": "dict(log_std_init=-2, ortho_init=False)"},
    ("a2c", "BipedalWalker-v3"): {
        "normalize": True, "n_envs": 16, "n_timesteps": 5_000_000, "policy": "MlpPolicy", "ent_coef": 0.0,
        "max_grad_norm": 0.5, "n_steps": 8, "gae_lambda": 0.9, "vf_coef": 0.4, "gamma": 0.99, "use_rms_prop": True,
        "normalize_advantage": False, "learning_rate": "lin_0.00096", "use_sde": True,
        "policy_kwargs": "dict(log_std_init=-2, ortho_init=False)"},
    # a2c.yml's "mujoco-defaults" (HalfCheetah-v4 &mujoco-defaults, and Hopper, Walker2d, Swimmer merging it)
    ("a2c", "Hopper-v5"): {"normalize": True, "n_timesteps": 1_000_000, "policy": "MlpPolicy", "zoo_key": "Hopper-v4"},
    ("a2c", "HalfCheetah-v5"): {"normalize": True, "n_timesteps": 1_000_000, "policy": "MlpPolicy",
                                "zoo_key": "HalfCheetah-v4"},
    ("a2c", "Walker2d-v5"): {"normalize": True, "n_timesteps": 1_000_000, "policy": "MlpPolicy",
                             "zoo_key": "Walker2d-v4"},
    ("a2c", "Swimmer-v5"): {"normalize": True, "n_timesteps": 1_000_000, "policy": "MlpPolicy", "gamma": 0.9999,
                            "zoo_key": "Swimmer-v4"},
    ("a2c", "ALE/Pong-v5"): {
        "env_wrapper": "AtariWrapper", "frame_stack": 4, "policy": "CnnPolicy", "n_envs": 16,
        "n_timesteps": 10_000_000, "ent_coef": 0.01, "vf_coef": 0.25,
        "policy_kwargs": "dict(optimizer_class=RMSpropTFLike, optimizer_kwargs=dict(eps=1e-5))", "zoo_key": "atari"},
    # hyperparams/ppo.yml
    ("ppo", "CartPole-v1"): {
        "n_envs": 8, "n_timesteps": 100_000, "policy": "MlpPolicy", "n_steps": 32, "batch_size": 256,
        "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20, "ent_coef": 0.0, "learning_rate": "lin_0.001",
        "clip_range": "lin_0.2"},
    ("ppo", "Acrobot-v1"): {"normalize": True, "n_envs": 16, "n_timesteps": 1_000_000, "policy": "MlpPolicy",
                            "n_steps": 256, "gae_lambda": 0.94, "gamma": 0.99, "n_epochs": 4, "ent_coef": 0.0},
    ("ppo", "MountainCar-v0"): {"normalize": True, "n_envs": 16, "n_timesteps": 1_000_000, "policy": "MlpPolicy",
                                "n_steps": 16, "gae_lambda": 0.98, "gamma": 0.99, "n_epochs": 4, "ent_coef": 0.0},
    ("ppo", "MountainCarContinuous-v0"): {
        "normalize": True, "n_envs": 1, "n_timesteps": 20_000, "policy": "MlpPolicy", "batch_size": 256, "n_steps": 8,
        "gamma": 0.9999, "learning_rate": 7.77e-05, "ent_coef": 0.00429, "clip_range": 0.1, "n_epochs": 10,
        "gae_lambda": 0.9, "max_grad_norm": 5, "vf_coef": 0.19, "use_sde": True,
        "policy_kwargs": "dict(log_std_init=-3.29, ortho_init=False)"},
    ("ppo", "Pendulum-v1"): {
        "n_envs": 4, "n_timesteps": 100_000, "policy": "MlpPolicy", "n_steps": 1024, "gae_lambda": 0.95,
        "gamma": 0.9, "n_epochs": 10, "ent_coef": 0.0, "learning_rate": 1e-3, "clip_range": 0.2, "use_sde": True,
        "sde_sample_freq": 4},
    ("ppo", "LunarLander-v3"): {
        "n_envs": 16, "n_timesteps": 1_000_000, "policy": "MlpPolicy", "n_steps": 1024, "batch_size": 64,
        "gae_lambda": 0.98, "gamma": 0.999, "n_epochs": 4, "ent_coef": 0.01},
    ("ppo", "LunarLanderContinuous-v3"): {
        "n_envs": 16, "n_timesteps": 1_000_000, "policy": "MlpPolicy", "n_steps": 1024, "batch_size": 64,
        "gae_lambda": 0.98, "gamma": 0.999, "n_epochs": 4, "ent_coef": 0.01},
    ("ppo", "BipedalWalker-v3"): {
        "normalize": True, "n_envs": 32, "n_timesteps": 5_000_000, "policy": "MlpPolicy", "n_steps": 2048,
        "batch_size": 64, "gae_lambda": 0.95, "gamma": 0.999, "n_epochs": 10, "ent_coef": 0.0,
        "learning_rate": 3e-4, "clip_range": 0.18},
    ("ppo", "InvertedPendulum-v5"): {
        "normalize": True, "n_envs": 1, "policy": "MlpPolicy", "n_timesteps": 1_000_000, "batch_size": 64,
        "n_steps": 32, "gamma": 0.999, "learning_rate": 0.000222425, "ent_coef": 1.37976e-07, "clip_range": 0.4,
        "n_epochs": 5, "gae_lambda": 0.9, "max_grad_norm": 0.3, "vf_coef": 0.19816, "zoo_key": "InvertedPendulum-v2"},
    ("ppo", "Hopper-v5"): {
        "normalize": True, "n_envs": 1, "policy": "MlpPolicy", "n_timesteps": 1_000_000, "batch_size": 32,
        "n_steps": 512, "gamma": 0.999, "learning_rate": 9.80828e-05, "ent_coef": 0.00229519, "clip_range": 0.2,
        "n_epochs": 5, "gae_lambda": 0.99, "max_grad_norm": 0.7, "vf_coef": 0.835671,
        "policy_kwargs": "dict(log_std_init=-2, ortho_init=False, activation_fn=nn.ReLU, "
                         "net_arch=dict(pi=[256, 256], vf=[256, 256]))", "zoo_key": "Hopper-v4"},
    ("ppo", "HalfCheetah-v5"): {
        "normalize": True, "n_envs": 1, "policy": "MlpPolicy", "n_timesteps": 1_000_000, "batch_size": 64,
        "n_steps": 512, "gamma": 0.98, "learning_rate": 2.0633e-05, "ent_coef": 0.000401762, "clip_range": 0.1,
        "n_epochs": 20, "gae_lambda": 0.92, "max_grad_norm": 0.8, "vf_coef": 0.58096,
        "policy_kwargs": "dict(log_std_init=-2, ortho_init=False, activation_fn=nn.ReLU, "
                         "net_arch=dict(pi=[256, 256], vf=[256, 256]))", "zoo_key": "HalfCheetah-v4"},
    ("ppo", "Walker2d-v5"): {
        "normalize": True, "n_envs": 1, "policy": "MlpPolicy", "n_timesteps": 1_000_000, "batch_size": 32,
        "n_steps": 512, "gamma": 0.99, "learning_rate": 5.05041e-05, "ent_coef": 0.000585045, "clip_range": 0.1,
        "n_epochs": 20, "gae_lambda": 0.95, "max_grad_norm": 1, "vf_coef": 0.871923, "zoo_key": "Walker2d-v4"},
    # ppo.yml's Swimmer-v4 merges its "mujoco-defaults" anchor (Ant-v4: normalize, n_timesteps, policy)
    ("ppo", "Swimmer-v5"): {
        "normalize": True, "n_timesteps": 1_000_000, "policy": "MlpPolicy", "gamma": 0.9999, "n_envs": 4,
        "n_steps": 1024, "batch_size": 256, "learning_rate": 6e-4, "gae_lambda": 0.98, "zoo_key": "Swimmer-v4"},
    ("ppo", "ALE/Pong-v5"): {
        "env_wrapper": "AtariWrapper", "frame_stack": 4, "policy": "CnnPolicy", "n_envs": 8, "n_steps": 128,
        "n_epochs": 4, "batch_size": 256, "n_timesteps": 10_000_000, "learning_rate": "lin_2.5e-4",
        "clip_range": "lin_0.1", "vf_coef": 0.5, "ent_coef": 0.01, "zoo_key": "atari"},
    # hyperparams/dqn.yml
    ("dqn", "CartPole-v1"): {
        "n_timesteps": 50_000, "policy": "MlpPolicy", "learning_rate": 2.3e-3, "batch_size": 64,
        "buffer_size": 100_000, "learning_starts": 1000, "gamma": 0.99, "target_update_interval": 10,
        "train_freq": 256, "gradient_steps": 128, "exploration_fraction": 0.16, "exploration_final_eps": 0.04,
        "policy_kwargs": "dict(net_arch=[256, 256])"},
    ("dqn", "Acrobot-v1"): {
        "n_timesteps": 100_000, "policy": "MlpPolicy", "learning_rate": 6.3e-4, "batch_size": 128,
        "buffer_size": 50_000, "learning_starts": 0, "gamma": 0.99, "target_update_interval": 250, "train_freq": 4,
        "gradient_steps": -1, "exploration_fraction": 0.12, "exploration_final_eps": 0.1,
        "policy_kwargs": "dict(net_arch=[256, 256])"},
    ("dqn", "MountainCar-v0"): {
        "n_timesteps": 120_000, "policy": "MlpPolicy", "learning_rate": 4e-3, "batch_size": 128,
        "buffer_size": 10_000, "learning_starts": 1000, "gamma": 0.98, "target_update_interval": 600,
        "train_freq": 16, "gradient_steps": 8, "exploration_fraction": 0.2, "exploration_final_eps": 0.07,
        "policy_kwargs": "dict(net_arch=[256, 256])"},
    ("dqn", "LunarLander-v3"): {
        "n_timesteps": 100_000, "policy": "MlpPolicy", "learning_rate": 6.3e-4, "batch_size": 128,
        "buffer_size": 50_000, "learning_starts": 0, "gamma": 0.99, "target_update_interval": 250, "train_freq": 4,
        "gradient_steps": -1, "exploration_fraction": 0.12, "exploration_final_eps": 0.1,
        "policy_kwargs": "dict(net_arch=[256, 256])"},
    # the 100k-frame replay of stacked 84x84 frames holds about 5.6 GB (the zoo keeps optimize_memory_usage off)
    ("dqn", "ALE/Pong-v5"): {
        "env_wrapper": "AtariWrapper", "frame_stack": 4, "policy": "CnnPolicy", "n_timesteps": 10_000_000,
        "buffer_size": 100_000, "learning_rate": 1e-4, "batch_size": 32, "learning_starts": 100_000,
        "target_update_interval": 1000, "train_freq": 4, "gradient_steps": 1, "exploration_fraction": 0.1,
        "exploration_final_eps": 0.01, "optimize_memory_usage": False, "zoo_key": "atari"},
}

ALGOS = ("a2c", "ppo", "dqn")
# keys of a setting that are not the SB3 algorithm's constructor arguments
_ZOO_ONLY = ("n_envs", "n_timesteps", "policy", "normalize", "env_wrapper", "frame_stack", "zoo_key")
# total_timesteps when nothing is scheduled over the zoo's n_timesteps: the time budget stops the run
_NO_HORIZON = 10**10


def zoo_source(algo: str, env_id: str) -> str:
    """Where a setting comes from, as the table cites it."""
    s = SETTINGS[(algo, env_id)]
    return f"rl-baselines3-zoo hyperparams/{algo}.yml {s.get('zoo_key', env_id)}"


def _schedule(value: Any) -> Any:
    """The zoo's "lin_X" (X * progress_remaining, as rl_zoo3's SimpleLinearSchedule) or the constant."""
    if isinstance(value, str):
        kind, initial = value.split("_")
        if kind != "lin":
            raise ValueError(f"unknown schedule {value!r}")
        x = float(initial)
        return lambda progress_remaining: progress_remaining * x
    return value


def _policy_kwargs(text: str) -> dict[str, Any]:
    """The zoo's policy_kwargs text, evaluated as rl_zoo3 evaluates it (our own constants, not input)."""
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike
    from torch import nn

    return dict(eval(text, {"__builtins__": {"dict": dict}, "nn": nn, "RMSpropTFLike": RMSpropTFLike}))


def _constructor(algo: str, setting: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The SB3 constructor arguments of a setting, and whether a schedule runs over n_timesteps."""
    kwargs = {k: v for k, v in setting.items() if k not in _ZOO_ONLY}
    scheduled = any(isinstance(kwargs.get(k), str) for k in ("learning_rate", "clip_range"))
    for k in ("learning_rate", "clip_range"):
        if k in kwargs:
            kwargs[k] = _schedule(kwargs[k])
    if "policy_kwargs" in kwargs:
        kwargs["policy_kwargs"] = _policy_kwargs(kwargs["policy_kwargs"])
    return kwargs, scheduled


def _train_env(env_id: str, run: Any, setting: dict[str, Any], seed: int) -> Any:
    """The zoo's training VecEnv: n_envs copies made by esrl (the env the evaluation plays), VecNormalize where
    the zoo normalizes (gamma the algorithm's, as rl_zoo3 sets it).

    Atari: the zoo's AtariWrapper + frame_stack 4 is esrl's own Atari preprocessing (no-op starts, frame skip 4
    max-pooled, 84x84 grayscale, 4 stacked frames, a lost life ends a training episode), so training and
    evaluation see the same frames; rewards are clipped to their sign in training, as AtariWrapper does.
    """
    import gymnasium as gym
    import numpy as np
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from esrl import envs

    atari = setting.get("env_wrapper") == "AtariWrapper"
    if atari and setting.get("frame_stack", 4) != envs.ATARI_FRAME_STACK:
        raise ValueError(f"esrl's Atari envs stack {envs.ATARI_FRAME_STACK} frames")

    def make() -> gym.Env:
        env = envs.make(env_id, episodic_life=atari or run.episodic_life)
        if atari:
            env = gym.wrappers.TransformReward(env, lambda r: float(np.sign(float(r))))
        if run.max_episode_steps:
            env = gym.wrappers.TimeLimit(env, run.max_episode_steps)
        return env

    venv = make_vec_env(make, n_envs=int(setting.get("n_envs", 1)), seed=seed)
    normalize = setting.get("normalize", False)
    if normalize:
        kw = dict(normalize) if isinstance(normalize, dict) else {}
        if "gamma" in setting:
            kw["gamma"] = setting["gamma"]
        venv = VecNormalize(venv, **kw)
    return venv


def measure(algo: str, env_id: str, seed: int, max_seconds: float, run_settings: dict[str, Any] | None = None,
            target: float | None = None, setting: dict[str, Any] | None = None,
            total_timesteps: int | None = None) -> dict[str, Any]:
    """One SB3 run with the zoo's setting for (algo, env), measured by esrl's protocol; summary.json's fields.

    `run_settings`: esrl RunConfig fields of the measurement (eval_every_steps, eval_episodes, confirm_episodes,
    target_return...); default: the env's in configs/zoo/envs.toml. `target`: overrides the resolved target.
    `total_timesteps`: None keeps the zoo's schedules: where the learning rate or clip range is a linear schedule
    over n_timesteps, the run also ends there (the schedule has reached 0) if the time budget has not ended it
    first; otherwise the time budget alone stops it and DQN's exploration still anneals over
    exploration_fraction x n_timesteps, as in the zoo. An integer replaces n_timesteps outright (schedules and
    exploration run over it), as benchmarks/time_to_solve.py has always run its CartPole baseline.
    """
    import numpy as np
    from stable_baselines3 import A2C, DQN, PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecNormalize

    from esrl import protocol, zoo
    from esrl.config import RunConfig

    setting = dict(SETTINGS[(algo, env_id)] if setting is None else setting)
    values = zoo.env_settings(env_id) if run_settings is None else dict(run_settings)
    values.update(env=env_id, seed=seed, max_seconds=max_seconds)
    run = RunConfig(**values)
    run.validate()
    t0 = time.perf_counter()
    spec = run.env_spec()
    if target is None:
        target = protocol.resolve_target(run, spec)
    m = protocol.Measurement(run, target, protocol.Counters(), t0)
    kwargs, scheduled = _constructor(algo, setting)
    horizon = int(setting["n_timesteps"])
    if total_timesteps is None:
        total_timesteps = horizon if scheduled else _NO_HORIZON
        if algo == "dqn" and not scheduled:  # epsilon anneals over the zoo's steps, not the nominal total
            kwargs["exploration_fraction"] = kwargs.get("exploration_fraction", 0.1) * horizon / total_timesteps
    venv = _train_env(env_id, run, setting, seed)
    vecnorm = venv if isinstance(venv, VecNormalize) else None
    cls = {"a2c": A2C, "ppo": PPO, "dqn": DQN}[algo]
    model = cls(setting.get("policy", "MlpPolicy"), venv, seed=seed, verbose=0, **kwargs)
    obs_shape, obs_dtype = model.observation_space.shape, model.observation_space.dtype
    rms: dict[str, Any] = {"now": None}  # the normalization statistics the policy acts with (None: live)
    threshold: dict[str, Any] = {}

    def act(obs: np.ndarray) -> np.ndarray:
        x: Any = obs.reshape((len(obs), *obs_shape))
        if vecnorm is not None:  # frozen: normalize_obs reads the statistics and never updates them
            saved = vecnorm.obs_rms
            if rms["now"] is not None:
                vecnorm.obs_rms = rms["now"]
            try:
                x = vecnorm.normalize_obs(x)
            finally:
                vecnorm.obs_rms = saved
        elif obs_dtype == np.uint8:
            x = x.astype(np.uint8)
        return model.predict(x, deterministic=True)[0]

    def play(seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return protocol.play_episodes(spec, act, seeds)

    class Measure(BaseCallback):
        def _on_step(self) -> bool:
            m.counters.env_steps = int(self.num_timesteps)
            m.counters.episodes += sum("episode" in info for info in self.locals.get("infos", ()))
            if m.due():  # evaluation 0 plays the initial policy, however long the start-up took
                ev = m.evaluate(play)
                if ev.first:
                    threshold["params"] = {k: v.clone() for k, v in model.policy.state_dict().items()}
                    threshold["rms"] = copy.deepcopy(vecnorm.obs_rms) if vecnorm is not None else None
                if ev.first and run.stop_on_solve:
                    stop["reason"] = "solved"
                    return False
            if m.training_s() >= max_seconds:
                stop["reason"] = "max_seconds"
                return False
            return True

    stop = {"reason": "total_timesteps"}
    model.learn(total_timesteps=total_timesteps, callback=Measure())
    m.counters.env_steps = int(model.num_timesteps)
    m.stop_clock()
    if threshold and m.counters.confirmed_return is None:  # confirmed at the hit unless confirm_episodes is 0
        model.policy.load_state_dict(threshold["params"])
        rms["now"] = threshold["rms"]
        m.confirm(play)
    venv.close()
    no_traffic = type("NoTraffic", (), {"sent": {}, "received": {}, "messages": 0})()
    return {"algorithm": f"sb3-{algo}", "env": env_id, "seed": seed, "stop_reason": stop["reason"],
            **m.summary(no_traffic, "in-process"), "zoo_setting": setting, "zoo_source": zoo_source(algo, env_id),
            "total_timesteps": total_timesteps, "torch_threads": _torch_threads()}


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def time_to_solve(algo: str, env_id: str, target: float, seed: int, max_seconds: float, max_steps: int = 500_000,
                  eval_every_steps: int = 10_000, eval_episodes: int = 10, confirm_episodes: int = 100
                  ) -> dict[str, Any]:
    """benchmarks/time_to_solve.py's baseline: the run's defaults for the measurement, `max_steps` as SB3's
    total_timesteps (its schedules and DQN's exploration run over it)."""
    return measure(algo, env_id, seed, max_seconds, target=target, total_timesteps=max_steps,
                   run_settings={"eval_every_steps": eval_every_steps, "eval_episodes": eval_episodes,
                                 "confirm_episodes": confirm_episodes})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algo", choices=ALGOS)
    parser.add_argument("env")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, required=True, help="training wall-clock budget")
    parser.add_argument("--target", type=float, default=None, help="default: the env's reward_threshold, else "
                        "its target_return in configs/zoo/envs.toml")
    parser.add_argument("--eval-every-steps", type=int, default=None)
    parser.add_argument("--eval-episodes", type=int, default=None)
    parser.add_argument("--confirm-episodes", type=int, default=None)
    parser.add_argument("--summary", default="", help="write the summary here (JSON) as well as to stdout")
    args = parser.parse_args(argv)
    if (args.algo, args.env) not in SETTINGS:
        envs_of = sorted(e for a, e in SETTINGS if a == args.algo)
        print(f"error: env: the RL Zoo has no {args.algo} setting for {args.env} here (accepted: "
              f"{', '.join(envs_of)})", file=sys.stderr)
        return 2
    from esrl import zoo

    run_settings = zoo.env_settings(args.env)
    for k in ("eval_every_steps", "eval_episodes", "confirm_episodes"):
        if getattr(args, k) is not None:
            run_settings[k] = getattr(args, k)
    summary = measure(args.algo, args.env, args.seed, args.max_seconds, run_settings, target=args.target)
    text = json.dumps(summary, indent=2)
    if args.summary:
        path = Path(args.summary)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
