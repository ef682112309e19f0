"""Parallel deep Dyna-Q (after Sutton 1990): worker 0 acts in the real environment, learns Q
from real transitions and trains a world model (s, a) -> (s', r, done) on them; workers
1..K are planners that draw real states from the shared replay, imagine transitions with
the world model, and learn Q from those. Planning is throttled so that simulated
transitions stay at `planning_ratio` x real ones; both counts land in the metrics.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from esrl import seeding
from esrl.envs import EnvSpec
from esrl.rl import nets
from esrl.rl.common import NonFiniteError, Report
from esrl.rl.dqn import DQNSetup, DQNWorker, QLearner
from esrl.rl.optim import OptimSpec
from esrl.rl.replay import Replay
from esrl.shm import Counter


class WorldModel(nn.Module):
    """Predicts the observation change, the reward and the termination logit of (s, a)."""

    def __init__(self, spec: EnvSpec, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.spec = spec
        self.net = nets.mlp([spec.obs_dim + spec.act_dim, *hidden, spec.obs_dim + 2])

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(torch.cat([obs, F.one_hot(action, self.spec.act_dim).float()], -1))
        d = self.spec.obs_dim
        return obs + out[:, :d], out[:, d], out[:, d + 1]


def model_gradient(model: WorldModel, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat gradient of the world model's loss (next state MSE + reward MSE + done BCE)."""
    obs, action, reward, next_obs, done = batch
    pred_next, pred_r, done_logit = model(obs, action)
    live = 1.0 - done  # after a terminal step the next observation is a reset: do not fit it
    loss = ((pred_next - next_obs).pow(2).mean(-1) * live).mean() + F.mse_loss(pred_r, reward) \
        + F.binary_cross_entropy_with_logits(done_logit, done)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
    return grad, loss.detach()


@dataclass(frozen=True)
class DynaQSetup(DQNSetup):
    """DQN's setup plus the world model's store and the shared counter of simulated transitions."""

    model_store: Any = None
    simulated: Any = None
    real_before: int = 0  # real transitions of earlier sessions of a resumed run (its replay starts empty)

    def attach(self, ctx: Any, workers: int) -> DynaQSetup:
        from esrl.stores.shared import SharedStore  # the world model lives in shared memory, one writer

        model = self.build_world_model()
        store = SharedStore(nets.get_flat(model), OptimSpec(kind="adam", lr=self.cfg.model_lr), ctx, lock_apply=True)
        replay = Replay(self.cfg.buffer_size, self.spec.obs_dim, ctx, shared=True)
        return dataclasses.replace(self, workers=workers, replay=replay, model_store=store,
                                   simulated=Counter(ctx))

    def real_transitions(self) -> int:
        assert self.replay is not None, "DynaQSetup.attach creates the shared replay"
        return self.real_before + self.replay.added

    def checkpoint_tensors(self) -> dict[str, np.ndarray]:
        """What a checkpoint keeps beside the Q-network: the world model's store and the planning counts."""
        params, state, version = self.model_store.snapshot()
        counts = [version, self.simulated.value, self.real_transitions()]
        return {"model_params": params.numpy(), "model_opt_m": state["m"].numpy(), "model_opt_v": state["v"].numpy(),
                "model_counts": np.asarray(counts, np.int64)}

    def restore(self, tensors: dict[str, np.ndarray]) -> DynaQSetup:
        """The attached setup with a checkpoint's world model and planning counts put back."""
        if "model_params" not in tensors:  # a checkpoint from before Dyna-Q saved its model
            return self
        version, simulated, real = (int(x) for x in tensors["model_counts"])
        self.model_store.load(torch.from_numpy(tensors["model_params"]), {"m": torch.from_numpy(
            tensors["model_opt_m"]), "v": torch.from_numpy(tensors["model_opt_v"])}, version)
        self.simulated.value = simulated
        return dataclasses.replace(self, real_before=real)

    def build_world_model(self) -> WorldModel:
        return nets.seeded(self.seed, "dynaq_model_init", WorldModel, self.spec,  # type: ignore[return-value]
                           self.cfg.model_hidden)

    def build_worker(self, index: int, client: Any) -> Any:
        return DynaActor(self, index, client) if index == 0 else Planner(self, index, client)


class DynaActor(DQNWorker):
    """Real experience: DQN updates plus world-model training; plans itself when alone."""

    role = "dynaq"

    def __init__(self, setup: DynaQSetup, index: int, client: Any) -> None:
        super().__init__(setup, index, client)
        self.model = setup.build_world_model()
        self.model_flat = nets.get_flat(self.model).clone()
        self.model_client = setup.model_store.client(index)
        self.planner = Planner(setup, index, client, share=self) if setup.workers == 1 else None
        self.extra_clients = [self.model_client] + ([self.planner.model_client] if self.planner else [])

    def step(self) -> Report:
        report = super().step()
        if len(self.replay) >= self.cfg.learning_starts:
            version = self.model_client.pull(self.model_flat)
            nets.set_flat(self.model, self.model_flat)
            grad, loss = model_gradient(self.model, self.replay.sample(self.cfg.batch_size, self.gen))
            if not torch.isfinite(grad).all():
                raise NonFiniteError(f"worker {self.wid}, update {self.updates}: non-finite world-model gradient")
            self.model_client.push(grad, version)
            report.add_loss(model=float(loss))
            if self.planner is not None:
                while self.planner.due():
                    planned = self.planner.plan_once()
                    if not planned.updates:
                        break
                    report.merge(planned)
        return report


class Planner:
    """Q-learning on imagined transitions from real start states."""

    def __init__(self, setup: DynaQSetup, index: int, client: Any, share: DynaActor | None = None) -> None:
        self.setup, self.cfg, self.wid = setup, setup.cfg, index
        self.learner = share.learner if share is not None else QLearner(setup, index, client)
        assert setup.replay is not None, "DynaQSetup.attach creates the shared replay"
        self.replay: Replay = setup.replay
        self.model = setup.build_world_model()
        self.model_flat = nets.get_flat(self.model).clone()
        self.model_client = setup.model_store.client(index)
        self.extra_clients = [self.model_client]
        self.gen = torch.Generator().manual_seed(seeding.derive_int(setup.seed, "dynaq_plan", index))

    @property
    def updates(self) -> int:
        return int(self.learner.updates)

    def due(self) -> bool:
        real = self.setup.real_transitions()
        return self.replay.added >= self.cfg.learning_starts and self.setup.simulated.value < (
            self.cfg.planning_ratio * real)

    def reserve(self, n: int) -> bool:
        """Claim n simulated transitions; planners racing for the last ones cannot overshoot together."""
        limit = self.cfg.planning_ratio * self.setup.real_transitions()
        if self.setup.simulated.add(n) <= limit + n:  # the batch that crosses the limit may run; no more
            return True
        self.setup.simulated.add(-n)
        return False

    def plan_once(self) -> Report:
        report = Report()
        n = self.cfg.batch_size
        if not self.reserve(n):
            return report
        self.model_client.pull(self.model_flat)
        nets.set_flat(self.model, self.model_flat)
        obs = self.replay.sample(n, self.gen)[0]
        action = self.imagined_actions(obs)
        with torch.no_grad():
            next_obs, reward, done_logit = self.model(obs, action)
        done = (done_logit > 0).float()
        self.learner.learn((obs, action, reward, next_obs, done), report, name="td_simulated")
        report.counts["simulated_transitions"] = n
        return report

    def imagined_actions(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions to imagine from `obs`: the actor's behaviour (epsilon-greedy on this planner's Q,
        synced at its last update, at the actor's current epsilon), or uniform."""
        n, act_dim, cfg = len(obs), self.setup.spec.act_dim, self.cfg
        uniform = torch.randint(0, act_dim, (n,), generator=self.gen)
        if cfg.planning_actions == "uniform":
            return uniform
        frac = min(1.0, self.setup.real_transitions() / cfg.eps_decay_steps)  # worker 0's schedule (DQNWorker.epsilon)
        eps = cfg.eps_start + frac * (cfg.eps_final - cfg.eps_start)
        with torch.no_grad():
            greedy = self.learner.q(obs).argmax(-1)
        return torch.where(torch.rand(n, generator=self.gen) < eps, uniform, greedy)

    def step(self) -> Report:
        report = self.plan_once() if self.due() else Report()
        if not report.updates:
            time.sleep(0.001)  # wait for real experience: the ratio, not the planners, sets the pace
        return report
