"""A3C (Mnih et al. 2016): each worker copies the global weights, acts n steps, and pushes
the gradient of the actor-critic loss to the parameter store.

Gradients come from `torch.autograd.grad`, so nothing accumulates in `.grad` between
updates: the stale-gradient bug of many public A3Cs cannot happen here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from esrl import seeding
from esrl.config import A3CConfig
from esrl.envs import EnvSpec
from esrl.obstat import ObsStat
from esrl.rl import nets
from esrl.rl.common import EnvSlots, NonFiniteError, Report, RewardScaler, RunningObs, evaluate_greedy, training_rewards


@dataclass(frozen=True)
class A3CSetup:
    """What a worker builds itself from: small and picklable."""

    cfg: A3CConfig
    spec: EnvSpec
    seed: int
    obs_stat: ObsStat | None = None  # the run's observation statistics when it resumes (obs_norm)

    def build_model(self) -> nets.ActorCritic:
        return nets.seeded(self.seed, "a3c_init", nets.ActorCritic, self.spec, self.cfg.hidden,  # type: ignore
                           self.cfg.shared_trunk, self.cfg.obs_norm == "on", self.cfg.log_std_init, self.cfg.use_sde)

    def build_worker(self, wid: int, client: Any) -> A3CWorker:
        return A3CWorker(self, wid, client)

    def act_greedy(self, params: torch.Tensor, obs_stat: ObsStat | None = None) -> Any:
        """The greedy policy of `params`, normalizing observations with `obs_stat` as the workers do."""
        model = self.build_model()
        nets.set_flat(model, params)
        nets.set_normalizer(model, obs_stat if obs_stat is not None else self.obs_stat)
        spec = self.spec

        def act(x: torch.Tensor) -> np.ndarray:
            out, _ = model(x)
            if spec.discrete:
                return out.argmax(-1).numpy()
            return np.clip(out.numpy(), spec.low, spec.high)

        return act

    def evaluate(self, params: torch.Tensor, seeds: np.ndarray, obs_stat: ObsStat | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        return evaluate_greedy(self.spec, self.act_greedy(params, obs_stat), seeds)


def gae(rewards: torch.Tensor, values: torch.Tensor, terminal: torch.Tensor, last_value: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) of a (T, E) rollout; lam = 1 gives n-step returns minus V."""
    t_len = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(last_value)
    next_value = last_value
    for t in reversed(range(t_len)):
        live = 1.0 - terminal[t].float()
        delta = rewards[t] + gamma * next_value * live - values[t]
        next_adv = delta + gamma * lam * live * next_adv
        adv[t] = next_adv
        next_value = values[t]
    return adv, adv + values


def loss_terms(model: nets.ActorCritic, obs: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor,
               returns: torch.Tensor) -> dict[str, torch.Tensor]:
    """Policy, value and entropy terms of the actor-critic loss on flattened (T*E) data."""
    out, values, z = model.features(obs)
    if model.spec.discrete:
        logp_all = torch.log_softmax(out, -1)
        logp = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    else:
        dist = torch.distributions.Normal(out, model.action_std(z))
        logp = dist.log_prob(actions).sum(-1)
        entropy = dist.entropy().sum(-1)
    return {"policy": -(logp * adv).mean(), "value": (returns - values).pow(2).mean(), "entropy": entropy.mean()}


def gradient(model: nets.ActorCritic, batch: tuple[torch.Tensor, ...], cfg: A3CConfig
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The flat, norm-clipped gradient of the A3C loss on one rollout, and the loss terms.

    `torch.autograd.grad` returns fresh tensors: no `.grad` buffer exists to go stale.
    """
    terms = loss_terms(model, *batch)
    loss = terms["policy"] + cfg.value_coef * terms["value"] - cfg.entropy_coef * terms["entropy"]
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
    if cfg.max_grad_norm > 0:
        norm = grad.norm()
        if norm > cfg.max_grad_norm:
            grad.mul_(cfg.max_grad_norm / norm)
    return grad, {k: v.detach() for k, v in terms.items()}


Forward = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]  # observations -> (policy outputs, values)


def sample_actions(out: torch.Tensor, log_std: torch.Tensor | None, gen: torch.Generator, discrete: bool
                   ) -> torch.Tensor:
    """Actions from policy outputs: categorical over logits, or Gaussian around the mean."""
    if discrete:
        return torch.multinomial(torch.softmax(out, -1), 1, generator=gen).squeeze(-1)
    assert log_std is not None
    return out + log_std.exp() * torch.randn(out.shape, generator=gen)


def env_actions(spec: EnvSpec, actions: torch.Tensor) -> Any:
    """What the envs take: ints, or the Gaussian sample clipped into the action bounds."""
    if spec.discrete:
        return actions.tolist()
    return np.clip(actions.numpy(), spec.low, spec.high)


@dataclass
class Trajectory:
    """`t_len` steps of every env slot: (t_len, envs, ...) tensors."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor  # training rewards; a truncated episode's last one bootstrapped from its final value
    terminal: torch.Tensor  # a bootstrapped truncation counts as terminal
    values: torch.Tensor  # the values that came with the actions
    last: tuple[torch.Tensor, torch.Tensor]  # outputs and values of the observations after the last step


def rollout(envs: EnvSlots, t_len: int, forward: Forward, sample: Callable[[torch.Tensor], torch.Tensor],
            gamma: float, clip_rewards: bool, report: Report,
            first: tuple[torch.Tensor, torch.Tensor] | None = None, scale: RewardScaler | None = None) -> Trajectory:
    """The acting of A3C and GA3C: `forward` is the worker's own model, or GA3C's round trip to the predictor.

    `first`: the outputs and values of the current observations where the caller has them
    (GA3C carries the last prediction over); else they are computed. `scale`: the worker's reward
    scaler (`reward_norm`), applied before a truncated episode's bootstrap, which is already in the
    value's (scaled) units.
    """
    spec, e = envs.spec, len(envs.envs)
    obs_buf = torch.zeros(t_len, e, spec.obs_dim)
    rew_buf, val_buf = torch.zeros(t_len, e), torch.zeros(t_len, e)
    term_buf = torch.zeros(t_len, e, dtype=torch.bool)
    acts: list[torch.Tensor] = []
    out, value = first if first is not None else forward(envs.obs)
    for t in range(t_len):
        obs_buf[t], val_buf[t] = torch.from_numpy(envs.obs), value
        actions = sample(out)
        acts.append(actions)
        boot: dict[int, np.ndarray] = {}
        _, rewards, terminal = envs.step(env_actions(spec, actions), report, boot.__setitem__)
        rewards = training_rewards(rewards, clip_rewards)
        if scale is not None:
            done = terminal.copy()
            done[list(boot)] = True
            rewards = scale(rewards, done)
        rew = torch.from_numpy(rewards)
        if boot:  # truncated episodes bootstrap from the value of their last observation
            rows = sorted(boot)
            v_final = forward(np.stack([boot[i] for i in rows]))[1]
            for j, i in enumerate(rows):
                rew[i] += gamma * v_final[j]
                terminal[i] = True
        rew_buf[t] = rew
        term_buf[t] = torch.from_numpy(terminal)
        out, value = forward(envs.obs)  # the next step's action, and the bootstrap of the last step
    return Trajectory(obs_buf, torch.stack(acts), rew_buf, term_buf, val_buf, (out, value))


class StateNoise:
    """gSDE's exploration (Raffin et al. 2022, as in Stable-Baselines3): each env's action noise is its policy
    features times a Gaussian matrix drawn from the worker's stream with the current exp(log_std), held for
    `every` steps (-1: the whole rollout), so an env explores along one smooth direction for a while instead of
    jittering at every step."""

    def __init__(self, model: nets.ActorCritic, envs: int, every: int, gen: torch.Generator) -> None:
        self.model, self.envs, self.every, self.gen = model, envs, every, gen
        self.matrix = torch.zeros(0)
        self.steps = 0

    def reset(self) -> None:
        std = self.model.log_std.detach().exp()
        self.matrix = std * torch.randn((self.envs, *std.shape), generator=self.gen)
        self.steps = 0

    def __call__(self, mean: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.every > 0 and self.steps and self.steps % self.every == 0:
            self.reset()
        self.steps += 1
        return mean + torch.einsum("el,ela->ea", z, self.matrix)


class A3CWorker:
    """One A3C worker: `step()` is one update (pull, n env steps, gradient, push)."""

    def __init__(self, setup: A3CSetup, wid: int, client: Any) -> None:
        self.setup, self.cfg, self.wid, self.client = setup, setup.cfg, wid, client
        self.model = setup.build_model()
        self.last_batch: tuple[torch.Tensor, ...] = ()
        self.flat = nets.get_flat(self.model).clone()
        self.envs = EnvSlots(setup.spec, self.cfg.envs_per_worker, setup.seed, "a3c_episode", wid)
        self.gen = torch.Generator().manual_seed(seeding.derive_int(setup.seed, "a3c_actions", wid))
        self.updates = 0
        self.obs = RunningObs(setup.spec, setup.obs_stat) if self.model.norm.enabled else None
        self.clip_rewards = self.cfg.clip_rewards == "on"
        self.scale = RewardScaler(self.cfg.envs_per_worker, self.cfg.gamma) if self.cfg.reward_norm == "on" else None
        self.noise = StateNoise(self.model, self.cfg.envs_per_worker, self.cfg.sde_sample_freq, self.gen) \
            if self.model.sde else None
        self.z = torch.zeros(0)  # gSDE: the policy features of the observations `forward` saw last

    def forward(self, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The acting forward. `rollout` calls it on the envs' observations last before each `sample` (a
        truncated episode's bootstrap comes before), so with gSDE `self.z` holds the features of what is sampled."""
        if self.noise is None:
            return self.model(torch.from_numpy(x))
        out, value, self.z = self.model.features(torch.from_numpy(x))
        return out, value

    def sample(self, out: torch.Tensor) -> torch.Tensor:
        if self.noise is not None:
            return self.noise(out, self.z)
        return sample_actions(out, None if self.setup.spec.discrete else self.model.log_std, self.gen,
                              self.setup.spec.discrete)

    def step(self) -> Report:
        cfg, report = self.cfg, Report()
        version = self.client.pull(self.flat)
        nets.set_flat(self.model, self.flat)
        if self.obs is not None:  # fixed for the whole update: acting and the gradient see one normalization
            nets.set_normalizer(self.model, self.obs.stat)
        t_len, e = cfg.n_steps, cfg.envs_per_worker
        with torch.no_grad():
            if self.noise is not None:  # a fresh matrix per rollout, with the std just pulled
                self.noise.reset()
            tr = rollout(self.envs, t_len, self.forward, self.sample, cfg.gamma, self.clip_rewards, report,
                         scale=self.scale)
            obs_buf = tr.obs
            values = self.model(obs_buf.view(t_len * e, -1))[1].view(t_len, e)
            adv, returns = gae(tr.rewards, values, tr.terminal, tr.last[1], cfg.gamma, cfg.gae_lambda)
        if self.obs is not None:  # what this update saw normalizes the next one
            self.obs.add(obs_buf.view(t_len * e, -1).numpy())
            report.obs = self.obs.take()
        acts = tr.actions.view(t_len * e, -1)
        batch = (obs_buf.view(t_len * e, -1), acts.squeeze(-1) if self.setup.spec.discrete else acts,
                 adv.view(-1), returns.view(-1))
        self.last_batch = batch
        grad, terms = gradient(self.model, batch, cfg)
        self.updates += 1
        if not (torch.isfinite(grad).all() and all(torch.isfinite(v) for v in terms.values())):
            raise NonFiniteError(f"worker {self.wid}, update {self.updates}: non-finite loss or gradient")
        self.client.push(grad, version)
        report.updates = 1
        report.add_loss(**{k: float(v) for k, v in terms.items()})
        return report
