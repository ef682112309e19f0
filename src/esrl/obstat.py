"""Running observation statistics for normalization (sums in float64), shared by ES and RL.

ES folds the coordinator's summed deltas into every replica in member order; an RL worker
adds the observations it acts on and reports the delta, which the coordinator sums for
evaluation and checkpoints. Both normalize with `normalizer()`: (obs - mean) / std, clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-2  # prior count and variance floor of the paper's code: early stats are not trusted
CLIP = 5.0  # normalized observations are clipped to +-CLIP (the ES default `obs_clip`)


@dataclass
class ObsStat:
    """Sum, sum of squares and count of observations seen so far."""

    total: np.ndarray
    sumsq: np.ndarray
    count: float

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> ObsStat:
        return cls(np.zeros(shape, np.float64), np.full(shape, _EPS, np.float64), _EPS)

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> ObsStat:
        """A delta: nothing seen and no prior (the prior belongs to the running total only)."""
        return cls(np.zeros(shape, np.float64), np.zeros(shape, np.float64), 0.0)

    def add(self, total: np.ndarray, sumsq: np.ndarray, count: float) -> None:
        self.total += total
        self.sumsq += sumsq
        self.count += count

    def add_batch(self, obs: np.ndarray) -> None:
        """Fold in a batch of observations, one per row."""
        x = np.asarray(obs, np.float64).reshape(len(obs), -1)
        self.add(x.sum(0), np.square(x).sum(0), float(len(x)))

    def merge(self, other: ObsStat) -> None:
        self.add(other.total, other.sumsq, other.count)

    def copy(self) -> ObsStat:
        return ObsStat(self.total.copy(), self.sumsq.copy(), float(self.count))

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.sumsq / self.count - np.square(self.mean), _EPS))

    def normalizer(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, 1/std) in float32, for the policy's input layer."""
        return self.mean.astype(np.float32), (1.0 / self.std).astype(np.float32)
