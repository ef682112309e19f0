"""Gymnasium environments by id: validation, space description, Atari preprocessing and a lean stepping path.

Atari ids (ale-py's `ALE/...-v5` and the `...NoFrameskip-v4` family) get the standard
preprocessing: up to 30 no-op actions at reset, frame skip 4 with the last two frames
max-pooled, 84x84 grayscale, a stack of the last 4 frames (uint8, shape (4, 84, 84)), and,
with `episodic_life`, a lost life ends the episode. ale-py ships its ROMs: nothing is
downloaded.
"""

from __future__ import annotations

import sys
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
    obs_shape: tuple[int, ...] = ()  # the observation's own shape (images: (frames, height, width))
    options: tuple[tuple[str, Any], ...] = ()  # esrl's env options (episodic_life), passed to `make`

    @property
    def image(self) -> bool:
        """Image observations (Atari's stacked frames, CarRacing's RGB): served by convolutional networks."""
        return len(self.obs_shape) == 3

    @property
    def channels_last(self) -> bool:
        """(height, width, channels) images such as CarRacing's; Atari's stacks are (frames, height, width)."""
        return self.image and self.obs_shape[-1] <= 4 < self.obs_shape[0]

    @property
    def chw(self) -> tuple[int, int, int]:
        """The image shape as (channels, height, width)."""
        s = self.obs_shape
        return (s[2], s[0], s[1]) if self.channels_last else (s[0], s[1], s[2])


ATARI_FRAME_SKIP = 4
ATARI_FRAME_STACK = 4
ATARI_SCREEN = 84
ATARI_NOOP_MAX = 30
ATARI_MAX_STEPS = 108_000 // ATARI_FRAME_SKIP  # ALE's cap of 108k frames (30 minutes of play)

_ale_registered = False


def _register_ale() -> None:
    global _ale_registered
    if not _ale_registered:
        try:
            import ale_py

            gym.register_envs(ale_py)
        except ImportError:
            pass
        _ale_registered = True


_mujoco_quieted = False


def _quiet_mujoco_deprecation(env_id: str) -> None:
    """Drop MuJoCo's compiler notice about Gymnasium's own XML ('settotalmass' is deprecated), printed
    once per env by every worker; every other MuJoCo warning still goes to stderr."""
    global _mujoco_quieted
    if _mujoco_quieted:
        return
    try:
        entry = gym.spec(env_id).entry_point
    except gym.error.Error:
        return
    if not (isinstance(entry, str) and entry.startswith("gymnasium.envs.mujoco")):
        return
    try:
        import mujoco
    except ImportError:
        return

    def warn(message: str) -> None:
        if "settotalmass" not in message:
            print(f"MuJoCo warning: {message}", file=sys.stderr)

    mujoco.set_mju_user_warning(warn)
    _mujoco_quieted = True


def is_atari(env_id: str) -> bool:
    """True for ids served by ale-py (ALE/...-v5, ...NoFrameskip-v4 and the other v0/v4 families)."""
    _register_ale()
    try:
        entry = gym.spec(env_id).entry_point
    except gym.error.Error:
        return False
    return isinstance(entry, str) and entry.startswith("ale_py")


def make(env_id: str, render_mode: str | None = None, episodic_life: bool = False, **kwargs: Any) -> gym.Env:
    """gym.make with Gymnasium's errors turned into an InputError naming the `env` field.

    Atari ids come wrapped in the standard preprocessing (module docstring).
    """
    atari = is_atari(env_id)
    _quiet_mujoco_deprecation(env_id)
    if episodic_life and not atari:
        raise InputError("episodic_life", f"applies to Atari envs only, not {env_id}", "--no-episodic-life")
    try:
        if atari:
            return _atari(gym.make(env_id, render_mode=render_mode, frameskip=1, **kwargs), episodic_life)
        return gym.make(env_id, render_mode=render_mode, **kwargs)
    except gym.error.Error as exc:
        raise InputError("env", f"cannot make {env_id!r}: {exc}", "a registered Gymnasium id such as CartPole-v1") from None
    except ImportError as exc:
        raise InputError("env", f"{env_id!r} needs a missing package: {exc}") from None


def make_env(spec: EnvSpec, render_mode: str | None = None) -> gym.Env:
    """The env a spec describes, with its options."""
    return make(spec.env_id, render_mode=render_mode, **dict(spec.options))


class SnapshotReset(gym.Wrapper):
    """A seeded reset of an ALE env that restores a console snapshot instead of reloading the ROM.

    ale-py reloads the ROM on every `reset(seed=...)` (about 0.2 s, as long as a short Pong
    episode). Here the ROM is loaded once with a fixed seed and the console state, its
    random generator included, is snapshotted; a seeded reset restores that snapshot and
    seeds the env's numpy generator, which draws the no-op start. An episode is still a pure
    function of its seed and actions, independent of the episodes before it; unseeded
    resets pass through.
    """

    SNAPSHOT_SEED = 0

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._snapshot: Any = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is None:
            return self.env.reset(options=options)
        ale_env: Any = self.env.unwrapped
        if self._snapshot is None:
            self.env.reset(seed=self.SNAPSHOT_SEED)
            self._snapshot = ale_env.ale.cloneState(include_rng=True)
        ale_env.ale.restoreState(self._snapshot)
        ale_env._np_random, _ = gym.utils.seeding.np_random(seed)
        return ale_env._get_obs(), ale_env._get_info()


def _atari(env: gym.Env, episodic_life: bool) -> gym.Env:
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    env = AtariPreprocessing(SnapshotReset(env), noop_max=ATARI_NOOP_MAX, frame_skip=ATARI_FRAME_SKIP, screen_size=ATARI_SCREEN,
                             terminal_on_life_loss=episodic_life, grayscale_obs=True, scale_obs=False)
    return FrameStackObservation(env, ATARI_FRAME_STACK)


def describe(env: gym.Env, env_id: str, options: tuple[tuple[str, Any], ...] = ()) -> EnvSpec:
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
    if limit is None and is_atari(env_id):
        limit = ATARI_MAX_STEPS
    shape = tuple(int(d) for d in obs.shape) if isinstance(obs, gym.spaces.Box) else ()
    return EnvSpec(env_id, obs_dim, onehot, discrete, act_dim, low, high, int(limit or 10_000), shape, options)


def spec_of(env_id: str, **options: Any) -> EnvSpec:
    """Make the env once to validate the id (and options) and describe its spaces."""
    opts = tuple(sorted((k, v) for k, v in options.items() if v))
    env = make(env_id, **dict(opts))
    try:
        return describe(env, env_id, opts)
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
