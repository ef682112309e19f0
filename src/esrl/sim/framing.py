"""What TCP over IPv4 over Ethernet puts on a link for a message: segments, their headers, the ACKs.

Shared by the simulated network (`sim.network`) and the closed-form scaling model
(`experiments.model`), so both price traffic alike; numpy only, so the report needs no SimPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Framing:
    """TCP/IPv4 on Ethernet with a 1,500-byte MTU: `mss` payload bytes per segment; `frame` bytes a
    segment adds on the wire (IPv4 20 + TCP 20 + timestamps 12; Ethernet header 14, FCS 4, preamble 8,
    inter-frame gap 12); `ack` bytes of a bare ACK (a minimum 64-byte frame + preamble and gap),
    one per `ack_every` segments (delayed ACKs). `Framing(frame=0, ack=0)`: payload only."""

    mss: int = 1448
    frame: int = 90
    ack: int = 84
    ack_every: int = 2

    def segments(self, nbytes: Any, messages: Any = 1.0) -> Any:
        """Segments for `messages` messages of `nbytes` bytes in all, taken as equal in size (one
        message: exact); floats or numpy arrays."""
        m = np.asarray(messages, float)
        each = np.asarray(nbytes, float) / np.where(m > 0, m, 1.0)
        return np.where(m > 0, m * np.maximum(1.0, np.ceil(each / self.mss)), 0.0)

    def wire_bytes(self, nbytes: Any, messages: Any = 1.0) -> Any:
        """Bytes the messages put on the sending direction's link."""
        return nbytes + self.frame * self.segments(nbytes, messages)

    def ack_bytes(self, nbytes: Any, messages: Any = 1.0) -> Any:
        """Bytes the receiver's ACKs put on the reverse direction: one per `ack_every` segments of a message."""
        m = np.asarray(messages, float)
        each = self.segments(nbytes, messages) / np.where(m > 0, m, 1.0)
        return np.where(m > 0, self.ack * m * np.ceil(each / self.ack_every), 0.0)


ETHERNET = Framing()
