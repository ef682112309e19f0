"""Env steps/s of ES and A3C on Pong and HalfCheetah at 1 and 2 workers, against the plain Gymnasium loop.

For each env the baseline is a plain Gymnasium loop measured in the same run: gym.make (for
Pong with Gymnasium's own AtariPreprocessing and FrameStackObservation, the same 84x84x4
frames esrl acts on), random actions, reset on episode end, one core. ES (`processes`
backend; Pong with the paper's CNN and virtual batch norm, HalfCheetah with a linear policy)
and A3C (Nature CNN on Pong, MLP on HalfCheetah) then run for a fixed budget; their env
steps/s per core (policy evaluated on every step, first metrics line excluded) are printed
beside the baseline as a ratio (the issue's target for ES: >= 0.8 per core).
Prints one JSON object per line. Run:
    .venv/bin/python benchmarks/heavy_envs.py [--envs ALE/Pong-v5,HalfCheetah-v5] [--algos es,a3c] [--seconds 40]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym

from esrl import envs
from esrl.config import A3CConfig, ESConfig, RunConfig


def emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


def plain_loop(env_id: str, seconds: float, seed: int = 0) -> float:
    """Steps/s of a plain Gymnasium loop with random actions."""
    if envs.is_atari(env_id):
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

        env: gym.Env = FrameStackObservation(AtariPreprocessing(gym.make(env_id, frameskip=1)), 4)
    else:
        env = gym.make(env_id)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(100):
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            steps += 1
            if term or trunc:
                env.reset()
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def run_metrics(algo: str, env_id: str, workers: int, seconds: float) -> list[dict]:
    print(f"run: {algo} {env_id} workers={workers} {seconds:.0f}s", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunConfig(env=env_id, seed=0, backend="processes", workers=workers, target_return=1e9,
                        max_seconds=seconds, stop_on_solve=False, eval_every_steps=10**12, eval_episodes=1,
                        checkpoint_every=10**6, run_dir=str(Path(tmp) / "r"))
        if algo == "es":
            from esrl.train import train

            atari = envs.is_atari(env_id)
            cfg = ESConfig(population=8 if atari else 32, hidden=() if not atari else (16,), sigma=0.02)
            train(run, cfg, show_progress=False)
        else:
            from esrl.train_rl import train_rl

            train_rl(algo, run, A3CConfig(envs_per_worker=1, report_every=200), show_progress=False)
        return [json.loads(x) for x in (Path(tmp) / "r" / "metrics.jsonl").read_text().splitlines()]


def rate(lines: list[dict], algo: str) -> float:
    """Env steps/s after the first metrics line (start-up and the first evaluation excluded)."""
    if len(lines) < 2:
        return float("nan")
    if algo == "es":  # iterations are back to back: their own wall time, evaluation episodes included
        return (lines[-1]["env_steps"] - lines[0]["env_steps"]) / sum(m["iteration_s"] for m in lines[1:])
    return (lines[-1]["env_steps"] - lines[0]["env_steps"]) / (lines[-1]["wall_s"] - lines[0]["wall_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", default="ALE/Pong-v5,HalfCheetah-v5")
    parser.add_argument("--algos", default="es,a3c")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--seconds", type=float, default=40.0, help="budget of each training run")
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    args = parser.parse_args()
    for env_id in args.envs.split(","):
        base = plain_loop(env_id, args.baseline_seconds)
        emit(bench="heavy_envs", env=env_id, mode="plain_gym", steps_per_s=base)
        for algo in args.algos.split(","):
            for w in (int(x) for x in args.workers.split(",")):
                lines = run_metrics(algo, env_id, w, args.seconds)
                r = rate(lines, algo)
                emit(bench="heavy_envs", env=env_id, algo=algo, workers=w, lines=len(lines), steps_per_s=r,
                     steps_per_s_per_core=r / w, baseline_steps_per_s=base, ratio_per_core=r / w / base)


if __name__ == "__main__":
    main()
