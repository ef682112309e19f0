"""Batched numpy versions of Gymnasium's classic-control tasks, for the vectorized backend on the CPU.

The same equations as `esrl.es.envs_torch` (constants are read from those classes, so the two
cannot drift), written for numpy's lower per-call cost: on one CPU core a population of a
few hundred rows is far below the size where torch's per-op overhead (several us) amortizes.
The state is stored member-last, `(state_dim, n)`, so each variable is one contiguous row
and a step is a few dozen ufunc calls on contiguous arrays. `dynamics` is the whole
contract: (state, actions) -> (next state, reward, terminated); the ES rollout keeps its
own lengths, caps and finished-row masks. `tests/test_envs_torch.py` steps each one beside
Gymnasium from identical states.
"""

from __future__ import annotations

import math

import numpy as np

from esrl.errors import InputError
from esrl.es import envs_torch as T

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


class NumpyEnv:
    """Base: dynamics of a batch; subclasses copy the env's constants from its torch twin."""

    twin: type[T.TorchEnv] = T.TorchEnv

    def __init__(self) -> None:
        tw = self.twin
        self.env_id, self.obs_dim, self.state_dim = tw.env_id, tw.obs_dim, tw.state_dim
        self.discrete, self.act_dim, self.max_episode_steps = tw.discrete, tw.act_dim, tw.max_episode_steps
        self.low, self.high = tw.low, tw.high

    def initial(self, gen: np.random.Generator, n: int) -> np.ndarray:
        raise NotImplementedError

    def dynamics(self, s: np.ndarray, a: np.ndarray) -> Arrays:
        raise NotImplementedError

    def observe(self, s: np.ndarray) -> np.ndarray:
        return s


class CartPole(NumpyEnv):
    twin = T.CartPole

    def __init__(self) -> None:
        super().__init__()
        c = T.CartPole
        self.force = np.array([-c.force_mag, c.force_mag])  # indexed by the action: one take per step
        self.ones = np.ones(0)

    def initial(self, gen: np.random.Generator, n: int) -> np.ndarray:
        return gen.uniform(-0.05, 0.05, size=(4, n))

    def dynamics(self, s: np.ndarray, a: np.ndarray) -> Arrays:
        c = T.CartPole
        x, x_dot, theta, theta_dot = s
        force = self.force.take(a)
        costheta, sintheta = np.cos(theta), np.sin(theta)
        temp = (force + c.polemass_length * theta_dot**2 * sintheta) / c.total_mass
        thetaacc = (c.gravity * sintheta - costheta * temp) / (
            c.length * (4.0 / 3.0 - c.masspole * costheta**2 / c.total_mass))
        xacc = temp - c.polemass_length * thetaacc * costheta / c.total_mass
        # Euler over the four rows at once: s + tau * (x_dot, xacc, theta_dot, thetaacc), Gymnasium's products and sums
        d = np.empty_like(s)
        d[0], d[1], d[2], d[3] = x_dot, xacc, theta_dot, thetaacc
        d *= c.tau
        nxt = np.add(s, d, out=d)
        # |v| > t is exactly (v < -t) | (v > t) for floats
        terminated = (np.abs(nxt[0]) > c.x_threshold) | (np.abs(nxt[2]) > c.theta_threshold)
        if self.ones.shape != x.shape:
            self.ones = np.ones_like(x)
        return nxt, self.ones, terminated


class Pendulum(NumpyEnv):
    twin = T.Pendulum

    def initial(self, gen: np.random.Generator, n: int) -> np.ndarray:
        high = np.array([[math.pi], [1.0]])
        return gen.uniform(-high, high, size=(2, n))

    def observe(self, s: np.ndarray) -> np.ndarray:
        return np.stack([np.cos(s[0]), np.sin(s[0]), s[1]])

    def dynamics(self, s: np.ndarray, a: np.ndarray) -> Arrays:
        c = T.Pendulum
        th, thdot = s
        # Gymnasium's torque terms are float32: so are these
        u = np.clip(np.asarray(a, np.float32).reshape(-1), np.float32(-c.max_torque), np.float32(c.max_torque))
        norm = np.remainder(th + math.pi, 2 * math.pi) - math.pi
        costs = norm**2 + 0.1 * thdot**2 + (np.float32(0.001) * (u**2)).astype(np.float64)
        torque = (np.float32(3.0 / (c.m * c.l_**2)) * u).astype(np.float64)
        newthdot = np.clip(thdot + (3 * c.g / (2 * c.l_) * np.sin(th) + torque) * c.dt, -c.max_speed, c.max_speed)
        return np.stack([th + newthdot * c.dt, newthdot]), -costs, np.zeros(th.shape, bool)


class MountainCar(NumpyEnv):
    twin: type[T.MountainCar] = T.MountainCar

    def initial(self, gen: np.random.Generator, n: int) -> np.ndarray:
        return np.stack([gen.uniform(-0.6, -0.4, size=n), np.zeros(n)])

    def _move(self, position: np.ndarray, velocity: np.ndarray) -> Arrays:
        c = self.twin
        velocity = np.clip(velocity, -c.max_speed, c.max_speed)
        position = np.clip(position + velocity, c.min_position, c.max_position)
        velocity = np.where((position == c.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= c.goal_position) & (velocity >= c.goal_velocity)
        return np.stack([position, velocity]), velocity, terminated

    def dynamics(self, s: np.ndarray, a: np.ndarray) -> Arrays:
        c = T.MountainCar
        position, velocity = s
        velocity = velocity + (a.astype(np.float64) - 1) * c.force + np.cos(3 * position) * (-c.gravity)
        nxt, _, terminated = self._move(position, velocity)
        return nxt, np.full(position.shape, -1.0), terminated


class MountainCarContinuous(MountainCar):
    twin = T.MountainCarContinuous

    def dynamics(self, s: np.ndarray, a: np.ndarray) -> Arrays:
        c = T.MountainCarContinuous
        position, velocity = s
        act = np.asarray(a, np.float64).reshape(-1)
        velocity = velocity + (np.clip(act, -1.0, 1.0) * c.power - 0.0025 * np.cos(3 * position))
        nxt, _, terminated = self._move(position, velocity)
        return nxt, np.where(terminated, 100.0, 0.0) - act**2 * 0.1, terminated


class Acrobot(NumpyEnv):
    twin = T.Acrobot

    def initial(self, gen: np.random.Generator, n: int) -> np.ndarray:
        return gen.uniform(-0.1, 0.1, size=(4, n))

    def observe(self, s: np.ndarray) -> np.ndarray:
        return np.stack([np.cos(s[0]), np.sin(s[0]), np.cos(s[1]), np.sin(s[1]), s[2], s[3]])

    @staticmethod
    def _dsdt(y: np.ndarray) -> np.ndarray:
        c = T.Acrobot
        m1, m2, l1, lc1, lc2, i1, i2, g = c.m1, c.m2, c.l1, c.lc1, c.lc2, c.moi, c.moi, c.g
        theta1, theta2, dtheta1, dtheta2, a = y
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * np.cos(theta2)) + i1 + i2
        d2 = m2 * (lc2**2 + l1 * lc2 * np.cos(theta2)) + i2
        phi2 = m2 * lc2 * g * np.cos(theta1 + theta2 - math.pi / 2.0)
        phi1 = (-m2 * l1 * lc2 * dtheta2**2 * np.sin(theta2)
                - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * np.sin(theta2)
                + (m1 * lc1 + m2 * l1) * g * np.cos(theta1 - math.pi / 2) + phi2)
        ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * np.sin(theta2) - phi2) / (
            m2 * lc2**2 + i2 - d2**2 / d1)
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return np.stack([dtheta1, dtheta2, ddtheta1, ddtheta2, np.zeros_like(a)])

    def dynamics(self, s: np.ndarray, a: np.ndarray) -> Arrays:
        c = T.Acrobot
        y0 = np.concatenate([s, a.astype(np.float64)[None] - 1.0])  # actions 0, 1, 2 are torques -1, 0, +1
        dt, dt2 = c.dt, c.dt / 2.0
        k1 = self._dsdt(y0)
        k2 = self._dsdt(y0 + dt2 * k1)
        k3 = self._dsdt(y0 + dt2 * k2)
        k4 = self._dsdt(y0 + dt * k3)
        ns = (y0 + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4))[:4]
        angles = ns[:2]
        while ((angles > math.pi) | (angles < -math.pi)).any():  # Gymnasium's wrap: repeated 2 pi steps
            angles = np.where(angles > math.pi, angles - 2 * math.pi, angles)
            angles = np.where(angles < -math.pi, angles + 2 * math.pi, angles)
        ns = np.concatenate([angles, np.clip(ns[2:3], -c.max_vel_1, c.max_vel_1),
                             np.clip(ns[3:4], -c.max_vel_2, c.max_vel_2)])
        terminated = -np.cos(ns[0]) - np.cos(ns[1] + ns[0]) > 1.0
        return ns, np.where(terminated, 0.0, -1.0), terminated


NUMPY_ENVS: dict[str, type[NumpyEnv]] = {c.twin.env_id: c for c in (CartPole, Pendulum, MountainCar,
                                                                        MountainCarContinuous, Acrobot)}


def make_numpy_env(env_id: str) -> NumpyEnv:
    """The batched numpy version of `env_id`; an InputError when esrl has none."""
    if env_id not in NUMPY_ENVS:
        raise InputError("env", f"no batched numpy version of {env_id!r}", ", ".join(NUMPY_ENVS))
    return NUMPY_ENVS[env_id]()
