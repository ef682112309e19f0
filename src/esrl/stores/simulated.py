"""The parameter store of the simulated backend: in this process, split like the real one.

`lock` and `hogwild` hold one slice; `param-server` holds `shards` slices, each with its own
version and optimizer step count, as the server shards do. The simulated pool's schedule
decides *when* a worker's pull reads a slice (`SimClient.capture`) and when its gradient is
applied (`SimStore.apply`); a worker's `pull` then hands it what was captured and its `push`
only queues the gradient, so a worker really computes on the parameters of the moment it
pulled, and staleness is the updates others applied in between. Each apply is atomic at its
virtual moment: hogwild's torn reads and lost element updates are not simulated, only its
schedule (no waiting).

Bytes and messages are counted as the real clients count them: shared memory, one copy per
pull or push; a parameter server, per shard a request (1 byte) and a reply (version, the
staleness of this client's pushes since its last pull, the slice) per pull, a framed
gradient slice per push.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch

from esrl.rl import optim
from esrl.rl.optim import OptimSpec
from esrl.stores.server import shard_slices


class SimStore:
    """Parameters, optimizer state and versions of a simulated run; see the module docstring."""

    def __init__(self, params: torch.Tensor, spec: OptimSpec, sync: str, shards: int = 1) -> None:
        self.spec, self.sync = spec, sync
        self.params = params.detach().float().clone()
        self.state = spec.init_state(self.params.numel())
        n = self.params.numel()
        self.slices = shard_slices(n, shards) if sync == "param-server" else [(0, n)]
        self.versions = [0] * len(self.slices)
        self.transport = "simulated" if sync == "param-server" else "shared-memory"

    @property
    def version(self) -> int:
        return self.versions[0]

    def client(self, slot: int, direct: bool = False) -> SimClient:
        """`direct`: pulls read and pushes apply at once (no schedule: calibration)."""
        return SimClient(self, direct)

    def read(self, k: int) -> tuple[torch.Tensor, int]:
        lo, hi = self.slices[k]
        return self.params[lo:hi].clone(), self.versions[k]

    def apply(self, k: int, grad: torch.Tensor, version: int) -> int:
        """Apply slice k of a gradient computed at `version` of that slice; its staleness."""
        lo, hi = self.slices[k]
        self.versions[k] += 1
        state = {name: t[lo:hi] for name, t in self.state.items()}
        optim.apply(self.spec, self.params[lo:hi], grad[lo:hi], state, self.versions[k])
        return self.versions[k] - 1 - version

    def snapshot(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        return self.params.clone(), {k: v.clone() for k, v in self.state.items()}, min(self.versions)

    def load(self, params: torch.Tensor, state: dict[str, torch.Tensor], version: int) -> None:
        self.params.copy_(params)
        for k, v in state.items():
            self.state[k].copy_(v)
        self.versions = [int(version)] * len(self.slices)

    def close(self) -> None:
        pass


class SimClient:
    """A logical worker's handle on a SimStore: pulls hand over what the schedule captured."""

    def __init__(self, store: SimStore, direct: bool = False) -> None:
        self.store, self.direct = store, direct
        self.sent: dict[str, int] = defaultdict(int)
        self.received: dict[str, int] = defaultdict(int)
        self.messages = 0
        self.staleness: list[int] = []  # direct mode only; the pool records the scheduled ones itself
        k = len(store.slices)
        self._captured: list[tuple[torch.Tensor, int, int] | None] = [None] * k
        self._versions = [0] * k
        self.unreported = [0] * k  # per shard: staleness entries the next pull reply carries
        self.pending: list[tuple[torch.Tensor, list[int]]] = []  # gradients waiting for the schedule to apply
        self.on_pull: Callable[[], None] | None = None  # the schedule's hook: returns once every shard was captured

    def reply_bytes(self, k: int) -> int:
        """Bytes of shard k's reply to a pull now (the parameter server's framing)."""
        lo, hi = self.store.slices[k]
        return 16 + 8 * self.unreported[k] + 4 * (hi - lo)

    def push_bytes(self, k: int) -> int:
        lo, hi = self.store.slices[k]
        return 9 + 4 * (hi - lo)

    def capture(self, k: int) -> None:
        """The schedule's moment of shard k answering this client's pull."""
        params, version = self.store.read(k)
        self._captured[k] = (params, version, self.reply_bytes(k))
        self.unreported[k] = 0

    def pull(self, out: torch.Tensor) -> int:
        if not self.direct and self.on_pull is not None:
            self.on_pull()
        flat = out.view(-1)
        server = self.store.sync == "param-server"
        for k, (lo, hi) in enumerate(self.store.slices):
            if self.direct or self._captured[k] is None:
                self.capture(k)
            got = self._captured[k]
            assert got is not None
            flat[lo:hi] = got[0]
            self._versions[k] = got[1]
            if server:
                self.received["parameters"] += got[2]
            self._captured[k] = None
        if server:
            self.sent["requests"] += len(self.store.slices)
            self.messages += 2 * len(self.store.slices)
        else:
            self.received["parameters"] += out.numel() * out.element_size()
            self.messages += 1
        return self._versions[0]

    def push(self, grad: torch.Tensor, version: int) -> None:
        if self.direct:
            self.count_push()
            stale = [self.store.apply(k, grad, v) for k, v in enumerate(self._versions)]
            self.staleness.append(stale[0])
            return
        self.pending.append((grad.detach().clone(), list(self._versions)))

    def count_push(self) -> None:
        """The bytes and messages of one push (counted when the schedule sends it)."""
        if self.store.sync == "param-server":
            for k in range(len(self.store.slices)):
                self.sent["gradients"] += self.push_bytes(k)
            self.messages += len(self.store.slices)
        else:
            lo, hi = self.store.slices[0]
            self.sent["gradients"] += 4 * (hi - lo)
            self.messages += 1
