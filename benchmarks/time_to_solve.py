"""ES time-to-threshold over seeds at 1 and 2 workers, and the speedup from the second worker.

Each (seed, workers) pair is a fresh `esrl.train.train` run with the `processes` backend and default ES
hyperparameters (ESConfig()), stopping at the first evaluation at or above the target or at --max-seconds.
Time-to-threshold is the run's own wall-clock `time_to_threshold_s` (setup included). Seeds are interleaved
across worker counts so machine drift affects both alike.

Prints one JSON line per run and one summary line per worker count: solved count, median time-to-threshold
(unsolved runs count as infinitely slow; null when the median is unsolved) and the speedup
median(fewest workers) / median(this count). Progress goes to stderr. Run:
    .venv/bin/python benchmarks/time_to_solve.py [--env CartPole-v1] [--target 475] [--seeds 5] [--workers 1 2]
        [--max-seconds 60] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

from esrl.config import ESConfig, RunConfig
from esrl.train import train


def emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


def solve(env: str, target: float, seed: int, workers: int, max_seconds: float) -> dict:
    print(f"run: env={env} seed={seed} workers={workers}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunConfig(env=env, seed=seed, backend="processes", workers=workers, target_return=target,
                        max_seconds=max_seconds, run_dir=str(Path(tmp) / "run"))
        return train(run, ESConfig(), show_progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--target", type=float, default=475.0, help="evaluation return that counts as solved")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="wall-clock budget per run")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 12 s budget per run")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.max_seconds = 1, 12.0

    times: dict[int, list[float]] = {w: [] for w in args.workers}
    for seed in range(args.seeds):
        for workers in args.workers:
            s = solve(args.env, args.target, seed, workers, args.max_seconds)
            emit(bench="time_to_solve", env=args.env, target=args.target, workers=workers, seed=seed,
                 solved=s["solved"], time_to_threshold_s=s["time_to_threshold_s"], iterations=s["iterations"],
                 env_steps=s["env_steps"], episodes=s["episodes"], wall_s=s["wall_s"])
            times[workers].append(s["time_to_threshold_s"] if s["solved"] else math.inf)

    medians = {w: statistics.median(ts) for w, ts in times.items()}
    base = medians[min(args.workers)]
    for w in args.workers:
        m = medians[w]
        emit(bench="time_to_solve_summary", env=args.env, target=args.target, workers=w, seeds=args.seeds,
             max_seconds=args.max_seconds, solved=sum(math.isfinite(t) for t in times[w]),
             median_time_to_threshold_s=m if math.isfinite(m) else None,
             speedup_vs_fewest_workers=base / m if math.isfinite(base) and math.isfinite(m) else None)


if __name__ == "__main__":
    main()
