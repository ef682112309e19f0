"""The convolutional ES policy for image observations (Atari), with virtual batch normalization.

The network is the one Salimans et al. (2017) took from Mnih et al. (2016): conv 16x8x8
stride 4, conv 32x4x4 stride 2, a 256-unit fully connected layer, ReLU between, one logit
per action. Each hidden layer is followed by virtual batch normalization (Salimans et al.
2016): its mean and variance come from a fixed reference batch of frames, never from the
frames being acted on, so an action depends on its own observation only and a perturbed
policy's normalization moves with its own weights. The reference batch is collected once
with random actions from the run seed (`reference_batch`), rebuilt identically by every
replica and never sent anywhere.

Like `policies.MLP`, the forward pass takes many parameter rows (members) at once, but each
member runs on its own (a loop): a grouped convolution over members was as fast, and its
results depended on how many members shared the call, which order-free ES cannot allow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from esrl import envs, seeding
from esrl.envs import EnvSpec
from esrl.errors import InputError
from esrl.es.policies import flatten, to_actions, unflatten

VBN_EPS = 1e-5
REF_KEEP = 0.125  # chance that a frame of the random-action trajectory joins the reference batch


def reference_batch(spec: EnvSpec, seed: int, size: int) -> np.ndarray:
    """`size` observations (uint8) from random play; a pure function of (env, options, seed, size)."""
    gen = seeding.rng(seed, "vbn_reference")
    env = envs.make_env(spec)
    env.action_space.seed(seeding.derive_int(seed, "vbn_reference_actions"))
    frames: list[np.ndarray] = []
    episode = 0
    try:
        obs, _ = env.reset(seed=seeding.derive_int(seed, "vbn_reference_reset", episode))
        while len(frames) < size:
            obs, _, term, trunc, _ = env.step(env.action_space.sample())
            if gen.random() < REF_KEEP:
                frames.append(np.asarray(obs))
            if term or trunc:
                episode += 1
                obs, _ = env.reset(seed=seeding.derive_int(seed, "vbn_reference_reset", episode))
    finally:
        env.close()
    return np.stack(frames)  # as observed; ConvPolicy transposes channels-last images


@dataclass
class Prepared:
    """Per-member weights, VBN folded in: each hidden layer is one convolution (or matmul) with a bias."""

    weights: list[torch.Tensor]  # per hidden layer (B, out, in, k, k) or (B, hidden, flat)
    bias: list[torch.Tensor]  # per hidden layer (B, out)
    out_w: torch.Tensor  # (B, act_dim, hidden)
    out_b: torch.Tensor  # (B, act_dim)
    gamma: list[torch.Tensor] = field(default_factory=list)  # VBN's gamma until folded

    @property
    def members(self) -> int:
        return int(self.out_w.shape[0])


@dataclass(frozen=True)
class ConvPolicy:
    """See the module docstring. `reference` None: no normalization (a bias per unit instead)."""

    spec: EnvSpec
    reference: np.ndarray | None = None
    channels: tuple[int, ...] = (16, 32)
    kernels: tuple[tuple[int, int], ...] = ((8, 4), (4, 2))  # (size, stride)
    hidden: int = 256
    dtype: str = "float32"  # or "bfloat16": weights and activations while acting (statistics stay float32)

    def __post_init__(self) -> None:
        if not self.spec.image:
            raise ValueError(f"{self.spec.env_id} has observations of shape {self.spec.obs_shape}, not image frames")
        if min(self._spatial(len(self.channels) - 1)) < 1:
            raise InputError("policy", f"images of {self.spec.env_id} ({self.spec.obs_shape}) are smaller than the "
                             "CNN's receptive field", "mlp")
        if self.reference is not None and self.reference.shape[1:] != self.spec.chw:
            object.__setattr__(self, "reference", self.preprocess(self.reference))

    @property
    def vbn(self) -> bool:
        return self.reference is not None

    @property
    def conv_shapes(self) -> list[tuple[int, int, int, int]]:
        """(out, in, k, stride) of each convolution."""
        ins = [self.spec.chw[0], *self.channels[:-1]]
        return [(o, i, k, s) for o, i, (k, s) in zip(self.channels, ins, self.kernels, strict=True)]

    @property
    def flat(self) -> int:
        h, w = self._spatial(len(self.channels) - 1)
        return self.channels[-1] * h * w

    def _spatial(self, layer: int) -> tuple[int, int]:
        """(height, width) after convolution `layer`."""
        h, w = self.spec.chw[1:]
        for _, _, k, s in self.conv_shapes[: layer + 1]:
            h, w = (h - k) // s + 1, (w - k) // s + 1
        return h, w

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Named tensor shapes in flat order."""
        out: dict[str, tuple[int, ...]] = {}
        units = [*self.channels, self.hidden]
        for n, (o, i, k, _) in enumerate(self.conv_shapes):
            out[f"conv{n}.weight"] = (o, i, k, k)
        out["fc.weight"] = (self.hidden, self.flat)
        for n, u in enumerate(units):  # VBN's gamma and beta, or a plain bias (beta) without VBN
            if self.vbn:
                out[f"norm{n}.gamma"] = (u,)
            out[f"norm{n}.beta"] = (u,)
        out["out.weight"] = (self.spec.act_dim, self.hidden)
        out["out.bias"] = (self.spec.act_dim,)
        return out

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes().values())

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return unflatten(self.shapes(), flat)

    def flatten(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        return flatten(self.shapes(), tensors)

    def init(self, gen: np.random.Generator) -> np.ndarray:
        """Gaussian weights scaled to unit norm per output unit (0.01 for the logits), gamma 1, biases 0."""
        parts = {}
        for name, shape in self.shapes().items():
            if name.endswith("gamma"):
                parts[name] = np.ones(shape)
            elif name.endswith(("beta", "bias")):
                parts[name] = np.zeros(shape)
            else:
                w = gen.standard_normal(shape).reshape(shape[0], -1)
                w *= (0.01 if name == "out.weight" else 1.0) / np.sqrt(np.square(w).sum(axis=1, keepdims=True))
                parts[name] = w.reshape(shape)
        return self.flatten(parts)

    def preprocess(self, obs: np.ndarray) -> np.ndarray:
        """Frames stay uint8 (B, C, H, W) until the forward pass (channels-last images are transposed)."""
        x = np.asarray(obs, dtype=np.uint8).reshape(len(obs), *self.spec.obs_shape)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if self.spec.channels_last else x

    # --- batched forward --------------------------------------------------------------------
    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.dtype == "bfloat16" else torch.float32

    def _weights(self, params: np.ndarray) -> Prepared:
        """Float32 copies of the rows' weights (never views of `params`: folding writes into them)."""
        p = torch.from_numpy(np.ascontiguousarray(params, dtype=np.float32))
        b, o = p.shape[0], 0
        named: dict[str, torch.Tensor] = {}
        for name, shape in self.shapes().items():
            n = int(np.prod(shape))
            named[name] = p[:, o : o + n].reshape(b, *shape).clone()
            o += n
        units = len(self.channels) + 1
        weights = [named[f"conv{n}.weight"] for n in range(len(self.channels))] + [named["fc.weight"]]
        prep = Prepared(weights, [named[f"norm{n}.beta"] for n in range(units)], named["out.weight"], named["out.bias"])
        if self.vbn:
            prep.gamma = [named[f"norm{n}.gamma"] for n in range(units)]
        return prep

    def _layer(self, layer: int, h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if layer < len(self.channels):
            return F.conv2d(h, w, bias, stride=self.conv_shapes[layer][3])  # (N, units, H', W')
        return F.linear(h.reshape(len(h), -1), w, bias)[:, :, None, None]  # (N, units, 1, 1)

    def _member(self, prep: Prepared, b: int, x: torch.Tensor, reference: bool = False,
                trace: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Hidden features (N, hidden) of member b on frames x (N, C, H, W) in [0, 1].

        Each member runs on its own, with the same shapes whatever else is in the batch, so
        its actions are bit-identical however members are grouped into tasks (order-free
        ES). `reference`: x is the reference batch; each layer's VBN mean and variance are
        taken over it and folded into the member's weights and bias (w * gamma / std,
        beta - mean * gamma / std) before the next layer. `trace` collects each layer's
        normalized pre-activation (tests).
        """
        h = x
        for layer in range(len(prep.weights)):
            w = prep.weights[layer][b]
            if reference and self.vbn:
                z = self._layer(layer, h, w, None).float()
                mean = z.mean(dim=(0, 2, 3))
                var = z.var(dim=(0, 2, 3), unbiased=False)
                scale = prep.gamma[layer][b] / torch.sqrt(var + VBN_EPS)
                shape = (-1,) + (1,) * (w.dim() - 1)
                prep.weights[layer][b] = w * scale.reshape(shape)
                prep.bias[layer][b] = prep.bias[layer][b] - mean * scale
                z = z * scale[:, None, None] + prep.bias[layer][b][:, None, None]
            else:
                z = self._layer(layer, h, w, prep.bias[layer][b])
            if trace is not None:
                trace.append(z.float())
            h = z.relu()
        return h.reshape(len(h), -1)

    def split(self, params: np.ndarray) -> Prepared:
        """Weights of parameter rows (B, P), each member's VBN statistics from the reference batch folded in."""
        prep = self._weights(params)
        if self.vbn:
            assert self.reference is not None
            ref = torch.from_numpy(self.reference).float().mul(1.0 / 255.0)
            with torch.inference_mode():
                for b in range(prep.members):
                    self._member(prep, b, ref, reference=True)
            prep.gamma = []
        dt = self.torch_dtype
        return Prepared([w.to(dt) for w in prep.weights], [v.to(dt) for v in prep.bias], prep.out_w.to(dt),
                        prep.out_b.to(dt))

    def reference_trace(self, params: np.ndarray) -> list[list[np.ndarray]]:
        """Per member, each layer's normalized pre-activations (N, units, H, W) on the reference batch (tests)."""
        assert self.reference is not None
        prep = self.split(params)
        ref = torch.from_numpy(self.reference).to(self.torch_dtype).mul(1.0 / 255.0)
        out = []
        with torch.inference_mode():
            for b in range(prep.members):
                trace: list[torch.Tensor] = []
                self._member(prep, b, ref, trace=trace)
                out.append([t.numpy() for t in trace])
        return out

    def subset(self, prep: Prepared, rows: np.ndarray | list[int]) -> Prepared:
        """The prepared weights of some members (after others finished their episodes)."""
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return Prepared([w[idx] for w in prep.weights], [v[idx] for v in prep.bias], prep.out_w[idx], prep.out_b[idx])

    def forward(self, params: np.ndarray | Prepared, x: np.ndarray, mean: np.ndarray | None = None,
                inv_std: np.ndarray | None = None) -> np.ndarray:
        """Outputs (B, act_dim) of member b on frame x[b]. `mean`/`inv_std` are unused: frames are scaled to [0, 1]."""
        prep = self.split(params) if isinstance(params, np.ndarray) else params
        with torch.inference_mode():
            frames = torch.from_numpy(np.ascontiguousarray(x)).to(self.torch_dtype).mul(1.0 / 255.0)
            frames = frames.reshape(prep.members, 1, *self.spec.chw)
            out = [F.linear(self._member(prep, b, frames[b]), prep.out_w[b], prep.out_b[b])[0]
                   for b in range(prep.members)]
        return torch.stack(out).float().numpy()

    def to_actions(self, out: np.ndarray) -> np.ndarray:
        return to_actions(self.spec, out)
