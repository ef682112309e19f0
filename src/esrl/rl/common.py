"""Pieces every RL algorithm shares: reports, env stepping with reset seeds, evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from esrl import envs, seeding
from esrl.envs import EnvSpec
from esrl.errors import NonFiniteError  # re-exported: the RL algorithms raise it from here
from esrl.obstat import ObsStat
from esrl.rl.optim import OptimSpec


@dataclass
class Report:
    """What a worker did since its last report."""

    updates: int = 0
    env_steps: int = 0
    returns: list[float] = field(default_factory=list)  # of episodes finished
    losses: dict[str, float] = field(default_factory=dict)  # summed over updates
    counts: dict[str, int] = field(default_factory=dict)  # e.g. real and simulated transitions
    obs: ObsStat | None = None  # observations acted on since the last report (obs_norm): sums, no prior

    def add_loss(self, **values: float) -> None:
        for k, v in values.items():
            self.losses[k] = self.losses.get(k, 0.0) + float(v)

    def merge(self, other: Report) -> None:
        self.updates += other.updates
        self.env_steps += other.env_steps
        self.returns.extend(other.returns)
        for k, v in other.losses.items():
            self.losses[k] = self.losses.get(k, 0.0) + v
        for k, n in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + n
        if other.obs is not None:
            if self.obs is None:
                self.obs = other.obs.copy()  # a copy: `other` may be summed elsewhere too
            else:
                self.obs.merge(other.obs)


def optim_spec(cfg: Any) -> OptimSpec:
    return OptimSpec(kind=cfg.optimizer, lr=cfg.lr, alpha=0.99, eps=1e-5 if cfg.optimizer == "rmsprop" else 1e-8)


def training_rewards(rewards: np.ndarray, clip: bool) -> np.ndarray:
    """Rewards as the learner sees them: clipped to [-1, 1] with `clip` (Atari, as the DQN and A3C papers
    did, so one learning rate serves games whose scores differ by orders of magnitude). Episode returns,
    evaluation and confirmation always use the env's own rewards."""
    return np.clip(rewards, -1.0, 1.0) if clip else rewards


class RewardScaler:
    """Stable-Baselines3's VecNormalize reward scaling for one worker's envs: each env keeps its discounted
    return (reset at the episode's end), the running variance of those returns is updated every step, and a
    training reward is divided by its standard deviation and clipped to [-clip, clip]. Rewards of very
    different scales then share one learning rate and value loss (MountainCar's -1 per step, Pendulum's down
    to -16). The worker's own statistics, restarted on resume (SB3 saves them with the model)."""

    def __init__(self, envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8) -> None:
        self.gamma, self.clip, self.eps = gamma, clip, eps
        self.ret = np.zeros(envs)
        self.count, self.mean, self.var = 1e-4, 0.0, 1.0  # SB3's RunningMeanStd start

    def __call__(self, rewards: np.ndarray, done: np.ndarray) -> np.ndarray:
        self.ret = self.ret * self.gamma + rewards
        n, m, v = len(self.ret), float(self.ret.mean()), float(self.ret.var())
        total = self.count + n
        delta = m - self.mean
        self.mean += delta * n / total
        self.var = (self.var * self.count + v * n + delta**2 * self.count * n / total) / total
        self.count = total
        scaled = np.clip(rewards / np.sqrt(self.var + self.eps), -self.clip, self.clip)
        self.ret[done] = 0.0
        return scaled


class RunningObs:
    """A worker's own running observation statistics, and the part it has not reported yet.

    Each worker normalizes with what it has seen itself (from `start`, the run's statistics at
    a resume): no message is added to an update. The coordinator sums the reported parts into
    the run's statistics, which evaluation and checkpoints use; on one worker the two are the
    same, with several they estimate the same distribution from more samples.
    """

    def __init__(self, spec: EnvSpec, start: ObsStat | None = None) -> None:
        self.stat = start.copy() if start is not None else ObsStat.empty((spec.obs_dim,))
        self.unreported = ObsStat.zeros((spec.obs_dim,))

    def add(self, obs: np.ndarray) -> None:
        batch = ObsStat.zeros(self.stat.total.shape)
        batch.add_batch(obs)
        self.stat.merge(batch)
        self.unreported.merge(batch)

    def take(self) -> ObsStat:
        """The statistics not reported yet (for a Report), and start a new part."""
        out, self.unreported = self.unreported, ObsStat.zeros(self.stat.total.shape)
        return out


class EnvSlots:
    """`n` envs that reset with seeds from (seed, role, worker, episode) and enforce the time limit."""

    def __init__(self, spec: EnvSpec, n: int, seed: int, role: str, worker: int) -> None:
        self.spec, self.seed, self.role, self.worker = spec, seed, role, worker
        self.envs = [envs.lean(envs.make_env(spec)) for _ in range(n)]
        self.episode = 0
        self.ret = [0.0] * n
        self.len = [0] * n
        self.obs = np.stack([self._reset(i) for i in range(n)]).astype(np.float32)

    def _reset(self, i: int) -> np.ndarray:
        s = seeding.derive_int(self.seed, self.role, self.worker, self.episode)
        self.episode += 1
        self.ret[i], self.len[i] = 0.0, 0
        obs, _ = self.envs[i].reset(seed=s)
        return np.asarray(obs, np.float32).reshape(-1)

    def step(self, actions: Any, report: Report, on_truncate: Callable[[int, np.ndarray], None] | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step every env; returns (next observations, rewards, terminal flags).

        A truncated episode is not terminal: `on_truncate(i, final_obs)` sees its last
        observation before the env is reset, so the caller can bootstrap from it.
        """
        n = len(self.envs)
        rewards = np.zeros(n, np.float32)
        terminal = np.zeros(n, bool)
        for i, env in enumerate(self.envs):
            obs, r, term, trunc, _ = env.step(actions[i])
            r = float(r)
            if not math.isfinite(r):
                raise NonFiniteError(f"non-finite reward {r} from {self.spec.env_id}")
            rewards[i] = r
            self.ret[i] += float(r)
            self.len[i] += 1
            trunc = trunc or self.len[i] >= self.spec.max_episode_steps
            if term or trunc:
                report.returns.append(self.ret[i])
                if trunc and not term and on_truncate is not None:
                    on_truncate(i, np.asarray(obs, np.float32).reshape(-1))
                terminal[i] = term
                self.obs[i] = self._reset(i)
            else:
                self.obs[i] = np.asarray(obs, np.float32).reshape(-1)
        report.env_steps += n
        return self.obs.copy(), rewards, terminal


def evaluate_greedy(spec: EnvSpec, act: Callable[[torch.Tensor], np.ndarray], seeds: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of one episode per seed, `act` batched: esrl.protocol's episodes, as for ES."""
    from esrl import protocol

    with torch.no_grad():
        return protocol.play_episodes(spec, lambda obs: act(torch.from_numpy(obs)), seeds)
