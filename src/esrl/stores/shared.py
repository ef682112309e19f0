"""Shared-memory parameter store: `lock` (serialized) or `hogwild` (lock-free) apply.

A snapshot (evaluation, checkpoint) is a consistent copy in both modes. Under `lock` it
takes the apply lock. Under `hogwild` applies take no lock, so a snapshot freezes them
instead: it raises `_freeze`, waits until no apply is in progress (`_applying`), copies,
and lowers the flag; an apply announces itself in `_applying` and backs off while the flag
is up. Writers never wait for each other, only for a snapshot, which is rare.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import torch

from esrl.rl import optim
from esrl.rl.optim import OptimSpec
from esrl.shm import Counter, Flag, ProcessLock

FREEZE_WAIT_S = 2.0  # a writer killed mid-apply never leaves `_applying`: copy anyway after this long


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
        self._freeze = Flag(ctx)  # hogwild: a snapshot is copying, applies hold off
        self._applying = Counter(ctx)  # hogwild: applies in progress

    @property
    def version(self) -> int:
        return int(self._version.value)

    def client(self, slot: int) -> SharedClient:
        return SharedClient(self)

    # --- coordinator side -----------------------------------------------------------------
    def snapshot(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """A consistent copy of (params, optimizer state, version) for evaluation or checkpoints."""
        with self._lock:
            if self.lock_apply:
                return self.params.clone(), {k: v.clone() for k, v in self.state.items()}, self.version
            self._freeze.set()
            try:
                deadline = time.monotonic() + FREEZE_WAIT_S
                # add(0) reads under the flock: a full barrier, so the flag is visible before the count is read
                while self._applying.add(0) > 0 and time.monotonic() < deadline:
                    time.sleep(1e-4)
                return self.params.clone(), {k: v.clone() for k, v in self.state.items()}, self.version
            finally:
                self._freeze.clear()

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
        while True:  # announce the apply, then back off if a snapshot is copying
            s._applying.add(1)
            if not s._freeze.is_set():
                break
            s._applying.add(-1)
            while s._freeze.is_set():
                time.sleep(1e-4)
        try:
            step = s._version.add(1)  # every update gets its own step count
            optim.apply(s.spec, s.params, grad, s.state, step)  # lock-free: races between writers are hogwild's bargain
        finally:
            s._applying.add(-1)
        return step - 1 - version
