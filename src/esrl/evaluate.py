"""Evaluate a run's latest checkpoint: noiseless episodes, optionally recorded to a video."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from esrl import envs, seeding
from esrl.errors import InputError
from esrl.es.algorithm import ESSetup
from esrl.runs import checkpoint
from esrl.runs.rundir import RunDir


def evaluate(run_dir: str, episodes: int, seed: int | None = None, video: str | None = None) -> dict[str, Any]:
    """Mean, std and all returns of `episodes` noiseless episodes of the latest checkpoint."""
    from esrl.train import ALGORITHM, load_run

    run, cfg = load_run(run_dir)
    rd = RunDir.open(run_dir)
    spec = envs.spec_of(run.env)
    replica = ESSetup(cfg, spec, run.seed).build()
    manifest = checkpoint.latest(rd.checkpoints)
    if manifest is None:
        raise InputError("run_dir", f"{run_dir} has no checkpoint yet")
    tensors, meta = checkpoint.load(manifest, ALGORITHM, {"theta": (replica.dim,)})
    replica.set_state({**tensors, **meta["meta"]["scalars"]})
    mean, inv_std = replica.normalizer()
    seeds = seeding.rng(run.seed if seed is None else seed, "evaluate").integers(0, 2**31 - 1, size=episodes)
    frames: list[np.ndarray] = []
    returns, lengths = [], []
    env = envs.make(run.env, render_mode="rgb_array" if video else None)
    try:
        for s in seeds:
            obs, _ = env.reset(seed=int(s))
            total, n, done = 0.0, 0, False
            while not done:
                if video:
                    frames.append(np.asarray(env.render()))
                x = replica.policy.preprocess(np.asarray(obs)[None])
                action = replica.policy.to_actions(replica.policy.forward(replica.theta[None], x, mean, inv_std))[0]
                obs, r, term, trunc, _ = env.step(int(action) if spec.discrete else action)
                total, n, done = total + float(r), n + 1, term or trunc
            returns.append(total)
            lengths.append(n)
    finally:
        env.close()
    out: dict[str, Any] = {"run_dir": str(run_dir), "iteration": meta["iteration"], "episodes": episodes,
                           "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
                           "returns": returns, "lengths": lengths}
    if video:
        out["video"] = _write_video(Path(video), frames, spec.env_id)
    return out


def _write_video(path: Path, frames: list[Any], env_id: str) -> str:
    import imageio.v2 as imageio

    if not frames or frames[0] is None:
        raise InputError("video", f"{env_id} rendered no frames")
    if path.suffix.lower() not in (".mp4", ".gif"):
        raise InputError("video", f"unknown format {path.suffix!r}", ".mp4 or .gif")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        imageio.mimsave(path, frames, duration=1 / 30)
    else:
        imageio.mimsave(path, frames, fps=30, macro_block_size=1)
    return str(path)
