"""Batched torch versions of Gymnasium's classic-control tasks, on any device.

Each follows its Gymnasium original step for step (same constants, same order of
operations, float64 by default) and keeps the five-tuple contract over a batch: `step`
returns (obs, reward, terminated, truncated, info) as tensors, enforces the time limit,
and auto-resets finished rows (their last observation is in `info["final_obs"]`). Initial
states come from a torch.Generator seeded by the caller, so a batch is reproducible on a
device. `tests/test_envs_torch.py` steps each one beside Gymnasium from identical states.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from esrl.errors import InputError


class TorchEnv:
    """Base: a batch of `num_envs` copies; subclasses define the dynamics."""

    env_id = ""
    obs_dim = 0
    state_dim = 0
    discrete = True
    act_dim = 0  # actions (Discrete) or action dimensions (Box)
    max_episode_steps = 0
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    def __init__(self, num_envs: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64,
                 seed: int = 0) -> None:
        self.num_envs, self.device, self.dtype = num_envs, torch.device(device), dtype
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.state = torch.zeros(num_envs, self.state_dim, device=self.device, dtype=dtype)
        self.elapsed = torch.zeros(num_envs, dtype=torch.long, device=self.device)

    # --- per-env definitions ---------------------------------------------------------------
    def initial(self, n: int) -> torch.Tensor:
        raise NotImplementedError

    def dynamics(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(next state, reward, terminated) of a batch."""
        raise NotImplementedError

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        return state

    # --- the batch contract ------------------------------------------------------------------
    def _uniform(self, n: int, low: torch.Tensor | float, high: torch.Tensor | float, k: int) -> torch.Tensor:
        u = torch.rand(n, k, generator=self.gen, device=self.device, dtype=self.dtype)
        return low + (high - low) * u

    def reset(self) -> torch.Tensor:
        self.state = self.initial(self.num_envs)
        self.elapsed.zero_()
        return self.observe(self.state)

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        self.state, reward, terminated = self.dynamics(self.state, action)
        self.elapsed += 1
        truncated = (self.elapsed >= self.max_episode_steps) & ~terminated
        obs = self.observe(self.state)
        done = terminated | truncated
        info: dict[str, Any] = {}
        if bool(done.any()):
            info["final_obs"] = obs.clone()
            rows = done.nonzero().squeeze(-1)
            self.state[rows] = self.initial(int(rows.numel()))
            self.elapsed[rows] = 0
            obs = self.observe(self.state)
        return obs, reward, terminated, truncated, info


class CartPole(TorchEnv):
    env_id, obs_dim, state_dim, act_dim, max_episode_steps = "CartPole-v1", 4, 4, 2, 500
    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    total_mass = masspole + masscart
    polemass_length = masspole * length
    theta_threshold = 12 * 2 * math.pi / 360
    x_threshold = 2.4

    def initial(self, n: int) -> torch.Tensor:
        return self._uniform(n, -0.05, 0.05, 4)

    def dynamics(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, x_dot, theta, theta_dot = s.unbind(-1)
        force = torch.where(a == 1, self.force_mag, -self.force_mag).to(s.dtype)
        costheta, sintheta = torch.cos(theta), torch.sin(theta)
        temp = (force + self.polemass_length * theta_dot.square() * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * costheta.square() / self.total_mass))
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        x, x_dot = x + self.tau * x_dot, x_dot + self.tau * xacc
        theta, theta_dot = theta + self.tau * theta_dot, theta_dot + self.tau * thetaacc
        nxt = torch.stack([x, x_dot, theta, theta_dot], -1)
        terminated = (x < -self.x_threshold) | (x > self.x_threshold) | (theta < -self.theta_threshold) | (
            theta > self.theta_threshold)
        return nxt, torch.ones_like(x), terminated


class Pendulum(TorchEnv):
    env_id, obs_dim, state_dim, act_dim, max_episode_steps = "Pendulum-v1", 3, 2, 1, 200
    discrete = False
    low, high = (-2.0,), (2.0,)
    max_speed, max_torque, dt, g, m, l_ = 8.0, 2.0, 0.05, 10.0, 1.0, 1.0

    def initial(self, n: int) -> torch.Tensor:
        high = torch.tensor([math.pi, 1.0], device=self.device, dtype=self.dtype)
        return self._uniform(n, -high, high, 2)

    def observe(self, s: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.cos(s[:, 0]), torch.sin(s[:, 0]), s[:, 1]], -1)

    def dynamics(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        th, thdot = s.unbind(-1)
        # Gymnasium's actions are float32 and its torque terms are computed in float32: so are these
        u = a.reshape(-1).to(torch.float32).clamp(-self.max_torque, self.max_torque)
        norm = torch.remainder(th + math.pi, 2 * math.pi) - math.pi
        costs = norm**2 + 0.1 * thdot**2 + (0.001 * (u**2)).to(s.dtype)
        torque = (3.0 / (self.m * self.l_**2) * u).to(s.dtype)
        newthdot = thdot + (3 * self.g / (2 * self.l_) * torch.sin(th) + torque) * self.dt
        newthdot = newthdot.clamp(-self.max_speed, self.max_speed)
        newth = th + newthdot * self.dt
        return torch.stack([newth, newthdot], -1), -costs, torch.zeros_like(th, dtype=torch.bool)


class MountainCar(TorchEnv):
    env_id, obs_dim, state_dim, act_dim, max_episode_steps = "MountainCar-v0", 2, 2, 3, 200
    min_position, max_position, max_speed, goal_position, goal_velocity = -1.2, 0.6, 0.07, 0.5, 0.0
    force, gravity = 0.001, 0.0025

    def initial(self, n: int) -> torch.Tensor:
        pos = self._uniform(n, -0.6, -0.4, 1)
        return torch.cat([pos, torch.zeros_like(pos)], -1)

    def dynamics(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        position, velocity = s.unbind(-1)
        velocity = velocity + (a.to(s.dtype) - 1) * self.force + torch.cos(3 * position) * (-self.gravity)
        velocity = velocity.clamp(-self.max_speed, self.max_speed)
        position = (position + velocity).clamp(self.min_position, self.max_position)
        velocity = torch.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        return torch.stack([position, velocity], -1), torch.full_like(position, -1.0), terminated


class MountainCarContinuous(MountainCar):
    env_id, act_dim, max_episode_steps = "MountainCarContinuous-v0", 1, 999
    discrete = False
    low, high = (-1.0,), (1.0,)
    goal_position, power = 0.45, 0.0015

    def dynamics(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        position, velocity = s.unbind(-1)
        act = a.reshape(-1).to(s.dtype)
        force = act.clamp(-1.0, 1.0)
        velocity = (velocity + (force * self.power - 0.0025 * torch.cos(3 * position))).clamp(-self.max_speed,
                                                                                             self.max_speed)
        position = (position + velocity).clamp(self.min_position, self.max_position)
        velocity = torch.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        reward = torch.where(terminated, 100.0, 0.0).to(s.dtype) - act**2 * 0.1
        return torch.stack([position, velocity], -1), reward, terminated


class Acrobot(TorchEnv):
    """Acrobot-v1 ("book" dynamics, no torque noise), integrated with RK4 over one dt as Gymnasium does."""

    env_id, obs_dim, state_dim, act_dim, max_episode_steps = "Acrobot-v1", 6, 4, 3, 500
    dt, m1, m2, l1, lc1, lc2, moi, g = 0.2, 1.0, 1.0, 1.0, 0.5, 0.5, 1.0, 9.8
    max_vel_1, max_vel_2 = 4 * math.pi, 9 * math.pi

    def initial(self, n: int) -> torch.Tensor:
        return self._uniform(n, -0.1, 0.1, 4)

    def observe(self, s: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.cos(s[:, 0]), torch.sin(s[:, 0]), torch.cos(s[:, 1]), torch.sin(s[:, 1]),
                            s[:, 2], s[:, 3]], -1)

    def _dsdt(self, y: torch.Tensor) -> torch.Tensor:
        m1, m2, l1, lc1, lc2, i1, i2, g = self.m1, self.m2, self.l1, self.lc1, self.lc2, self.moi, self.moi, self.g
        theta1, theta2, dtheta1, dtheta2, a = y.unbind(-1)
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * torch.cos(theta2)) + i1 + i2
        d2 = m2 * (lc2**2 + l1 * lc2 * torch.cos(theta2)) + i2
        phi2 = m2 * lc2 * g * torch.cos(theta1 + theta2 - math.pi / 2.0)
        phi1 = (-m2 * l1 * lc2 * dtheta2**2 * torch.sin(theta2)
                - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * torch.sin(theta2)
                + (m1 * lc1 + m2 * l1) * g * torch.cos(theta1 - math.pi / 2) + phi2)
        ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * torch.sin(theta2) - phi2) / (
            m2 * lc2**2 + i2 - d2**2 / d1)
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return torch.stack([dtheta1, dtheta2, ddtheta1, ddtheta2, torch.zeros_like(a)], -1)

    def dynamics(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        torque = a.to(s.dtype) - 1.0  # actions 0, 1, 2 are torques -1, 0, +1
        y0 = torch.cat([s, torque.unsqueeze(-1)], -1)
        dt, dt2 = self.dt, self.dt / 2.0
        k1 = self._dsdt(y0)
        k2 = self._dsdt(y0 + dt2 * k1)
        k3 = self._dsdt(y0 + dt2 * k2)
        k4 = self._dsdt(y0 + dt * k3)
        ns = (y0 + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4))[:, :4]
        angles = ns[:, :2]
        while bool(((angles > math.pi) | (angles < -math.pi)).any()):  # Gymnasium's wrap: repeated 2 pi steps
            angles = torch.where(angles > math.pi, angles - 2 * math.pi, angles)
            angles = torch.where(angles < -math.pi, angles + 2 * math.pi, angles)
        ns = torch.cat([angles, ns[:, 2:3].clamp(-self.max_vel_1, self.max_vel_1),
                        ns[:, 3:4].clamp(-self.max_vel_2, self.max_vel_2)], -1)
        terminated = -torch.cos(ns[:, 0]) - torch.cos(ns[:, 1] + ns[:, 0]) > 1.0
        return ns, torch.where(terminated, 0.0, -1.0).to(s.dtype), terminated


TORCH_ENVS: dict[str, type[TorchEnv]] = {c.env_id: c for c in (CartPole, Pendulum, MountainCar,
                                                                  MountainCarContinuous, Acrobot)}


def make_torch_env(env_id: str, num_envs: int, device: str = "cpu", dtype: torch.dtype = torch.float64,
                   seed: int = 0) -> TorchEnv:
    """The batched torch version of `env_id`; an InputError when esrl has none."""
    if env_id not in TORCH_ENVS:
        raise InputError("env", f"no batched torch version of {env_id!r}", ", ".join(TORCH_ENVS))
    return TORCH_ENVS[env_id](num_envs, device, dtype, seed)
