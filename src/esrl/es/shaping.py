"""Fitness shaping: plug-in pure functions from raw returns to weights (esrl maximizes)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def centered_ranks(returns: np.ndarray) -> np.ndarray:
    """Ranks mapped linearly onto [-0.5, 0.5]; ties broken by member order (stable sort)."""
    x = np.asarray(returns, dtype=np.float64).ravel()
    if x.size == 1:
        return np.zeros(1, dtype=np.float32)
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[np.argsort(x, kind="stable")] = np.arange(x.size, dtype=np.float64)
    return (ranks / (x.size - 1) - 0.5).astype(np.float32).reshape(np.shape(returns))


def raw(returns: np.ndarray) -> np.ndarray:
    """The returns themselves, standardized (zero mean, unit std) so the step size keeps its meaning."""
    x = np.asarray(returns, dtype=np.float64)
    std = x.std()
    return ((x - x.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def sign(returns: np.ndarray) -> np.ndarray:
    """+1 above the population median, -1 below, 0 at it."""
    x = np.asarray(returns, dtype=np.float64)
    return np.sign(x - np.median(x)).astype(np.float32)


SHAPINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "centered_rank": centered_ranks,
    "raw": raw,
    "sign": sign,
}
