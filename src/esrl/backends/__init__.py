"""Execution backends: they move work, state and bytes, and know no algorithm.

A backend drives *replicas*: objects built in each worker from a small picklable setup
(`setup.build()`), with `run(task) -> result`, `apply(message)`, `get_state()`,
`set_state(state)` and `digest()`. The algorithm defines the replica; the backend only
ships tasks, results and broadcasts, and counts every byte it moves.
"""

from __future__ import annotations

import os
from typing import Any

from esrl.backends.base import Backend
from esrl.errors import InputError

BACKENDS = ("serial", "processes", "ray")


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def make_backend(name: str, workers: int, **kwargs: Any) -> Backend:
    """The backend called `name` with `workers` workers (0 = one per core)."""
    if name == "serial":
        from esrl.backends.serial import SerialBackend

        return SerialBackend()
    if name == "processes":
        from esrl.backends.processes import ProcessBackend

        return ProcessBackend(workers or default_workers(), **kwargs)
    if name == "ray":
        from esrl.backends.ray_backend import RayBackend

        return RayBackend(workers, **kwargs)
    raise InputError("backend", f"unknown backend {name!r}", ", ".join(BACKENDS))
