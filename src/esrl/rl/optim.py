"""Optimizers over one flat parameter tensor with explicit state, so that the state can live
in shared memory (hogwild), behind a lock, or inside a parameter server.

The step count is passed in by the caller: parameter stores keep it in an atomic counter,
so concurrent workers never share or lose a count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OptimSpec:
    """Which optimizer and its hyperparameters."""

    kind: str = "adam"  # adam | rmsprop | sgd
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    alpha: float = 0.99  # RMSprop decay
    eps: float = 1e-8

    def init_state(self, n: int) -> dict[str, torch.Tensor]:
        """Moments as float32 tensors of length n ("m" first moment, "v" second)."""
        return {"m": torch.zeros(n), "v": torch.zeros(n)}


@torch.no_grad()
def apply(spec: OptimSpec, params: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor],
          step: int) -> None:
    """Descend: update `params` and `state` in place with gradient `grad`; `step` counts from 1."""
    m, v = state["m"], state["v"]
    if spec.kind == "adam":
        m.mul_(spec.beta1).add_(grad, alpha=1 - spec.beta1)
        v.mul_(spec.beta2).addcmul_(grad, grad, value=1 - spec.beta2)
        bias1 = 1 - spec.beta1**step
        bias2 = 1 - spec.beta2**step
        denom = (v / bias2).sqrt_().add_(spec.eps)
        params.addcdiv_(m, denom, value=-spec.lr / bias1)
    elif spec.kind == "rmsprop":
        v.mul_(spec.alpha).addcmul_(grad, grad, value=1 - spec.alpha)
        params.addcdiv_(grad, v.sqrt().add_(spec.eps), value=-spec.lr)
    elif spec.kind == "sgd":
        params.add_(grad, alpha=-spec.lr)
    else:
        raise ValueError(f"unknown optimizer {spec.kind!r}")
