"""Optimizers over the flat parameter vector. They *ascend*: `step` returns the change to add.

State is explicit (arrays + a step count) so that it can be checkpointed and replicated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class OptimizerState:
    """The optimizer's statistics: first and second moments (SGD uses only `m`) and step count."""

    m: np.ndarray
    v: np.ndarray
    step: int = 0

    @classmethod
    def zeros(cls, dim: int) -> OptimizerState:
        return cls(np.zeros(dim, np.float32), np.zeros(dim, np.float32), 0)


def adam_step(
    state: OptimizerState, grad: np.ndarray, lr: float, beta1: float = 0.9, beta2: float = 0.999,
    eps: float = 1e-8,
) -> np.ndarray:
    """Adam (Kingma & Ba 2015) with bias correction; updates `state` in place."""
    state.step += 1
    state.m *= np.float32(beta1)
    state.m += np.float32(1.0 - beta1) * grad
    state.v *= np.float32(beta2)
    state.v += np.float32(1.0 - beta2) * (grad * grad)
    a = lr * np.sqrt(1.0 - beta2**state.step) / (1.0 - beta1**state.step)
    return (np.float32(a) * state.m / (np.sqrt(state.v) + np.float32(eps))).astype(np.float32)


def sgd_step(state: OptimizerState, grad: np.ndarray, lr: float, momentum: float = 0.9) -> np.ndarray:
    """SGD with heavy-ball momentum: m <- momentum * m + grad; step = lr * m."""
    state.step += 1
    state.m *= np.float32(momentum)
    state.m += grad
    return (np.float32(lr) * state.m).astype(np.float32)
