"""What every backend offers, and the traffic counters they share."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Traffic:
    """Bytes and messages moved, by kind, in each direction (coordinator's point of view)."""

    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    received: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    messages: int = 0
    compute_s: float = 0.0  # seconds workers spent inside replica calls

    def snapshot(self) -> Traffic:
        return Traffic(defaultdict(int, self.sent), defaultdict(int, self.received), self.messages, self.compute_s)

    def since(self, before: Traffic) -> Traffic:
        return Traffic(
            defaultdict(int, {k: v - before.sent.get(k, 0) for k, v in self.sent.items()}),
            defaultdict(int, {k: v - before.received.get(k, 0) for k, v in self.received.items()}),
            self.messages - before.messages,
            self.compute_s - before.compute_s,
        )


class Backend(Protocol):
    """The interface the training loops use; see the package docstring for replicas."""

    traffic: Traffic
    events: list[dict[str, Any]]

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
