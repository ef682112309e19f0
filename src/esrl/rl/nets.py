"""Torch networks for the RL side and flat-parameter views of them."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from esrl import seeding
from esrl.envs import EnvSpec
from esrl.errors import InputError
from esrl.obstat import CLIP, ObsStat


def mlp(sizes: Sequence[int], out_gain: float = 1.0) -> nn.Sequential:
    """tanh MLP with orthogonal init (gain sqrt(2) hidden, `out_gain` output), zero biases."""
    layers: list[nn.Module] = []
    for k, (i, o) in enumerate(itertools.pairwise(sizes)):
        lin = nn.Linear(i, o)
        last = k == len(sizes) - 2
        nn.init.orthogonal_(lin.weight, gain=out_gain if last else 2**0.5)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if not last:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class NatureCNN(nn.Module):
    """The Nature DQN torso (Mnih et al. 2015) on stacked uint8 frames given flat: 32x8x8/4, 64x4x4/2, 64x3x3/1, 512."""

    def __init__(self, spec: EnvSpec, features: int = 512) -> None:
        super().__init__()
        self.shape, self.channels_last = spec.obs_shape, spec.channels_last
        c, h, w = spec.chw
        convs: list[nn.Conv2d | nn.Linear] = [nn.Conv2d(c, 32, 8, 4), nn.Conv2d(32, 64, 4, 2), nn.Conv2d(64, 64, 3, 1)]
        for k, s in ((8, 4), (4, 2), (3, 1)):
            h, w = (h - k) // s + 1, (w - k) // s + 1
        if min(h, w) < 1:
            raise InputError("env", f"images of {spec.env_id} ({spec.obs_shape}) are smaller than the Nature CNN's "
                             "receptive field (36x36)")
        self.fc = nn.Linear(64 * h * w, features)
        for m in [*convs, self.fc]:
            assert isinstance(m.weight, torch.Tensor) and isinstance(m.bias, torch.Tensor)
            nn.init.orthogonal_(m.weight, gain=2**0.5)
            nn.init.zeros_(m.bias)
        self.convs = nn.Sequential(convs[0], nn.ReLU(), convs[1], nn.ReLU(), convs[2], nn.ReLU(), nn.Flatten())
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.reshape(-1, *self.shape) * (1.0 / 255.0)
        if self.channels_last:
            frames = frames.permute(0, 3, 1, 2)
        return torch.relu(self.fc(self.convs(frames)))


class ObsNorm(nn.Module):
    """(x - mean) / std clipped to +-CLIP, as ES's MLP does, with the statistics in buffers.

    Buffers, not parameters: they stay out of the flat vector that stores and optimizers move,
    and are set from an `ObsStat` by whoever owns the statistics (`set_normalizer`).
    Off (`enabled` False) it passes observations through.
    """

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, dim: int, enabled: bool) -> None:
        super().__init__()
        self.enabled = enabled
        n = dim if enabled else 0  # off, it keeps no statistics (an Atari frame stack has 28,224 inputs)
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("inv_std", torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return ((x - self.mean) * self.inv_std).clamp(-CLIP, CLIP)


class ActorCritic(nn.Module):
    """Policy and value heads over a shared trunk, or two separate MLPs (`shared=False`).

    Image frames (Atari) always share a Nature CNN trunk, with linear heads.
    """

    def __init__(self, spec: EnvSpec, hidden: Sequence[int], shared: bool = True, obs_norm: bool = False,
                 log_std_init: float = -0.5, sde: bool = False) -> None:
        super().__init__()
        self.spec, self.shared = spec, shared
        self.norm = ObsNorm(spec.obs_dim, obs_norm and not spec.image)  # holds no parameters: init draws unchanged
        out = spec.act_dim
        if spec.image:
            cnn = NatureCNN(spec)
            self.trunk: nn.Module = cnn
            self.pi = mlp([cnn.features, out], out_gain=0.01)
            self.v = mlp([cnn.features, 1], out_gain=1.0)
        elif shared and hidden:
            self.trunk = nn.Sequential(mlp([spec.obs_dim, *hidden]), nn.Tanh())
            self.pi = mlp([hidden[-1], out], out_gain=0.01)
            self.v = mlp([hidden[-1], 1], out_gain=1.0)
        else:
            self.trunk = nn.Identity()
            self.pi = mlp([spec.obs_dim, *hidden, out], out_gain=0.01)
            self.v = mlp([spec.obs_dim, *hidden, 1], out_gain=1.0)
        self.sde = sde and not spec.discrete
        if not spec.discrete:  # gSDE: one log std per (policy feature, action), else one per action
            head = self.pi[-1]
            assert isinstance(head, nn.Linear)
            shape = (head.in_features, out) if self.sde else (out,)
            self.log_std = nn.Parameter(torch.full(shape, float(log_std_init)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(self.norm(x))
        return self.pi(h), self.v(h).squeeze(-1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(policy outputs, values, policy features): the features are the input of the policy's last layer."""
        h = self.trunk(self.norm(x))
        *body, head = self.pi  # unpacked, not sliced: a slice builds a new Sequential on every call
        z = h
        for layer in body:
            z = layer(z)
        return head(z), self.v(h).squeeze(-1), z

    def action_std(self, z: torch.Tensor) -> torch.Tensor:
        """The standard deviation of each continuous action: exp(log_std); with gSDE, that of features x a Gaussian
        matrix, sqrt(z^2 @ exp(log_std)^2), the features held fixed (gSDE's learn_features=False)."""
        if not self.sde:
            return self.log_std.exp().expand(z.shape[0], -1)
        return (z.detach().pow(2) @ self.log_std.exp().pow(2) + 1e-6).sqrt()


class QNet(nn.Module):
    """Q-values for every discrete action."""

    def __init__(self, spec: EnvSpec, hidden: Sequence[int], obs_norm: bool = False) -> None:
        super().__init__()
        self.norm = ObsNorm(spec.obs_dim, obs_norm and not spec.image)
        if spec.image:  # the Nature DQN: CNN torso, 512 features, one linear layer of Q-values
            cnn = NatureCNN(spec)
            self.net: nn.Module = nn.Sequential(cnn, mlp([cnn.features, spec.act_dim], out_gain=1.0))
        else:
            self.net = mlp([spec.obs_dim, *hidden, spec.act_dim], out_gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(x))


def seeded(seed: int, role: str, build: type[nn.Module] | object, *args: object) -> nn.Module:
    """Build a module with its initial weights drawn from (seed, role), leaving torch's global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.derive_int(seed, role))
        return build(*args)  # type: ignore[operator]


def get_flat(module: nn.Module) -> torch.Tensor:
    return parameters_to_vector(module.parameters()).detach()


@torch.no_grad()
def set_flat(module: nn.Module, flat: torch.Tensor) -> None:
    """Point the module's parameters at slices of `flat` (views, not copies: the module follows every
    in-place change of `flat`; pass `flat.clone()` for a module that must hold still, as a target network)."""
    vector_to_parameters(flat, module.parameters())


@torch.no_grad()
def set_normalizer(module: nn.Module, stat: ObsStat | None) -> None:
    """Load running statistics into the module's observation normalizer (None: leave it as it is)."""
    norm = getattr(module, "norm", None)
    if stat is None or not isinstance(norm, ObsNorm) or not norm.enabled:
        return
    mean, inv_std = stat.normalizer()
    norm.mean.copy_(torch.from_numpy(mean))
    norm.inv_std.copy_(torch.from_numpy(inv_std))


def normalizes(module: nn.Module) -> bool:
    """Whether the module normalizes its observations (and so needs the run's statistics)."""
    norm = getattr(module, "norm", None)
    return isinstance(norm, ObsNorm) and norm.enabled
