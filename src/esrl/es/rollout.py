"""Episodes of many parameter vectors at once: one env per row, one batched forward per step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from esrl.es.policies import Policy


@dataclass
class Episodes:
    """Per-row results of `run_episodes`; observation sums only for the rows asked to record."""

    returns: np.ndarray  # (B,) float64
    lengths: np.ndarray  # (B,) int64
    obs_sum: np.ndarray  # (R, obs_dim) float64, R = recorded rows in row order
    obs_sumsq: np.ndarray  # (R, obs_dim) float64
    obs_count: np.ndarray  # (R,) int64


def run_episodes(
    envs: list[gym.Env],
    policy: Policy,
    params: np.ndarray,
    reset_seeds: Sequence[int] | np.ndarray,
    step_cap: int,
    mean: np.ndarray,
    inv_std: np.ndarray,
    record: np.ndarray | None = None,
    action_noise: list[np.random.Generator] | None = None,
    action_noise_std: float = 0.0,
) -> Episodes:
    """Run one episode per parameter row; row i uses envs[i] reset with reset_seeds[i].

    Rows that finish drop out of the batch, so a long tail of survivors costs only itself.
    """
    b = params.shape[0]
    rec = np.zeros(b, bool) if record is None else np.asarray(record, bool)
    rec_rows = np.flatnonzero(rec)
    rec_slot = np.full(b, -1)
    rec_slot[rec_rows] = np.arange(rec_rows.size)
    obs_sum = np.zeros((rec_rows.size, policy.spec.obs_dim))
    obs_sumsq = np.zeros_like(obs_sum)
    obs_count = np.zeros(rec_rows.size, np.int64)

    returns = np.zeros(b)
    lengths = np.zeros(b, np.int64)
    cap = min(int(step_cap), policy.spec.max_episode_steps)
    # flat Box observations go straight into the batch; others (one-hot, images) are preprocessed
    reshape = policy.spec.obs_onehot or len(envs[0].observation_space.shape or ()) != 1
    noisy = action_noise is not None and action_noise_std > 0

    # The active rows, compacted: row ids, their step functions, running returns and lengths
    # as Python lists (cheaper to touch per step than numpy scalars), observations as one array.
    rows = list(range(b))
    steps = [env.step for env in envs]
    ret_a = [0.0] * b
    len_a = [0] * b
    xa = policy.preprocess(np.stack([env.reset(seed=int(s))[0] for env, s in zip(envs, reset_seeds, strict=True)]))
    slots_a = rec_slot.copy()
    layers = policy.split(params)
    while rows:
        if rec_rows.size:
            keep = slots_a >= 0
            if keep.any():
                s, xr = slots_a[keep], xa[keep].astype(np.float64)
                obs_sum[s] += xr
                obs_sumsq[s] += xr * xr
                obs_count[s] += 1
        out = policy.forward(layers, xa, mean, inv_std)
        if noisy:
            assert action_noise is not None
            eps = np.stack([action_noise[i].standard_normal(out.shape[1]) for i in rows])
            out = out + eps.astype(np.float32) * np.float32(action_noise_std)
        actions = policy.to_actions(out)
        acts = list(actions)  # numpy scalars: Discrete.contains checks them faster than ints
        finished = []
        for j, _i in enumerate(rows):
            obs, r, term, trunc, _ = steps[j](acts[j])
            ret_a[j] += r  # type: ignore[operator]
            len_a[j] += 1
            xa[j] = policy.preprocess(np.asarray([obs]))[0] if reshape else obs
            if term or trunc or len_a[j] >= cap:
                finished.append(j)
        if finished:
            for j in finished:
                returns[rows[j]] = ret_a[j]
                lengths[rows[j]] = len_a[j]
            keep_j = np.ones(len(rows), bool)
            keep_j[finished] = False
            kept = np.flatnonzero(keep_j).tolist()
            rows = [rows[j] for j in kept]
            steps = [steps[j] for j in kept]
            ret_a = [ret_a[j] for j in kept]
            len_a = [len_a[j] for j in kept]
            xa, slots_a = xa[keep_j], slots_a[keep_j]
            # a policy whose prepared weights are costly (VBN statistics) keeps the survivors' rows
            layers = policy.subset(layers, kept) if hasattr(policy, "subset") else policy.split(params[rows])
    return Episodes(returns, lengths, obs_sum, obs_sumsq, obs_count)
