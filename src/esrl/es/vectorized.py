"""ES on one device: the whole population's episodes as one batch of torch envs (numpy on the CPU).

`ESTorchReplica` is an `ESReplica` whose `run` evaluates its members with a batched torch
env (`esrl.es.envs_torch`) and per-member weights applied by batched matrix products; the noise
table is copied to the device once. Rows whose episodes end are compacted out of the
batch, so a long tail of survivors does not cost the whole batch. The
update (`apply`) is the parent's, so the maths is the same; the env implementation and its
initial-state stream differ from Gymnasium's, so results are identical for the same seed
on the same device, not across devices or against the process backends.

On the CPU the batch runs in numpy instead (`esrl.es.envs_np`, the numpy MLP of
`esrl.es.policies`) wherever a numpy env exists: same equations, a tenth of torch's per-call
cost, which dominates at a few hundred rows. Torch stays for CUDA, where CartPole with the
default one-hidden-layer MLP runs as one fused Triton kernel instead (`esrl.es.fused`: weights
read from the noise table in place, whole episodes in registers, no host sync per step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from esrl import seeding
from esrl.errors import InputError
from esrl.es import fused
from esrl.es.algorithm import ESReplica, ESSetup, obs_record_mask
from esrl.es.envs_np import NUMPY_ENVS, make_numpy_env
from esrl.es.envs_torch import TORCH_ENVS, make_torch_env

ENGINES = ("auto", "torch", "fused")

MAX_BATCH_FLOATS = 1 << 26  # members x params per chunk on the device
COMPACT_BELOW = 0.5  # numpy path: drop finished rows once fewer than this fraction of the batch is live


def _contiguous(layers: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous copies of per-row layer views: strided stacks make every batched product copy first."""
    return [(np.ascontiguousarray(w), np.ascontiguousarray(b)) for w, b in layers]


def _forward_np(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray,
                clip: float) -> np.ndarray:
    """Every row's MLP on its observation (the numpy MLP's maths, tuned for small layers).

    Per-row products by einsum where the input is wide enough for its inner loop to pay
    (measured: about 2x faster than a stacked matmul for 16 inputs, 2x slower for 4).
    """
    h = x - mean
    h *= inv_std
    np.minimum(h, clip, out=h)
    np.maximum(h, -clip, out=h)
    last = len(layers) - 1
    for k, (w, b) in enumerate(layers):
        h = np.einsum("noi,ni->no", w, h) if w.shape[2] >= 8 else np.matmul(w, h[:, :, None])[:, :, 0]
        h += b
        if k < last:
            np.tanh(h, out=h)
    return h


@dataclass(frozen=True)
class ESTorchSetup(ESSetup):
    device: str = "cpu"
    # auto: numpy envs and policies on the CPU where a numpy env exists, the fused kernel on CUDA where it
    # supports the run (esrl.es.fused.supports), else torch; torch: always torch; fused: always the kernel
    # (on the CPU only under TRITON_INTERPRET=1)
    engine: str = "auto"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise InputError("engine", f"must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        kind = self.cfg.policy if self.cfg.policy != "auto" else ("cnn" if self.spec.image else "mlp")
        if kind != "mlp":
            raise InputError("policy", f"the vectorized backend batches MLP policies, not {kind}",
                             "mlp (or the processes backend for the CNN)")

    def build(self) -> ESTorchReplica:
        return ESTorchReplica(self)


class ESTorchReplica(ESReplica):
    def __init__(self, setup: ESTorchSetup) -> None:
        super().__init__(setup)
        self.device = torch.device(setup.device)
        self.engine = setup.engine
        why_not = fused.supports(setup.spec.env_id, self.policy.layer_sizes, self.cfg.action_noise)
        if self.engine == "fused" and why_not:
            raise InputError("engine", f"fused: {why_not}", "auto or torch")
        self.use_fused = self.engine == "fused" or (self.engine == "auto" and self.device.type == "cuda"
                                                    and why_not is None)
        self.use_vector_entry = True  # Gymnasium's vector_entry_point where an env has one (tests turn it off)
        if self.device.type == "cpu":
            torch.set_num_threads(1)  # one core: small batched ops gain nothing from a thread pool
        self._table_dev: torch.Tensor | None = None
        self.peak_bytes = 0
        self._cache: dict[str, dict[str, Any]] = {}
        self._cache_t = -1

    def table_dev(self) -> torch.Tensor:
        """The noise table on the device: copied once, on first use (the numpy path never needs it)."""
        if self._table_dev is None:
            self._table_dev = torch.from_numpy(np.array(self.table)).to(self.device)  # a writable copy
        return self._table_dev

    def _params(self, members: np.ndarray, t: int) -> torch.Tensor:
        offsets, slots, signs = self.addresses(t)
        off = torch.from_numpy(offsets[slots[members]]).to(self.device)
        idx = off[:, None] + torch.arange(self.dim, device=self.device)[None, :]
        sign = torch.from_numpy(signs[members]).to(self.device)[:, None]
        theta = torch.from_numpy(self.theta).to(self.device)
        return theta[None, :] + float(self.cfg.sigma) * self.table_dev()[idx] * sign

    def _policy(self, p: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor) -> torch.Tensor:
        """Outputs of every row's MLP on its observation: one batched matmul per layer."""
        h = ((x.float() - mean) * inv_std).clamp_(-self.cfg.obs_clip, self.cfg.obs_clip)
        layers = self.policy.layer_sizes
        o = 0
        for k, (fan_in, fan_out) in enumerate(layers):
            w = p[:, o : o + fan_in * fan_out].view(-1, fan_out, fan_in)
            o += fan_in * fan_out
            h = torch.baddbmm(p[:, o : o + fan_out].unsqueeze(-1), w, h.unsqueeze(-1)).squeeze(-1)
            o += fan_out
            if k < len(layers) - 1:
                h = torch.tanh_(h)
        return h

    def _vector_env(self, n: int) -> Any:
        """Gymnasium's own numpy-batched version of the env (its `vector_entry_point`), or None."""
        if not self.use_vector_entry:
            return None
        entry = gym.spec(self.setup.spec.env_id).vector_entry_point
        if entry is None:
            return None
        try:
            return gym.make_vec(self.setup.spec.env_id, num_envs=n, vectorization_mode="vector_entry_point")
        except (gym.error.Error, ImportError):  # e.g. a JAX entry point without JAX: step env by env instead
            return None

    def _rollout_vector(self, vec: Any, params: torch.Tensor, seed: int, caps: torch.Tensor, record: np.ndarray
                        ) -> dict[str, Any]:
        """One Gymnasium vector env steps every row at once; rows that end are masked (their auto-resets ignored).

        The vector env draws the whole batch's initial states from one generator seeded once
        (Gymnasium's design), so its episodes are not the per-member path's; from the same
        initial states they are the same (`tests/test_vectorized.py`).
        """
        n, pol = params.shape[0], self.policy
        mean, inv_std = (torch.from_numpy(x).to(self.device) for x in self.normalizer())
        obs, _ = vec.reset(seed=int(seeding.rng(seed, "vector_gym_resets").integers(0, 2**31 - 1)))
        ret, length = np.zeros(n), np.zeros(n, np.int64)
        obs_sum, obs_sq, obs_n = np.zeros((n, pol.spec.obs_dim)), np.zeros((n, pol.spec.obs_dim)), np.zeros(n, np.int64)
        cap = np.minimum(caps.numpy(), pol.spec.max_episode_steps)
        live = np.ones(n, bool)
        while live.any():
            x = pol.preprocess(obs)
            w = record & live
            obs_sum[w] += x[w]
            obs_sq[w] += x[w].astype(np.float64) ** 2
            obs_n += w
            out = self._policy(params, torch.from_numpy(x).to(self.device), mean, inv_std).cpu().numpy()
            obs, reward, terminated, truncated, _ = vec.step(pol.to_actions(out))
            np.add(ret, reward, out=ret, where=live)
            length += live
            live &= ~(terminated | truncated) & (length < cap)
        vec.close()
        return {"returns": ret, "lengths": length,
                "obs": [(int(i), obs_sum[i], obs_sq[i], int(obs_n[i])) for i in np.flatnonzero(record)]}

    def _rollout_gym(self, params: torch.Tensor, seed: int, caps: torch.Tensor, record: np.ndarray
                     ) -> dict[str, Any]:
        """Envs without a torch version: policies batched on the device, Gymnasium envs stepped on the CPU.

        Through Gymnasium's numpy vector env where the env has one, else one env per member.
        """
        n = params.shape[0]
        vec = self._vector_env(n)
        if vec is not None:
            return self._rollout_vector(vec, params, seed, caps, record)
        seeds = seeding.rng(seed, "vector_gym_resets").integers(0, 2**31 - 1, size=n)
        mean, inv_std = (torch.from_numpy(x).to(self.device) for x in self.normalizer())
        pol = self.policy
        env_list = self.envs_for(n)
        x = pol.preprocess(np.stack([e.reset(seed=int(s))[0] for e, s in zip(env_list, seeds, strict=True)]))
        returns, lengths = np.zeros(n), np.zeros(n, np.int64)
        obs_sum = np.zeros((n, pol.spec.obs_dim))
        obs_sq = np.zeros_like(obs_sum)
        obs_n = np.zeros(n, np.int64)
        cap = np.minimum(caps.numpy(), pol.spec.max_episode_steps)
        rows = np.arange(n)
        while rows.size:
            xr = x[rows]
            rec = record[rows]
            obs_sum[rows[rec]] += xr[rec]
            obs_sq[rows[rec]] += xr[rec].astype(np.float64) ** 2
            obs_n[rows[rec]] += 1
            out = self._policy(params[torch.from_numpy(rows).to(self.device)],
                               torch.from_numpy(xr).to(self.device), mean, inv_std).cpu().numpy()
            actions = pol.to_actions(out)
            keep = np.ones(rows.size, bool)
            for j, i in enumerate(rows):
                obs, r, term, trunc, _ = env_list[i].step(int(actions[j]) if pol.spec.discrete else actions[j])
                returns[i] += float(r)
                lengths[i] += 1
                x[i] = pol.preprocess(np.asarray([obs]))[0]
                keep[j] = not (term or trunc or lengths[i] >= cap[i])
            rows = rows[keep]
        return {"returns": returns, "lengths": lengths,
                "obs": [(int(i), obs_sum[i], obs_sq[i], int(obs_n[i])) for i in np.flatnonzero(record)]}

    def _rollout_np(self, params: np.ndarray, seed: int, caps: np.ndarray, record: np.ndarray) -> dict[str, Any]:
        """The CPU path: numpy env and numpy policy, one episode per parameter row, all rows stepped together.

        Finished rows stay in the batch, masked, until fewer than COMPACT_BELOW of it is live:
        at a few hundred rows a step costs about the same whatever its width, so compacting
        every step would only add copies.
        """
        env = make_numpy_env(self.setup.spec.env_id)
        pol, n, d = self.policy, params.shape[0], self.setup.spec.obs_dim
        self.peak_bytes = max(self.peak_bytes, params.nbytes)
        mean, inv_std = self.normalizer()
        state = env.initial(np.random.default_rng(seed), n)
        returns, lengths = np.zeros(n), np.zeros(n, np.int64)
        obs_sum, obs_sq, obs_n = np.zeros((n, d)), np.zeros((n, d)), np.zeros(n, np.int64)
        # the batch: row ids, layer views, running returns, lengths, caps, live and recording masks
        rows, layers = np.arange(n), _contiguous(pol.split(params))
        ret, length = np.zeros(n), np.zeros(n, np.int64)
        cap = np.minimum(caps, env.max_episode_steps)
        live, rec = np.ones(n, bool), record.copy()
        recording = keep_recording = bool(rec.any())
        cap_min, k = int(cap.min()), 0  # every live row has taken exactly k steps
        s1, s2, cnt = np.zeros((n, d)), np.zeros((n, d)), np.zeros(n, np.int64)

        def flush(gone: np.ndarray) -> None:
            ids = rows[gone]
            returns[ids], lengths[ids] = ret[gone], length[gone]
            if recording:
                obs_sum[ids], obs_sq[ids], obs_n[ids] = s1[gone], s2[gone], cnt[gone]

        while True:
            x = env.observe(state).T.astype(np.float32)
            if keep_recording:
                w = rec & live
                xw = x * w[:, None]
                s1 += xw
                s2 += np.square(xw, dtype=np.float64)
                cnt += w
            out = _forward_np(layers, x, mean, inv_std, self.cfg.obs_clip)
            action = out.argmax(1) if env.discrete else pol.to_actions(out).T
            state, reward, terminated = env.dynamics(state, action)
            np.add(ret, reward, out=ret, where=live)
            length += live
            k += 1
            np.greater(live, terminated, out=live)  # live and not terminated, in one call
            if k >= cap_min:
                live &= length < cap
            n_live = int(np.count_nonzero(live))
            if n_live == 0:
                flush(np.ones(rows.size, bool))
                break
            if n_live < COMPACT_BELOW * rows.size:
                flush(~live)
                rows, params, state = rows[live], params[live], state[:, live]
                ret, length, cap, rec = ret[live], length[live], cap[live], rec[live]
                s1, s2, cnt = s1[live], s2[live], cnt[live]
                keep_recording = recording and bool(rec.any())
                cap_min = int(cap.min())
                layers = _contiguous(pol.split(params))
                live = np.ones(n_live, bool)
        recorded = np.flatnonzero(record)
        return {"returns": returns, "lengths": lengths,
                "obs": [(int(i), obs_sum[i], obs_sq[i], int(obs_n[i])) for i in recorded]}

    def _rollout(self, params: torch.Tensor, seed: int, caps: torch.Tensor, record: np.ndarray) -> dict[str, Any]:
        """One episode per parameter row, all rows stepped together; row i stops at caps[i] steps."""
        if self.setup.spec.env_id not in TORCH_ENVS:
            return self._rollout_gym(params, seed, caps, record)
        n = params.shape[0]
        env = make_torch_env(self.setup.spec.env_id, n, str(self.device), torch.float64, seed)
        env.reset()
        mean, inv_std = (torch.from_numpy(x).to(self.device) for x in self.normalizer())
        returns = torch.zeros(n, dtype=torch.float64, device=self.device)
        lengths = torch.zeros(n, dtype=torch.long, device=self.device)
        rec_rows = torch.from_numpy(np.flatnonzero(record)).to(self.device)
        obs_sum = torch.zeros(n, env.obs_dim, dtype=torch.float64, device=self.device)
        obs_sq = torch.zeros_like(obs_sum)
        obs_n = torch.zeros(n, dtype=torch.long, device=self.device)
        if not env.discrete:
            lo = torch.tensor(env.low, device=self.device)
            half = (torch.tensor(env.high, device=self.device) - lo) * 0.5
        # the active rows, compacted: ids, parameters, state, running return, length and cap
        rows = torch.arange(n, device=self.device)
        p, state = params, env.state
        ret = torch.zeros(n, dtype=torch.float64, device=self.device)
        length = torch.zeros(n, dtype=torch.long, device=self.device)
        cap = caps.clamp(max=env.max_episode_steps).to(self.device)
        recording = rec_rows.numel() > 0
        while rows.numel():
            x = env.observe(state)
            if recording:
                r = torch.isin(rows, rec_rows)
                obs_sum.index_add_(0, rows[r], x[r])
                obs_sq.index_add_(0, rows[r], x[r] * x[r])
                obs_n.index_add_(0, rows[r], torch.ones_like(rows[r]))
            h = self._policy(p, x, mean, inv_std)
            action = h.argmax(-1) if env.discrete else (lo + (torch.tanh(h) + 1.0) * half).double()
            state, reward, terminated = env.dynamics(state, action)
            ret += reward
            length += 1
            done = terminated | (length >= cap)
            if bool(done.any()):  # finished rows leave the batch: a long tail costs only itself
                ended = rows[done]
                returns[ended], lengths[ended] = ret[done], length[done]
                keep = ~done
                rows, p, state, ret, length, cap = rows[keep], p[keep], state[keep], ret[keep], length[keep], cap[keep]
        self.peak_bytes = max(self.peak_bytes, params.numel() * params.element_size())
        recorded = np.flatnonzero(record)
        return {"returns": returns.cpu().numpy(), "lengths": lengths.cpu().numpy(),
                "obs": [(int(i), obs_sum[i].cpu().numpy(), obs_sq[i].cpu().numpy(), int(obs_n[i])) for i in recorded]}

    def fused_inputs(self, members: np.ndarray, t: int, seed: int, cap: int) -> dict[str, Any]:
        """`fused.cartpole_episodes`' arguments for these members: the torch engine's initial states for this seed."""
        offsets, slots, signs = self.addresses(t)
        dev, n = self.device, len(members)
        init = make_torch_env(self.setup.spec.env_id, n, str(dev), torch.float64, seed).initial(n).float()
        mean, inv_std = (torch.from_numpy(np.asarray(x, np.float32)).to(dev) for x in self.normalizer())
        return {"theta": torch.from_numpy(self.theta).to(dev), "table": self.table_dev(),  # float32, as the kernel reads
                "offsets": torch.from_numpy(offsets[slots[members]]).to(dev),  # int64
                "signs": torch.from_numpy(signs[members]).to(dev), "init": init, "mean": mean,
                "inv_std": inv_std, "hidden": self.policy.layer_sizes[0][1], "sigma": float(self.cfg.sigma),
                "clip": float(self.cfg.obs_clip), "cap": min(int(cap), self.setup.spec.max_episode_steps)}

    def _rollout_fused(self, members: np.ndarray, t: int, seed: int, cap: int, record: np.ndarray
                       ) -> dict[str, Any]:
        """The members' episodes by the fused kernel (weights read from the table in place)."""
        out = fused.cartpole_episodes(**self.fused_inputs(members, t, seed, cap))
        lengths = out["lengths"].cpu().numpy().astype(np.int64)
        recorded = np.flatnonzero(record)
        rec = torch.from_numpy(recorded).to(self.device)
        s1, s2 = (out[k][rec].double().cpu().numpy() for k in ("obs_sum", "obs_sq"))
        return {"returns": out["returns"].double().cpu().numpy(), "lengths": lengths,
                "obs": [(int(i), s1[k], s2[k], int(lengths[i])) for k, i in enumerate(recorded)]}

    def run(self, task: tuple[str, int, int, int]) -> dict[str, Any]:
        """The population of iteration t is one batch: the first task of t runs it, the rest read it."""
        kind, t, lo, hi = task
        if t != self.iteration:
            raise RuntimeError(f"replica at iteration {self.iteration} asked to evaluate iteration {t}")
        if self._cache_t != t:
            self._evaluate_iteration(t)
        rows = self._cache["pop"]
        return {"kind": kind, "lo": lo, "returns": rows["returns"][lo:hi], "lengths": rows["lengths"][lo:hi],
                "obs": [o for o in rows["obs"] if lo <= o[0] < hi]}

    def _evaluate_iteration(self, t: int) -> None:
        seed, n = self.setup.seed, self.cfg.population
        record = obs_record_mask(seed, t, n, self.cfg.obs_norm_fraction if self.cfg.obs_norm else 0.0)
        per_chunk = max(1, MAX_BATCH_FLOATS // self.dim)
        pop: dict[str, Any] = {"returns": np.zeros(n), "lengths": np.zeros(n, np.int64), "obs": []}
        use_numpy = (self.device.type == "cpu" and self.setup.spec.env_id in NUMPY_ENVS
                     and self.engine == "auto")
        for s in range(0, max(n, 1), per_chunk):
            m = np.arange(s, min(n, s + per_chunk))
            chunk_seed = seeding.derive_int(seed, "vector_episodes", t, s)
            rec = record[m]
            if self.use_fused:  # no per-member weights materialised: the kernel reads the table in place
                out = self._rollout_fused(m, t, chunk_seed, int(self.step_cap), rec)
            elif use_numpy:
                out = self._rollout_np(self.member_params(m), chunk_seed, np.full(len(m), int(self.step_cap)), rec)
            else:
                out = self._rollout(self._params(m, t), chunk_seed, torch.full((len(m),), int(self.step_cap)), rec)
            pop["returns"][m], pop["lengths"][m] = out["returns"], out["lengths"]
            pop["obs"] += [(int(m[i]), a, b, c) for i, a, b, c in out["obs"]]
        self._cache = {"pop": pop}
        self._cache_t = t
