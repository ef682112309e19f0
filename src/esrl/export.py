"""`esrl export`: a run's policy as a TorchScript file that needs torch alone, not esrl.

The file maps a batch of observations (N, *obs_shape), as the run's env gives them (Atari: the
preprocessed uint8 frame stack), to N greedy actions: int64 indices for Discrete, float32
(N, act_dim) for Box. Everything `esrl.load(...).predict` applies is inside: the ES observation
normalizer and clip, the tanh into the action bounds, the CNN's frame scaling with the virtual
batch norm folded into its weights. The file also carries `esrl.json` (algorithm, env,
spaces, checkpoint), readable with `torch.jit.load(path, _extra_files={"esrl.json": ""})`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from esrl.envs import EnvSpec
from esrl.errors import InputError
from esrl.es.policies import MLP
from esrl.policy import Policy, load
from esrl.runs.rundir import atomic_write

FORMATS = ("torchscript",)


class _Actions(nn.Module):
    """Network outputs -> env actions, as `policies.to_actions` (ES) or the RL `act_greedy` (clip) do."""

    low: torch.Tensor
    high: torch.Tensor

    def __init__(self, spec: EnvSpec, squash: bool) -> None:
        super().__init__()
        self.discrete = spec.discrete
        low = torch.tensor(spec.low or (), dtype=torch.float32)
        high = torch.tensor(spec.high or (), dtype=torch.float32)
        # ES squashes into finite bounds with tanh; RL means (and unbounded ES outputs) are clipped
        self.squash = squash and bool(torch.isfinite(low).all() and torch.isfinite(high).all())
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return out.argmax(-1)
        if self.squash:
            return self.low + (torch.tanh(out) + 1.0) * 0.5 * (self.high - self.low)
        return torch.maximum(torch.minimum(out, self.high), self.low)


class _ESMLP(nn.Module):
    """ES's tanh MLP with its observation normalizer and clip (`policies.MLP.forward`)."""

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, pol: MLP, theta: np.ndarray, mean: np.ndarray, inv_std: np.ndarray) -> None:
        super().__init__()
        self.onehot = pol.spec.obs_onehot
        self.obs_dim, self.clip = pol.spec.obs_dim, float(pol.obs_clip)
        self.register_buffer("mean", torch.from_numpy(np.asarray(mean, np.float32)))
        self.register_buffer("inv_std", torch.from_numpy(np.asarray(inv_std, np.float32)))
        self.layers = nn.ModuleList()
        for w, b in pol.split(np.asarray(theta, np.float32)[None]):
            lin = torch.nn.utils.skip_init(nn.Linear, w.shape[2], w.shape[1])  # no draw from torch's global RNG
            lin.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(w[0])))
            lin.bias.data.copy_(torch.from_numpy(np.ascontiguousarray(b[0])))
            self.layers.append(lin)
        self.actions = _Actions(pol.spec, squash=True)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.onehot:
            x = F.one_hot(obs.reshape(-1).long(), self.obs_dim).float()
        else:
            x = obs.float().flatten(1)
        h = ((x - self.mean) * self.inv_std).clamp(-self.clip, self.clip)
        for k, layer in enumerate(self.layers):
            h = layer(h)
            if k < len(self.layers) - 1:
                h = torch.tanh(h)
        return self.actions(h)


class _ESCNN(nn.Module):
    """ES's CNN with each layer's virtual batch norm folded into its weights (`ConvPolicy.split`); a bfloat16
    CNN (`--cnn-dtype`) is exported in float32."""

    def __init__(self, pol: Any, theta: np.ndarray) -> None:
        super().__init__()
        prep = pol.split(np.asarray(theta, np.float32)[None])
        self.shape, self.channels_last = pol.spec.obs_shape, pol.spec.channels_last
        self.strides = [s for _, _, _, s in pol.conv_shapes]
        self.weights = nn.ParameterList([nn.Parameter(w[0].float(), requires_grad=False) for w in prep.weights])
        self.biases = nn.ParameterList([nn.Parameter(b[0].float(), requires_grad=False) for b in prep.bias])
        self.out_w = nn.Parameter(prep.out_w[0].float(), requires_grad=False)
        self.out_b = nn.Parameter(prep.out_b[0].float(), requires_grad=False)
        self.actions = _Actions(pol.spec, squash=True)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        h = obs.reshape(-1, *self.shape).float() * (1.0 / 255.0)
        if self.channels_last:
            h = h.permute(0, 3, 1, 2)
        for k, stride in enumerate(self.strides):
            h = F.conv2d(h, self.weights[k], self.biases[k], stride=stride).relu()
        h = F.linear(h.flatten(1), self.weights[-1], self.biases[-1]).relu()
        return self.actions(F.linear(h, self.out_w, self.out_b))


class _RLGreedy(nn.Module):
    """An RL network's greedy action: A3C's policy head (argmax, or its mean clipped), DQN's argmax Q."""

    def __init__(self, algorithm: str, model: nn.Module, spec: EnvSpec) -> None:
        super().__init__()
        self.actor_critic = algorithm == "a3c"
        self.model = model
        self.actions = _Actions(spec, squash=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float().flatten(1)  # the RL networks take flat observations (the CNN reshapes them)
        out = self.model(x)[0] if self.actor_critic else self.model(x)
        return self.actions(out)


def to_module(policy: Policy) -> nn.Module:
    """A torch module (eval mode, no gradients) computing `policy`'s greedy actions for a batch."""
    if policy.algorithm == "es":
        rep = policy.replica
        mean, inv_std = rep.normalizer()
        module: nn.Module = (_ESMLP(rep.policy, rep.theta, mean, inv_std) if isinstance(rep.policy, MLP)
                             else _ESCNN(rep.policy, rep.theta))
    else:
        module = _RLGreedy(policy.algorithm, policy.model, policy.spec)
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def export(run_dir: str | Path, fmt: str = "torchscript", checkpoint: str | int = "latest",
           out: str | Path | None = None) -> dict[str, Any]:
    """Write the policy of a run's checkpoint to `out` (default: RUN/policy-<checkpoint>.pt)."""
    if fmt not in FORMATS:
        why = "onnx export needs the onnx package and is not built yet" if fmt == "onnx" else f"unknown {fmt!r}"
        raise InputError("format", why, ", ".join(FORMATS))
    policy = load(run_dir, checkpoint)
    path = Path(out) if out else Path(run_dir) / f"policy-{checkpoint}.pt"
    if path.suffix.lower() != ".pt":
        raise InputError("out", f"{path} does not end in .pt", "a .pt file")
    spec = policy.spec
    module = to_module(policy)
    example = torch.zeros((2, *spec.obs_shape), dtype=torch.float32)
    with torch.no_grad():
        # tracing records the branches taken for this run's spaces; every op is batch-size free
        scripted = torch.jit.trace(module, example)
    info = {"algorithm": policy.algorithm, "env": spec.env_id, "checkpoint": policy.checkpoint,
            "obs_shape": list(spec.obs_shape), "discrete": spec.discrete, "act_dim": spec.act_dim,
            "low": spec.low, "high": spec.high, "env_steps": policy.env_steps}
    buf = io.BytesIO()
    torch.jit.save(scripted, buf, _extra_files={"esrl.json": json.dumps(info)})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buf.getvalue())
    except OSError as exc:
        raise InputError("out", f"cannot write {path}: {exc.strerror}") from None
    return {"out": str(path), "format": fmt, **info}
