"""Parallel DQN (Gorila, Nair et al. 2015): each worker acts epsilon-greedily with its copy of
the Q-network, learns from its own (local) or the shared (global) replay, and pushes
gradients to the parameter store; target networks refresh every `target_update` global
updates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from esrl import seeding
from esrl.envs import EnvSpec
from esrl.errors import InputError
from esrl.obstat import ObsStat
from esrl.rl import nets
from esrl.rl.common import EnvSlots, NonFiniteError, Report, RunningObs, evaluate_greedy, training_rewards
from esrl.rl.replay import Replay, obs_dtype


def td_gradient(q: nets.QNet, target: nets.QNet, batch: tuple[torch.Tensor, ...], gamma: float, double: bool,
                max_grad_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat, norm-clipped gradient of the Huber TD loss on a batch, and the loss."""
    obs, action, reward, next_obs, done = batch
    with torch.no_grad():
        next_q = target(next_obs)
        if double:
            best = q(next_obs).argmax(-1, keepdim=True)
            next_v = next_q.gather(-1, best).squeeze(-1)
        else:
            next_v = next_q.max(-1).values
        y = reward + gamma * (1.0 - done) * next_v
    pred = q(obs).gather(-1, action.unsqueeze(-1)).squeeze(-1)
    loss = F.smooth_l1_loss(pred, y)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(q.parameters()))])
    if max_grad_norm > 0:
        norm = grad.norm()
        if norm > max_grad_norm:
            grad.mul_(max_grad_norm / norm)
    return grad, loss.detach()


@dataclass(frozen=True)
class DQNSetup:
    """What a DQN worker builds itself from; `attach` adds the run's shared replay."""

    cfg: Any  # DQNConfig, or DynaQConfig for Dyna-Q's actor
    spec: EnvSpec
    seed: int
    workers: int = 1
    replay: Replay | None = None
    start_steps: int = 0  # env steps each worker had taken before a resume: epsilon continues from there
    obs_stat: ObsStat | None = None  # the run's observation statistics when it resumes (obs_norm)

    def attach(self, ctx: Any, workers: int) -> DQNSetup:
        shared = None
        if self.cfg.replay == "global":
            shared = Replay(self.cfg.buffer_size, self.spec.obs_dim, ctx, shared=True, obs_dtype=obs_dtype(self.spec))
        return dataclasses.replace(self, workers=workers, replay=shared)

    def build_model(self) -> nets.QNet:
        if not self.spec.discrete:
            raise InputError("env", f"{self.spec.env_id} has continuous actions; DQN needs a Discrete action space")
        return nets.seeded(self.seed, "dqn_init", nets.QNet, self.spec, self.cfg.hidden,  # type: ignore[return-value]
                           self.cfg.obs_norm == "on")

    def build_worker(self, index: int, client: Any) -> Any:
        return DQNWorker(self, index, client)

    def act_greedy(self, params: torch.Tensor, obs_stat: ObsStat | None = None) -> Any:
        """The greedy policy of `params`, normalizing observations with `obs_stat` as the workers do."""
        q = self.build_model()
        nets.set_flat(q, params)
        nets.set_normalizer(q, obs_stat if obs_stat is not None else self.obs_stat)
        return lambda x: q(x).argmax(-1).numpy()

    def evaluate(self, params: torch.Tensor, seeds: np.ndarray, obs_stat: ObsStat | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        return evaluate_greedy(self.spec, self.act_greedy(params, obs_stat), seeds)


class QLearner:
    """A local Q-network and target synced from the store: `learn(batch)` pushes one TD gradient."""

    def __init__(self, setup: DQNSetup, index: int, client: Any) -> None:
        self.cfg, self.wid, self.client = setup.cfg, index, client
        self.q = setup.build_model()
        self.target = setup.build_model()
        self.flat = nets.get_flat(self.q).clone()
        self.updates = 0
        self.target_epoch = -1

    def learn(self, batch: tuple[torch.Tensor, ...], report: Report, name: str = "td") -> None:
        """Pull, refresh the target when due, push the TD gradient of `batch`."""
        version = self.client.pull(self.flat)
        nets.set_flat(self.q, self.flat)
        epoch = version // self.cfg.target_update
        if epoch != self.target_epoch:
            # a copy: set_flat makes the parameters views of the vector it is given, and every pull
            # overwrites self.flat in place; the target would follow the online network step for step
            nets.set_flat(self.target, self.flat.clone())
            self.target_epoch = epoch
        grad, loss = td_gradient(self.q, self.target, batch, self.cfg.gamma, self.cfg.double, self.cfg.max_grad_norm)
        self.updates += 1
        if not (torch.isfinite(loss) and torch.isfinite(grad).all()):
            raise NonFiniteError(f"worker {self.wid}, update {self.updates}: non-finite TD loss or gradient")
        self.client.push(grad, version)
        report.updates += 1
        report.add_loss(**{name: float(loss)})


class EpsilonGreedy:
    """A DQN actor's acting: its envs, its epsilon schedule and its exploration stream.

    The CPU worker and the device arrangement's actor of the same index act alike: worker
    `index` anneals epsilon from `eps_start` to `eps_final ** (1 + index / (workers - 1))`
    (Ape-X's spread of epsilons) over `eps_decay_steps` of its own steps.
    """

    def __init__(self, setup: DQNSetup, index: int, role: str = "dqn") -> None:
        cfg = setup.cfg
        self.cfg, self.spec = cfg, setup.spec
        self.envs = EnvSlots(setup.spec, cfg.envs_per_worker, setup.seed, f"{role}_episode", index)
        self.rng = seeding.rng(setup.seed, f"{role}_explore", index)
        n = max(1, setup.workers - 1)
        self.eps_final = cfg.eps_final ** (1 + index / n) if setup.workers > 1 else cfg.eps_final
        self.steps = setup.start_steps
        self.clip_rewards = cfg.clip_rewards == "on"

    def epsilon(self) -> float:
        frac = min(1.0, self.steps / self.cfg.eps_decay_steps)
        return float(self.cfg.eps_start + frac * (self.eps_final - self.cfg.eps_start))

    def act(self, q: nets.QNet, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            greedy = q(torch.from_numpy(obs)).argmax(-1).numpy()
        explore = self.rng.random(len(obs)) < self.epsilon()
        return np.where(explore, self.rng.integers(0, self.spec.act_dim, len(obs)), greedy)

    def step(self, q: nets.QNet, report: Report) -> tuple[np.ndarray, ...]:
        """One step of every env: (obs, actions, training rewards, next obs, terminal as float32).

        A truncated episode's next observation is its true last one, not the reset one."""
        obs = self.envs.obs.copy()
        actions = self.act(q, obs)
        finals: dict[int, np.ndarray] = {}
        nxt, rewards, terminal = self.envs.step(actions.tolist(), report, finals.__setitem__)
        for i, final in finals.items():
            nxt[i] = final
        self.steps += len(obs)
        return obs, actions, training_rewards(rewards, self.clip_rewards), nxt, terminal.astype(np.float32)


class DQNWorker:
    """One actor-learner: `step()` acts `n_steps` per env, then makes one update once replay is warm."""

    role = "dqn"

    def __init__(self, setup: DQNSetup, index: int, client: Any) -> None:
        cfg = setup.cfg
        self.setup, self.cfg, self.wid = setup, cfg, index
        self.learner = QLearner(setup, index, client)
        self.replay = setup.replay if setup.replay is not None else Replay(
            cfg.buffer_size, setup.spec.obs_dim, obs_dtype=obs_dtype(setup.spec))
        self.actor = EpsilonGreedy(setup, index, self.role)
        self.gen = torch.Generator().manual_seed(seeding.derive_int(setup.seed, f"{self.role}_sample", index))
        # replay keeps raw observations: each sample is normalized with the statistics of the update that uses it
        self.obs = RunningObs(setup.spec, setup.obs_stat) if self.learner.q.norm.enabled else None

    @property
    def updates(self) -> int:
        return self.learner.updates

    @property
    def eps_final(self) -> float:
        return self.actor.eps_final

    def collect(self, report: Report) -> None:
        """n_steps env steps per env, their transitions into replay."""
        for _ in range(self.cfg.n_steps):
            obs, actions, rewards, nxt, terminal = self.actor.step(self.learner.q, report)
            if self.obs is not None:
                self.obs.add(obs)
            self.replay.add(obs, actions, rewards, nxt, terminal)
            report.counts["real_transitions"] = report.counts.get("real_transitions", 0) + len(obs)

    def step(self) -> Report:
        report = Report()
        if self.obs is not None:  # one normalization for this step's acting, its Q-values and its targets
            for net in (self.learner.q, self.learner.target):
                nets.set_normalizer(net, self.obs.stat)
        self.collect(report)
        if len(self.replay) >= self.cfg.learning_starts:
            self.learner.learn(self.replay.sample(self.cfg.batch_size, self.gen), report)
        if self.obs is not None:
            report.obs = self.obs.take()
        return report
