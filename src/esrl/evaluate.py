"""Evaluate a run's latest checkpoint: noiseless episodes, optionally recorded to a video."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from esrl import config, envs, seeding
from esrl.errors import InputError
from esrl.runs import checkpoint
from esrl.runs.rundir import RunDir

Act = Callable[[np.ndarray], Any]  # one observation -> one env action


def _es_policy(run: config.RunConfig, cfg: Any, spec: envs.EnvSpec, manifest: Path) -> tuple[Act, int]:
    from esrl.es.algorithm import ESSetup

    replica = ESSetup(cfg, spec, run.seed).build()
    tensors, meta = checkpoint.load(manifest, "es", {"theta": (replica.dim,)})
    replica.set_state({**tensors, **meta["meta"]["scalars"]})
    mean, inv_std = replica.normalizer()
    pol, theta = replica.policy, replica.theta[None]

    def act(obs: np.ndarray) -> Any:
        a = pol.to_actions(pol.forward(theta, pol.preprocess(np.asarray(obs)[None]), mean, inv_std))[0]
        return int(a) if spec.discrete else a

    return act, int(meta["iteration"])


def _rl_policy(algo: str, run: config.RunConfig, cfg: Any, spec: envs.EnvSpec, manifest: Path) -> tuple[Act, int]:
    import torch

    from esrl.rl import nets
    from esrl.train_rl import setup_for

    setup = setup_for(algo, cfg, spec, run.seed)
    n = int(nets.get_flat(setup.build_model()).numel())
    tensors, meta = checkpoint.load(manifest, algo, {"params": (n,)})
    greedy = setup.act_greedy(torch.from_numpy(tensors["params"]))

    def act(obs: np.ndarray) -> Any:
        with torch.no_grad():
            a = greedy(torch.as_tensor(np.asarray(obs, np.float32).reshape(1, -1)))[0]
        return int(a) if spec.discrete else a

    return act, int(meta["meta"]["version"])


def evaluate(run_dir: str, episodes: int, seed: int | None = None, video: str | None = None) -> dict[str, Any]:
    """Mean, std and all returns of `episodes` noiseless episodes of the latest checkpoint."""
    if video and Path(video).suffix.lower() not in (".mp4", ".gif"):
        raise InputError("video", f"unknown format {Path(video).suffix!r}", ".mp4 or .gif")
    algo, run, cfg = config.load_run(run_dir)
    rd = RunDir.open(run_dir)
    if video and "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"  # headless MuJoCo rendering (Mesa's EGL renders on the CPU)
    spec = run.env_spec()  # the policy as trained (its VBN reference batch)
    manifest = checkpoint.latest(rd.checkpoints)
    if manifest is None:
        raise InputError("run_dir", f"{run_dir} has no checkpoint yet")
    act, at = _es_policy(run, cfg, spec, manifest) if algo == "es" else _rl_policy(algo, run, cfg, spec, manifest)
    seeds = seeding.rng(run.seed if seed is None else seed, "evaluate").integers(0, 2**31 - 1, size=episodes)
    frames: list[Any] = []
    returns, lengths = [], []
    env = envs.make(run.env, render_mode="rgb_array" if video else None)  # no episodic life: lives do not end episodes here
    try:
        for s in seeds:
            obs, _ = env.reset(seed=int(s))
            total, n, done = 0.0, 0, False
            while not done:
                if video:
                    frames.append(np.asarray(env.render()))
                obs, r, term, trunc, _ = env.step(act(obs))
                total, n = total + float(r), n + 1
                done = term or trunc or n >= spec.max_episode_steps
            returns.append(total)
            lengths.append(n)
    finally:
        env.close()
    out: dict[str, Any] = {"run_dir": str(run_dir), "algorithm": algo, "checkpoint": at, "episodes": episodes,
                           "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
                           "returns": returns, "lengths": lengths}
    if video:
        # one frame per agent step: an Atari step is 4 emulator frames
        fps = float(env.metadata.get("render_fps") or 30) / (envs.ATARI_FRAME_SKIP if envs.is_atari(run.env) else 1)
        out["video"] = _write_video(Path(video), frames, spec.env_id, fps)
    return out


def _write_video(path: Path, frames: list[Any], env_id: str, fps: float = 30.0) -> str:
    import imageio.v2 as imageio

    if not frames or frames[0] is None:
        raise InputError("video", f"{env_id} rendered no frames")
    if path.suffix.lower() not in (".mp4", ".gif"):
        raise InputError("video", f"unknown format {path.suffix!r}", ".mp4 or .gif")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        imageio.mimsave(path, frames, duration=1 / fps)
    else:
        imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
    return str(path)
