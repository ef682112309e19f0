"""ES on one device: the whole population's episodes as one batch of torch envs.

`ESTorchReplica` is an `ESReplica` whose `run` evaluates its members with a batched torch
env (`esrl.envs_torch`) and per-member weights applied by batched matrix products; the noise
table is copied to the device once. Rows whose episodes end are compacted out of the
batch, so a long tail of survivors does not cost the whole batch. The
update (`apply`) is the parent's, so the maths is the same; the env implementation and its
initial-state stream differ from Gymnasium's, so results are identical for the same seed
on the same device, not across devices or against the process backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from esrl import seeding
from esrl.envs_torch import make_torch_env
from esrl.es.algorithm import ESReplica, ESSetup, obs_record_mask

MAX_BATCH_FLOATS = 1 << 26  # members x params per chunk on the device


@dataclass(frozen=True)
class ESTorchSetup(ESSetup):
    device: str = "cpu"

    def build(self) -> ESTorchReplica:
        return ESTorchReplica(self)


class ESTorchReplica(ESReplica):
    def __init__(self, setup: ESTorchSetup) -> None:
        super().__init__(setup)
        self.device = torch.device(setup.device)
        self.table_dev = torch.from_numpy(np.array(self.table)).to(self.device)  # a writable copy, once
        self.peak_bytes = 0

    def _params(self, members: np.ndarray, t: int) -> torch.Tensor:
        offsets, slots, signs = self.addresses(t)
        off = torch.from_numpy(offsets[slots[members]]).to(self.device)
        idx = off[:, None] + torch.arange(self.dim, device=self.device)[None, :]
        sign = torch.from_numpy(signs[members]).to(self.device)[:, None]
        theta = torch.from_numpy(self.theta).to(self.device)
        return theta[None, :] + float(self.cfg.sigma) * self.table_dev[idx] * sign

    def _rollout(self, params: torch.Tensor, seed: int, cap: int, record: np.ndarray) -> dict[str, Any]:
        n = params.shape[0]
        env = make_torch_env(self.setup.spec.env_id, n, str(self.device), torch.float64, seed)
        env.reset()
        mean, inv_std = (torch.from_numpy(x).to(self.device) for x in self.normalizer())
        layers = self.policy.layer_sizes
        returns = torch.zeros(n, dtype=torch.float64, device=self.device)
        lengths = torch.zeros(n, dtype=torch.long, device=self.device)
        rec = torch.from_numpy(record).to(self.device)
        obs_sum = torch.zeros(n, env.obs_dim, dtype=torch.float64, device=self.device)
        obs_sq = torch.zeros_like(obs_sum)
        obs_n = torch.zeros(n, dtype=torch.long, device=self.device)
        rows = torch.arange(n, device=self.device)  # active rows, compacted
        p, state = params, env.state
        cap = min(cap, env.max_episode_steps)
        while rows.numel():
            x = env.observe(state)
            if bool(rec.any()):
                r = rec[rows]
                obs_sum.index_add_(0, rows[r], x[r])
                obs_sq.index_add_(0, rows[r], x[r] * x[r])
                obs_n.index_add_(0, rows[r], torch.ones_like(rows[r]))
            h = ((x.float() - mean) * inv_std).clamp(-self.cfg.obs_clip, self.cfg.obs_clip)
            o = 0
            for k, (fan_in, fan_out) in enumerate(layers):
                w = p[:, o : o + fan_in * fan_out].view(-1, fan_out, fan_in)
                o += fan_in * fan_out
                h = torch.bmm(w, h.unsqueeze(-1)).squeeze(-1) + p[:, o : o + fan_out]
                o += fan_out
                if k < len(layers) - 1:
                    h = torch.tanh(h)
            if env.discrete:
                action = h.argmax(-1)
            else:
                lo = torch.tensor(env.low, device=self.device)
                hi = torch.tensor(env.high, device=self.device)
                action = (lo + (torch.tanh(h) + 1.0) * 0.5 * (hi - lo)).double()
            state, reward, terminated = env.dynamics(state, action)
            returns.index_add_(0, rows, reward)
            lengths.index_add_(0, rows, torch.ones_like(rows))
            done = terminated | (lengths[rows] >= cap)
            if bool(done.any()):  # compact: finished rows cost nothing from here on
                keep = ~done
                rows, p, state = rows[keep], p[keep], state[keep]
        self.peak_bytes = max(self.peak_bytes, params.numel() * params.element_size())
        recorded = np.flatnonzero(record)
        return {"returns": returns.cpu().numpy(), "lengths": lengths.cpu().numpy(),
                "obs": [(int(i), obs_sum[i].cpu().numpy(), obs_sq[i].cpu().numpy(), int(obs_n[i])) for i in recorded]}

    def run(self, task: tuple[str, int, int, int]) -> dict[str, Any]:
        kind, t, lo, hi = task
        if t != self.iteration:
            raise RuntimeError(f"replica at iteration {self.iteration} asked to evaluate iteration {t}")
        seed = self.setup.seed
        if kind == "eval":
            params = torch.from_numpy(self.theta).to(self.device)[None].repeat(hi - lo, 1)
            env_seed = seeding.derive_int(seed, "vector_eval", t, lo)
            out = self._rollout(params, env_seed, 1 << 62, np.zeros(hi - lo, bool))
            return {"kind": kind, "lo": lo, "returns": out["returns"], "lengths": out["lengths"]}
        n = self.cfg.population
        record = obs_record_mask(seed, t, n, self.cfg.obs_norm_fraction if self.cfg.obs_norm else 0.0)[lo:hi]
        rows = max(1, MAX_BATCH_FLOATS // self.dim)
        returns, lengths, obs = [], [], []
        for s in range(lo, hi, rows):
            m = np.arange(s, min(hi, s + rows))
            out = self._rollout(self._params(m, t), seeding.derive_int(seed, "vector_episodes", t, s), self.step_cap,
                                record[s - lo : s - lo + len(m)])
            returns.append(out["returns"])
            lengths.append(out["lengths"])
            obs += [(int(m[i]), a, b, c) for i, a, b, c in out["obs"]]
        return {"kind": kind, "lo": lo, "returns": np.concatenate(returns), "lengths": np.concatenate(lengths),
                "obs": obs}
