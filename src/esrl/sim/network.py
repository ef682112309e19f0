"""The simulated network: one hub, a full-duplex link per node, and per-message latency.

A message of n bytes from a to b holds a's uplink and then b's downlink for n / bandwidth
seconds (each link serves one message at a time, first come first served, so a busy
coordinator or parameter-server shard queues what it sends and receives), then arrives
`latency` later. Nodes are any hashable names: ("coordinator",), ("worker", i), ("shard", k).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import simpy

COORDINATOR = ("coordinator",)


@dataclass(frozen=True)
class NetSpec:
    """Bandwidth in bytes/s of each link and direction, latency in seconds per message."""

    bandwidth: float
    latency: float

    @classmethod
    def of(cls, run: Any) -> NetSpec:
        return cls(run.bandwidth_gbit * 1e9 / 8, run.latency_us * 1e-6)


class Network:
    """The links of every node, created when a node first sends or receives."""

    def __init__(self, env: simpy.Environment, spec: NetSpec) -> None:
        self.env, self.spec = env, spec
        self._links: dict[tuple[Any, str], simpy.Resource] = {}

    def link(self, node: Any, direction: str) -> simpy.Resource:
        key = (node, direction)
        if key not in self._links:
            self._links[key] = simpy.Resource(self.env, capacity=1)
        return self._links[key]

    def transfer(self, src: Any, dst: Any, nbytes: int) -> Generator[Any, Any, None]:
        """Move a message; the process resumes when it has arrived."""
        wire = nbytes / self.spec.bandwidth
        with self.link(src, "up").request() as up:
            yield up
            with self.link(dst, "down").request() as down:
                yield down
                yield self.env.timeout(wire)
        yield self.env.timeout(self.spec.latency)


def tree_parent(i: int, fanout: int) -> int:
    """The node that relays the broadcast to worker i (-1: the coordinator); workers form a heap."""
    return i // fanout - 1 if i >= fanout else -1
