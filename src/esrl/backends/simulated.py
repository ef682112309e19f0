"""The simulated backend: N logical workers on a virtual clock (esrl.sim), for both kinds of worker.

One simulated cluster serves every algorithm, as one backend of the worker protocol
(`backends/base.py`): the coordinator's one core, the hub network (`sim.network`), each slot's
seeded speed, stragglers and failures (`sim.faults`), the replacement of a worker that died
(`restart_s` later, a new worker id), and the byte and message counts, all pickled as the
processes backend pickles them. What runs on it is either kind of worker the protocol knows:

- **Replicas** (ES; `start(setup, state_fn)`). Every logical worker's replica would hold the
  same state (replicas apply the same updates to the same inputs), so one replica built here
  stands for all of them: it runs every task, really, at the virtual moment the schedule gives
  the worker that took it, and applies each broadcast once. What differs per worker is only
  when things happen: the coordinator serializes each task, the hub carries it, the worker
  waits until it has applied the last broadcast, computes for what the cost model says the
  result's work costs, serializes the result, the hub carries it back, the coordinator
  deserializes it and hands that worker the next task. Broadcasts go through the hub or a relay
  tree. A failure during a task loses it (requeued); the replacement gets the full state.
- **Free-running workers** (A3C, DQN, Dyna-Q; `start(setup, store=store)` with a
  `stores.simulated.SimStore`). Each logical worker is a SimPy process looping over updates.
  Its `step()` really runs, in a thread of its own that only ever runs while the schedule
  waits for it (one thing runs at a time, in the schedule's order: deterministic); when the
  step pulls, the thread stops and the schedule carries the pull out (under `lock` it queues
  for the one lock and copies; under `hogwild` it copies, waiting for no one; on a parameter
  server each shard's request crosses the hub and queues at that shard's one core, which
  answers with its slice of that moment), then the step goes on with what was pulled. Its
  pushes are held until the step ends; the worker then spends what the cost model says the
  step's work costs and pushes (lock: queue, apply; hogwild: apply; parameter server: each
  slice crosses the hub and is applied when its shard gets to it, the worker going on at once,
  as a pipe send does). Staleness, lock waits and server queueing are what the schedule makes
  them. A failure during a step loses it (its pushes); the replacement is rebuilt with its role
  and seeds, as a real replacement is. A report message (pickled) leaves every REPORT_S virtual
  seconds of each worker, at each pause and at the end; `poll` runs the schedule until
  `min(workers, POLL_STEPS)` more steps have finished.

`work(result)` is the seconds a result's (or a step's report's) work costs one worker of this
machine: the training loop, which knows what a result holds, supplies it from the cost model.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import simpy

from esrl.backends.base import REPORT_S, Traffic, WorkerFailure
from esrl.errors import NonFiniteError
from esrl.sim.clock import SimClock
from esrl.sim.costs import CostModel
from esrl.sim.faults import WorkerDraws, WorkerModel
from esrl.sim.network import COORDINATOR, NetSpec, Network, tree_parent

if TYPE_CHECKING:
    from esrl.stores.simulated import SimClient

_DUMP = pickle.HIGHEST_PROTOCOL
POLL_STEPS = 32
IDLE_S = 1e-3  # a step that did nothing (a planner waiting for real experience) still takes this long


def _size(kind: str, body: Any) -> int:
    """Bytes of the message the processes backend sends for (kind, body)."""
    return len(pickle.dumps((kind, body), _DUMP))


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


class SimulatedBackend:
    """N logical workers behind the worker protocol; see the module docstring.

    `broadcast` is "hub" or "tree" (replicas). `run_all`, when given, computes the results of a call's
    tasks at once (`run_all(replica, tasks)`, each the result `replica.run(task)` would give): the
    schedule is the same, the real process batches.
    """

    def __init__(self, workers: int, clock: SimClock, net: NetSpec, costs: CostModel,
                 work: Callable[[Any], float], model: WorkerModel, broadcast: str = "tree", fanout: int = 4,
                 run_all: Callable[[Any, list[Any]], list[Any]] | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.n, self.clock, self.env = workers, clock, clock.env
        self.net = Network(self.env, net)
        self.costs, self.work, self.model = costs, work, model
        self.broadcast_mode, self.fanout, self.run_all = broadcast, fanout, run_all
        self.transport = "simulated"
        self.traffic = Traffic()
        self.events: list[dict[str, Any]] = []
        self.staleness: list[int] = []
        self._draws: list[WorkerDraws] = [model.draws(w) for w in range(workers)]
        self._alive = [True] * workers
        self._ids = list(range(workers))  # the current worker id of each slot (replacements get new ids)
        self._next_id = workers
        self._cpu = simpy.Resource(self.env, capacity=1)  # the coordinator's one core
        # replicas
        self._replica: Any = None
        self._state_fn: Callable[[], dict[str, Any]] | None = None
        self._ready: list[simpy.Event] = []  # worker w has applied the last broadcast (or got its state)
        # free-running workers
        self.setup: Any = None
        self.store: Any = None
        self._lock = simpy.Resource(self.env, capacity=1)
        self._shard_cpu: list[simpy.Resource] = []
        self._workers: list[Any] = []
        self._clients: list[Any] = []
        self._steppers: list[_Stepper] = []
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

    # --- lifecycle ------------------------------------------------------------------------
    def start(self, setup: Any, state_fn: Callable[[], dict[str, Any]] | None = None, store: Any = None) -> None:
        """Replicas that get `state_fn()`, or (given a SimStore) free-running workers on `store`."""
        if store is None:
            assert state_fn is not None
            self._state_fn = state_fn
            state = state_fn()
            self._replica = setup.build()
            self._replica.set_state(state)
            data = _size("state", state)
            self._ready = [self.env.event() for _ in range(self.n)]
            for w in range(self.n):
                self.env.process(self._send_state(w, data, self._ready[w]))
            return
        self.setup, self.store, self.transport = setup, store, store.transport
        self._shard_cpu = [simpy.Resource(self.env, capacity=1) for _ in store.slices]
        self._clients = [store.client(w) for w in range(self.n)]
        self._workers = [setup.build_worker(w, c) for w, c in enumerate(self._clients)]
        self._steppers = [_Stepper(wk, c) for wk, c in zip(self._workers, self._clients, strict=True)]
        for w in range(self.n):
            self.env.process(self._loop(w))

    def close(self) -> list[Any]:
        """Replicas: dropped. Free-running workers stop where they are (virtual time stops here); each sends
        its last report and "done"; their reports."""
        self._replica = None
        for w in range(self.n if self._steppers else 0):
            if self._alive[w]:
                self._report(w)
                self._count_message(("done", self._ids[w]))
        for stepper in self._steppers:
            stepper.stop()
        self._steppers = []
        return self._take()

    def _replace(self, w: int, **lost: Any) -> Generator[Any, Any, None]:
        """Worker slot w died: log it, wait `restart_s`, bring a replacement up under a new id."""
        old = self._ids[w]
        self._alive[w] = False
        self.events.append({"event": "worker_died", "worker": old, "exitcode": None, "why": "simulated failure",
                            **lost})
        yield self.env.timeout(self.model.restart_s)
        self._ids[w] = self._next_id
        self._next_id += 1
        if self._replica is not None:  # a replica is sent the full state
            assert self._state_fn is not None
            self._ready[w] = self.env.event()
            yield from self._send_state(w, _size("state", self._state_fn()), self._ready[w])
        else:  # a free-running worker is built again with its role and seeds, on a fresh client
            self._steppers[w].stop()
            self._clients[w] = self.store.client(w)
            self._workers[w] = self.setup.build_worker(w, self._clients[w])
            self._steppers[w] = _Stepper(self._workers[w], self._clients[w])
        self._alive[w] = True
        self.events.append({"event": "worker_replaced", "worker": old, "replacement": self._ids[w]})

    # --- replicas: the schedule pieces ---------------------------------------------------------
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

    # --- replicas: the interface ----------------------------------------------------------------
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
                    yield from self._replace(w, requeued_task=repr(tasks[tid]))
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

    # --- free-running workers: one logical worker ------------------------------------------------
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
                yield from self._replace(w)
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
                self.env.process(self._deliver_push(w, client, grad, versions[k], k, nbytes))

    def _deliver_push(self, w: int, client: SimClient, grad: Any, version: int, k: int, nbytes: int
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

    # --- free-running workers: bookkeeping ------------------------------------------------------------------------------
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

    # --- free-running workers: the interface -----------------------------------------------------
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
