"""Network load: bytes per iteration and per second, by kind, for ES and the RL algorithms,
against the worker count and the policy size.

ES moves scalars (task ranges, returns, shaped returns): its bytes per iteration should not
depend on the parameter count. A3C, DQN and Dyna-Q move whole gradient and parameter
vectors: theirs grow with it. Worker counts may oversubscribe the cores (bytes do not care).
For each (algorithm, workers, policy size) a short run is made and its metrics lines after
the first are averaged. One JSON line per configuration; `bytes_per_iteration` means per
ES iteration, or per RL metrics line (`report_every` updates or a few more: workers report
every 0.1 s, so `bytes_per_update` is the steadier RL figure); `bytes_per_s` is over the same
lines' wall time. On `--backend ray` the RL algorithms use `--sync param-server` (shared memory does not
span nodes); on processes they use `--sync` (default hogwild, whose "bytes" are shared-memory
copies). Run:
    .venv/bin/python benchmarks/network_load.py [--algos es,a3c,dqn,dynaq] [--workers 1 2 4 8]
        [--sizes 1k 100k 1M] [--backend processes|ray] [--sync hogwild|lock|param-server] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from esrl.config import ALGORITHMS, RunConfig

# hidden layers giving about 1k, 100k and 1M parameters on CartPole-v1 (4 inputs, 2 outputs)
SIZES = {"1k": (32, 24), "100k": (256, 384), "1M": (1000, 1000)}


def measure(algo: str, workers: int, size: str, backend: str, sync: str) -> dict[str, object]:
    print(f"run: {algo} {backend} workers={workers} size={size}", file=sys.stderr, flush=True)
    hidden = SIZES[size]
    with tempfile.TemporaryDirectory() as tmp:
        run = RunConfig(env="CartPole-v1", seed=0, backend=backend,
                        workers=workers, target_return=1e9, max_seconds=120, max_iterations=4, eval_episodes=1,
                        stop_on_solve=False, checkpoint_every=10**6, run_dir=str(Path(tmp) / "r"))
        if algo == "es":
            from esrl.train import train

            summary = train(run, ALGORITHMS["es"](population=16, hidden=hidden), show_progress=False)
        else:
            from esrl.train_rl import train_rl

            extra = {"learning_starts": 64, "batch_size": 32} if algo in ("dqn", "dynaq") else {}
            summary = train_rl(algo, run, ALGORITHMS[algo](hidden=hidden, report_every=5, sync=sync, **extra),
                               show_progress=False)
        every = [json.loads(x) for x in (Path(tmp) / "r" / "metrics.jsonl").read_text().splitlines()]
    lines = every[1:]
    # an RL metrics line may carry more than report_every updates (workers report every 0.1 s)
    updates = lines[-1]["updates"] - every[0]["updates"] if algo != "es" and lines else 0
    per_it: dict[str, float] = {}
    wall = sum(m["iteration_s"] for m in lines)
    for m in lines:
        for direction in ("bytes_sent", "bytes_received"):
            for k, v in m[direction].items():
                per_it[k] = per_it.get(k, 0.0) + v
    n = max(1, len(lines))
    return {"bench": "network_load", "algo": algo, "backend": run.backend, "workers": workers, "size": size,
            "sync": None if algo == "es" else sync, "num_params": summary["num_params"],
            "bytes_per_iteration": {k: round(v / n) for k, v in per_it.items()},
            "bytes_per_iteration_total": round(sum(per_it.values()) / n),
            "bytes_per_s": {k: round(v / wall) for k, v in per_it.items()} if wall else None,
            "updates_per_iteration": updates / n if updates else None,
            "bytes_per_update": {k: round(v / updates) for k, v in per_it.items()} if updates else None,
            "bytes_per_s_total": round(sum(per_it.values()) / wall) if wall else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="es,a3c,dqn,dynaq")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--backend", default="processes", choices=["processes", "ray"])
    parser.add_argument("--sync", choices=["hogwild", "lock", "param-server"],
                        help="RL parameter store [default: hogwild on processes, param-server on ray]")
    parser.add_argument("--quick", action="store_true", help="es and a3c, 2 workers, 1k and 100k")
    args = parser.parse_args()
    if args.quick:
        args.algos, args.workers, args.sizes = "es,a3c", [2], ["1k", "100k"]
    sync = args.sync or ("param-server" if args.backend == "ray" else "hogwild")
    if args.backend == "ray":  # one local instance (127.0.0.1) for every run; each run's actors start afresh
        import os

        from esrl.backends.ray_backend import init

        init(None, num_cpus=max(max(args.workers), os.cpu_count() or 1))
    for algo in args.algos.split(","):
        for size in args.sizes:
            for workers in args.workers:
                print(json.dumps(measure(algo, workers, size, args.backend, sync)), flush=True)


if __name__ == "__main__":
    main()
