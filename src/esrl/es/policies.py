"""Deterministic MLP policies over a flat parameter vector, batched over parameter rows in numpy.

Rollouts of small policies must not pay torch's per-call overhead, so the forward pass is
numpy, batched over many parameter vectors (members) at once: one matmul per layer per
step serves the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from esrl.envs import EnvSpec

Policy = Any  # MLP or policies_cnn.ConvPolicy: shapes, num_params, init, preprocess, split, forward, to_actions


@dataclass(frozen=True)
class MLP:
    """tanh MLP: obs -> hidden... -> logits (argmax, Discrete) or tanh mapped into bounds (Box)."""

    spec: EnvSpec
    hidden: tuple[int, ...]
    obs_clip: float = 5.0

    @property
    def layer_sizes(self) -> list[tuple[int, int]]:
        dims = [self.spec.obs_dim, *self.hidden, self.spec.act_dim]
        return list(pairwise(dims))

    @property
    def num_params(self) -> int:
        return sum(i * o + o for i, o in self.layer_sizes)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Named tensor shapes in flat order (weights are (out, in))."""
        out: dict[str, tuple[int, ...]] = {}
        for k, (i, o) in enumerate(self.layer_sizes):
            out[f"layer{k}.weight"] = (o, i)
            out[f"layer{k}.bias"] = (o,)
        return out

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return unflatten(self.shapes(), flat)

    def flatten(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        return flatten(self.shapes(), tensors)

    def init(self, gen: np.random.Generator) -> np.ndarray:
        """Column-normalized Gaussian weights (std 1 hidden, 0.01 output), zero biases."""
        parts = []
        layers = self.layer_sizes
        for k, (i, o) in enumerate(layers):
            w = gen.standard_normal((o, i))
            w *= (0.01 if k == len(layers) - 1 else 1.0) / np.sqrt(np.square(w).sum(axis=1, keepdims=True))
            parts += [w.ravel(), np.zeros(o)]
        return np.concatenate(parts).astype(np.float32)

    def preprocess(self, obs: np.ndarray) -> np.ndarray:
        """Raw observations (B, ...) -> float32 (B, obs_dim) (one-hot for Discrete spaces)."""
        if self.spec.obs_onehot:
            return np.eye(self.spec.obs_dim, dtype=np.float32)[np.asarray(obs, dtype=np.int64).ravel()]
        return np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)

    def split(self, params: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-layer (weights (B, out, in), biases (B, out)) views of parameter rows (B, P)."""
        b = params.shape[0]
        out, o = [], 0
        for fan_in, fan_out in self.layer_sizes:
            w = params[:, o : o + fan_in * fan_out].reshape(b, fan_out, fan_in)
            o += fan_in * fan_out
            out.append((w, params[:, o : o + fan_out]))
            o += fan_out
        return out

    def forward(self, params: np.ndarray | list[tuple[np.ndarray, np.ndarray]], x: np.ndarray, mean: np.ndarray,
                inv_std: np.ndarray) -> np.ndarray:
        """Outputs (B, act_dim) for parameter rows (B, P) (or their `split`) and observations (B, obs_dim)."""
        layers = self.split(params) if isinstance(params, np.ndarray) else params
        h = x - mean
        h *= inv_std
        np.minimum(h, self.obs_clip, out=h)
        np.maximum(h, -self.obs_clip, out=h)
        last = len(layers) - 1
        for k, (w, bias) in enumerate(layers):
            h = np.matmul(w, h[:, :, None])[:, :, 0]
            h += bias
            if k < last:
                np.tanh(h, out=h)
        return h

    def to_actions(self, out: np.ndarray) -> np.ndarray:
        return to_actions(self.spec, out)


def unflatten(shapes: dict[str, tuple[int, ...]], flat: np.ndarray) -> dict[str, np.ndarray]:
    """Named tensors (copies) of a flat parameter vector, in `shapes` order."""
    total = sum(int(np.prod(s)) for s in shapes.values())
    if flat.shape != (total,):
        raise ValueError(f"expected {total} parameters, got shape {flat.shape}")
    out, o = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        out[name] = flat[o : o + n].reshape(shape).copy()
        o += n
    return out


def flatten(shapes: dict[str, tuple[int, ...]], tensors: dict[str, np.ndarray]) -> np.ndarray:
    """The flat float32 vector of named tensors; names and shapes must match `shapes`."""
    parts = []
    for name, shape in shapes.items():
        if name not in tensors or tuple(tensors[name].shape) != shape:
            raise ValueError(f"tensor {name!r} missing or not of shape {shape}")
        parts.append(np.asarray(tensors[name], np.float32).ravel())
    return np.concatenate(parts)


def to_actions(spec: EnvSpec, out: np.ndarray) -> np.ndarray:
    """Outputs -> env actions: argmax for Discrete; tanh mapped into finite bounds for Box."""
    if spec.discrete:
        return out.argmax(axis=1)
    low = np.asarray(spec.low, np.float32)
    high = np.asarray(spec.high, np.float32)
    if np.all(np.isfinite(low)) and np.all(np.isfinite(high)):
        return low + (np.tanh(out) + 1.0) * 0.5 * (high - low)
    return np.clip(out, low, high)
