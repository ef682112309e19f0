"""Env steps/s and updates/s of the asynchronous algorithms at 1 and 2 workers, as a ratio.

Each run trains for a fixed wall-clock budget without stopping on solve (target far out of
reach), on the `processes` backend; throughput is env steps / wall time over the metrics
lines after the first (start-up excluded). Prints one JSON line per run and one ratio line
per algorithm and sync mode (2 workers / 1 worker; the A3C target is >= 1.7). Run:
    .venv/bin/python benchmarks/rl_throughput.py [--algos a3c,dqn] [--sync hogwild] [--seconds 15] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from esrl.config import ALGORITHMS, RunConfig
from esrl.train_rl import train_rl


def emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


def throughput(algo: str, sync: str, workers: int, seconds: float) -> dict[str, float]:
    print(f"run: {algo} sync={sync} workers={workers}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunConfig(env="CartPole-v1", seed=0, workers=workers, target_return=1e9, max_seconds=seconds,
                        stop_on_solve=False, eval_every_steps=10**12, checkpoint_every=10**6, run_dir=str(Path(tmp) / "r"))
        train_rl(algo, run, ALGORITHMS[algo](sync=sync), show_progress=False)
        lines = [json.loads(x) for x in (Path(tmp) / "r" / "metrics.jsonl").read_text().splitlines()]
    first, last = lines[0], lines[-1]
    wall = last["wall_s"] - first["wall_s"]
    return {"env_steps_per_s": (last["env_steps"] - first["env_steps"]) / wall,
            "updates_per_s": (last["updates"] - first["updates"]) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="a3c,dqn")
    parser.add_argument("--sync", default="hogwild")
    parser.add_argument("--seconds", type=float, default=15.0, help="wall-clock budget per run")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 s per run")
    args = parser.parse_args()
    seconds = 4.0 if args.quick else args.seconds
    for algo in args.algos.split(","):
        for sync in args.sync.split(","):
            one = throughput(algo, sync, 1, seconds)
            two = throughput(algo, sync, 2, seconds)
            for w, r in ((1, one), (2, two)):
                emit(bench="rl_throughput", algo=algo, sync=sync, workers=w, **r)
            emit(bench="rl_throughput_ratio", algo=algo, sync=sync,
                 env_steps_ratio=two["env_steps_per_s"] / one["env_steps_per_s"],
                 updates_ratio=two["updates_per_s"] / one["updates_per_s"])


if __name__ == "__main__":
    main()
