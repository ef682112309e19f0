"""ES throughput on CartPole-v1, as ratios against baselines measured in the same run.

Measures
  1. baseline: a plain Gymnasium loop (gym.make, random actions, reset on episode end), steps/s on one core;
  2. ES env steps/s per core with the `serial` backend (1 core) and the `processes` backend at 2 workers
     (steps/s / 2), each as a ratio to the baseline;
  3. per-iteration wall time of the `processes` backend at 1 vs 2 workers (median `iteration_s`), ratio two/one
     (target <= 0.55).
ES runs use population 256, the same seed and the same iteration count (results are bit-identical across worker
counts, so every iteration does the same work in each run); the first iteration is skipped as warm-up.

Prints one JSON object per line on stdout (progress goes to stderr). Run:
    .venv/bin/python benchmarks/es_throughput.py [--iterations 40] [--baseline-steps 200000] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym

from esrl.config import ESConfig, RunConfig
from esrl.train import train

ENV = "CartPole-v1"
POPULATION = 256


def emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


def plain_gym_steps_per_s(steps: int, seed: int) -> float:
    env = gym.make(ENV)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - t0
    env.close()
    return steps / elapsed


def es_metrics(backend: str, workers: int, iterations: int, seed: int) -> list[dict]:
    """Per-iteration metrics of a fresh ES run that never stops on solving."""
    print(f"ES run: backend={backend} workers={workers} iterations={iterations}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunConfig(env=ENV, seed=seed, backend=backend, workers=workers, target_return=1e9, max_seconds=0,
                        max_iterations=iterations, eval_episodes=2, stop_on_solve=False, checkpoint_every=10**9,
                        run_dir=str(Path(tmp) / "run"))
        train(run, ESConfig(population=POPULATION), show_progress=False)
        lines = (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def steps_per_s(metrics: list[dict]) -> float:
    """Env steps / summed iteration wall time, first iteration excluded."""
    steps = metrics[-1]["env_steps"] - metrics[0]["env_steps"]
    return steps / sum(m["iteration_s"] for m in metrics[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=40, help="ES iterations per run (first is warm-up)")
    parser.add_argument("--baseline-steps", type=int, default=200_000, help="steps of the plain Gymnasium loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 12 iterations, 50k baseline steps")
    args = parser.parse_args()
    if args.quick:
        args.iterations, args.baseline_steps = 12, 50_000
    if args.iterations < 3:
        parser.error("--iterations must be >= 3")

    print(f"baseline: plain Gymnasium loop, {args.baseline_steps} steps", file=sys.stderr, flush=True)
    base = plain_gym_steps_per_s(args.baseline_steps, args.seed)
    emit(bench="es_throughput", env=ENV, mode="plain_gym", steps=args.baseline_steps, steps_per_s=base)

    runs = {name: es_metrics(backend, workers, args.iterations, args.seed)
            for name, backend, workers in (("serial", "serial", 1), ("processes_1", "processes", 1),
                                           ("processes_2", "processes", 2))}
    env_steps = {name: m[-1]["env_steps"] for name, m in runs.items()}
    if len(set(env_steps.values())) != 1:
        print(f"warning: runs did different work: {env_steps}", file=sys.stderr)

    for name, cores in (("serial", 1), ("processes_2", 2)):
        per_core = steps_per_s(runs[name]) / cores
        emit(bench="es_throughput", env=ENV, mode=name, population=POPULATION, iterations=args.iterations,
             cores=cores, env_steps=env_steps[name], steps_per_s_per_core=per_core, baseline_steps_per_s=base,
             ratio=per_core / base)

    one = [m["iteration_s"] for m in runs["processes_1"][1:]]
    two = [m["iteration_s"] for m in runs["processes_2"][1:]]
    emit(bench="es_iteration_time", env=ENV, backend="processes", population=POPULATION, iterations=args.iterations,
         median_iteration_s_1_worker=statistics.median(one), median_iteration_s_2_workers=statistics.median(two),
         ratio=statistics.median(two) / statistics.median(one),
         median_paired_ratio=statistics.median(b / a for a, b in zip(one, two, strict=True)), target=0.55)


if __name__ == "__main__":
    main()
