"""Execution backends: they start workers, move work, state and bytes, and know no algorithm.

One worker protocol (`base.Backend`), driven the same way on every backend: serial, processes,
Ray and simulated. Workers are built in each worker from a small picklable setup and are of
two kinds. *Replicas* (ES: `setup.build()`, with `run(task) -> result`, `apply(message)`,
`get_state()`, `set_state(state)` and `digest()`): the coordinator ships tasks, results and
broadcasts. *Free-running workers* (A3C, DQN, Dyna-Q: `setup.build_worker(index, client)`,
with `step() -> report`): each updates a parameter store on its own and the coordinator
collects their reports. The algorithm defines the worker; the backend counts every byte it moves.
"""

from __future__ import annotations

import os
from typing import Any

from esrl.backends.base import Backend
from esrl.errors import InputError

BACKENDS = ("serial", "processes", "ray")  # and "simulated", which the training loops build with its cost model


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def make_backend(name: str, workers: int, **kwargs: Any) -> Backend:
    """The backend called `name` with `workers` workers (0 = one per core)."""
    if name == "serial":
        from esrl.backends.serial import SerialBackend

        return SerialBackend(workers or 1)
    if name == "processes":
        from esrl.backends.processes import ProcessBackend

        return ProcessBackend(workers or default_workers(), **kwargs)
    if name == "ray":
        from esrl.backends.ray_backend import RayBackend

        return RayBackend(workers, **kwargs)
    raise InputError("backend", f"unknown backend {name!r}", ", ".join(BACKENDS))
