"""The Ray backend: ES replicas in Ray actors, on one machine or a cluster.

Same interface and protocol as the processes backend: actors build their replica (and
noise table) from the setup once; per iteration they receive (iteration, member range)
tasks and the shaped-return broadcast. Bytes are counted by pickling each message here, as
the processes backend does, so the two report comparable figures. An actor is created with
the setup and then sent the full state: both are start-up traffic (kind "state"). A dead
actor's task is requeued, a replacement actor gets the full state, and the event is logged.

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
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from esrl.backends.base import Traffic
from esrl.errors import InputError

_DUMP = pickle.HIGHEST_PROTOCOL
CONNECT_TIMEOUT_S = 10.0  # an address that does not answer within this is an error, not minutes of Ray retries
ADDRESS_ACCEPTED = "'auto', host:port of a running cluster's head, or empty for a local instance"
_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


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
        self._actor_cls = self.ray.remote(num_cpus=1, max_restarts=0)(_ReplicaActor)
        self._actors: dict[int, Any] = {}
        self._next_id = 0
        self._restarts = 0
        self._setup: Any = None
        self._state_fn: Callable[[], dict[str, Any]] | None = None
        self._setup_bytes = 0

    @property
    def live_workers(self) -> int:
        return len(self._actors)

    def nodes(self) -> list[str]:
        return list(self.ray.get([a.node.remote() for a in self._actors.values()]))

    def start(self, setup: Any, state_fn: Callable[[], dict[str, Any]]) -> None:
        self._setup, self._state_fn = setup, state_fn
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

    def close(self) -> None:
        for actor in self._actors.values():
            try:
                self.ray.kill(actor)
            except Exception:
                pass
        self._actors.clear()
        if self.started_ray:
            self.ray.shutdown()
