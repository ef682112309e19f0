"""DQN with its learner and replay on one device, actors on the CPU (`--sync device`).

Actors act epsilon-greedily (each with the epsilon schedule of the CPU DQN's worker of the
same index) with their own copy of the Q-network, refreshed whenever the learner has
published a newer one (every PUBLISH_EVERY updates, into a shared-memory buffer under a
process lock); every `n_steps` steps of its `envs_per_worker` envs an actor sends the
transitions to the learner. The learner thread writes them into a replay ring on the
device and takes one TD step per `n_steps x envs_per_worker` transitions received (the CPU
DQN's replay ratio), refreshing its target network every `target_update` updates. Actors
wait while they are more than LEAD_UPDATES updates per actor ahead of the learner, so the
ratio holds whichever side is faster (unthrottled on two cores, the actors took the CPU
and sent 40x the transitions the learner could use). Staleness is the learner's version when
transitions arrive minus the version of the copy that chose their actions.

`transport` is "pipe": what the actors send each update (transitions) goes pickled through
a queue, most of the bytes; the parameter copies come through shared memory (an actor's
first copy counts as start-up, kind "state"; later ones as "parameters").
"""

from __future__ import annotations

import dataclasses
import pickle
import queue
import time
from typing import Any

import numpy as np
import torch

from esrl import seeding
from esrl.rl import nets
from esrl.rl.common import NonFiniteError, Report
from esrl.rl.device_pool import ActorLink, DeviceArrangement
from esrl.rl.dqn import EpsilonGreedy, td_gradient
from esrl.rl.replay import obs_dtype
from esrl.shm import Counter, ProcessLock

PUBLISH_EVERY = 10  # learner updates between copies published to the actors
LEAD_UPDATES = 4  # per actor: how many updates' worth of transitions actors may run ahead of the learner


class DeviceReplay:
    """A replay ring of transitions as tensors on the device; sampling never leaves it."""

    def __init__(self, capacity: int, obs_dim: int, device: torch.device, obs_dtype: torch.dtype = torch.float32
                 ) -> None:
        """`obs_dtype` uint8 keeps image frames at a quarter of the memory; samples come back as float32."""
        self.capacity, self.added = capacity, 0
        self.obs = torch.zeros(capacity, obs_dim, dtype=obs_dtype, device=device)
        self.next_obs = torch.zeros(capacity, obs_dim, dtype=obs_dtype, device=device)
        self.action = torch.zeros(capacity, dtype=torch.long, device=device)
        self.reward = torch.zeros(capacity, device=device)
        self.done = torch.zeros(capacity, device=device)

    def __len__(self) -> int:
        return min(self.added, self.capacity)

    def add(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor,
            done: torch.Tensor) -> None:
        idx = torch.arange(self.added, self.added + len(obs), device=obs.device) % self.capacity
        self.obs[idx], self.action[idx], self.reward[idx] = obs.to(self.obs.dtype), action, reward
        self.next_obs[idx], self.done[idx] = next_obs.to(self.obs.dtype), done
        self.added += len(obs)

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(len(self), (n,), generator=gen).to(self.obs.device)
        return (self.obs[idx].float(), self.action[idx], self.reward[idx], self.next_obs[idx].float(),
                self.done[idx])


class DeviceDQN(DeviceArrangement):
    """The device-learner arrangement of a `DQNSetup`; see the module docstring."""

    threads = ("learn_loop",)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.transitions = self.ctx.Queue()
        self.published = self.flat.detach().cpu().clone().share_memory_()
        self.published_version = Counter(self.ctx)
        self.publish_lock = ProcessLock()
        self.replay = DeviceReplay(self.cfg.buffer_size, self.setup.spec.obs_dim, self.device,
                                   obs_dtype(self.setup.spec))
        self.target = self.setup.build_model().to(self.device)
        nets.set_flat(self.target, self.flat.clone())  # a copy: set_flat makes the module a view of its vector
        self.per_update = self.cfg.n_steps * self.cfg.envs_per_worker
        self.produced = Counter(self.ctx)  # transitions the actors have sent
        self.allowed = Counter(self.ctx, self._allowance(0))  # transitions they may have sent so far

    def _allowance(self, updates: int) -> int:
        return self.cfg.learning_starts + (updates + LEAD_UPDATES * self.n) * self.per_update

    def load(self, params: torch.Tensor, state: dict[str, torch.Tensor], version: int) -> None:
        super().load(params, state, version)
        nets.set_flat(self.target, self.flat.clone())  # a copy: set_flat makes the module a view of its vector
        self._publish()

    def _publish(self) -> None:
        with self.publish_lock:
            self.published.copy_(self.flat.detach().cpu())
            self.published_version.value = self.version

    # --- actors (forked processes) -------------------------------------------------------------
    def actor_body(self, wid: int) -> tuple[Any, list[Any]]:
        return (lambda link: self._act(link)), [self.transitions]

    def _act(self, link: ActorLink) -> None:
        """The CPU DQN worker's acting (`dqn.EpsilonGreedy`), with a copy refreshed from what the learner published."""
        setup, cfg = self.setup, self.cfg
        q = setup.build_model()
        actor = EpsilonGreedy(dataclasses.replace(setup, workers=self.n), link.wid)  # its epsilon among n actors
        have = -1
        flat = torch.zeros_like(self.published)
        first = True  # the copy an actor starts from
        while link.ready():  # a pause holds the actor between batches of transitions
            if self.produced.value >= self.allowed.value:  # ahead of the learner: let it catch up
                time.sleep(0.0005)
                continue
            t0 = time.perf_counter()
            if self.published_version.value != have:
                with self.publish_lock:
                    flat.copy_(self.published)
                    have = self.published_version.value
                nets.set_flat(q, flat)
                nbytes = flat.numel() * flat.element_size()
                link.traffic.received["state" if first else "parameters"] += nbytes
                link.traffic.startup += nbytes if first else 0
                link.traffic.messages += 1
                first = False
            steps = [actor.step(q, link.acc) for _ in range(cfg.n_steps)]
            cols = [np.concatenate(c) for c in zip(*steps, strict=True)]
            link.acc.counts["real_transitions"] = link.acc.counts.get("real_transitions", 0) + len(cols[0])
            link.send(self.transitions, "experience", (have, *cols))
            self.produced.add(len(cols[0]))
            link.traffic.compute_s += time.perf_counter() - t0
            link.maybe_report()

    # --- the learner (a thread in the coordinator) ---------------------------------------------
    def learn_loop(self) -> None:
        cfg, dev = self.cfg, self.device
        gen = torch.Generator().manual_seed(seeding.derive_int(self.setup.seed, "dqn_device_sample"))
        per_update = self.per_update
        credit, target_epoch, mine = 0, self.version // cfg.target_update, 0
        while not self.halt.is_set():
            if self.learner_paused():  # transitions wait in the queue; the actors are held too
                continue
            try:
                items = [pickle.loads(self.transitions.get(timeout=0.05 if credit < per_update else 0))]
            except queue.Empty:
                items = []
            while True:
                try:
                    items.append(pickle.loads(self.transitions.get_nowait()))
                except queue.Empty:
                    break
            for version, *cols in items:
                tensors = [torch.from_numpy(c).to(dev) for c in cols]
                self.replay.add(tensors[0], tensors[1].long(), tensors[2], tensors[3], tensors[4])
                credit += len(cols[0])
                self.staleness.append(self.version - version)
            if credit < per_update or len(self.replay) < cfg.learning_starts:
                credit = credit if len(self.replay) >= cfg.learning_starts else 0
                continue
            if self.paused.is_set():  # paused while this thread waited on the queue: no update begins now
                continue
            credit -= per_update
            grad, loss = td_gradient(self.model, self.target, self.replay.sample(cfg.batch_size, gen), cfg.gamma,
                                     cfg.double, cfg.max_grad_norm)
            if not (torch.isfinite(loss) and torch.isfinite(grad).all()):
                raise NonFiniteError(f"learner, update {self.version + 1}: non-finite TD loss or gradient")
            version = self.apply(grad)
            mine += 1
            self.allowed.value = self._allowance(mine)
            if version // cfg.target_update != target_epoch:
                target_epoch = version // cfg.target_update
                with self.lock:
                    nets.set_flat(self.target, self.flat.clone())
            if version % PUBLISH_EVERY == 0:
                self._publish()
            rep = Report(updates=1)
            rep.add_loss(td=float(loss))
            self.credit(rep)
