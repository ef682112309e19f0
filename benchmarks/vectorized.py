"""ES on the vectorized backend: env steps/s against population size, beside the plain Gymnasium loop.

Two measurements, each against the plain Gymnasium loop (random actions, one env) timed in
the same run:
  1. iteration 0: for each population (64 to 65,536) the first ES iteration of CartPole-v1 is
     evaluated as one batch (CPU: numpy; CUDA when present: torch), best of a few repeats
     after a warm-up. Random initial policies make this the worst case: episodes last ~20
     steps but the longest of the batch ~150-500, and every batch step costs about the same
     whatever its width at a few hundred rows.
  2. training: the protocol of benchmarks/es_throughput.py on the vectorized backend: a run of
     --iterations ES iterations at population 256 (2 evaluation episodes each, never stopping
     on solve), env steps over the summed iteration wall time, first iteration excluded.
Run on one core:
    taskset -c 0 .venv/bin/python benchmarks/vectorized.py [--populations 64 256 ...] [--iterations 40] [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import torch

from esrl import envs
from esrl.config import ESConfig, RunConfig
from esrl.es.vectorized import ESTorchSetup
from esrl.train import train


def training(device: str, iterations: int, population: int = 256) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        run = RunConfig(env="CartPole-v1", seed=0, backend="vectorized", device=device, target_return=1e9,
                        max_seconds=0, max_iterations=iterations, eval_episodes=2, stop_on_solve=False,
                        checkpoint_every=10**9, run_dir=str(Path(tmp) / "run"))
        train(run, ESConfig(population=population), show_progress=False)
        ms = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = ms[-1]["env_steps"] - ms[0]["env_steps"]
    return {"env_steps": steps, "steps_per_s": steps / sum(m["iteration_s"] for m in ms[1:]),
            "mean_episode_length": steps / (population * (len(ms) - 1))}


def plain_loop(steps: int = 100_000) -> float:
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    env.action_space.seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--populations", type=int, nargs="+", default=[64, 256, 1024, 4096, 16384, 65536])
    parser.add_argument("--iterations", type=int, default=40, help="ES iterations of the training measurement")
    parser.add_argument("--quick", action="store_true", help="populations 64 and 1024 only, 6 training iterations")
    args = parser.parse_args()
    pops = [64, 1024] if args.quick else args.populations
    iterations = 6 if args.quick else args.iterations
    base = plain_loop()
    print(json.dumps({"bench": "vectorized", "mode": "plain_gym", "steps_per_s": base}), flush=True)
    spec = envs.spec_of("CartPole-v1")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for pop in pops:
            rep = ESTorchSetup(ESConfig(population=pop), spec, 0, device=device).build()
            out = rep.run(("pop", 0, 0, pop))  # warm-up
            dt = float("inf")
            for _ in range(max(1, min(10, 65536 // pop))):  # best of a few: the machine may be shared
                rep._cache_t = -1
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                rep.run(("pop", 0, 0, pop))
                if device == "cuda":
                    torch.cuda.synchronize()
                dt = min(dt, time.perf_counter() - t0)
            steps = int(out["lengths"].sum())
            print(json.dumps({"bench": "vectorized", "device": device, "population": pop, "steps": steps,
                              "steps_per_s": steps / dt, "ratio_vs_plain_gym": steps / dt / base,
                              "mean_episode_length": steps / pop, "longest_episode": int(out["lengths"].max()),
                              "param_bytes": rep.peak_bytes}), flush=True)
        tr = training(device, iterations)
        print(json.dumps({"bench": "vectorized", "mode": "training", "device": device, "population": 256,
                          "iterations": iterations, **tr, "ratio_vs_plain_gym": tr["steps_per_s"] / base}), flush=True)


if __name__ == "__main__":
    main()
