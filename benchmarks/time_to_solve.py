"""Time-to-threshold over seeds, per algorithm, sync mode and worker count; optionally beside
Stable-Baselines3 A2C and DQN measured in the same run on the same machine.

Each combination is a fresh run with default hyperparameters on the `processes` backend,
measured by esrl's protocol (esrl.protocol): evaluations every `eval_every_steps` training
env steps, stopping at the first at or above the target, or at --max-seconds. A run counts as
solved only when that solve is confirmed on 100 fresh episodes. Time-to-threshold is the run's
own `time_to_threshold_s`: training time, worker start-up included, evaluations excluded.
Seeds are interleaved across configurations so that machine drift affects all alike.

Prints one JSON line per run and one summary line per configuration: confirmed solves, median
time-to-threshold (unconfirmed runs count as infinitely slow; null when the median is
unsolved) and, per algorithm, the speedup median(fewest workers) / median(this count). Run:
    .venv/bin/python benchmarks/time_to_solve.py [--algos es,a3c,dqn,dynaq] [--sync hogwild,lock,param-server]
        [--env CartPole-v1] [--target 475] [--seeds 5] [--workers 1 2] [--max-seconds 60] [--sb3] [--quick]
        [--backend vectorized --device cpu --population 256]  (ES on one device; run under `taskset -c 0`)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import provenance
from esrl.config import ALGORITHMS, RunConfig


def emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


def solve(algo: str, sync: str | None, env: str, target: float, seed: int, workers: int, max_seconds: float,
          backend: str = "processes", device: str = "auto", population: int = 0, options: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    print(f"run: {algo} sync={sync} env={env} seed={seed} workers={workers} {options or ''}", file=sys.stderr,
          flush=True)
    cfg = ALGORITHMS[algo]() if sync is None else ALGORITHMS[algo](sync=sync)
    cfg = dataclasses.replace(cfg, **{k: v for k, v in (options or {}).items() if hasattr(cfg, k)})
    if algo == "es" and population:
        cfg.population = population
    if algo == "es" and backend == "vectorized":
        import esrl.es.vectorized  # noqa: F401  (imported before the clock starts, as the esrl command does)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunConfig(env=env, seed=seed, backend=backend if algo == "es" else "processes", device=device,
                        workers=workers, target_return=target, max_seconds=max_seconds,
                        run_dir=str(Path(tmp) / "run"))
        if algo == "es":
            from esrl.train import train

            return train(run, cfg, show_progress=False)
        from esrl.train_rl import train_rl

        return train_rl(algo, run, cfg, show_progress=False)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _applicable(algo: str, options: dict[str, Any]) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(ALGORITHMS[algo])} if algo in ALGORITHMS else set()
    return {k: v for k, v in options.items() if k in fields}


def summarize(times: list[float]) -> tuple[int, float | None]:
    med = statistics.median(times)
    return sum(math.isfinite(t) for t in times), (med if math.isfinite(med) else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="es", help="comma-separated: es, a3c, dqn, dynaq")
    parser.add_argument("--sync", default="hogwild", help="comma-separated sync modes for the RL algorithms")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--target", type=float, default=475.0, help="evaluation return that counts as solved")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="wall-clock budget per run")
    parser.add_argument("--sb3", nargs="?", const="a2c,dqn", default="", metavar="a2c,dqn",
                        help="also time Stable-Baselines3's A2C and/or DQN (needs [bench]; default both)")
    parser.add_argument("--backend", default="processes", help="ES backend: processes, vectorized, serial, ray")
    parser.add_argument("--device", default="auto", help="torch device of ES's vectorized backend and RL's device "
                        "arrangements (--sync ga3c / device)")
    parser.add_argument("--population", type=int, default=0, help="ES population (0: the default)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="an algorithm setting for every algorithm that has it (repeatable); recorded per run")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 12 s budget per run")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.max_seconds = 1, 12.0
    options = {k: _value(v) for k, v in (o.split("=", 1) for o in args.option)}
    emit(bench="time_to_solve_meta", commit=provenance.commit(), date=time.strftime("%Y-%m-%d"), cpus=os.cpu_count(),
         load_avg_1m=os.getloadavg()[0], backend=args.backend, seeds=args.seeds, max_seconds=args.max_seconds)

    configs: list[tuple[str, str | None, int]] = []
    for algo in args.algos.split(","):
        syncs = [None] if algo == "es" else args.sync.split(",")
        configs += [(algo, s, w) for s in syncs for w in args.workers]
    if args.sb3:
        configs += [(f"sb3-{a}", None, 1) for a in args.sb3.split(",")]
    times: dict[tuple[str, str | None, int], list[float]] = {c: [] for c in configs}
    for seed in range(args.seeds):
        for algo, sync, workers in configs:
            if algo.startswith("sb3-"):
                from sb3_baseline import time_to_solve

                s = time_to_solve(algo[4:], args.env, args.target, seed, args.max_seconds)
            else:
                s = solve(algo, sync, args.env, args.target, seed, workers, args.max_seconds, args.backend,
                          args.device, args.population, options)
            emit(bench="time_to_solve", algo=algo, sync=sync, env=args.env, target=args.target, workers=workers,
                 backend=args.backend if algo == "es" else ("in-process" if algo.startswith("sb3-") else "processes"),
                 options=_applicable(algo, options), seed=seed, env_steps_to_threshold=s.get("env_steps_to_threshold"),
                 solved=s["solved"], confirmed=s.get("confirmed"), confirmed_return=s.get("confirmed_return"),
                 time_to_threshold_s=s["time_to_threshold_s"], env_steps=s.get("env_steps"), wall_s=s["wall_s"],
                 best_eval_return=s.get("best_eval_return"))
            times[(algo, sync, workers)].append(s["time_to_threshold_s"] if s.get("confirmed") else math.inf)
    for (algo, sync, workers), ts in times.items():
        solved, med = summarize(ts)
        base = times.get((algo, sync, min(args.workers)))
        base_med = summarize(base)[1] if base else None
        emit(bench="time_to_solve_summary", algo=algo, sync=sync, env=args.env, target=args.target, workers=workers,
             seeds=args.seeds, max_seconds=args.max_seconds, solved=solved, median_time_to_threshold_s=med,
             speedup_vs_fewest_workers=(base_med / med) if (base_med and med) else None)


if __name__ == "__main__":
    main()
