"""Replay memories: a ring buffer of transitions, in local memory or in shared memory."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from esrl.shm import Counter, ProcessLock


def obs_dtype(spec: Any) -> torch.dtype:
    """uint8 for image frames (a quarter of float32's memory), float32 otherwise."""
    return torch.uint8 if spec.image else torch.float32


class Replay:
    """Ring buffer of (obs, action, reward, next_obs, done) as torch tensors.

    `shared=True` puts the tensors in shared memory and guards writes with a lock, so that
    all workers of a run add to and sample from one memory (the `global` replay).
    """

    def __init__(self, capacity: int, obs_dim: int, ctx: Any = None, shared: bool = False,
                 obs_dtype: torch.dtype = torch.float32) -> None:
        """`obs_dtype` uint8 stores image frames at a quarter of the memory; samples come back as float32."""
        self.capacity = capacity
        self.obs = torch.zeros(capacity, obs_dim, dtype=obs_dtype)
        self.next_obs = torch.zeros(capacity, obs_dim, dtype=obs_dtype)
        self.action = torch.zeros(capacity, dtype=torch.long)
        self.reward = torch.zeros(capacity)
        self.done = torch.zeros(capacity)
        self._pos = Counter(ctx) if shared else None  # total ever added
        self._lock = ProcessLock() if shared else None
        self._added = 0
        if shared:
            for t in (self.obs, self.next_obs, self.action, self.reward, self.done):
                t.share_memory_()

    @property
    def added(self) -> int:
        return int(self._pos.value) if self._pos is not None else self._added

    def __len__(self) -> int:
        return min(self.added, self.capacity)

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
            done: np.ndarray) -> None:
        """Add a batch of transitions (first axis = transitions)."""
        n = len(obs)
        if self._lock is not None and self._pos is not None:
            with self._lock:
                start = int(self._pos.value)
                self._write(start, obs, action, reward, next_obs, done)
                self._pos.value = start + n
        else:
            self._write(self._added, obs, action, reward, next_obs, done)
            self._added += n

    def _write(self, start: int, *cols: np.ndarray) -> None:
        idx = torch.arange(start, start + len(cols[0])) % self.capacity
        for dst, src in zip((self.obs, self.action, self.reward, self.next_obs, self.done), cols, strict=True):
            dst[idx] = torch.as_tensor(np.asarray(src), dtype=dst.dtype)

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(0, len(self), (n,), generator=gen)
        if self._lock is None:
            return self._rows(idx)
        with self._lock:  # a shared replay: never a row half overwritten by another worker's add
            return self._rows(idx)

    def _rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.obs[idx].float(), self.action[idx], self.reward[idx], self.next_obs[idx].float(),
                self.done[idx])
