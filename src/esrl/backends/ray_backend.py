"""The Ray backend: workers in Ray actors, on one machine or a cluster.

Same protocol as the processes backend, for both kinds of worker (`backends/base.py`); bytes
are counted by pickling each message here, as the processes backend does, so the two report
comparable figures. Actors are spread over the cluster's nodes (`SPREAD`).

- Replicas (ES): actors build their replica (and noise table) from the setup once; per
  iteration they receive (iteration, member range) tasks and the shaped-return broadcast. An
  actor is created with the setup and then sent the full state: both are start-up traffic (kind
  "state"). A dead actor's task is requeued, a replacement actor gets the full state, and the
  event is logged.
- Free-running workers (A3C, DQN, Dyna-Q; the store is `stores.ray_store.RayStore`, made by
  `rl_store`): an actor builds its worker with `setup.build_worker(index, client)`; each
  `work()` call steps it for REPORT_S seconds and returns one report (updates, env steps,
  returns, losses, the bytes its store client and the run's Ray twins counted, staleness). Two
  calls stay queued on every actor so that it never idles waiting for the next. Before a report
  leaves, the actor waits until its pushes are applied, so the updates counted never run ahead
  of the store's version. Each `work()` call and its report are a message each (kind "report");
  an actor's creation carries its setup and store client (kind "state", start-up). `pause()` and
  `resume()` run in a concurrency group of their own on each actor, so they reach it while
  `work()` runs; a paused `work()` begins no update and returns when its time is up, and no new
  call is submitted until `resume()`. A dead actor (`RayActorError`: killed, its node lost) is
  logged as `worker_died` and replaced by a new actor on a fresh store slot; `worker_joined` is
  logged when the replacement's first report arrives.

Security: a local instance listens on 127.0.0.1 only, with the dashboard off (`_loopback_node`);
joining a cluster (`address`) first checks that its address answers (`probe`), and warns when
the cluster does not use Ray's token authentication.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from esrl.backends.base import REPORT_S, Traffic, WorkerFailure, absorb, clients_of, count_report, take_report
from esrl.errors import InputError, NonFiniteError

_DUMP = pickle.HIGHEST_PROTOCOL
CONNECT_TIMEOUT_S = 10.0  # an address that does not answer within this is an error, not minutes of Ray retries
ADDRESS_ACCEPTED = "'auto', host:port of a running cluster's head, or empty for a local instance"
_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
IN_FLIGHT = 2  # work() calls queued per free-running actor
CONTROL = "control"  # the free-running actors' concurrency group for pause/resume
PAUSE_ACK_S = 0.5  # at most this long does pause() wait for the actors to acknowledge


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("backend", "the ray backend needs Ray", "pip install 'esrl[ray]'") from None
    return ray


def init(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start or join Ray unless it is running already; True when this call started it.

    No address: a local instance that listens on loopback only. `auto`: Ray's own discovery.
    host:port: joined only once a plain TCP connect reaches it within CONNECT_TIMEOUT_S.
    """
    ray = _ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    if address and address != "auto":
        probe(address)
    try:
        if address:
            if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
                warnings.warn("joining a Ray cluster without token authentication (RAY_AUTH_MODE=disabled): anyone "
                              "who reaches it can run code on it", stacklevel=2)
            ray.init(address=address, log_to_driver=False)
        else:
            with _loopback_node():
                ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", num_cpus=num_cpus,
                         log_to_driver=False)
    except Exception as exc:  # Ray raises ConnectionError, ValueError, RuntimeError... for a bad address
        raise InputError("address", f"cannot {'join' if address else 'start'} Ray: {exc}".splitlines()[0],
                         ADDRESS_ACCEPTED) from None
    return True


def probe(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, as a one-line `address` error, a host:port where nothing accepts a TCP connection in `timeout` s.

    Ray itself retries such an address for minutes, printing its own warnings; a head's GCS port
    accepts at once. (`ray://` client addresses are probed the same way.)
    """
    text = address.removeprefix("ray://")
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InputError("address", f"{address!r} is not host:port", ADDRESS_ACCEPTED)
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout):
            pass
    except OSError as exc:
        why = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise InputError("address", f"nothing answers at {address} ({why})", ADDRESS_ACCEPTED) from None


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """While a local instance starts, let Ray keep 127.0.0.1 as the node's address.

    Ray 2.60 on Linux replaces a loopback `_node_ip_address` with the machine's own address
    (`services.resolve_ip_for_localhost`): it keeps loopback only where `ENABLE_RAY_CLUSTER` is
    off, as on macOS and Windows. Given the machine's address, the GCS, the raylet, the workers
    and the driver listened on every interface ([::]) and the runtime-env agent on that address.
    With the node at 127.0.0.1 every one of them listens on loopback (127.0.0.1, or
    ::ffff:127.0.0.1 on an IPv6 socket; `tests/test_ray_network.py` checks each listening
    socket). The variable reaches the processes Ray starts, the module constant the already
    imported driver; both are put back afterwards, so joining a cluster later in this process
    is untouched.
    """
    from ray._private import ray_constants

    saved_env, saved_const = os.environ.get(_CLUSTER_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTER_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_const
        if saved_env is None:
            os.environ.pop(_CLUSTER_ENV, None)
        else:
            os.environ[_CLUSTER_ENV] = saved_env


def cluster_cpus() -> int:
    """CPUs of the Ray cluster this process is connected to: the default worker count on Ray (one actor per CPU)."""
    return max(1, int(_ray().cluster_resources().get("CPU", 0)))


class _ReplicaActor:
    def __init__(self, setup: Any) -> None:
        self.replica = setup.build()

    def node(self) -> str:
        return str(_ray().get_runtime_context().get_node_id())

    def run(self, task: Any) -> tuple[Any, int, float]:
        t0 = time.perf_counter()
        result = self.replica.run(task)
        elapsed = time.perf_counter() - t0
        return result, len(pickle.dumps(result, _DUMP)), elapsed

    def apply(self, message: Any) -> None:
        self.replica.apply(message)

    def set_state(self, state: dict[str, Any]) -> None:
        self.replica.set_state(state)

    def digest(self) -> str:
        return str(self.replica.digest())


class WorkerActor:
    """One free-running worker in a Ray actor; see the module docstring."""

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
                self.counted = [*clients_of(self.worker, self.client), *twins_of(self.setup)]
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
                absorb(traffic, c)
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


class RayBackend:
    """N Ray actors, each with a replica; see the module docstring."""

    # a Ray call costs 1-2 ms of idle actor time: one range per actor (plus the evaluation episodes) measured
    # 8 ms over processes at population 256 on 2 workers; 2 ranges 14 ms, 8 ranges (the old tail) 25-29 ms
    task_tail = 1
    transport = "ray"

    def __init__(self, workers: int, address: str | None = None, max_restarts: int | None = None) -> None:
        """`workers` 0: one actor per CPU of the cluster (of this machine for a local instance)."""
        self.started_ray = init(address, num_cpus=None if address else max(workers, os.cpu_count() or 1))
        self.n = workers or cluster_cpus()
        self.max_restarts = 3 * self.n if max_restarts is None else max_restarts
        self.ray = _ray()
        self.traffic = Traffic()
        self.events: list[dict[str, Any]] = []
        self.staleness: list[int] = []
        self._actors: dict[int, Any] = {}  # worker id (free-running: its index) -> actor
        self._restarts = 0
        self._setup: Any = None
        self._setup_bytes = 0
        # replicas
        self._actor_cls = self.ray.remote(num_cpus=1, max_restarts=0)(_ReplicaActor)
        self._next_id = 0
        self._state_fn: Callable[[], dict[str, Any]] | None = None
        # free-running workers
        self._store: Any = None
        self._slots: dict[int, int] = {}  # worker index -> its store slot
        self._paused = False
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
        return dict(zip(wids, self.ray.get([self._actors[w].node.remote() for w in wids]), strict=True))

    def start(self, setup: Any, state_fn: Callable[[], dict[str, Any]] | None = None, store: Any = None) -> None:
        self._setup, self._state_fn = setup, state_fn
        if store is not None:
            self._store = store
            self._free_cls = self.ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0,
                                             concurrency_groups={CONTROL: 1})(WorkerActor)
            self._setup_bytes = len(pickle.dumps(setup))  # sent with every actor's creation
            for index in range(self.n):
                self._spawn_free(index)
            return
        assert state_fn is not None
        self._setup_bytes = len(pickle.dumps(setup, _DUMP))  # travels with each actor's creation
        state = state_fn()
        for _ in range(self.n):
            self._spawn(state)

    def _spawn(self, state: dict[str, Any]) -> int:
        wid = self._next_id
        self._next_id += 1
        actor = self._actor_cls.remote(self._setup)
        self.traffic.sent["state"] += self._setup_bytes
        self.traffic.messages += 1
        self.traffic.startup += self._setup_bytes + self._count_sent("state", state)
        actor.set_state.remote(state)
        self._actors[wid] = actor
        return wid

    def _count_sent(self, kind: str, body: Any) -> int:
        n = len(pickle.dumps(body, _DUMP))
        self.traffic.sent[kind] += n
        self.traffic.messages += 1
        return n

    def _lost(self, wid: int, why: str, task: Any = None) -> None:
        actor = self._actors.pop(wid, None)
        if actor is None:
            return
        try:
            self.ray.kill(actor)
        except Exception:  # already gone
            pass
        event: dict[str, Any] = {"event": "worker_died", "worker": wid, "why": why,
                                 "requeued_task": None if task is None else repr(task)}
        if self._restarts < self.max_restarts:
            assert self._state_fn is not None
            self._restarts += 1
            event["replacement"] = self._spawn(self._state_fn())
        self.events.append(event)
        if not self._actors:
            raise RuntimeError("all Ray workers died and the restart limit is spent")

    def run(self, tasks: Sequence[Any]) -> list[Any]:
        queue: deque[tuple[int, Any]] = deque(enumerate(tasks))
        results: list[Any] = [None] * len(tasks)
        pending: dict[Any, tuple[int, int, Any]] = {}  # object ref -> (worker, task id, task)
        remaining = len(tasks)
        while remaining:
            busy = {w for w, _, _ in pending.values()}
            for wid, actor in list(self._actors.items()):
                if wid not in busy and queue:
                    tid, task = queue.popleft()
                    self._count_sent("task", task)
                    pending[actor.run.remote(task)] = (wid, tid, task)
            ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=5.0)
            for ref in ready:
                wid, tid, task = pending.pop(ref)
                try:
                    result, nbytes, compute = self.ray.get(ref)
                except self.ray.exceptions.RayActorError as exc:
                    queue.appendleft((tid, task))
                    self._lost(wid, type(exc).__name__, task)
                    continue
                results[tid] = result
                self.traffic.received["result"] += nbytes
                self.traffic.messages += 1
                self.traffic.compute_s += compute
                remaining -= 1
        return results

    def broadcast(self, message: Any) -> None:
        n = len(pickle.dumps(message, _DUMP))  # one copy per actor, each counted
        for actor in self._actors.values():
            self.traffic.sent["apply"] += n
            self.traffic.messages += 1
            actor.apply.remote(message)  # calls from one caller run in order on an actor

    def verify(self, digest: str) -> list[int]:
        wids = list(self._actors)
        refs = []
        for w in wids:
            self._count_sent("digest", None)  # the request carries no arguments: a pickled None stands for it
            refs.append(self._actors[w].digest.remote())
        wrong = []
        for wid, ref in zip(wids, refs, strict=True):
            try:
                got = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as exc:
                self._lost(wid, type(exc).__name__)
                continue
            self.traffic.received["digest"] += len(got)
            self.traffic.messages += 1
            if got != digest:
                wrong.append(wid)
        if wrong:
            assert self._state_fn is not None
            state = self._state_fn()
            for wid in wrong:
                self._count_sent("state", state)
                self._actors[wid].set_state.remote(state)
                self.events.append({"event": "resync", "worker": wid})
        return wrong

    def close(self) -> list[Any]:
        """Stop the actors (free-running: after the calls in flight, whose reports it returns); end Ray when
        this backend started it."""
        reports = self._drain() if self._store is not None else []
        for actor in self._actors.values():
            try:
                self.ray.kill(actor)
            except Exception:
                pass
        self._actors.clear()
        self._pending.clear()
        if self.started_ray:
            self.ray.shutdown()
        return reports

    # --- free-running workers ---------------------------------------------------------------
    def _spawn_free(self, index: int) -> int:
        slot = self._next_slot
        self._next_slot += 1
        client = self._store.client(slot)
        actor = self._free_cls.options(scheduling_strategy="SPREAD").remote(self._setup, index, client)
        nbytes = self._setup_bytes + len(pickle.dumps((index, client)))
        self.traffic.sent["state"] += nbytes
        self.traffic.startup += nbytes
        self.traffic.messages += 1
        self._actors[index], self._slots[index] = actor, slot
        if self._paused:  # a replacement joins a paused run paused
            self._control(actor, "pause")
        self._top_up(index)
        return slot

    def _submit(self, wid: int) -> None:
        actor = self._actors[wid]
        self._pending[actor.work.remote(REPORT_S)] = (wid, actor)
        self.traffic.sent["report"] += len(pickle.dumps(REPORT_S))  # the call that asks for a report
        self.traffic.messages += 1

    def _top_up(self, wid: int) -> None:
        """Queue work() calls on the actor until IN_FLIGHT are pending (none while paused or closing)."""
        if self._paused or self._closing or wid not in self._actors:
            return
        actor = self._actors[wid]
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
        refs = [self._control(a, "pause") for a in self._actors.values()]
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
        for actor in self._actors.values():
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
                self._died_free(wid, type(exc).__name__)
                continue
            if msg[0] != "report":
                count_report(self, len(pickle.dumps(msg)))
                raise WorkerFailure(msg[1], nonfinite=(msg[0] == "nonfinite"))
            reports.extend(take_report(self, msg[1], msg[2], msg[3], len(pickle.dumps(msg))))
            if actor in self._joining:
                self._joining.discard(actor)
                self.events.append({"event": "worker_joined", "worker": wid, "slot": self._slots[wid]})
            self._top_up(wid)
        return reports

    def _died_free(self, wid: int, why: str) -> None:
        actor, slot = self._actors.pop(wid), self._slots.pop(wid)
        self._joining.discard(actor)
        for ref in [r for r, (_, a) in self._pending.items() if a is actor]:
            del self._pending[ref]
        try:
            self.ray.kill(actor)
        except Exception:  # already gone
            pass
        event: dict[str, Any] = {"event": "worker_died", "worker": wid, "slot": slot, "why": why}
        if not self._closing and self._restarts < self.max_restarts:
            self._restarts += 1
            event["replacement_slot"] = self._spawn_free(wid)
            self._joining.add(self._actors[wid])
        self.events.append(event)
        if not self._actors and not self._closing:
            raise WorkerFailure("all workers died and the restart limit is spent")

    def _drain(self) -> list[Any]:
        """The reports of the work() calls still in flight (none is submitted from now on)."""
        self._closing = True
        reports: list[Any] = []
        deadline = time.monotonic() + 10
        while self._pending and time.monotonic() < deadline:
            try:
                reports.extend(self.poll(max(0.0, deadline - time.monotonic())))
            except WorkerFailure:
                break
        return reports


def rl_store(setup: Any, params: Any, spec: Any, shards: int, backend: RayBackend) -> tuple[Any, Any]:
    """The run's parameter-server actors (its twins included) and the setup whose stores are those twins.

    The store is the last thing a training loop closes, so it ends the twins' actors and, when
    `backend` started Ray, Ray itself (the backend then leaves Ray running when it closes).
    """
    from esrl.stores.ray_store import RayStore, to_ray

    setup, owned = to_ray(setup)
    store = RayStore(params, spec, shards=shards, owned=owned, shutdown=backend.started_ray)
    backend.started_ray = False
    return setup, store
