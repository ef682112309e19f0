"""GA3C (Babaeizadeh et al. 2017): A3C with the model on one device and the actors on the CPU.

Actors hold no copy of the model. Each steps `envs_per_worker` Gymnasium envs, puts their
observations on the prediction queue and waits for the reply; the predictor thread takes
whatever observations are waiting (one batch, one forward on the device) and answers each
actor with its policy outputs, values and the parameter version that made them. After
`n_steps` steps an actor computes its returns (bootstrapped from the predicted value of
its last observation; GAE with the predicted values) and puts the trajectory on the
training queue. The trainer thread batches whatever trajectories are waiting (at most one
per actor), recomputes the advantages with the current values (returns - V_now), takes one
gradient of the A3C loss and applies one optimizer step. Policy lag is measured as
staleness: version at apply minus the oldest version that chose an action of the batch.

`transport` is "pipe": observations, predictions and trajectories travel pickled through
queues and pipes; the parameters never leave the device.
"""

from __future__ import annotations

import pickle
import queue
import time
from typing import Any

import numpy as np
import torch

from esrl import seeding
from esrl.rl import a3c
from esrl.rl.common import EnvSlots, NonFiniteError, Report, RewardScaler
from esrl.rl.device_pool import ActorLink, DeviceArrangement


class GA3C(DeviceArrangement):
    """The GA3C arrangement of an `A3CSetup`: predictor and trainer threads on the device, actor processes."""

    threads = ("predict_loop", "train_loop")

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.predictions = self.ctx.Queue()
        self.experience = self.ctx.Queue()
        self.replies: dict[int, Any] = {}  # actor -> the coordinator's sending end of its reply pipe
        self._actor_ends: dict[int, Any] = {}

    # --- actors (forked processes) -------------------------------------------------------------
    def actor_body(self, wid: int) -> tuple[Any, list[Any]]:
        recv, send = self.ctx.Pipe(duplex=False)
        self.replies[wid], self._actor_ends[wid] = send, recv
        return (lambda link: self._act(link, recv)), [self.predictions, self.experience]

    def after_fork(self) -> None:
        for end in self._actor_ends.values():
            end.close()

    def _act(self, link: ActorLink, reply: Any) -> None:
        """A3C's acting (`a3c.rollout`), each forward a round trip to the predictor."""
        setup, cfg, wid = self.setup, self.cfg, link.wid
        spec = setup.spec
        envs = EnvSlots(spec, cfg.envs_per_worker, setup.seed, "a3c_episode", wid)
        gen = torch.Generator().manual_seed(seeding.derive_int(setup.seed, "ga3c_actions", wid))
        t_len, e = cfg.n_steps, cfg.envs_per_worker
        got: dict[str, Any] = {"log_std": None, "versions": [], "wait_s": 0.0}

        def predict(obs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            t0 = time.perf_counter()
            link.send(self.predictions, "observations", (wid, obs))
            raw = reply.recv_bytes()
            got["wait_s"] += time.perf_counter() - t0
            link.traffic.received["predictions"] += len(raw)
            link.traffic.messages += 1
            out, value, got["log_std"], version = pickle.loads(raw)
            got["versions"].append(version)
            return torch.from_numpy(out), torch.from_numpy(value)

        def sample(out: torch.Tensor) -> torch.Tensor:
            log_std = got["log_std"]
            return a3c.sample_actions(out, None if log_std is None else torch.from_numpy(log_std), gen, spec.discrete)

        scale = RewardScaler(e, cfg.gamma) if cfg.reward_norm == "on" else None
        last = predict(envs.obs)
        while link.ready():  # a pause holds the actor between trajectories
            t0 = time.perf_counter()
            got["versions"], got["wait_s"] = got["versions"][-1:], 0.0  # the carried prediction's version counts
            tr = a3c.rollout(envs, t_len, predict, sample, cfg.gamma, cfg.clip_rewards == "on", link.acc, first=last,
                             scale=scale)
            last = tr.last
            _, returns = a3c.gae(tr.rewards, tr.values, tr.terminal, last[1], cfg.gamma, cfg.gae_lambda)
            link.send(self.experience, "experience", (min(got["versions"]), tr.obs.numpy().reshape(t_len * e, -1),
                                                      tr.actions.numpy().reshape(t_len * e, *tr.actions.shape[2:]),
                                                      returns.numpy().reshape(-1)))
            link.traffic.compute_s += time.perf_counter() - t0 - got["wait_s"]
            link.maybe_report()

    # --- the device side (threads in the coordinator) -----------------------------------------
    def predict_loop(self) -> None:
        log_std = None
        while not self.halt.is_set():
            try:
                items = [pickle.loads(self.predictions.get(timeout=0.05))]
            except queue.Empty:
                continue
            while len(items) < 2 * self.n:  # whatever else is waiting
                try:
                    items.append(pickle.loads(self.predictions.get_nowait()))
                except queue.Empty:
                    break
            x = torch.from_numpy(np.concatenate([obs for _, obs in items])).to(self.device)
            with self.lock, torch.inference_mode():
                out, value = self.model(x)
                version = self.version
                if not self.setup.spec.discrete:
                    log_std = self.model.log_std.detach().cpu().numpy()
            out_np, value_np = out.cpu().numpy(), value.cpu().numpy()
            o = 0
            for wid, obs in items:
                k = len(obs)
                try:
                    self.replies[wid].send_bytes(pickle.dumps((out_np[o : o + k], value_np[o : o + k], log_std,
                                                               version)))
                except (BrokenPipeError, OSError):
                    pass  # that actor is gone; poll reports it
                o += k
            self.credit(Report(counts={"predictor_batches": 1, "predicted_rows": int(x.shape[0])}))

    def train_loop(self) -> None:
        updates = 0
        held: list[Any] = []  # trajectories taken while a pause began: the first of the next batch
        while not self.halt.is_set():
            if self.learner_paused():
                continue
            items = held
            try:
                if not items:
                    items = [pickle.loads(self.experience.get(timeout=0.05))]
                while len(items) < self.n:  # at most one trajectory per actor in a batch
                    items.append(pickle.loads(self.experience.get_nowait()))
            except queue.Empty:
                pass
            held = []
            if not items:
                continue
            if self.paused.is_set():  # paused while this thread waited on the queue: no update begins now
                held = items
                continue
            dev = self.device
            obs = torch.from_numpy(np.concatenate([it[1] for it in items])).to(dev)
            acts = torch.from_numpy(np.concatenate([it[2] for it in items])).to(dev)
            returns = torch.from_numpy(np.concatenate([it[3] for it in items])).to(dev)
            with torch.no_grad():
                adv = returns - self.model(obs)[1]  # advantages under the current parameters (GA3C)
            grad, terms = a3c.gradient(self.model, (obs, acts, adv, returns), self.cfg)
            updates += 1
            if not (torch.isfinite(grad).all() and all(torch.isfinite(v) for v in terms.values())):
                raise NonFiniteError(f"trainer, update {updates}: non-finite loss or gradient")
            version = self.apply(grad)
            rep = Report(updates=1, counts={"trainer_trajectories": len(items)})
            rep.add_loss(**{k: float(v) for k, v in terms.items()})
            self.credit(rep, [version - 1 - it[0] for it in items])
