"""The simulated pool for the asynchronous algorithms: N logical workers on a virtual clock (esrl.sim).

Each logical worker is a SimPy process looping over updates. Its `step()` really runs, in a
thread of its own that only ever runs while the schedule waits for it (so one thing runs at a
time, in the schedule's order: deterministic); when the step pulls, the thread stops and the
schedule carries the pull out (under `lock` it queues for the one lock and copies; under
`hogwild` it copies, waiting for no one; on a parameter server each shard's request crosses
the hub and queues at that shard's one core, which answers with its slice of that moment),
then the step goes on with what was pulled. Its pushes are held until the step ends; the
worker then spends what the cost model says the step's work costs (its speed, a seeded
straggler slowdown), and pushes (lock: queue, apply; hogwild: apply; parameter server: each
slice crosses the hub and is applied when its shard gets to it, the worker going on at once,
as a pipe send does). So a step is pull, compute, push in virtual time; a DQN step, which acts
before it pulls, has its acting counted after the pull. Staleness, lock waits and server
queueing are what the schedule makes them. A seeded failure during a step loses it (its
pushes); the worker is rebuilt after `restart_s`, with its role and seeds, as a real
replacement is.

Traffic is counted as the processes pool counts it: the store client's pulls and pushes, and a
report message (pickled) every REPORT_S virtual seconds of each worker, at each pause and at
the end. `poll` runs the schedule until `min(workers, POLL_STEPS)` more steps have finished.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable, Generator
from typing import Any

import simpy

from esrl.backends.base import Traffic
from esrl.backends.pool import REPORT_S, WorkerFailure
from esrl.errors import NonFiniteError
from esrl.sim.clock import SimClock
from esrl.sim.costs import CostModel
from esrl.sim.faults import WorkerModel
from esrl.sim.network import NetSpec, Network
from esrl.stores.simulated import SimClient, SimStore

POLL_STEPS = 32
IDLE_S = 1e-3  # a step that did nothing (a planner waiting for real experience) still takes this long


class _Stop(BaseException):
    """Unwinds a step whose pool closed while it waited for a pull."""


class _Stepper:
    """Runs one worker's `step()` in a thread, handing control to the schedule at each pull and at the end.

    The schedule's thread and the stepper's never run together: each waits while the other works.
    """

    def __init__(self, worker: Any, client: SimClient) -> None:
        self.worker = worker
        self._go, self._back = threading.Semaphore(0), threading.Semaphore(0)
        self._reply = ""
        self._msg: tuple[Any, ...] = ()
        client.on_pull = self._wait_pull
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while True:
            self._go.acquire()
            if self._reply == "stop":
                return
            try:
                self._msg = ("done", self.worker.step())
            except _Stop:
                return
            except Exception as exc:
                self._msg = ("error", exc)
            self._back.release()

    def _wait_pull(self) -> None:  # in the stepper's thread, inside the step
        self._msg = ("pull",)
        self._back.release()
        self._go.acquire()
        if self._reply == "stop":
            raise _Stop

    def send(self, reply: str) -> tuple[Any, ...]:
        """Let the step start ("go") or go on after its pull ("pulled"); what it asks next."""
        self._reply = reply
        self._go.release()
        self._back.acquire()
        return self._msg

    def stop(self) -> None:
        self._reply = "stop"
        self._go.release()
        self._thread.join()


class SimulatedPool:
    """N logical workers of an RL run behind the Pool interface; see the module docstring.

    `work(report)` is the seconds a step's work costs one worker of this machine (the training loop
    supplies it from the cost model).
    """

    def __init__(self, setup: Any, store: SimStore, workers: int, clock: SimClock, net: NetSpec, costs: CostModel,
                 work: Callable[[Any], float], model: WorkerModel) -> None:
        self.setup, self.store, self.n, self.clock, self.env = setup, store, workers, clock, clock.env
        self.net = Network(self.env, net)
        self.costs, self.work, self.model = costs, work, model
        self.transport = store.transport
        self.traffic = Traffic()
        self.events: list[dict[str, Any]] = []
        self.staleness: list[int] = []
        self._lock = simpy.Resource(self.env, capacity=1)
        self._shard_cpu = [simpy.Resource(self.env, capacity=1) for _ in store.slices]
        self._draws = [model.draws(w) for w in range(workers)]
        self._workers: list[Any] = []
        self._clients: list[SimClient] = []
        self._steppers: list[_Stepper] = []
        self._alive = [True] * workers
        self._ids = list(range(workers))
        self._next_id = workers
        self._unsent: list[Any] = [None] * workers  # merged reports not yet sent in a report message
        self._unsent_traffic = [Traffic() for _ in range(workers)]  # ... and the traffic and staleness they carry
        self._unsent_stale: list[list[int]] = [[] for _ in range(workers)]
        self._last_report = [0.0] * workers
        self._reports: list[Any] = []  # finished steps the coordinator has not taken yet
        self._paused = False
        self._resume: simpy.Event = self.env.event()
        self._busy = 0  # workers inside a step, and pushes on their way to a shard
        self._idle: simpy.Event | None = None
        self._finished = 0
        self._target = 0
        self._quota: simpy.Event | None = None

    @property
    def live_workers(self) -> int:
        return sum(self._alive)

    def start(self) -> None:
        self._clients = [self.store.client(w) for w in range(self.n)]
        self._workers = [self.setup.build_worker(w, c) for w, c in enumerate(self._clients)]
        self._steppers = [_Stepper(wk, c) for wk, c in zip(self._workers, self._clients, strict=True)]
        for w in range(self.n):
            self.env.process(self._loop(w))

    # --- one logical worker ---------------------------------------------------------------------
    def _loop(self, w: int) -> Generator[Any, Any, None]:
        while True:
            while self._paused:
                yield self._resume
            self._busy += 1
            client, stepper = self._clients[w], self._steppers[w]
            msg = stepper.send("go")
            while msg[0] == "pull":
                yield from self._pull(w, client)
                msg = stepper.send("pulled")
            if msg[0] == "error":
                exc = msg[1]
                if isinstance(exc, NonFiniteError):
                    raise WorkerFailure(f"worker {w}, update {self._workers[w].updates}: {exc}", nonfinite=True)
                raise exc
            rep = msg[1]
            seconds, death = self._draws[w].duration(self.work(rep))
            if death is not None:
                yield self.env.timeout(death)
                client.pending.clear()
                self._absorb(w, client)
                self._done_busy()
                yield from self._restart(w)
                continue
            yield self.env.timeout(seconds if seconds > 0 else IDLE_S)
            for grad, versions in client.pending:
                yield from self._push(w, client, grad, versions)
            client.pending.clear()
            self._absorb(w, client, seconds)
            self._finish(w, rep)

    def _pull(self, w: int, client: SimClient) -> Generator[Any, Any, None]:
        sync, c = self.store.sync, self.costs
        if sync == "lock":
            with self._lock.request() as req:
                yield req
                yield self.env.timeout(c.copy_s)
                client.capture(0)
        elif sync == "hogwild":
            yield self.env.timeout(c.copy_s)
            client.capture(0)
        else:
            shards = [self.env.process(self._pull_shard(w, client, k)) for k in range(len(self.store.slices))]
            yield simpy.AllOf(self.env, shards)

    def _pull_shard(self, w: int, client: SimClient, k: int) -> Generator[Any, Any, None]:
        c = self.costs
        yield self.env.timeout(c.message("requests", 1))
        yield from self.net.transfer(("worker", w), ("shard", k), 1)
        with self._shard_cpu[k].request() as req:
            yield req
            yield self.env.timeout(c.message("requests", 1))
            reply = client.reply_bytes(k)
            client.capture(k)
            yield self.env.timeout(c.message("parameters", reply))
        yield from self.net.transfer(("shard", k), ("worker", w), reply)
        yield self.env.timeout(c.message("parameters", reply))

    def _push(self, w: int, client: SimClient, grad: Any, versions: list[int]) -> Generator[Any, Any, None]:
        sync, c = self.store.sync, self.costs
        client.count_push()
        if sync == "lock":
            with self._lock.request() as req:
                yield req
                yield self.env.timeout(c.apply_s)
                self._stale(w, self.store.apply(0, grad, versions[0]))
        elif sync == "hogwild":
            yield self.env.timeout(c.apply_s)
            self._stale(w, self.store.apply(0, grad, versions[0]))
        else:
            for k in range(len(self.store.slices)):
                nbytes = client.push_bytes(k)
                yield self.env.timeout(c.message("gradients", nbytes))
                self._busy += 1
                self.env.process(self._deliver(w, client, grad, versions[k], k, nbytes))

    def _deliver(self, w: int, client: SimClient, grad: Any, version: int, k: int, nbytes: int
                 ) -> Generator[Any, Any, None]:
        c = self.costs
        yield from self.net.transfer(("worker", w), ("shard", k), nbytes)
        with self._shard_cpu[k].request() as req:
            yield req
            lo, hi = self.store.slices[k]
            yield self.env.timeout(c.message("gradients", nbytes) + c.apply_s * (hi - lo) / self.store.params.numel())
            stale = self.store.apply(k, grad, version)
        client.unreported[k] += 1
        if k == 0:
            self._stale(w, stale)
        self._done_busy()

    def _restart(self, w: int) -> Generator[Any, Any, None]:
        old = self._ids[w]
        self._alive[w] = False
        self.events.append({"event": "worker_died", "worker": old, "exitcode": None, "why": "simulated failure"})
        yield self.env.timeout(self.model.restart_s)
        self._ids[w] = self._next_id
        self._next_id += 1
        self._steppers[w].stop()
        self._clients[w] = self.store.client(w)
        self._workers[w] = self.setup.build_worker(w, self._clients[w])  # its role and seeds, as a real replacement
        self._steppers[w] = _Stepper(self._workers[w], self._clients[w])
        self._alive[w] = True
        self.events.append({"event": "worker_replaced", "worker": old, "replacement": self._ids[w]})

    # --- bookkeeping ------------------------------------------------------------------------------
    def _stale(self, w: int, staleness: int) -> None:
        self.staleness.append(staleness)
        self._unsent_stale[w].append(staleness)

    def _absorb(self, w: int, client: SimClient, compute_s: float = 0.0) -> None:
        for traffic in (self.traffic, self._unsent_traffic[w]):
            for k, v in client.sent.items():
                traffic.sent[k] += v
            for k, v in client.received.items():
                traffic.received[k] += v
            traffic.messages += client.messages
            traffic.compute_s += compute_s
        client.sent.clear()
        client.received.clear()
        client.messages = 0

    def _finish(self, w: int, rep: Any) -> None:
        self._reports.append(rep)
        if self._unsent[w] is None:
            self._unsent[w] = type(rep)()  # the coordinator keeps `rep` itself
        self._unsent[w].merge(rep)
        if self.env.now - self._last_report[w] >= REPORT_S:
            self._report(w)
        self._finished += 1
        self._done_busy()
        if self._quota is not None and self._finished >= self._target:
            self._quota.succeed()
            self._quota = None

    def _report(self, w: int) -> None:
        """One report message from worker w (what it did since its last), as the processes pool pickles it."""
        self._count_message(("report", self._ids[w], self._unsent[w], self._unsent_traffic[w], self._unsent_stale[w]))
        self._unsent[w], self._unsent_traffic[w], self._unsent_stale[w] = None, Traffic(), []
        self._last_report[w] = self.env.now

    def _count_message(self, body: Any) -> None:
        self.traffic.received["report"] += len(pickle.dumps(body))
        self.traffic.messages += 1

    def _done_busy(self) -> None:
        self._busy -= 1
        if self._busy == 0 and self._idle is not None:
            self._idle.succeed()
            self._idle = None

    def _take(self) -> list[Any]:
        out, self._reports = self._reports, []
        return out

    # --- the Pool interface ---------------------------------------------------------------------------
    def poll(self, timeout: float) -> list[Any]:
        """Run the schedule until min(workers, POLL_STEPS) more steps have finished (`timeout` is wall time:
        meaningless here); the reports of the steps finished meanwhile."""
        if self._paused:
            return self._take()
        self._target = self._finished + min(self.live_workers or 1, POLL_STEPS)
        self._quota = self.env.event()
        self.env.run(until=self._quota)
        return self._take()

    def pause(self) -> None:
        if not self._paused:
            self._paused = True
            self._resume = self.env.event()

    def settle(self, timeout: float = 10.0) -> list[Any]:
        """Let the steps and pushes in progress finish; each worker then flushes its report and says it paused."""
        if self._busy:
            self._idle = self.env.event()
            self.env.run(until=self._idle)
        for w in range(self.n if self._steppers else 0):  # before start there is no worker to answer
            if self._alive[w]:
                if self._unsent[w] is not None:
                    self._report(w)
                self._count_message(("paused", self._ids[w]))
        return self._take()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._resume.succeed()

    def close(self) -> list[Any]:
        """The workers stop where they are (virtual time stops here); each sends its last report and "done"."""
        for w in range(self.n if self._steppers else 0):
            if self._alive[w]:
                self._report(w)
                self._count_message(("done", self._ids[w]))
        for stepper in self._steppers:
            stepper.stop()
        self._steppers = []
        return self._take()
