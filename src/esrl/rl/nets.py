"""Torch networks for the RL side and flat-parameter views of them."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from esrl import seeding
from esrl.envs import EnvSpec


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


class ActorCritic(nn.Module):
    """Policy and value heads over a shared trunk, or two separate MLPs (`shared=False`)."""

    def __init__(self, spec: EnvSpec, hidden: Sequence[int], shared: bool = True) -> None:
        super().__init__()
        self.spec, self.shared = spec, shared
        out = spec.act_dim
        if shared and hidden:
            self.trunk: nn.Module = nn.Sequential(mlp([spec.obs_dim, *hidden]), nn.Tanh())
            self.pi = mlp([hidden[-1], out], out_gain=0.01)
            self.v = mlp([hidden[-1], 1], out_gain=1.0)
        else:
            self.trunk = nn.Identity()
            self.pi = mlp([spec.obs_dim, *hidden, out], out_gain=0.01)
            self.v = mlp([spec.obs_dim, *hidden, 1], out_gain=1.0)
        if not spec.discrete:
            self.log_std = nn.Parameter(torch.full((out,), -0.5))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.pi(h), self.v(h).squeeze(-1)


class QNet(nn.Module):
    """Q-values for every discrete action."""

    def __init__(self, spec: EnvSpec, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp([spec.obs_dim, *hidden, spec.act_dim], out_gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def seeded(seed: int, role: str, build: type[nn.Module] | object, *args: object) -> nn.Module:
    """Build a module with its initial weights drawn from (seed, role), leaving torch's global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.derive_int(seed, role))
        return build(*args)  # type: ignore[operator]


def get_flat(module: nn.Module) -> torch.Tensor:
    return parameters_to_vector(module.parameters()).detach()


@torch.no_grad()
def set_flat(module: nn.Module, flat: torch.Tensor) -> None:
    vector_to_parameters(flat, module.parameters())
