"""The convolutional ES policy for image observations (Atari), with virtual batch normalization.

The network is the one Salimans et al. (2017) took from Mnih et al. (2016): conv 16x8x8
stride 4, conv 32x4x4 stride 2, a 256-unit fully connected layer, ReLU between, one logit
per action. Each hidden layer is followed by virtual batch normalization (Salimans et al.
2016): its mean and variance come from a fixed reference batch of frames, never from the
frames being acted on, so an action depends on its own observation only and a perturbed
policy's normalization moves with its own weights. The reference batch is collected once
with random actions from the run seed (`reference_batch`), rebuilt identically by every
replica and never sent anywhere.

Like `policies.MLP`, the forward pass is batched over parameter rows (members): the weights
of B members run as one grouped convolution and one batched matmul per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from esrl import envs, seeding
from esrl.envs import EnvSpec
from esrl.policies import to_actions

VBN_EPS = 1e-5
REF_KEEP = 0.125  # chance that a frame of the random-action trajectory joins the reference batch
REF_FLOATS = 1 << 24  # reference activations computed at once (members x frames x units), bounds memory


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
    """Per-member weights as torch tensors, and each hidden layer's affine map (scale, shift) per member."""

    convs: list[torch.Tensor]  # (B, out, in, k, k)
    fc: torch.Tensor  # (B, hidden, flat)
    out_w: torch.Tensor  # (B, act_dim, hidden)
    out_b: torch.Tensor  # (B, act_dim)
    scale: list[torch.Tensor] = field(default_factory=list)  # per hidden layer (B, units)
    shift: list[torch.Tensor] = field(default_factory=list)

    @property
    def members(self) -> int:
        return int(self.fc.shape[0])


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
        h, w = self.spec.chw[1:]
        for _, _, k, s in self.conv_shapes:
            h, w = (h - k) // s + 1, (w - k) // s + 1
        return self.channels[-1] * h * w

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
        if flat.shape != (self.num_params,):
            raise ValueError(f"expected {self.num_params} parameters, got shape {flat.shape}")
        out, o = {}, 0
        for name, shape in self.shapes().items():
            n = int(np.prod(shape))
            out[name] = flat[o : o + n].reshape(shape).copy()
            o += n
        return out

    def flatten(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        parts = []
        for name, shape in self.shapes().items():
            if name not in tensors or tuple(tensors[name].shape) != shape:
                raise ValueError(f"tensor {name!r} missing or not of shape {shape}")
            parts.append(np.asarray(tensors[name], np.float32).ravel())
        return np.concatenate(parts)

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
        p = torch.from_numpy(np.ascontiguousarray(params, dtype=np.float32)).to(self.torch_dtype)
        b, o = p.shape[0], 0
        named: dict[str, torch.Tensor] = {}
        for name, shape in self.shapes().items():
            n = int(np.prod(shape))
            named[name] = p[:, o : o + n].reshape(b, *shape).contiguous()
            o += n
        convs = [named[f"conv{n}.weight"] for n in range(len(self.channels))]
        prep = Prepared(convs, named["fc.weight"], named["out.weight"], named["out.bias"])
        for n in range(len(self.channels) + 1):
            beta = named[f"norm{n}.beta"]
            prep.scale.append(named[f"norm{n}.gamma"] if self.vbn else torch.ones_like(beta))
            prep.shift.append(beta)
        return prep

    def _trunk(self, prep: Prepared, x: torch.Tensor, stats: list[tuple[torch.Tensor, torch.Tensor]] | None
               ) -> torch.Tensor:
        """Hidden features (B, N, hidden) of N frames per member, x: (B, N, C, H, W) float in [0, 1].

        With `stats` None, each layer's VBN mean and variance are taken over this batch (the
        reference pass) and appended to `stats_out`; otherwise the given ones are used.
        """
        b, n = x.shape[:2]
        h = x.transpose(0, 1).reshape(n, b * x.shape[2], *x.shape[3:])  # members as channel groups
        layer = 0
        for w, (_, _, _, stride) in zip(prep.convs, self.conv_shapes, strict=True):
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), stride=stride, groups=b)
            h = self._norm(prep, layer, h.reshape(n, b, w.shape[1], -1), stats).relu()
            h = h.reshape(n, b * w.shape[1], *self._spatial(layer))
            layer += 1
        feats = h.reshape(n, b, self.flat).transpose(0, 1)  # (B, N, flat)
        h = torch.bmm(feats, prep.fc.transpose(1, 2))  # (B, N, hidden)
        h = self._norm(prep, layer, h.transpose(0, 1)[..., None], stats)[..., 0].transpose(0, 1)
        return h.relu()

    def _spatial(self, layer: int) -> tuple[int, int]:
        h, w = self.spec.chw[1:]
        for _, _, k, s in self.conv_shapes[: layer + 1]:
            h, w = (h - k) // s + 1, (w - k) // s + 1
        return h, w

    def _norm(self, prep: Prepared, layer: int, h: torch.Tensor, stats: list[Any] | None) -> torch.Tensor:
        """h: (N, B, units, positions). VBN (or bias) as one affine map per member and unit."""
        if stats is not None and self.vbn:  # reference pass: statistics over frames and positions
            h32 = h.float()
            mean = h32.mean(dim=(0, 3))
            var = h32.var(dim=(0, 3), unbiased=False)
            stats.append((mean, var))
            scale = prep.scale[layer].float() / torch.sqrt(var + VBN_EPS)
            shift = prep.shift[layer].float() - mean * scale
            prep.scale[layer], prep.shift[layer] = scale.to(h.dtype), shift.to(h.dtype)
        return h * prep.scale[layer][None, :, :, None] + prep.shift[layer][None, :, :, None]

    def split(self, params: np.ndarray) -> Prepared:
        """Weights of parameter rows (B, P), with each member's VBN statistics from the reference batch."""
        prep = self._weights(params)
        if self.vbn:
            assert self.reference is not None
            ref = torch.from_numpy(self.reference).float().div_(255.0).to(self.torch_dtype)
            per = max(1, REF_FLOATS // (len(ref) * int(np.prod(self.spec.chw))))
            parts = [self.subset(prep, np.arange(lo, min(lo + per, prep.members)))
                     for lo in range(0, prep.members, per)]
            with torch.inference_mode():
                for part in parts:
                    self._trunk(part, ref[None].expand(part.members, *ref.shape), [])
            prep.scale = [torch.cat([p.scale[k] for p in parts]) for k in range(len(prep.scale))]
            prep.shift = [torch.cat([p.shift[k] for p in parts]) for k in range(len(prep.shift))]
        return prep

    def reference_stats(self, params: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per hidden layer, the (mean, variance) per member and unit over the reference batch (for tests)."""
        assert self.reference is not None
        prep = self._weights(params)
        stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        ref = torch.from_numpy(self.reference).float().div_(255.0).to(self.torch_dtype)
        with torch.inference_mode():
            self._trunk(prep, ref[None].expand(prep.members, *ref.shape), stats)
        return [(m.numpy(), v.numpy()) for m, v in stats]

    def subset(self, prep: Prepared, rows: np.ndarray | list[int]) -> Prepared:
        """The prepared weights of some members (after others finished their episodes)."""
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return Prepared([w[idx] for w in prep.convs], prep.fc[idx], prep.out_w[idx], prep.out_b[idx],
                        [s[idx] for s in prep.scale], [s[idx] for s in prep.shift])

    def forward(self, params: np.ndarray | Prepared, x: np.ndarray, mean: np.ndarray | None = None,
                inv_std: np.ndarray | None = None) -> np.ndarray:
        """Outputs (B, act_dim) of member b on frame x[b]. `mean`/`inv_std` are unused: frames are scaled to [0, 1]."""
        prep = self.split(params) if isinstance(params, np.ndarray) else params
        with torch.inference_mode():
            frames = torch.from_numpy(np.ascontiguousarray(x)).to(self.torch_dtype).mul_(1.0 / 255.0)
            h = self._trunk(prep, frames.reshape(prep.members, 1, *self.spec.chw), None)
            out = torch.baddbmm(prep.out_b[:, :, None], prep.out_w, h.transpose(1, 2))[:, :, 0]
        return out.float().numpy()

    def to_actions(self, out: np.ndarray) -> np.ndarray:
        return to_actions(self.spec, out)
