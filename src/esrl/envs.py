"""Gymnasium environments by id: validation, space description and a lean stepping path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from esrl.errors import InputError


@dataclass(frozen=True)
class EnvSpec:
    """What a policy needs to know about an environment."""

    env_id: str
    obs_dim: int
    obs_onehot: bool  # Discrete observations are fed as one-hot vectors
    discrete: bool
    act_dim: int  # number of actions (Discrete) or action dimensions (Box)
    low: tuple[float, ...] | None
    high: tuple[float, ...] | None
    max_episode_steps: int


def make(env_id: str, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    """gym.make with Gymnasium's errors turned into an InputError naming the `env` field."""
    try:
        return gym.make(env_id, render_mode=render_mode, **kwargs)
    except gym.error.Error as exc:
        raise InputError("env", f"cannot make {env_id!r}: {exc}", "a registered Gymnasium id such as CartPole-v1") from None
    except ImportError as exc:
        raise InputError("env", f"{env_id!r} needs a missing package: {exc}") from None


def describe(env: gym.Env, env_id: str) -> EnvSpec:
    """The EnvSpec of an environment; refuses spaces that esrl's policies cannot serve."""
    obs, act = env.observation_space, env.action_space
    if isinstance(obs, gym.spaces.Box):
        obs_dim, onehot = int(np.prod(obs.shape)), False
    elif isinstance(obs, gym.spaces.Discrete):
        obs_dim, onehot = int(obs.n), True
    else:
        raise InputError("env", f"observation space {obs} of {env_id} is not supported", "Box or Discrete")
    if isinstance(act, gym.spaces.Discrete):
        discrete, act_dim, low, high = True, int(act.n), None, None
    elif isinstance(act, gym.spaces.Box) and len(act.shape) == 1:
        discrete, act_dim = False, int(act.shape[0])
        low, high = tuple(map(float, act.low)), tuple(map(float, act.high))
    else:
        raise InputError("env", f"action space {act} of {env_id} is not supported", "Discrete or 1-D Box")
    limit = env.spec.max_episode_steps if env.spec is not None else None
    return EnvSpec(env_id, obs_dim, onehot, discrete, act_dim, low, high, int(limit or 10_000))


def spec_of(env_id: str) -> EnvSpec:
    """Make the env once to validate the id and describe its spaces."""
    env = make(env_id)
    try:
        return describe(env, env_id)
    finally:
        env.close()


def lean(env: gym.Env) -> gym.Env:
    """The env without gym.make's bookkeeping wrappers when that changes nothing else.

    esrl enforces the time limit itself; the checker and order-enforcing wrappers cost
    several microseconds a step, a third of CartPole's own step.
    """
    spec = env.spec
    if spec is not None and not spec.additional_wrappers and env.render_mode is None:
        return env.unwrapped
    return env
