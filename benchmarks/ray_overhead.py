"""ES on Ray vs local processes: per-iteration overhead at population 256, and Ray's start-up.

Both runs use 2 workers, the same seed and iteration count (results are bit-identical, so
every iteration does the same work on both); the overhead is the median over iterations of
(Ray iteration time - processes iteration time), first iteration excluded. Ray's start-up
(ray.init of a local instance) is timed separately and excluded. Run:
    .venv/bin/python benchmarks/ray_overhead.py [--iterations 30] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from esrl.config import ESConfig, RunConfig
from esrl.train import train


def iteration_times(backend: str, iterations: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        run = RunConfig(env="CartPole-v1", seed=0, backend=backend, workers=2, target_return=1e9, max_seconds=0,
                        max_iterations=iterations, eval_episodes=2, stop_on_solve=False, checkpoint_every=10**6,
                        run_dir=str(Path(tmp) / "r"))
        train(run, ESConfig(population=256), show_progress=False)
        lines = [json.loads(x) for x in (Path(tmp) / "r" / "metrics.jsonl").read_text().splitlines()]
    return [m["iteration_s"] for m in lines[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="8 iterations")
    args = parser.parse_args()
    n = 8 if args.quick else args.iterations
    import ray

    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", num_cpus=2, log_to_driver=False)
    startup = time.perf_counter() - t0
    try:
        proc = iteration_times("processes", n)
        rayt = iteration_times("ray", n)
    finally:
        ray.shutdown()
    diffs = [r - p for r, p in zip(rayt, proc, strict=True)]
    print(json.dumps({"bench": "ray_overhead", "population": 256, "workers": 2, "iterations": n,
                      "ray_startup_s": startup, "median_iteration_s_processes": statistics.median(proc),
                      "median_iteration_s_ray": statistics.median(rayt),
                      "median_overhead_ms": 1e3 * statistics.median(diffs), "target_ms": 10}), flush=True)


if __name__ == "__main__":
    main()
