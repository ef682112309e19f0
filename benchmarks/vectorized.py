"""ES on the vectorized backend: env steps/s against population size, beside the plain Gymnasium loop.

For each population (64 to 65,536) one ES iteration of CartPole-v1 is evaluated as one batch
of torch envs on the device (CPU, one thread; CUDA when present), after a warm-up
iteration; the plain Gymnasium loop (random actions, one env) is measured in the same run.
Prints one JSON line per (device, population) with steps/s, the ratio to the plain loop,
the mean episode length and the parameter memory of the batch. Run:
    .venv/bin/python benchmarks/vectorized.py [--populations 64 256 ...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import torch

from esrl import envs
from esrl.config import ESConfig
from esrl.es.vectorized import ESTorchSetup


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
    parser.add_argument("--quick", action="store_true", help="populations 64 and 1024 only")
    args = parser.parse_args()
    pops = [64, 1024] if args.quick else args.populations
    base = plain_loop()
    print(json.dumps({"bench": "vectorized", "mode": "plain_gym", "steps_per_s": base}), flush=True)
    spec = envs.spec_of("CartPole-v1")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for pop in pops:
            rep = ESTorchSetup(ESConfig(population=pop), spec, 0, device=device).build()
            rep.run(("pop", 0, 0, pop))  # warm-up
            rep._cache_t = -1
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = rep.run(("pop", 0, 0, pop))
            if device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            steps = int(out["lengths"].sum())
            print(json.dumps({"bench": "vectorized", "device": device, "population": pop, "steps": steps,
                              "steps_per_s": steps / dt, "ratio_vs_plain_gym": steps / dt / base,
                              "mean_episode_length": steps / pop, "param_bytes": rep.peak_bytes}), flush=True)


if __name__ == "__main__":
    main()
