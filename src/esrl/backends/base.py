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


class Backend(Protocol):
    """The interface the training loops use; see the package docstring for replicas."""

    traffic: Traffic
    events: list[dict[str, Any]]
    transport: str  # one of TRANSPORTS

    @property
    def live_workers(self) -> int: ...

    def start(self, setup: Any, state_fn: Callable[[], dict[str, Any]]) -> None:
        """Build one replica per worker and give each the state `state_fn()` returns."""

    def run(self, tasks: Sequence[Any]) -> list[Any]:
        """Results of `tasks`, in task order, whichever worker computed them."""

    def broadcast(self, message: Any) -> None:
        """Have every replica `apply(message)`."""

    def verify(self, digest: str) -> list[int]:
        """Compare every replica's digest with `digest`; resync and return the ids that differed."""

    def close(self) -> None: ...


class Pool(Protocol):
    """The interface the RL training loop uses on a worker pool (or a device arrangement).

    `pause()` returns at once; from then on no worker begins a new update (one in progress
    may finish) until `resume()`. A paused pool still stops on `close()`.
    """

    traffic: Traffic
    events: list[dict[str, Any]]
    staleness: list[int]
    transport: str  # one of TRANSPORTS: how parameters and gradients (or experience) move

    @property
    def live_workers(self) -> int: ...

    def start(self) -> None: ...

    def poll(self, timeout: float) -> list[Any]: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def close(self) -> list[Any]: ...
