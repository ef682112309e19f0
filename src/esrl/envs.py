"""Gymnasium environments by id: validation, space description, Atari preprocessing and a lean stepping path.

Atari ids (ale-py's `ALE/...-v5` and the `...NoFrameskip-v4` family) get the standard
preprocessing: up to 30 no-op actions at reset, frame skip 4 with the last two frames
max-pooled, 84x84 grayscale, a stack of the last 4 frames (uint8, shape (4, 84, 84)), and,
with `episodic_life`, a lost life ends the episode. ale-py ships its ROMs: nothing is
downloaded.
"""

from __future__ import annotations

import dataclasses
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


def is_mujoco(env_id: str) -> bool:
    """True for Gymnasium's MuJoCo ids (Hopper, HalfCheetah, Walker2d, Humanoid...)."""
    try:
        entry = gym.spec(env_id).entry_point
    except gym.error.Error:
        return False
    return isinstance(entry, str) and entry.startswith("gymnasium.envs.mujoco")


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
            # sticky actions move out of the emulator into StickyFrames, drawn from the seeded generator
            sticky = float(kwargs.pop("repeat_action_probability",
                                      gym.spec(env_id).kwargs.get("repeat_action_probability", 0.25)))
            # the preprocessing reads the screen from the emulator itself: the base env's own observation
            # is thrown away, and grayscale is the cheapest one to make (about 9% of a Pong step)
            kwargs.setdefault("obs_type", "grayscale")
            base = gym.make(env_id, render_mode=render_mode, frameskip=1, repeat_action_probability=0.0, **kwargs)
            return _atari(base, sticky, episodic_life)
        return gym.make(env_id, render_mode=render_mode, **kwargs)
    except (gym.error.Error, ImportError) as exc:
        extra = extra_for(env_id)
        missing = isinstance(exc, ImportError | gym.error.DependencyNotInstalled | gym.error.NamespaceNotFound)
        if extra and missing:
            raise InputError("env", f"{env_id} needs esrl's {extra} extra", f"pip install 'esrl[{extra}]'") from None
        if isinstance(exc, ImportError):
            raise InputError("env", f"{env_id!r} needs a missing package: {exc}") from None
        raise InputError("env", f"cannot make {env_id!r}: {exc}", "a registered Gymnasium id such as CartPole-v1") from None


def extra_for(env_id: str) -> str | None:
    """The esrl extra that brings an env family's packages (None: the base install serves it)."""
    if env_id.startswith("ALE/") or "NoFrameskip" in env_id:
        return "atari"
    try:
        entry = gym.spec(env_id).entry_point
    except gym.error.Error:
        return None
    for family in ("mujoco", "box2d"):
        if isinstance(entry, str) and entry.startswith(f"gymnasium.envs.{family}"):
            return family
    return None


def make_env(spec: EnvSpec, render_mode: str | None = None) -> gym.Env:
    """The env a spec describes, with its options."""
    return make(spec.env_id, render_mode=render_mode, **dict(spec.options))


class SnapshotReset(gym.Wrapper):
    """A seeded reset of an ALE env that restores a console snapshot instead of reloading the ROM.

    ale-py reloads the ROM on every `reset(seed=...)` (about 0.2 s, as long as a short Pong
    episode). Here the ROM is loaded once with a fixed seed and the console state is
    snapshotted; a seeded reset restores that snapshot and seeds the env's numpy generator,
    which draws the no-op start and every sticky action (`StickyFrames`; the emulator's own
    are off). An episode is a pure function of its seed and actions, independent of the
    episodes before it; unseeded resets pass through.
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


class StickyFrames(gym.Wrapper):
    """Sticky actions (Machado et al. 2018) per emulator frame: with probability p the previous
    frame's action is played again. Draws come from the env's seeded numpy generator."""

    def __init__(self, env: gym.Env, p: float) -> None:
        super().__init__(env)
        self.p, self._last = p, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        self._last = 0  # NOOP, as the emulator starts
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        if self.env.unwrapped.np_random.random() >= self.p:
            self._last = action
        return self.env.step(self._last)


class EpisodicLife(gym.Wrapper):
    """A lost life ends the episode for learning but not the game (Mnih et al. 2015): the next
    reset continues the game with a no-op step; only a game over resets the console."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._lives, self._resume = 0, False
        self._ale: Any = env.unwrapped.ale  # type: ignore[attr-defined]

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, term, trunc, info = self.env.step(action)
        lives = self._ale.lives()
        if not (term or trunc) and 0 < lives < self._lives:
            term, self._resume = True, True
        self._lives = lives
        return obs, reward, term, trunc, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs: Any = None
        info: dict[str, Any] = {}
        if self._resume:
            self._resume = False
            obs, _, term, trunc, info = self.env.step(0)
            if term or trunc:
                obs = None
        if obs is None:
            obs, info = self.env.reset(seed=seed, options=options)
        self._lives = self._ale.lives()
        return obs, info


def _atari(env: gym.Env, sticky: float, episodic_life: bool) -> gym.Env:
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    env = SnapshotReset(env)
    if sticky > 0:
        env = StickyFrames(env, sticky)
    env = AtariPreprocessing(env, noop_max=ATARI_NOOP_MAX, frame_skip=ATARI_FRAME_SKIP, screen_size=ATARI_SCREEN,
                             grayscale_obs=True, scale_obs=False)
    env = FrameStackObservation(env, ATARI_FRAME_STACK)
    return EpisodicLife(env) if episodic_life else env


def whole_episodes(spec: EnvSpec) -> EnvSpec:
    """The spec for evaluation: the same env without episodic life (a lost life does not end an evaluation)."""
    return dataclasses.replace(spec, options=tuple((k, v) for k, v in spec.options if k != "episodic_life"))


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
