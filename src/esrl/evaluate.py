"""Evaluate a run's checkpoint (latest, best, threshold or N): noiseless episodes, optionally recorded to a video."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from esrl import envs, policy
from esrl.errors import InputError


def evaluate(run_dir: str, episodes: int, seed: int | None = None, video: str | None = None,
             checkpoint: str | int = "latest") -> dict[str, Any]:
    """Mean, std and all returns of `episodes` noiseless episodes of a checkpoint (`esrl.policy.find_checkpoint`)."""
    if video and Path(video).suffix.lower() not in (".mp4", ".gif"):
        raise InputError("video", f"unknown format {Path(video).suffix!r}", ".mp4 or .gif")
    if video and "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"  # headless MuJoCo rendering (Mesa's EGL renders on the CPU); before mujoco loads
    pol = policy.load(run_dir, checkpoint)
    frames: list[Any] | None = [] if video else None
    env = pol.make_env(render_mode="rgb_array" if video else None)  # no episodic life: lives do not end episodes here
    try:
        returns, lengths = policy.play(env, lambda obs: pol.predict(obs)[0],
                                       policy.episode_seeds(pol.run.seed if seed is None else seed, episodes),
                                       pol.spec.max_episode_steps, frames)
    finally:
        env.close()
    out: dict[str, Any] = {"run_dir": str(run_dir), "algorithm": pol.algorithm, "checkpoint": pol.checkpoint,
                           "checkpoint_path": str(pol.manifest), "episodes": episodes,
                           "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
                           "returns": returns, "lengths": lengths}
    if video and frames is not None:
        # one frame per agent step: an Atari step is 4 emulator frames
        run = pol.run
        fps = float(env.metadata.get("render_fps") or 30) / (envs.ATARI_FRAME_SKIP if envs.is_atari(run.env) else 1)
        out["video"] = _write_video(Path(video), frames, pol.spec.env_id, fps)
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
