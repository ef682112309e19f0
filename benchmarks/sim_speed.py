"""How fast the simulated cluster runs: virtual seconds per real second, for ES and A3C at 64 and 1,024 workers.

Each point is a short simulated CartPole run (evaluations off): ES with population 2 x workers
(one mirrored pair per worker, the paper's scaling, at least 48) for 10 generations, and A3C on
a parameter server (one shard) for 200,000 env steps (`--quick`: 3 and 20,000). The cost model is
calibrated once per algorithm by its first run and read back by the others (`sim_costs`), so
calibration is outside every timing. `ratio` = virtual seconds / real seconds: above 1 the
simulator runs ahead of the cluster it models. Also each run's real env steps per second, the
figure that bounds how far a run to threshold can go on this machine. Run:
    .venv/bin/python benchmarks/sim_speed.py [--workers 64,1024] [--algos es,a3c] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import provenance
from esrl.config import A3CConfig, ESConfig, RunConfig
from esrl.train import train
from esrl.train_rl import train_rl
from sim_validation import emit


def run_once(algo: str, workers: int, out: Path, costs: str, quick: bool) -> tuple[dict, float]:
    base = dict(env="CartPole-v1", seed=0, backend="simulated", workers=workers, target_return=1e9, max_seconds=0,
                stop_on_solve=False, eval_every_steps=10**12, checkpoint_every=10**6, confirm_episodes=0,
                tensorboard=False, run_dir=str(out), preset="none", sim_costs=costs)
    t0 = time.perf_counter()
    if algo == "es":
        run = RunConfig(**base, max_iterations=3 if quick else 10)
        summary = train(run, ESConfig(population=max(48, 2 * workers)), show_progress=False)
    else:
        run = RunConfig(**base, max_env_steps=(20_000 if quick else 200_000))
        summary = train_rl("a3c", run, A3CConfig(sync="param-server"), show_progress=False)
    return summary, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="es,a3c")
    parser.add_argument("--workers", default="64,1024")
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test, not a measurement)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for algo in args.algos.split(","):
            costs = ""
            for w in (int(x) for x in args.workers.split(",")):
                if not costs:  # calibrate once, untimed: a 1-worker run of the same algorithm writes the model
                    first = Path(tmp) / f"{algo}-calibrate"
                    run_once(algo, 1, first, "", True)
                    costs = str(first / "config.json")
                print(f"run: {algo} workers={w}", file=sys.stderr, flush=True)
                summary, real = run_once(algo, w, Path(tmp) / f"{algo}-w{w}", costs, args.quick)
                virtual = summary["wall_s"]
                emit(name=f"sim_speed_{algo}_w{w}", algo=algo, workers=w, virtual_s=virtual, real_s=real,
                     ratio=virtual / real, env_steps=summary["env_steps"],
                     real_env_steps_per_s=summary["env_steps"] / real, **provenance.stamp())


if __name__ == "__main__":
    main()
