"""The simulated network: one hub, a full-duplex link per node, and per-message latency.

A message of n bytes from a to b holds a's uplink and then b's downlink for its wire bytes /
bandwidth seconds (each link serves one message at a time, first come first served, so a busy
coordinator or parameter-server shard queues what it sends and receives), then arrives
`latency` later. Nodes are any hashable names: ("coordinator",), ("worker", i), ("shard", k).

Wire bytes are what TCP over IPv4 over Ethernet puts on the link (`Framing`): the message cut
into segments of at most 1,448 bytes, each with 90 bytes of headers, preamble and gap, and one
ACK frame per two segments on the reverse links (b's uplink and a's downlink). ACKs go out in
a link's idle time; what is left of them when the next message takes the link delays that
message. On an idle link a large message thus moves at 94% of the bit rate (Gigabit Ethernet's
familiar 941 Mbit/s of TCP goodput), a message of a few bytes costs a whole frame, and ACKs
cost time only on a busy link. What esrl counts as traffic stays the messages' own bytes.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import simpy

from esrl.sim.framing import ETHERNET, Framing

COORDINATOR = ("coordinator",)


@dataclass(frozen=True)
class NetSpec:
    """Bandwidth in bytes/s of each link and direction, latency in seconds per message, framing."""

    bandwidth: float
    latency: float
    framing: Framing = ETHERNET

    @classmethod
    def of(cls, run: Any) -> NetSpec:
        return cls(run.bandwidth_gbit * 1e9 / 8, run.latency_us * 1e-6)


class Network:
    """The links of every node, created when a node first sends or receives."""

    def __init__(self, env: simpy.Environment, spec: NetSpec) -> None:
        self.env, self.spec = env, spec
        self._links: dict[tuple[Any, str], simpy.Resource] = {}
        # per link: ACK bytes not yet sent, and the time from which the link is free to send them
        self._acks: dict[tuple[Any, str], list[float]] = {}
        self._sizes: dict[int, tuple[float, float]] = {}  # message bytes -> (wire, ACK) bytes

    def link(self, node: Any, direction: str) -> simpy.Resource:
        key = (node, direction)
        if key not in self._links:
            self._links[key] = simpy.Resource(self.env, capacity=1)
        return self._links[key]

    def _drain(self, key: tuple[Any, str]) -> list[float]:
        """The link's ACK backlog after sending what its idle time since it was last busy allowed."""
        acks = self._acks.get(key)
        if acks is None:  # no list built per call: this runs on every transfer
            acks = self._acks[key] = [0.0, 0.0]
        if self.env.now > acks[1]:
            acks[0] = max(0.0, acks[0] - (self.env.now - acks[1]) * self.spec.bandwidth)
            acks[1] = self.env.now
        return acks

    def transfer(self, src: Any, dst: Any, nbytes: int) -> Generator[Any, Any, None]:
        """Move a message; the process resumes when it has arrived."""
        if nbytes not in self._sizes:
            f = self.spec.framing
            self._sizes[nbytes] = (float(f.wire_bytes(nbytes)), float(f.ack_bytes(nbytes)))
        wire, ack = self._sizes[nbytes]
        with self.link(src, "up").request() as up:
            yield up
            with self.link(dst, "down").request() as down:
                yield down
                held = [self._drain((src, "up")), self._drain((dst, "down"))]
                # the ACKs still queued on either link go out first (each link's own, in parallel)
                seconds = (wire + max(held[0][0], held[1][0])) / self.spec.bandwidth
                for acks in held:
                    acks[0], acks[1] = 0.0, self.env.now + seconds
                yield self.env.timeout(seconds)
        if ack:
            for key in ((dst, "up"), (src, "down")):
                self._drain(key)[0] += ack
        yield self.env.timeout(self.spec.latency)


def tree_parent(i: int, fanout: int) -> int:
    """The node that relays the broadcast to worker i (-1: the coordinator); workers form a heap."""
    return i // fanout - 1 if i >= fanout else -1
