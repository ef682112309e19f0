"""The Ray worker pool for the asynchronous algorithms (A3C, DQN, Dyna-Q): one actor per worker.

Same protocol as the processes pool (`backends/pool.py`): an actor builds its worker with
`setup.build_worker(index, client)` and steps it; each `work()` call steps it for REPORT_S
seconds and returns one report (updates, env steps, returns, losses, the bytes its store
client and the run's Ray twins counted, staleness). The pool keeps two calls queued on every
actor so that it never idles waiting for the next. Before a report leaves, the actor waits
until its pushes are applied, so the updates counted never run ahead of the store's version.

A dead actor (`RayActorError`: killed, its node lost) is logged as `worker_died` and replaced
by a new actor on a fresh store slot; `worker_joined` is logged when the replacement's first
report arrives. Workers are spread over the cluster's nodes (`SPREAD`).

Traffic: each `work()` call and its report are a message each (kind "report"); an actor's
creation carries its setup and store client (kind "state", start-up). Pausing: `pause()`
and `resume()` run in a concurrency group of their own on each actor, so they reach it
while `work()` runs; a paused `work()` begins no update and returns when its time is up,
and the pool submits no new calls until `resume()`.
"""

from __future__ import annotations

import pickle
import time
import traceback
from typing import Any

from esrl.backends.base import Traffic
from esrl.backends.pool import REPORT_S, WorkerFailure, _absorb, _clients, count_report, take_report
from esrl.errors import NonFiniteError

IN_FLIGHT = 2  # work() calls queued per actor
CONTROL = "control"  # the actors' concurrency group for pause/resume
PAUSE_ACK_S = 0.5  # at most this long does pause() wait for the actors to acknowledge


class WorkerActor:
    """One RL worker in a Ray actor; see the module docstring."""

    def __init__(self, setup: Any, wid: int, client: Any) -> None:
        import torch

        torch.set_num_threads(1)
        self.setup, self.wid, self.client = setup, wid, client
        self.worker: Any = None
        self.counted: list[Any] = []
        self.paused = False  # set from the control group's thread, read between updates

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def node(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def work(self, seconds: float) -> tuple[Any, ...]:
        """Step the worker for `seconds`; ("report", report, traffic, staleness) or (kind, message)."""
        from esrl.stores.ray_store import twins_of

        try:
            if self.worker is None:  # built here, not in __init__: a failure is reported, not a dead actor
                self.worker = self.setup.build_worker(self.wid, self.client)
                self.counted = [*_clients(self.worker, self.client), *twins_of(self.setup)]
            acc, compute = None, 0.0
            end = time.perf_counter() + seconds
            while True:
                if self.paused:  # begin no update: the call ends now, with what it did
                    break
                t0 = time.perf_counter()
                rep = self.worker.step()
                compute += time.perf_counter() - t0
                if acc is None:
                    acc = rep
                else:
                    acc.merge(rep)
                if time.perf_counter() >= end:
                    break
            traffic = Traffic(compute_s=compute)
            for c in self.counted:
                if hasattr(c, "flush"):
                    c.flush()
                _absorb(traffic, c)
            staleness = self.counted[0].staleness
            for c in self.counted:
                c.staleness = []
            return "report", acc, traffic, staleness
        except Exception as exc:
            import ray

            if isinstance(exc, ray.exceptions.RayActorError):  # a shard, the replay or the model holder
                return "error", f"worker {self.wid}: an actor of the run's stores died ({type(exc).__name__})"
            if isinstance(exc, NonFiniteError):
                return "nonfinite", f"worker {self.wid}, update {getattr(self.worker, 'updates', 0)}: {exc}"
            return "error", traceback.format_exc()


class RayPool:
    """N worker actors driving a parameter store; see the module docstring."""

    transport = "ray"

    def __init__(self, setup: Any, store: Any, workers: int, max_restarts: int) -> None:
        import ray

        self.ray, self.setup, self.store, self.n = ray, setup, store, workers
        self.max_restarts = max_restarts
        self.traffic = Traffic()
        self.events: list[dict[str, Any]] = []
        self.staleness: list[int] = []
        self._cls = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0,  # type: ignore[call-overload]
                               concurrency_groups={CONTROL: 1})(WorkerActor)
        self._setup_bytes = len(pickle.dumps(setup))  # sent with every actor's creation
        self._paused = False
        self._actors: dict[int, tuple[Any, int]] = {}  # worker index -> (actor, store slot)
        self._pending: dict[Any, tuple[int, Any]] = {}  # work() ref -> (worker index, actor)
        self._joining: set[Any] = set()  # replacement actors that have not reported yet
        self._next_slot = 0
        self._closing = False

    @property
    def live_workers(self) -> int:
        return len(self._actors)

    def nodes(self) -> dict[int, str]:
        """Node id of each live worker's actor."""
        wids = list(self._actors)
        return dict(zip(wids, self.ray.get([self._actors[w][0].node.remote() for w in wids]), strict=True))

    def start(self) -> None:
        for index in range(self.n):
            self._spawn(index)

    def _spawn(self, index: int) -> int:
        slot = self._next_slot
        self._next_slot += 1
        client = self.store.client(slot)
        actor = self._cls.options(scheduling_strategy="SPREAD").remote(self.setup, index, client)
        nbytes = self._setup_bytes + len(pickle.dumps((index, client)))
        self.traffic.sent["state"] += nbytes
        self.traffic.startup += nbytes
        self.traffic.messages += 1
        self._actors[index] = (actor, slot)
        if self._paused:  # a replacement joins a paused run paused
            self._control(actor, "pause")
        self._top_up(index)
        return slot

    def _submit(self, wid: int) -> None:
        actor = self._actors[wid][0]
        self._pending[actor.work.remote(REPORT_S)] = (wid, actor)
        self.traffic.sent["report"] += len(pickle.dumps(REPORT_S))  # the call that asks for a report
        self.traffic.messages += 1

    def _top_up(self, wid: int) -> None:
        """Queue work() calls on the actor until IN_FLIGHT are pending (none while paused or closing)."""
        if self._paused or self._closing or wid not in self._actors:
            return
        actor = self._actors[wid][0]
        for _ in range(IN_FLIGHT - sum(a is actor for _, a in self._pending.values())):
            self._submit(wid)

    def _control(self, actor: Any, method: str) -> Any:
        self.traffic.sent["control"] += len(pickle.dumps(None))
        self.traffic.messages += 1
        return getattr(actor, method).options(concurrency_group=CONTROL).remote()

    def pause(self) -> None:
        """From now on no actor begins an update (one in progress may finish).

        Waits (at most PAUSE_ACK_S, a few ms normally) until every actor has acknowledged, so
        that none can begin an update after this returns; a dead actor is left to poll.
        """
        self._paused = True
        refs = [self._control(a, "pause") for a, _slot in self._actors.values()]
        if refs:
            self.ray.wait(refs, num_returns=len(refs), timeout=PAUSE_ACK_S)

    def settle(self, timeout: float = 10.0) -> list[Any]:
        """After `pause`: the work() calls in flight end at their next update boundary; their reports.
        No call is submitted while paused, so when none is pending the store holds what was counted."""
        reports: list[Any] = []
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            reports.extend(self.poll(0.01))
        return reports

    def resume(self) -> None:
        self._paused = False
        for actor, _slot in self._actors.values():
            self._control(actor, "resume")  # another group: a work() call that starts first waits the few ms for it
        for wid in list(self._actors):
            self._top_up(wid)

    def poll(self, timeout: float) -> list[Any]:
        """Reports that arrived within `timeout` seconds; handles deaths and worker errors."""
        if not self._pending:
            time.sleep(timeout)
            return []
        refs = list(self._pending)
        ready, rest = self.ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and rest:
            ready += self.ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        reports = []
        for ref in ready:
            entry = self._pending.pop(ref, None)
            if entry is None:
                continue  # dropped with its actor, which died earlier in this batch
            wid, actor = entry
            try:
                msg = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as exc:
                self._died(wid, type(exc).__name__)
                continue
            if msg[0] != "report":
                count_report(self, len(pickle.dumps(msg)))
                raise WorkerFailure(msg[1], nonfinite=(msg[0] == "nonfinite"))
            reports.extend(take_report(self, msg[1], msg[2], msg[3], len(pickle.dumps(msg))))
            if actor in self._joining:
                self._joining.discard(actor)
                self.events.append({"event": "worker_joined", "worker": wid, "slot": self._actors[wid][1]})
            self._top_up(wid)
        return reports

    def _died(self, wid: int, why: str) -> None:
        actor, slot = self._actors.pop(wid)
        self._joining.discard(actor)
        for ref in [r for r, (_, a) in self._pending.items() if a is actor]:
            del self._pending[ref]
        try:
            self.ray.kill(actor)
        except Exception:  # already gone
            pass
        event: dict[str, Any] = {"event": "worker_died", "worker": wid, "slot": slot, "why": why}
        if not self._closing and self._next_slot - self.n < self.max_restarts:
            event["replacement_slot"] = self._spawn(wid)
            self._joining.add(self._actors[wid][0])
        self.events.append(event)
        if not self._actors and not self._closing:
            raise WorkerFailure("all workers died and the restart limit is spent")

    def close(self) -> list[Any]:
        """Stop the workers; returns the reports of the calls still in flight."""
        self._closing = True
        reports: list[Any] = []
        deadline = time.monotonic() + 10
        while self._pending and time.monotonic() < deadline:
            try:
                reports.extend(self.poll(max(0.0, deadline - time.monotonic())))
            except WorkerFailure:
                break
        for actor, _slot in self._actors.values():
            try:
                self.ray.kill(actor)
            except Exception:
                pass
        self._actors.clear()
        self._pending.clear()
        return reports


def init(address: str | None, workers: int) -> bool:
    """Start a local Ray on 127.0.0.1 (or join `address`); True when this call started it."""
    import os

    from esrl.backends.ray_backend import init as ray_init

    return ray_init(address, num_cpus=None if address else max(workers, os.cpu_count() or 1))


def make(setup: Any, params: Any, spec: Any, shards: int, workers: int, max_restarts: int,
         started_ray: bool) -> tuple[Any, RayPool]:
    """The run's parameter-server actors (its twins included) and its worker pool.

    The store is the last thing a training loop closes, so it ends the twins' actors and,
    when this run started Ray, Ray itself.
    """
    from esrl.stores.ray_store import RayStore, to_ray

    setup, owned = to_ray(setup)
    store = RayStore(params, spec, shards=shards, owned=owned, shutdown=started_ray)
    return store, RayPool(setup, store, workers, max_restarts)
