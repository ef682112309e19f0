"""The reference backend: every worker in this process, nothing serialized, an exactly reproducible order.

Replicas: one replica runs the tasks in order. Free-running workers: `poll` is one round, every
worker doing one update in turn (none while paused). Their store clients still count each pull
and push (copies within this process), so their messages per update match the processes
backend's on a shared-memory store; no bytes move between processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from esrl.backends.base import Traffic, WorkerFailure, absorb, clients_of
from esrl.errors import NonFiniteError


class SerialBackend:
    """The workers in the calling process; see the module docstring."""

    transport = "in-process"

    def __init__(self, workers: int = 1) -> None:
        self.n = workers
        self.traffic = Traffic()
        self.events: list[dict[str, Any]] = []
        self.staleness: list[int] = []
        self._replica: Any = None
        self._state_fn: Callable[[], dict[str, Any]] | None = None
        self._workers: list[Any] = []
        self._clients: list[Any] = []
        self._paused = False

    @property
    def live_workers(self) -> int:
        return self.n

    def start(self, setup: Any, state_fn: Callable[[], dict[str, Any]] | None = None, store: Any = None) -> None:
        if store is None:
            assert state_fn is not None
            self._state_fn = state_fn
            self._replica = setup.build()
            self._replica.set_state(state_fn())
            return
        self._clients = [store.client(w) for w in range(self.n)]
        self._workers = [setup.build_worker(w, c) for w, c in zip(range(self.n), self._clients, strict=True)]

    # --- replicas ---------------------------------------------------------------------------
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
        assert self._state_fn is not None
        self._replica.set_state(self._state_fn())
        self.events.append({"event": "resync", "worker": 0})
        return [0]

    # --- free-running workers ---------------------------------------------------------------
    def pause(self) -> None:
        """Nothing runs between polls here anyway; a poll while paused does nothing."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def settle(self, timeout: float = 10.0) -> list[Any]:
        """Nothing is in flight between rounds."""
        return []

    def poll(self, timeout: float) -> list[Any]:
        """One round: every worker does one update (none while paused)."""
        if self._paused:
            return []
        reports = []
        for w, c in zip(self._workers, self._clients, strict=True):
            t0 = time.perf_counter()
            try:
                reports.append(w.step())
            except Exception as exc:
                if isinstance(exc, NonFiniteError):
                    raise WorkerFailure(f"worker {w.wid}, update {w.updates}: {exc}", nonfinite=True) from None
                raise
            self.traffic.compute_s += time.perf_counter() - t0
            for k, client in enumerate(clients_of(w, c)):
                absorb(self.traffic, client)
                if k == 0:
                    self.staleness.extend(client.staleness)
                client.staleness = []
        return reports

    def close(self) -> list[Any]:
        # the vectorized replica's largest batch of parameter rows, for the run summary
        self.peak_bytes = getattr(self._replica, "peak_bytes", None)
        self._replica = None
        self._workers = []
        return []
