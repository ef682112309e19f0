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
    state = spec.init_state(params.numel())
    version = 0
    pending: dict[Connection, list[int]] = defaultdict(list)
    alive = [*conns, control]

    def reply(c: Connection, data: bytes) -> None:
        try:
            c.send_bytes(data)
        except OSError:  # the asker died before reading: drop its pipe, serve the others
            if c in alive:
                alive.remove(c)
            pending.pop(c, None)

    while alive:
        for ready in wait(alive):
            c = cast(Connection, ready)
            try:
                data = c.recv_bytes()
            except (EOFError, OSError):
                alive.remove(c)
                continue
            kind = data[:1]
            if kind == b"g":  # gradient: version it was computed at, then the slice
                (v,) = _Q.unpack_from(data, 1)
                pending[c].append(version - v)
                version += 1
                optim.apply(spec, params, _floats(data, 9), state, version)
            elif kind == b"p":  # pull: version, staleness of this client's pushes since, parameters
                st = np.asarray(pending.pop(c, []), np.int64)
                reply(c, _QQ.pack(version, st.size) + st.tobytes() + params.numpy().tobytes())
            elif kind == b"s":  # snapshot for the coordinator
                reply(c, _Q.pack(version) + b"".join(t.numpy().tobytes() for t in (params, state["m"], state["v"])))
            elif kind == b"l":  # load a snapshot
                (version,) = _Q.unpack_from(data, 1)
                n = params.numel()
                flat = _floats(data, 9)
                params.copy_(flat[:n])
                state["m"].copy_(flat[n : 2 * n])
                state["v"].copy_(flat[2 * n :])
                reply(c, b"k")
            elif kind == b"x":
                return


class ServerStore:
    """`shards` server processes, each owning a contiguous slice of the parameter vector."""

    def __init__(self, params: torch.Tensor, spec: OptimSpec, ctx: Any, slots: int, shards: int = 1) -> None:
        flat = params.detach().float().clone()
        self.n = flat.numel()
        shards = max(1, min(shards, self.n))
        bounds = np.linspace(0, self.n, shards + 1).astype(int)
        self.slices = [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
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
    """A worker's pipes to every shard; counts the bytes it sends and receives."""

    def __init__(self, conns: list[Connection], slices: list[tuple[int, int]],
                 others: list[Connection] | None = None) -> None:
        self.conns, self.slices, self._others = conns, slices, others or []
        self.sent: dict[str, int] = defaultdict(int)
        self.received: dict[str, int] = defaultdict(int)
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
