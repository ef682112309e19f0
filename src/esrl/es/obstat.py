"""Running observation statistics for normalization (sums in float64, merged in member order)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-2  # prior count and variance floor of the paper's code: early stats are not trusted


@dataclass
class ObsStat:
    """Sum, sum of squares and count of observations seen so far."""

    total: np.ndarray
    sumsq: np.ndarray
    count: float

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> ObsStat:
        return cls(np.zeros(shape, np.float64), np.full(shape, _EPS, np.float64), _EPS)

    def add(self, total: np.ndarray, sumsq: np.ndarray, count: float) -> None:
        self.total += total
        self.sumsq += sumsq
        self.count += count

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.sumsq / self.count - np.square(self.mean), _EPS))

    def normalizer(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, 1/std) in float32, for the policy's input layer."""
        return self.mean.astype(np.float32), (1.0 / self.std).astype(np.float32)
