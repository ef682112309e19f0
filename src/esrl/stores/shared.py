"""Shared-memory parameter store: `lock` (serialized) or `hogwild` (lock-free) apply."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from esrl.rl import optim
from esrl.rl.optim import OptimSpec
from esrl.shm import Counter, ProcessLock


class SharedStore:
    """Parameters and optimizer state in shared memory; clients apply updates themselves."""

    transport = "shared-memory"

    def __init__(self, params: torch.Tensor, spec: OptimSpec, ctx: Any, lock_apply: bool) -> None:
        self.spec = spec
        self.lock_apply = lock_apply
        self.params = params.detach().clone().float().share_memory_()
        self.state = {k: v.share_memory_() for k, v in spec.init_state(self.params.numel()).items()}
        self._version = Counter(ctx)  # atomic increments; flock-based, so a killed worker cannot wedge it
        self._lock = ProcessLock()

    @property
    def version(self) -> int:
        return int(self._version.value)

    def client(self, slot: int) -> SharedClient:
        return SharedClient(self)

    # --- coordinator side -----------------------------------------------------------------
    def snapshot(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """A consistent copy of (params, optimizer state, version) for evaluation or checkpoints."""
        with self._lock:
            return self.params.clone(), {k: v.clone() for k, v in self.state.items()}, self.version

    def load(self, params: torch.Tensor, state: dict[str, torch.Tensor], version: int) -> None:
        with self._lock:
            self.params.copy_(params)
            for k, v in state.items():
                self.state[k].copy_(v)
            self._version.value = int(version)

    def close(self) -> None:
        pass


class SharedClient:
    """A worker's handle on a SharedStore (inherited by forked workers).

    Each pull (a copy out of shared memory) and each push (the apply into it) is one message.
    """

    def __init__(self, store: SharedStore) -> None:
        self.store = store
        self.sent: dict[str, int] = defaultdict(int)
        self.received: dict[str, int] = defaultdict(int)
        self.messages = 0
        self.staleness: list[int] = []  # of each applied push, drained by the worker's reports

    def pull(self, out: torch.Tensor) -> int:
        s = self.store
        if s.lock_apply:
            with s._lock:
                out.copy_(s.params)
                version = s.version
        else:
            version = s.version
            out.copy_(s.params)
        self.received["parameters"] += out.numel() * out.element_size()
        self.messages += 1
        return version

    def push(self, grad: torch.Tensor, version: int) -> None:
        self.staleness.append(self._apply(grad, version))

    def _apply(self, grad: torch.Tensor, version: int) -> int:
        s = self.store
        self.sent["gradients"] += grad.numel() * grad.element_size()
        self.messages += 1
        if s.lock_apply:
            with s._lock:
                step = s._version.add(1)
                optim.apply(s.spec, s.params, grad, s.state, step)
            return step - 1 - version
        step = s._version.add(1)  # the only synchronized part: every update gets its own step count
        optim.apply(s.spec, s.params, grad, s.state, step)  # lock-free: races are hogwild's bargain
        return step - 1 - version
