"""What every backend offers, and the traffic counters they share."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# How a backend's or pool's bulk traffic moves (its `transport` attribute)
TRANSPORTS = ("in-process", "pipe", "shared-memory", "ray", "simulated")


@dataclass
class Traffic:
    """Bytes and messages moved, by kind, in each direction (coordinator's point of view).

    `messages` counts every real message: a pipe or Ray message, or one copy into or out of
    shared memory. `startup` is the part of the bytes (already in `sent`/`received` under
    kind "state") that brought a new worker up to date: the full state a worker gets when it
    starts, joins or replaces a dead one. Subtract it to get the steady per-iteration cost.
    """

    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    received: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    messages: int = 0
    compute_s: float = 0.0  # seconds workers spent inside replica calls
    startup: int = 0

    @property
    def total(self) -> int:
        """Every byte, both directions."""
        return sum(self.sent.values()) + sum(self.received.values())

    def add(self, other: Traffic) -> None:
        """Fold another count (a worker's report) into this one."""
        for k, v in other.sent.items():
            self.sent[k] += v
        for k, v in other.received.items():
            self.received[k] += v
        self.messages += other.messages
        self.compute_s += other.compute_s
        self.startup += other.startup

    def snapshot(self) -> Traffic:
        return Traffic(defaultdict(int, self.sent), defaultdict(int, self.received), self.messages, self.compute_s,
                       self.startup)

    def since(self, before: Traffic) -> Traffic:
        return Traffic(
            defaultdict(int, {k: v - before.sent.get(k, 0) for k, v in self.sent.items()}),
            defaultdict(int, {k: v - before.received.get(k, 0) for k, v in self.received.items()}),
            self.messages - before.messages,
            self.compute_s - before.compute_s,
            self.startup - before.startup,
        )


REPORT_S = 0.1  # a free-running worker reports what it did about this often (seconds of its work)


class WorkerFailure(RuntimeError):
    """A worker raised (non-finite values included); carries the worker's own message."""

    def __init__(self, message: str, nonfinite: bool = False) -> None:
        super().__init__(message)
        self.nonfinite = nonfinite


def absorb(traffic: Traffic, client: Any) -> None:
    """Move a store client's counts into `traffic` (and zero them: reports carry deltas)."""
    for k, v in client.sent.items():
        traffic.sent[k] += v
    for k, v in client.received.items():
        traffic.received[k] += v
    client.sent.clear()
    client.received.clear()
    traffic.messages += getattr(client, "messages", 0)  # a client of a test may count bytes only
    if hasattr(client, "messages"):
        client.messages = 0


def clients_of(worker: Any, client: Any) -> list[Any]:
    """A free-running worker's store clients: the main one first, then any others (Dyna-Q's world model)."""
    return [client, *getattr(worker, "extra_clients", [])]


def count_report(backend: Any, nbytes: int) -> None:
    """A message from a worker to the coordinator (a report, or the last word of a stopping worker)."""
    backend.traffic.received["report"] += nbytes
    backend.traffic.messages += 1


def take_report(backend: Any, rep: Any, traffic: Traffic, staleness: list[int], nbytes: int) -> list[Any]:
    """Fold a worker's report message (`nbytes` long) and the traffic it carries into a backend's counters."""
    backend.staleness.extend(staleness)
    backend.traffic.add(traffic)
    count_report(backend, nbytes)
    return [] if rep is None else [rep]


class Backend(Protocol):
    """The worker protocol: what the training loops drive, the same on every backend (serial,
    processes, Ray, simulated). A backend starts its workers, moves their messages and counts every
    byte; it knows no algorithm. It runs either kind of worker, both built from a small picklable
    setup in each worker:

    - *replicas* (ES), `start(setup, state_fn)`: `setup.build()` in each worker, given the state
      `state_fn()` returns. The coordinator hands out tasks (`run`) and broadcasts what every
      replica applies (`broadcast`); `verify` compares their digests.
    - *free-running workers* (A3C, DQN, Dyna-Q), `start(setup, store=store)`: worker i is
      `setup.build_worker(i, store.client(slot))`, and does update after update (`step()`)
      against the parameter store on its own; `poll` collects their reports. `pause()` returns
      at once; from then on no worker begins a new update (one in progress may finish) until
      `resume()`; `settle()` waits for the updates in hand and returns their reports.

    A dead worker is logged in `events` and replaced (a replica with the full state, a free-running
    worker with its role and seeds on a fresh store slot); `close()` stops the workers and returns
    the reports they sent on the way out.
    """

    traffic: Traffic
    events: list[dict[str, Any]]
    staleness: list[int]  # free-running workers: versions each applied gradient was behind
    transport: str  # one of TRANSPORTS: how parameters and gradients, or tasks and results, move

    @property
    def live_workers(self) -> int: ...

    def start(self, setup: Any, state_fn: Callable[[], dict[str, Any]] | None = None, store: Any = None) -> None:
        """Replicas given `state_fn()`, or free-running workers on `store`."""

    def run(self, tasks: Sequence[Any]) -> list[Any]:
        """Results of `tasks`, in task order, whichever replica computed them."""

    def broadcast(self, message: Any) -> None:
        """Have every replica `apply(message)`."""

    def verify(self, digest: str) -> list[int]:
        """Compare every replica's digest with `digest`; resync and return the ids that differed."""

    def poll(self, timeout: float) -> list[Any]:
        """Reports of free-running workers that arrived within `timeout` seconds; handles deaths and errors."""

    def pause(self) -> None: ...

    def settle(self, timeout: float = 10.0) -> list[Any]: ...

    def resume(self) -> None: ...

    def close(self) -> list[Any]: ...
