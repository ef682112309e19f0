"""The search spaces of `esrl tune`: per algorithm, each setting's range and the reason for it (docs/zoo.md)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched setting: a range (low..high, log-uniform when `log`; integers when both ends are ints)
    or a set of `choices`; `why` is the one-line reason for the range (docs/zoo.md shows it)."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    why: str = ""


_DQN_SPACE = (
    Param("lr", 1e-4, 5e-3, log=True, why="the RL Zoo's DQN settings use 1e-4 (Atari) to 4e-3 (MountainCar), with Adam"),
    Param("gamma", choices=(0.95, 0.98, 0.99, 0.995, 0.999), why="the RL Zoo's sampler choices; short horizons "
          "learn faster where rewards are dense"),
    Param("batch_size", choices=(32, 64, 128, 256), why="the RL Zoo's sampler range (16-512), cut at 256: a "
          "bigger batch slows every hogwild update on a CPU worker"),
    Param("buffer_size", choices=(10_000, 50_000, 100_000), why="per worker with local replay; the RL Zoo's "
          "classic-control settings use 10k-100k"),
    Param("learning_starts", choices=(500, 1_000, 5_000), why="between the largest batch and the smallest buffer, "
          "so every pair is valid"),
    Param("n_steps", 1, 8, log=True, why="env steps per update per worker, around the DQN paper's update every "
          "4 actions; more per update trade sample efficiency for speed"),
    Param("target_update", 10, 2_000, log=True, why="global updates between refreshes: the RL Zoo's settings "
          "refresh every 300-2,500 gradient steps, and small envs want fewer"),
    Param("eps_final", 0.01, 0.2, why="the RL Zoo's sampler range (0-0.2), above 0 so that worker i's "
          "eps_final^(1 + i/(N-1)) stays a spread"),
    Param("eps_decay_steps", 1_000, 50_000, log=True, why="per worker; the RL Zoo's classic-control settings "
          "decay over 9k-40k env steps"),
    Param("hidden", choices=("64", "64,64", "128,128", "256,256"), why="the RL Zoo's tiny, small and medium "
          "networks and 128 between (its MountainCar setting uses 2x256)"),
)

SPACES: dict[str, tuple[Param, ...]] = {
    "es": (
        Param("population", 16, 256, log=True, why="tens to hundreds of members on a few cores (the paper's "
              "runs used thousands on hundreds); rounded up to even when mirrored"),
        Param("sigma", 0.005, 0.3, log=True, why="the paper's 0.02 on MuJoCo to CartPole's 0.1; smaller noise "
              "does not move a return, larger leaves the local linear regime"),
        Param("lr", 0.002, 0.2, log=True, why="Adam on the flat vector: the paper's 0.01 to CartPole's 0.05, "
              "a factor 4-5 beyond each"),
        Param("l2", 1e-5, 1e-2, log=True, why="the paper's l2coeff 0.005 and a decade either side"),
        Param("hidden", choices=("linear", "16", "32", "32,32", "64,64"), why="a linear policy (ARS's on MuJoCo) "
              "and small MLPs up to the paper's 2x64 MuJoCo policy; ES's search slows with every parameter"),
        Param("common_seeds", choices=("none", "pair"), why="whether a mirrored pair starts from one state, so "
              "its difference in return is the perturbation's; matters where start states vary the return"),
    ),
    "a3c": (
        Param("lr", 1e-4, 3e-3, log=True, why="the A3C paper's LogUniform(1e-4, 1e-2), cut at 3e-3: the "
              "RL Zoo's A2C settings are 7e-4 to 1e-3"),
        Param("gamma", choices=(0.95, 0.98, 0.99, 0.995, 0.999), why="the RL Zoo's A2C choices around the "
              "papers' 0.99"),
        Param("n_steps", 3, 32, log=True, why="the A3C paper's t_max 5 (many Atari implementations use 20); "
              "longer returns carry sparse rewards further back"),
        Param("gae_lambda", 0.8, 1.0, why="the RL Zoo's range; 1.0 is the paper's plain n-step return"),
        Param("entropy_coef", 1e-5, 0.1, log=True, why="the A3C paper's 0.01 in a range like the RL Zoo's "
              "(1e-8 to 0.1)"),
        Param("value_coef", 0.1, 1.0, why="the RL Zoo's vf_coef range (0-1), above 0 so the critic learns"),
        Param("max_grad_norm", 0.3, 5.0, log=True, why="the RL Zoo's choices 0.3-5"),
        Param("envs_per_worker", 1, 16, log=True, why="A2C-style batches per worker: one forward for all, "
              "decorrelated updates"),
        Param("hidden", choices=("64,64", "128,128", "256,256"), why="the RL Zoo's small and medium networks"),
    ),
    "dqn": _DQN_SPACE,
    "dynaq": (
        *_DQN_SPACE,
        Param("planning_ratio", 0.25, 8.0, log=True, why="imagined per real transition; Sutton and Barto's "
              "Dyna-Q maze plans 5 and 50, bounded here by the planners' time"),
        Param("model_lr", 1e-4, 3e-3, log=True, why="the world model's Adam rate, around the default 1e-3"),
        Param("model_hidden", choices=("64,64", "128,128", "256,256"), why="as the Q-network's sizes"),
    ),
}


def markdown(algo: str, space: tuple[Param, ...] | None = None) -> str:
    """The search space of `algo` as a markdown table (docs/zoo.md, "esrl tune")."""
    rows = ["| setting | range | why |", "| --- | --- | --- |"]
    for p in SPACES[algo] if space is None else space:
        rng = (", ".join(f"`{c}`" for c in p.choices) if p.choices
               else f"{p.low:g} .. {p.high:g}{' (log)' if p.log else ''}")
        rows.append(f"| `{p.name}` | {rng} | {p.why} |")
    return "\n".join(rows)
