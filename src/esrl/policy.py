"""A trained policy, loaded from a run directory: `esrl.load(RUN)`, then `predict` and `evaluate`.

The one loader of every algorithm (ES MLP and CNN, A3C, DQN, Dyna-Q), used by `esrl evaluate`
and `esrl export` too. It acts with the code the training loop evaluated with
(`ESReplica.greedy_act`, the RL setups' `act_greedy`), so the ES observation normalizer and
the Atari preprocessing are applied as in training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from esrl import config, envs, seeding
from esrl.errors import InputError
from esrl.runs import checkpoint as ckpt
from esrl.runs.rundir import RunDir

NAMED = ("latest", "best", "threshold")
Act = Callable[[np.ndarray], np.ndarray]  # flat float32 observations (N, obs_size) -> N env actions


def find_checkpoint(run_dir: str | Path, which: str | int = "latest") -> Path:
    """The manifest `which` names: the newest of checkpoints/ (latest), best/ or threshold/, or checkpoint N.

    N is the number in a checkpoint's file name: the iteration for ES, the global update count for RL.
    """
    rd = RunDir.open(run_dir)
    dirs = {"latest": rd.checkpoints, "best": rd.path / "best", "threshold": rd.path / "threshold"}
    if isinstance(which, str) and which.isdigit():
        which = int(which)
    if isinstance(which, int) and not isinstance(which, bool):
        for d in dirs.values():
            if (d / f"ckpt_{which:08d}.json").is_file():
                return d / f"ckpt_{which:08d}.json"
        have = sorted({int(p.stem[5:]) for d in dirs.values() for p in d.glob("ckpt_*.json")})
        raise InputError("checkpoint", f"{run_dir} has no checkpoint {which}",
                         ", ".join([*NAMED, *map(str, have)]))
    if which not in dirs:
        raise InputError("checkpoint", f"unknown checkpoint {which!r}", "latest, best, threshold or a number")
    manifest = ckpt.latest(dirs[str(which)])
    if manifest is None:
        why = {"latest": "no checkpoint yet", "threshold": "no threshold checkpoint (it never reached its target)",
               "best": "no best checkpoint (no evaluation yet, or trained before esrl kept one)"}[str(which)]
        raise InputError("checkpoint", f"{run_dir} has {why}", "latest, best, threshold or a number")
    return manifest


class Policy:
    """The greedy policy of one checkpoint. Build it with `esrl.load` (or `policy.load`)."""

    def __init__(self, algorithm: str, run: config.RunConfig, cfg: Any, spec: envs.EnvSpec, manifest: Path,
                 meta: dict[str, Any], act: Act, sample: Act | None = None, replica: Any = None,
                 model: Any = None) -> None:
        self.algorithm, self.run, self.config, self.spec = algorithm, run, cfg, spec
        self.manifest = manifest  # the checkpoint it came from (`meta`: its manifest)
        self.checkpoint = int(meta["iteration"])  # its number: ES iteration, RL global updates
        self.env_steps = int(meta["meta"].get("counters", {}).get("env_steps", 0))  # training steps behind it
        self.replica = replica  # ES: the replica (theta, observation statistics, the policy network)
        self.model = model  # RL: the torch network with the checkpoint's weights
        self._act, self._sample = act, sample

    def __repr__(self) -> str:
        return f"Policy({self.algorithm}, {self.spec.env_id}, checkpoint {self.checkpoint}, {self.manifest})"

    def predict(self, obs: Any, deterministic: bool = True) -> tuple[Any, None]:
        """Actions as Stable-Baselines3's `model.predict` gives them: `(actions, None)`.

        One observation (shaped like the env's) gives one action (an integer for Discrete, an
        array (act_dim,) for Box); a batch (N, *shape) gives N. Observations are those of
        `make_env()` (Atari: the preprocessed stack of frames). `deterministic=False` samples
        A3C's stochastic policy; ES, DQN and Dyna-Q policies are greedy either way.
        """
        x, single = self._batch(obs)
        act = self._act if deterministic or self._sample is None else self._sample
        # the action space's own dtypes, so `env.action_space.contains(action)` holds (RL clips in float64)
        actions = np.asarray(act(x)).astype(np.int64 if self.spec.discrete else np.float32, copy=False)
        return (actions[0] if single else actions), None

    def _batch(self, obs: Any) -> tuple[np.ndarray, bool]:
        a = np.asarray(obs)
        shape = self.spec.obs_shape
        if a.shape == shape:
            return a.astype(np.float32).reshape(1, -1), True
        if a.ndim == len(shape) + 1 and a.shape[1:] == shape and len(a):
            return a.astype(np.float32).reshape(len(a), -1), False
        raise InputError("obs", f"shape {a.shape} is neither one observation of {self.spec.env_id} nor a batch",
                         f"{shape} or (N, {', '.join(map(str, shape))})")

    def make_env(self, render_mode: str | None = None) -> gym.Env:
        """The run's env as evaluations play it: whole episodes, Atari preprocessing included."""
        return envs.make_env(envs.whole_episodes(self.spec), render_mode=render_mode)

    def evaluate(self, episodes: int = 10, env: str | gym.Env | None = None, seed: int | None = None,
                 deterministic: bool = True) -> dict[str, Any]:
        """Mean, std, returns and lengths of `episodes` episodes, reset with seeds from `seed` (default:
        the run's). `env`: the run's env (default), another Gymnasium id, or an env instance."""
        if episodes < 1:
            raise InputError("episodes", f"must be >= 1, got {episodes}")
        own = not isinstance(env, gym.Env)
        if env is None:
            e, cap = self.make_env(), self.spec.max_episode_steps
        elif isinstance(env, str):
            e, cap = envs.make(env), None
        else:
            e, cap = env, None
        try:
            if env is not None:
                self._check_env(e, str(env) if isinstance(env, str) else type(e.unwrapped).__name__)
            returns, lengths = play(e, lambda o: self.predict(o, deterministic)[0],
                                    episode_seeds(self.run.seed if seed is None else seed, episodes), cap)
        finally:
            if own:
                e.close()
        return {"episodes": episodes, "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
                "returns": returns, "lengths": lengths}

    def _check_env(self, env: gym.Env, name: str) -> None:
        got = envs.describe(env, self.spec.env_id)
        mine = self.spec
        if (got.obs_shape, got.obs_dim, got.discrete, got.act_dim) != (mine.obs_shape, mine.obs_dim, mine.discrete,
                                                                       mine.act_dim):
            raise InputError("env", f"{name} has other spaces than {mine.env_id}, the env this policy was trained on",
                             "an env with the same observation and action spaces")


def episode_seeds(seed: int, episodes: int) -> np.ndarray:
    """Reset seeds of `esrl evaluate` and `Policy.evaluate`."""
    return seeding.rng(seed, "evaluate").integers(0, 2**31 - 1, size=episodes)


def play(env: gym.Env, act_one: Callable[[Any], Any], seeds: np.ndarray, cap: int | None = None,
         frames: list[Any] | None = None) -> tuple[list[float], list[int]]:
    """Returns and lengths of one episode per seed in `env`, acting on one observation at a time;
    `cap` ends episodes at that many steps, `frames` collects `env.render()` before each step."""
    returns, lengths = [], []
    for s in seeds:
        obs, _ = env.reset(seed=int(s))
        total, n, done = 0.0, 0, False
        while not done:
            if frames is not None:
                frames.append(np.asarray(env.render()))
            obs, r, term, trunc, _ = env.step(act_one(obs))
            total, n = total + float(r), n + 1
            done = term or trunc or (cap is not None and n >= cap)
        returns.append(total)
        lengths.append(n)
    return returns, lengths


def load(run_dir: str | Path, checkpoint: str | int = "latest") -> Policy:
    """The policy of a run's checkpoint: "latest", "best" (highest evaluation mean), "threshold"
    (the first to reach the target) or a checkpoint number."""
    algo, run, cfg = config.load_run(run_dir)
    manifest = find_checkpoint(run_dir, checkpoint)
    spec = run.env_spec()  # the env as trained (an ES CNN's reference batch is rebuilt from it)
    if algo == "es":
        return _es_policy(run, cfg, spec, manifest)
    return _rl_policy(algo, run, cfg, spec, manifest)


def _es_policy(run: config.RunConfig, cfg: Any, spec: envs.EnvSpec, manifest: Path) -> Policy:
    from esrl.es.algorithm import ESSetup

    replica = ESSetup(cfg, spec, run.seed).build()
    tensors, meta = ckpt.load(manifest, "es", {"theta": (replica.dim,)})
    replica.set_state({**tensors, **meta["meta"]["scalars"]})
    return Policy("es", run, cfg, spec, manifest, meta, replica.greedy_act(), replica=replica)


def _rl_policy(algo: str, run: config.RunConfig, cfg: Any, spec: envs.EnvSpec, manifest: Path) -> Policy:
    import torch

    from esrl.rl import nets
    from esrl.train_rl import saved_obs_stat, setup_for

    setup = setup_for(algo, cfg, spec, run.seed)
    model = setup.build_model()
    tensors, meta = ckpt.load(manifest, algo, {"params": (int(nets.get_flat(model).numel()),)})
    params = torch.from_numpy(tensors["params"])
    nets.set_flat(model, params)
    # observations normalized as in training: the checkpoint carries the run's statistics (obs_norm)
    stat = saved_obs_stat(manifest, tensors, meta) if nets.normalizes(model) else None
    nets.set_normalizer(model, stat)
    greedy = setup.act_greedy(params, stat)

    def act(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.asarray(greedy(torch.from_numpy(x)))

    sample = _a3c_sampler(model, spec, run.seed) if algo == "a3c" else None
    return Policy(algo, run, cfg, spec, manifest, meta, act, sample, model=model)


def _a3c_sampler(model: Any, spec: envs.EnvSpec, seed: int) -> Act:
    """A3C's stochastic policy, as its workers act in training, from the stream (seed, "predict")."""
    import torch

    gen = torch.Generator().manual_seed(seeding.derive_int(seed, "predict"))

    def sample(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out, _, z = model.features(torch.from_numpy(x))
            if spec.discrete:
                return torch.multinomial(torch.softmax(out, -1), 1, generator=gen).squeeze(-1).numpy()
            # gSDE's action, one fresh noise matrix per call, has this Gaussian marginal
            noisy = out + model.action_std(z) * torch.randn(out.shape, generator=gen)
            return np.clip(noisy.numpy(), spec.low, spec.high)

    return sample
