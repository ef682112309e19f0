"""The simulated backend for replicas: N logical workers on a virtual clock (esrl.sim).

Every logical worker's replica would hold the same state (replicas apply the same updates
to the same inputs), so one replica built here stands for all of them: it runs every task,
really, at the virtual moment the schedule gives the worker that took it, and applies each
broadcast once. What differs per worker is only when things happen, and that comes from the
schedule: the coordinator (one CPU) serializes each task, the hub carries it, the worker waits
until it has applied the last broadcast, computes for what the cost model says the result's
work costs (its speed, a seeded straggler slowdown), serializes the result, the hub carries it
back, the coordinator deserializes it and hands that worker the next task. Broadcasts go
through the hub or a relay tree; a seeded failure during a task loses it (requeued) and a
replacement starts after `restart_s` with the full state. Bytes and messages are counted as
the processes backend counts them: the pickled length of each message.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Generator, Sequence
from typing import Any

import simpy

from esrl.backends.base import Traffic
from esrl.sim.clock import SimClock
from esrl.sim.costs import CostModel
from esrl.sim.faults import WorkerDraws, WorkerModel
from esrl.sim.network import COORDINATOR, NetSpec, Network, tree_parent

_DUMP = pickle.HIGHEST_PROTOCOL


def _size(kind: str, body: Any) -> int:
    """Bytes of the message the processes backend sends for (kind, body)."""
    return len(pickle.dumps((kind, body), _DUMP))


class SimulatedBackend:
    """N logical workers behind the replica protocol; see the module docstring.

    `work(result)` is the seconds a result's work costs one worker of this machine (the training
    loop, which knows what a result holds, supplies it); `broadcast` is "hub" or "tree". `run_all`,
    when given, computes the results of a call's tasks at once (`run_all(replica, tasks)`, each the
    result `replica.run(task)` would give): the schedule is the same, the real process batches.
    """

    transport = "simulated"

    def __init__(self, workers: int, clock: SimClock, net: NetSpec, costs: CostModel,
                 work: Callable[[Any], float], model: WorkerModel, broadcast: str = "tree", fanout: int = 4,
                 run_all: Callable[[Any, list[Any]], list[Any]] | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.n, self.clock, self.env = workers, clock, clock.env
        self.net = Network(self.env, net)
        self.costs, self.work, self.model = costs, work, model
        self.broadcast_mode, self.fanout, self.run_all = broadcast, fanout, run_all
        self.traffic = Traffic()
        self.events: list[dict[str, Any]] = []
        self._cpu = simpy.Resource(self.env, capacity=1)  # the coordinator's one core
        self._draws: list[WorkerDraws] = [model.draws(w) for w in range(workers)]
        self._ready: list[simpy.Event] = []  # worker w has applied the last broadcast (or got its state)
        self._alive = [True] * workers
        self._ids = list(range(workers))  # the current worker id of each slot (replacements get new ids)
        self._next_id = workers
        self._replica: Any = None
        self._state_fn: Callable[[], dict[str, Any]] | None = None

    @property
    def live_workers(self) -> int:
        return sum(self._alive)

    # --- lifecycle ------------------------------------------------------------------------
    def start(self, setup: Any, state_fn: Callable[[], dict[str, Any]]) -> None:
        self._state_fn = state_fn
        state = state_fn()
        self._replica = setup.build()
        self._replica.set_state(state)
        data = _size("state", state)
        self._ready = [self.env.event() for _ in range(self.n)]
        for w in range(self.n):
            self.env.process(self._send_state(w, data, self._ready[w]))

    def close(self) -> None:
        self._replica = None

    # --- schedule pieces -------------------------------------------------------------------
    def _coordinator(self, seconds: float) -> Generator[Any, Any, None]:
        """Work on the coordinator's core (it serves one thing at a time)."""
        with self._cpu.request() as req:
            yield req
            yield self.env.timeout(seconds)

    def _send_state(self, w: int, nbytes: int, ready: simpy.Event, startup: bool = True) -> Generator[Any, Any, None]:
        self._count_sent("state", nbytes, startup)
        yield from self._coordinator(self.costs.message("state", nbytes))
        yield from self.net.transfer(COORDINATOR, ("worker", w), nbytes)
        yield self.env.timeout(self.costs.message("state", nbytes))
        ready.succeed()

    def _count_sent(self, kind: str, nbytes: int, startup: bool = False) -> None:
        self.traffic.sent[kind] += nbytes
        self.traffic.messages += 1
        if startup:
            self.traffic.startup += nbytes

    def _count_received(self, kind: str, nbytes: int) -> None:
        self.traffic.received[kind] += nbytes
        self.traffic.messages += 1

    # --- the interface ----------------------------------------------------------------------
    def run(self, tasks: Sequence[Any]) -> list[Any]:
        # task ids in the order they are handed out; a requeued task goes first, as on the processes backend
        queue = simpy.PriorityStore(self.env)
        for tid in range(len(tasks)):
            queue.put(simpy.PriorityItem((1, tid), tid))
        requeued = [0]
        results: list[Any] = [None] * len(tasks)
        computed: dict[int, Any] = {}  # a requeued task's result: the same whoever computes it (order-free)
        if self.run_all is not None:
            computed.update(enumerate(self.run_all(self._replica, list(tasks))))
        remaining = [len(tasks)]
        done = self.env.event()

        def worker(w: int) -> Generator[Any, Any, None]:
            while True:
                get = queue.get()
                yield get | done
                if not get.triggered:
                    get.cancel()
                    return
                tid = int(get.value.item)  # type: ignore[union-attr]
                sent = _size("task", (tid, tasks[tid]))
                self._count_sent("task", sent)
                yield from self._coordinator(self.costs.message("task", sent))
                yield from self.net.transfer(COORDINATOR, ("worker", w), sent)
                yield self._ready[w]  # a task sent before the worker applied the last broadcast waits in its pipe
                if tid not in computed:
                    computed[tid] = self._replica.run(tasks[tid])
                result = computed[tid]
                back = _size("result", (tid, result, 0.0))
                seconds, death = self._draws[w].duration(self.work(result))
                yield self.env.timeout(self.costs.message("task", sent))
                if death is not None:
                    yield self.env.timeout(death)
                    requeued[0] += 1
                    queue.put(simpy.PriorityItem((0, requeued[0]), tid))
                    yield from self._replace(w, repr(tasks[tid]))
                    continue
                yield self.env.timeout(seconds + self.costs.message("result", back))
                self.traffic.compute_s += seconds
                yield from self.net.transfer(("worker", w), COORDINATOR, back)
                self._count_received("result", back)
                yield from self._coordinator(self.costs.message("result", back))
                results[tid] = result
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.succeed()

        if tasks:
            for w in range(self.n):
                if self._alive[w]:  # a slot whose replacement is still starting takes no task this time
                    self.env.process(worker(w))
            self.env.run(until=done)
        return results

    def _replace(self, w: int, task: str) -> Generator[Any, Any, None]:
        """Worker slot w died in a task: log it, wait `restart_s`, bring a replacement up with the full state."""
        old = self._ids[w]
        self._alive[w] = False
        self.events.append({"event": "worker_died", "worker": old, "exitcode": None, "why": "simulated failure",
                            "requeued_task": task})
        yield self.env.timeout(self.model.restart_s)
        assert self._state_fn is not None
        self._ids[w] = self._next_id
        self._next_id += 1
        self._ready[w] = self.env.event()
        yield from self._send_state(w, _size("state", self._state_fn()), self._ready[w])
        self._alive[w] = True
        self.events.append({"event": "worker_replaced", "worker": old, "replacement": self._ids[w]})

    def broadcast(self, message: Any) -> None:
        """Every replica applies `message`: the one here now; each logical worker once the message has
        reached it (hub: the coordinator sends every copy; tree: workers relay), plus the apply's cost. The
        coordinator serializes it once and then applies its own copy, so its clock moves by both."""
        self._replica.apply(message)
        nbytes = _size("apply", message)
        cost = self.costs.message("apply", nbytes)
        arrived = [self.env.event() for _ in range(self.n)]
        for w in range(self.n):
            if not self._alive[w]:  # its replacement gets the full state when it starts
                continue
            self._ready[w] = self.env.event()
            self._count_sent("apply", nbytes)
            parent = -1 if self.broadcast_mode == "hub" else tree_parent(w, self.fanout)
            while parent >= 0 and not self._alive[parent]:  # a dead relay's children hear from the next one up
                parent = tree_parent(parent, self.fanout)
            self.env.process(self._deliver(w, parent, nbytes, cost, arrived, self._ready[w]))
        self.clock.advance(cost + self.costs.apply_s)

    def _deliver(self, w: int, parent: int, nbytes: int, cost: float, arrived: list[simpy.Event],
                 ready: simpy.Event) -> Generator[Any, Any, None]:
        if parent >= 0:
            yield arrived[parent]  # a relay forwards the bytes as they came, unparsed
        else:
            yield self.env.timeout(cost)  # the coordinator serialized it once
        yield from self.net.transfer(COORDINATOR if parent < 0 else ("worker", parent), ("worker", w), nbytes)
        arrived[w].succeed()
        yield self.env.timeout(cost + self.costs.apply_s)
        ready.succeed()

    def verify(self, digest: str) -> list[int]:
        """Ask every worker for its digest (one replica answers for all): a round trip each."""
        mine = self._replica.digest()
        ask, answer = _size("digest", None), _size("digest", mine)
        done = self.env.event()
        live = [w for w in range(self.n) if self._alive[w]]
        left = [len(live)]

        def round_trip(w: int) -> Generator[Any, Any, None]:
            self._count_sent("digest", ask)
            yield from self._coordinator(self.costs.message("digest", ask))
            yield from self.net.transfer(COORDINATOR, ("worker", w), ask)
            yield self._ready[w]
            yield self.env.timeout(2 * self.costs.message("digest", ask))
            yield from self.net.transfer(("worker", w), COORDINATOR, answer)
            self._count_received("digest", answer)
            yield from self._coordinator(self.costs.message("digest", answer))
            left[0] -= 1
            if left[0] == 0:
                done.succeed()

        for w in live:
            self.env.process(round_trip(w))
        self.env.run(until=done)
        if mine == digest:
            return []
        assert self._state_fn is not None
        state = self._state_fn()
        self._replica.set_state(state)
        nbytes = _size("state", state)
        for w in range(self.n):
            self._ready[w] = self.env.event()
            self.env.process(self._send_state(w, nbytes, self._ready[w], startup=False))
            self.events.append({"event": "resync", "worker": self._ids[w]})
        return list(self._ids)
