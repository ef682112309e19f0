"""Parameter-server store: server processes own the parameters, optionally split into shards.

Workers send gradients and pull parameters over pipes with a raw binary framing (no
pickle): a one-byte kind, then little-endian int64 header fields, then float32 payload.
Each worker slot has its own pipe to every shard, allocated up front (workers plus
spares for replacements), so a replacement never inherits a pipe a dead worker may have
left half-written.
"""

from __future__ import annotations

import itertools
import struct
from collections import defaultdict
from multiprocessing.connection import Connection, wait
from typing import Any, cast

import numpy as np
import torch

from esrl.rl import optim
from esrl.rl.optim import OptimSpec

_Q = struct.Struct("<q")
_QQ = struct.Struct("<qq")


def _floats(data: bytes | bytearray | memoryview, offset: int) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype=np.float32, offset=offset).copy())


class Shard:
    """One slice's parameters, optimizer state and version; answers the framed messages.

    The same object serves the server processes here and the Ray shard actors
    (`stores/ray_store.py`), so both transports apply, version and count alike. `key`
    names the asking client: each client learns the staleness of its own pushes.
    """

    def __init__(self, params: torch.Tensor, spec: OptimSpec) -> None:
        self.params, self.spec = params, spec
        self.state = spec.init_state(params.numel())
        self.version = 0
        self.pending: dict[Any, list[int]] = defaultdict(list)

    def handle(self, key: Any, data: bytes | bytearray | memoryview) -> bytes | None:
        """Apply or answer one message; the reply to send back, if the message asks for one."""
        kind = bytes(data[:1])
        if kind == b"g":  # gradient: version it was computed at, then the slice
            (v,) = _Q.unpack_from(data, 1)
            self.pending[key].append(self.version - v)
            self.version += 1
            optim.apply(self.spec, self.params, _floats(data, 9), self.state, self.version)
            return None
        if kind == b"p":  # pull: version, staleness of this client's pushes since, parameters
            st = np.asarray(self.pending.pop(key, []), np.int64)
            return _QQ.pack(self.version, st.size) + st.tobytes() + self.params.numpy().tobytes()
        if kind == b"s":  # snapshot for the coordinator
            parts = (self.params, self.state["m"], self.state["v"])
            return _Q.pack(self.version) + b"".join(t.numpy().tobytes() for t in parts)
        if kind == b"l":  # load a snapshot
            (self.version,) = _Q.unpack_from(data, 1)
            n = self.params.numel()
            flat = _floats(data, 9)
            self.params.copy_(flat[:n])
            self.state["m"].copy_(flat[n : 2 * n])
            self.state["v"].copy_(flat[2 * n :])
            return b"k"
        raise ValueError(f"unknown message kind {kind!r}")

    def forget(self, key: Any) -> None:
        self.pending.pop(key, None)


def _server_main(params: torch.Tensor, spec: OptimSpec, conns: list[Connection], control: Connection,
                 foreign: list[Connection]) -> None:
    import signal

    from esrl.shm import die_with_parent

    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator stops the servers; Ctrl-C is not theirs
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)
    for c in foreign:  # pipe ends this server must not hold, or it would never see a dead worker's EOF
        c.close()
    shard = Shard(params, spec)
    alive = [*conns, control]

    def reply(c: Connection, data: bytes) -> None:
        try:
            c.send_bytes(data)
        except OSError:  # the asker died before reading: drop its pipe, serve the others
            if c in alive:
                alive.remove(c)
            shard.forget(c)

    while alive:
        for ready in wait(alive):
            c = cast(Connection, ready)
            try:
                data = c.recv_bytes()
            except (EOFError, OSError):
                alive.remove(c)
                continue
            if data[:1] == b"x":
                return
            answer = shard.handle(c, data)
            if answer is not None:
                reply(c, answer)


def shard_slices(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous, nearly equal slices of an n-vector, one per shard (at most n shards)."""
    bounds = np.linspace(0, n, max(1, min(shards, n)) + 1).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


class ServerStore:
    """`shards` server processes, each owning a contiguous slice of the parameter vector."""

    transport = "pipe"

    def __init__(self, params: torch.Tensor, spec: OptimSpec, ctx: Any, slots: int, shards: int = 1) -> None:
        flat = params.detach().float().clone()
        self.n = flat.numel()
        self.slices = shard_slices(self.n, shards)
        self._worker_ends: list[list[Connection]] = [[] for _ in range(slots)]
        server_ends: list[list[Connection]] = []
        pairs = []
        for _ in self.slices:
            ends = []
            for slot in range(slots):
                a, b = ctx.Pipe(duplex=True)
                ends.append(a)
                self._worker_ends[slot].append(b)
            server_ends.append(ends)
            pairs.append(ctx.Pipe(duplex=True))
        self._controls = [cb for _, cb in pairs]
        every = [c for ends in server_ends for c in ends] + [c for pair in pairs for c in pair] + [
            c for ends in self._worker_ends for c in ends]
        self._procs = []
        for k, (lo, hi) in enumerate(self.slices):
            mine = {id(c) for c in [*server_ends[k], pairs[k][0]]}
            proc = ctx.Process(target=_server_main, args=(flat[lo:hi].clone(), spec, server_ends[k], pairs[k][0],
                                                          [c for c in every if id(c) not in mine]), daemon=True)
            proc.start()
            self._procs.append(proc)
        for c in [c for ends in server_ends for c in ends] + [ca for ca, _ in pairs]:
            c.close()  # the servers hold these now

    def client(self, slot: int) -> ServerClient:
        others = [c for s, ends in enumerate(self._worker_ends) if s != slot for c in ends]
        return ServerClient(self._worker_ends[slot], self.slices, others)

    def release(self, slot: int) -> None:
        """The worker of `slot` has started: drop this process's copy of its pipe ends."""
        for c in self._worker_ends[slot]:
            c.close()

    def snapshot(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        parts = []
        for c in self._controls:
            c.send_bytes(b"s")
            parts.append(c.recv_bytes())
        params, m, v, versions = [], [], [], []
        for (lo, hi), data in zip(self.slices, parts, strict=True):
            k = hi - lo
            (ver,) = _Q.unpack_from(data, 0)
            flat = _floats(data, 8)
            params.append(flat[:k])
            m.append(flat[k : 2 * k])
            v.append(flat[2 * k :])
            versions.append(ver)
        return torch.cat(params), {"m": torch.cat(m), "v": torch.cat(v)}, min(versions)

    def load(self, params: torch.Tensor, state: dict[str, torch.Tensor], version: int) -> None:
        for c, (lo, hi) in zip(self._controls, self.slices, strict=True):
            body = b"".join(t[lo:hi].float().numpy().tobytes() for t in (params, state["m"], state["v"]))
            c.send_bytes(b"l" + _Q.pack(int(version)) + body)
            c.recv_bytes()

    def close(self) -> None:
        for c in self._controls:
            try:
                c.send_bytes(b"x")
            except OSError:
                pass
        for p in self._procs:
            p.join(2)
            if p.is_alive():
                p.kill()


class ServerClient:
    """A worker's pipes to every shard; counts the bytes and messages it sends and receives.

    Every framed message on a shard's pipe is one message: a pull is a request and a reply
    per shard (2 x shards), a push one gradient slice per shard (shards).
    """

    def __init__(self, conns: list[Connection], slices: list[tuple[int, int]],
                 others: list[Connection] | None = None) -> None:
        self.conns, self.slices, self._others = conns, slices, others or []
        self.sent: dict[str, int] = defaultdict(int)
        self.received: dict[str, int] = defaultdict(int)
        self.messages = 0
        self.staleness: list[int] = []
        self._versions = [0] * len(conns)

    def on_start(self) -> None:
        """In the worker's process: close the other slots' pipe ends inherited through fork."""
        for c in self._others:
            c.close()
        self._others = []

    def pull(self, out: torch.Tensor) -> int:
        for c in self.conns:
            c.send_bytes(b"p")
        self.sent["requests"] += len(self.conns)
        self.messages += 2 * len(self.conns)
        flat = out.view(-1)
        for i, (c, (lo, hi)) in enumerate(zip(self.conns, self.slices, strict=True)):
            data = c.recv_bytes()
            self.received["parameters"] += len(data)
            version, n_st = _QQ.unpack_from(data, 0)
            self._versions[i] = version
            if i == 0 and n_st:
                self.staleness.extend(np.frombuffer(data, np.int64, n_st, 16).tolist())
            flat[lo:hi] = _floats(data, 16 + 8 * n_st)
        return self._versions[0]

    def push(self, grad: torch.Tensor, version: int) -> None:
        g = grad.detach().float().contiguous().numpy()
        for i, (c, (lo, hi)) in enumerate(zip(self.conns, self.slices, strict=True)):
            # each shard counts versions of its own; the gradient was computed at the versions pulled
            msg = b"g" + _Q.pack(self._versions[i]) + g[lo:hi].tobytes()
            c.send_bytes(msg)
            self.sent["gradients"] += len(msg)
        self.messages += len(self.conns)
