"""OpenAI-ES as a replicated state machine.

A replica holds theta, the optimizer state, the observation statistics and the episode
cap. It evaluates members of an iteration on request (`run`) and applies the broadcast
update (`apply`). The coordinator's own replica and every worker's apply the same
deterministic update to the same inputs, so they stay bit-identical while only scalars
travel: per member a (return, length) pair up, per member one shaped return down.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from esrl import envs, seeding
from esrl.config import ESConfig
from esrl.errors import InputError
from esrl.es import noise, optim, shaping
from esrl.es.obstat import ObsStat
from esrl.es.policies import MLP, Policy
from esrl.es.rollout import run_episodes

MAX_BATCH_FLOATS = 1 << 22  # rows x params evaluated at once; bounds memory for big policies


@dataclass(frozen=True)
class ESSetup:
    """Everything a replica needs to build itself: small, picklable, sent once per worker."""

    cfg: ESConfig
    spec: envs.EnvSpec
    seed: int

    def build(self) -> ESReplica:
        return ESReplica(self)


@dataclass
class Update:
    """The broadcast of one iteration: shaped returns per member, obs-stat delta, next cap."""

    iteration: int
    shaped: np.ndarray  # (population,) float32; zero for dropped members
    obs_sum: np.ndarray | None
    obs_sumsq: np.ndarray | None
    obs_count: float
    step_cap: int
    finite: int | None = None  # members whose returns were ranked (None: the whole population)


@dataclass
class Results:
    """What the coordinator gathers for one iteration, in member order."""

    returns: np.ndarray
    lengths: np.ndarray
    obs: list[tuple[int, np.ndarray, np.ndarray, int]] = field(default_factory=list)


class ESReplica:
    """One replica of the ES state; see the module docstring."""

    def __init__(self, setup: ESSetup) -> None:
        self.setup = setup
        self.cfg = setup.cfg
        self.policy = make_policy(setup.spec, self.cfg, setup.seed)
        self.obs_norm = self.cfg.obs_norm and isinstance(self.policy, MLP)  # frames are scaled, not normalized
        self.dim = self.policy.num_params
        self.table_size = self.cfg.noise_table_size or noise.auto_table_size(self.dim)
        if self.table_size < 2 * self.dim:
            raise InputError("noise_table_size", f"{self.table_size} is too small for {self.dim} parameters",
                             f">= {2 * self.dim}, or 0 for automatic")
        self.table = noise.noise_table(setup.seed, self.table_size)
        self.theta = self.policy.init(seeding.rng(setup.seed, "policy_init"))
        self.opt = optim.OptimizerState.zeros(self.dim)
        self.obstat = ObsStat.empty((setup.spec.obs_dim,))
        self.step_cap = setup.spec.max_episode_steps
        self.iteration = 0
        self._envs: list[Any] = []
        self._addresses: tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None

    # --- evaluation -----------------------------------------------------------------------
    def envs_for(self, n: int) -> list[Any]:
        while len(self._envs) < n:
            self._envs.append(envs.lean(envs.make_env(self.setup.spec)))
        return self._envs[:n]

    def normalizer(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.obs_norm:
            d = self.setup.spec.obs_dim
            return np.zeros(d, np.float32), np.ones(d, np.float32)
        return self.obstat.normalizer()

    def run(self, task: tuple[str, int, int, int]) -> dict[str, Any]:
        """Evaluate ('pop', t, lo, hi): the episodes of members lo..hi-1 of iteration t."""
        kind, t, lo, hi = task
        if t != self.iteration:
            raise RuntimeError(f"replica at iteration {self.iteration} asked to evaluate iteration {t}")
        seed, n = self.setup.seed, self.cfg.population
        mean, inv_std = self.normalizer()
        members = np.arange(lo, hi)
        seeds = episode_seeds(seed, t, n, self.cfg.common_seeds)[lo:hi]
        record = obs_record_mask(seed, t, n, self.cfg.obs_norm_fraction if self.obs_norm else 0.0)[lo:hi]
        rows = max(1, MAX_BATCH_FLOATS // self.dim)
        returns, lengths, obs = [], [], []
        for s in range(0, len(members), rows):
            m = members[s : s + rows]
            params = self.member_params(m)
            gens = None
            if self.cfg.action_noise > 0:
                gens = [seeding.rng(seed, "action_noise", t, int(i)) for i in m]
            ep = run_episodes(
                self.envs_for(len(m)), self.policy, params, seeds[s : s + rows], self.step_cap, mean, inv_std,
                record[s : s + rows], gens, self.cfg.action_noise,
            )
            returns.append(ep.returns)
            lengths.append(ep.lengths)
            for k, i in enumerate(m[record[s : s + rows]]):
                obs.append((int(i), ep.obs_sum[k], ep.obs_sumsq[k], int(ep.obs_count[k])))
        return {"kind": kind, "lo": lo, "returns": np.concatenate(returns), "lengths": np.concatenate(lengths),
                "obs": obs}

    def greedy_act(self) -> Any:
        """The noiseless policy of the current state, for `protocol.play_episodes`: flat obs (B, size) -> B actions.

        An action never depends on how many envs share the batch: the MLP's stacked matmul computes
        each row on its own (tests/test_es_update.py checks batch == row by row, bit for bit), and
        the CNN's frames are acted one by one, since a batched convolution may sum in another order.
        """
        pol, spec = self.policy, self.setup.spec
        mean, inv_std = self.normalizer()
        prepared = pol.split(self.theta.copy()[None])  # once: the CNN's VBN statistics come from a reference pass

        def act(obs: np.ndarray) -> np.ndarray:
            x = pol.preprocess(obs.reshape(len(obs), *spec.obs_shape) if spec.image else obs)
            if not spec.image:
                return pol.to_actions(pol.forward(prepared, x, mean, inv_std))
            return np.concatenate([pol.to_actions(pol.forward(prepared, x[i : i + 1], mean, inv_std))
                                   for i in range(len(x))])

        return act

    def member_params(self, members: np.ndarray) -> np.ndarray:
        """theta + sigma * eps_i for each member (rows)."""
        offsets, slots, signs = self.addresses(self.iteration)
        starts = offsets[slots[members]]
        if self.dim >= 1 << 14:  # big policies: one slice per member (an index array would be rows x dim)
            eps = np.stack([self.table[o : o + self.dim] for o in starts]) * signs[members][:, None]
        else:
            eps = self.table[starts[:, None] + np.arange(self.dim)[None, :]] * signs[members][:, None]
        return self.theta[None, :] + np.float32(self.cfg.sigma) * eps

    def addresses(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(table offsets per slice, slice of each member, sign of each member) for iteration t.

        Kept for the iteration in hand: a replica evaluating many tasks (or chunks) of one
        iteration draws them once."""
        if self._addresses is not None and self._addresses[0] == t:
            return self._addresses[1]
        n = self.cfg.population
        if self.cfg.mirrored:
            offsets = noise.pair_offsets(self.setup.seed, t, n // 2, self.table_size, self.dim)
            members = np.arange(n)
            out = offsets, members // 2, np.where(members % 2 == 0, 1.0, -1.0).astype(np.float32)
        else:
            out = noise.pair_offsets(self.setup.seed, t, n, self.table_size, self.dim), np.arange(n), np.ones(
                n, np.float32)
        self._addresses = (t, out)
        return out

    # --- update ---------------------------------------------------------------------------
    def apply(self, update: Update) -> float:
        """Apply the broadcast update of iteration `update.iteration`; returns the step's L2 norm."""
        if update.iteration != self.iteration:
            raise RuntimeError(f"replica at iteration {self.iteration} got the update of {update.iteration}")
        cfg = self.cfg
        finite = cfg.population if update.finite is None else update.finite
        norm = 0.0
        if finite >= 2:  # fewer than two ranked members carry no direction: no step
            offsets, slots, signs = self.addresses(self.iteration)
            weights = np.zeros(len(offsets), np.float32)
            np.add.at(weights, slots, update.shaped * signs)
            grad = noise.weighted_noise_sum(self.table, offsets, weights, self.dim)
            # the paper's starter: l2 acts on the mean over ranked members, before the division by sigma
            grad *= np.float32(1.0 / finite)
            grad -= np.float32(cfg.l2) * self.theta
            grad *= np.float32(1.0 / cfg.sigma)
            if cfg.optimizer == "adam":
                step = optim.adam_step(self.opt, grad, cfg.lr, cfg.beta1, cfg.beta2)
            else:
                step = optim.sgd_step(self.opt, grad, cfg.lr, cfg.momentum)
            self.theta = self.theta + step
            norm = float(np.linalg.norm(step))
        if update.obs_sum is not None and update.obs_sumsq is not None:
            self.obstat.add(update.obs_sum, update.obs_sumsq, update.obs_count)
        self.step_cap = update.step_cap
        self.iteration += 1
        return norm

    # --- state ----------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {
            "theta": self.theta.copy(), "opt_m": self.opt.m.copy(), "opt_v": self.opt.v.copy(),
            "obs_sum": self.obstat.total.copy(), "obs_sumsq": self.obstat.sumsq.copy(),
            "opt_step": self.opt.step, "obs_count": self.obstat.count, "step_cap": self.step_cap,
            "iteration": self.iteration,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if np.shape(state["theta"]) != (self.dim,):
            raise ValueError(f"theta has shape {np.shape(state['theta'])}, this policy needs ({self.dim},)")
        self.theta = np.array(state["theta"], np.float32)
        self.opt = optim.OptimizerState(np.array(state["opt_m"], np.float32), np.array(state["opt_v"], np.float32),
                                        int(state["opt_step"]))
        self.obstat = ObsStat(np.array(state["obs_sum"], np.float64), np.array(state["obs_sumsq"], np.float64),
                              float(state["obs_count"]))
        self.step_cap = int(state["step_cap"])
        self.iteration = int(state["iteration"])

    def digest(self) -> str:
        """Hash of everything the next update depends on; equal across replicas in sync."""
        h = hashlib.blake2b(digest_size=16)
        for a in (self.theta, self.opt.m, self.opt.v, self.obstat.total, self.obstat.sumsq):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(repr((self.opt.step, self.obstat.count, self.step_cap, self.iteration)).encode())
        return h.hexdigest()


def make_policy(spec: envs.EnvSpec, cfg: ESConfig, seed: int) -> Policy:
    """The MLP, or for image frames the CNN with its VBN reference batch rebuilt from the seed."""
    kind = cfg.policy if cfg.policy != "auto" else ("cnn" if spec.image else "mlp")
    if kind == "mlp":
        return MLP(spec, tuple(cfg.hidden), cfg.obs_clip)
    if not spec.image:
        raise InputError("policy", f"cnn needs image observations; {spec.env_id} has shape {spec.obs_shape}",
                         "mlp or auto")
    import torch

    from esrl.es.policies_cnn import ConvPolicy, reference_batch

    torch.set_num_threads(1)  # one ES worker per core: torch threads would fight the other workers
    ref = reference_batch(spec, seed, cfg.vbn_batch) if cfg.vbn_batch else None
    return ConvPolicy(spec, ref, dtype=cfg.cnn_dtype)


# --- coordinator-side pure functions ----------------------------------------------------------

def episode_seeds(seed: int, t: int, population: int, common: str = "none") -> np.ndarray:
    """Env reset seeds of iteration t's members (a pure function of seed, t, member).

    `common` shares them (common random numbers): "pair" gives members 2k and 2k+1, the mirrored
    pair, one seed, so their difference in return is the perturbation's and not the start
    state's; "population" gives every member of the iteration the same one.
    """
    draw = seeding.rng(seed, "episode_seeds", t).integers
    if common == "pair":
        return np.repeat(draw(0, 2**31 - 1, size=population // 2), 2)
    if common == "population":
        return np.full(population, draw(0, 2**31 - 1), np.int64)
    return draw(0, 2**31 - 1, size=population)


def obs_record_mask(seed: int, t: int, population: int, fraction: float) -> np.ndarray:
    """Which members of iteration t feed the observation statistics."""
    if fraction <= 0:
        return np.zeros(population, bool)
    return seeding.rng(seed, "obs_record", t).random(population) < fraction


def tasks(t: int, population: int, workers: int, chunk: int = 0, tail: int = 64) -> list[tuple[str, int, int, int]]:
    """The work of iteration t, in the order it should be handed out: contiguous member ranges.

    Guided self-scheduling: each range is 1/workers of what is left, so early ranges are
    large (cheap batched steps) and the last are small (workers finish together). `chunk` > 0
    fixes the range size instead. Evaluation is not a task: the coordinator plays it
    (esrl.protocol), as it does for every algorithm.
    """
    out: list[tuple[str, int, int, int]] = []
    smallest = max(2, population // (tail * workers))  # a backend with costly messages asks for a shorter tail
    lo = 0
    while lo < population:
        size = chunk or max(smallest, math.ceil((population - lo) / workers))
        out.append(("pop", t, lo, min(lo + size, population)))
        lo += size
    return out


def gather(results: list[dict[str, Any]], population: int) -> Results:
    """Merge task results, keyed by member, into member order."""
    r = Results(np.full(population, np.nan), np.zeros(population, np.int64))
    for res in results:
        lo, n = res["lo"], len(res["returns"])
        r.returns[lo : lo + n] = res["returns"]
        r.lengths[lo : lo + n] = res["lengths"]
        r.obs.extend(res["obs"])
    r.obs.sort(key=lambda o: o[0])
    return r


def make_update(cfg: ESConfig, t: int, res: Results, max_episode_steps: int) -> tuple[Update, int]:
    """Shape the returns of iteration t into the broadcast; also returns the non-finite count.

    Non-finite returns are dropped (with their mirror partner) and counted, never ranked.
    """
    finite = np.isfinite(res.returns)
    if cfg.mirrored:
        pair_ok = finite[0::2] & finite[1::2]
        finite = np.repeat(pair_ok, 2)
    shaped = np.zeros(cfg.population, np.float32)
    if finite.sum() >= 2:
        shaped[finite] = shaping.SHAPINGS[cfg.shaping](res.returns[finite])
    obs_sum = obs_sumsq = None
    count = 0.0
    if res.obs:
        obs_sum = np.zeros_like(res.obs[0][1])
        obs_sumsq = np.zeros_like(res.obs[0][2])
        for _, s, sq, c in res.obs:  # member order: the same float sums on every replica
            obs_sum += s
            obs_sumsq += sq
            count += c
    cap = max_episode_steps
    if cfg.adaptive_cap and finite.any():
        cap = int(min(max_episode_steps, max(1, 2 * int(np.ceil(res.lengths[finite].mean())))))
    nonfinite = int((~np.isfinite(res.returns)).sum())
    ranked = int(finite.sum()) if finite.sum() >= 2 else 0
    return Update(t, shaped, obs_sum, obs_sumsq, count, cap, ranked), nonfinite


def unperturbed_rank(population_returns: np.ndarray, center_return: float) -> float:
    """Fraction of the population that the unperturbed policy beats (1.0: better than all)."""
    r = population_returns[np.isfinite(population_returns)]
    if r.size == 0 or not np.isfinite(center_return):
        return float("nan")
    return float((r < center_return).mean())
