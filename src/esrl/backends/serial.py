"""The reference backend: one replica in this process, tasks run in order, nothing serialized."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from esrl.backends.base import Traffic


class SerialBackend:
    """Runs every task in the calling process; moves no bytes and sends no messages."""

    transport = "in-process"

    def __init__(self) -> None:
        self.traffic = Traffic()
        self.events: list[dict[str, Any]] = []
        self._replica: Any = None

    @property
    def live_workers(self) -> int:
        return 1

    def start(self, setup: Any, state_fn: Callable[[], dict[str, Any]]) -> None:
        self._state_fn = state_fn
        self._replica = setup.build()
        self._replica.set_state(state_fn())

    def run(self, tasks: Sequence[Any]) -> list[Any]:
        t0 = time.perf_counter()
        out = [self._replica.run(task) for task in tasks]
        self.traffic.compute_s += time.perf_counter() - t0
        return out

    def broadcast(self, message: Any) -> None:
        self._replica.apply(message)

    def verify(self, digest: str) -> list[int]:
        if self._replica.digest() == digest:
            return []
        self._replica.set_state(self._state_fn())
        self.events.append({"event": "resync", "worker": 0})
        return [0]

    def close(self) -> None:
        # the vectorized replica's largest batch of parameter rows, for the run summary
        self.peak_bytes = getattr(self._replica, "peak_bytes", None)
        self._replica = None
