"""Traffic is counted per real message on every backend, start-up bytes apart, the transport
named; RL pools pause between updates and resume."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from esrl import envs
from esrl.backends.base import Traffic
from esrl.backends.processes import ProcessBackend, context
from esrl.backends.serial import SerialBackend
from esrl.config import A3CConfig, DQNConfig
from esrl.rl import nets
from esrl.rl.a3c import A3CSetup
from esrl.rl.common import optim_spec
from esrl.rl.dqn import DQNSetup
from esrl.stores import make_store

SPEC = envs.spec_of("CartPole-v1")
CTX = context()


# --- ES backends ------------------------------------------------------------------------------

@dataclasses.dataclass
class EchoReplica:
    """A replica whose work is trivial, so that only the backend's messages are under test."""

    marker: Path | None = None
    state: dict[str, Any] = dataclasses.field(default_factory=dict)

    def run(self, task: Any) -> Any:
        if task == "die" and self.marker is not None:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))  # the first worker to get here dies
                os._exit(9)
            except FileExistsError:
                pass
        return ("done", task)

    def apply(self, message: Any) -> None:
        self.state["applied"] = message

    def get_state(self) -> dict[str, Any]:
        return dict(self.state)

    def set_state(self, state: dict[str, Any]) -> None:
        self.state = dict(state)

    def digest(self) -> str:
        return "same"


@dataclasses.dataclass(frozen=True)
class EchoSetup:
    marker: Path | None = None

    def build(self) -> EchoReplica:
        return EchoReplica(self.marker)


STATE = {"theta": np.arange(1000, dtype=np.float32)}


def test_processes_count_startup_and_one_message_per_task_result_broadcast_and_digest():
    backend = ProcessBackend(2)
    assert backend.transport == "pipe"
    try:
        backend.start(EchoSetup(), lambda: STATE)
        t = backend.traffic
        assert t.messages == 2  # one state message per worker
        assert t.startup == t.sent["state"] > 2 * STATE["theta"].nbytes and not t.received
        before = t.snapshot()
        assert backend.run([("pop", 0, lo, lo + 2) for lo in range(0, 10, 2)]) == [
            ("done", ("pop", 0, lo, lo + 2)) for lo in range(0, 10, 2)]
        backend.broadcast(np.zeros(16, np.float32))
        assert backend.verify("same") == []
        d = t.since(before)
        assert d.messages == 5 + 5 + 2 + 2 * 2  # tasks, results, a broadcast copy per worker, digest asked/answered
        assert d.startup == 0 and d.sent.get("state", 0) == 0
        assert d.sent["task"] > 0 and d.received["result"] > 0 and d.sent["apply"] > 2 * 64
        assert d.sent["digest"] > 0 and d.received["digest"] > 0
    finally:
        backend.close()


def test_a_replacement_worker_is_startup_and_a_resync_is_state(tmp_path):
    backend = ProcessBackend(2)
    try:
        backend.start(EchoSetup(tmp_path / "died"), lambda: STATE)
        first = backend.traffic.startup
        backend.run(["die", "a", "b"])
        assert (tmp_path / "died").exists()
        assert backend.traffic.startup == 3 * first // 2  # the replacement got the full state: start-up too
        assert backend.traffic.sent["state"] == backend.traffic.startup
        assert sorted(backend.verify("drifted")) == sorted(backend._workers)  # every replica resynced: not start-up
        assert backend.traffic.sent["state"] == 5 * first // 2 and backend.traffic.startup == 3 * first // 2
    finally:
        backend.close()


def test_es_on_processes_counts_the_replicas_state_as_startup():
    from esrl.es.algorithm import ESSetup
    from tests.conftest import tiny_es

    setup = ESSetup(tiny_es(), SPEC, 3)
    master = setup.build()
    backend = ProcessBackend(2)
    try:
        backend.start(setup, master.get_state)
        t = backend.traffic
        assert t.messages == 2 and t.startup == t.sent["state"] > 0
        before = t.snapshot()
        backend.run([("pop", 0, 0, 8), ("pop", 0, 8, 16)])
        d = t.since(before)
        assert d.messages == 4 and d.startup == 0 and d.received["result"] > 0
    finally:
        backend.close()


def test_traffic_snapshot_and_since_carry_startup():
    t = Traffic()
    t.sent["state"] += 100
    t.startup += 100
    t.messages += 1
    before = t.snapshot()
    t.sent["task"] += 7
    t.received["result"] += 5
    t.messages += 2
    d = t.since(before)
    assert (d.startup, d.messages, d.total, before.startup, before.total) == (0, 2, 12, 100, 100)
    before.add(d)
    assert before.total == t.total == 112 and before.startup == 100 and before.messages == 3


def test_transports_are_named():
    from esrl.backends.ray_backend import RayBackend
    from esrl.rl.device_dqn import DeviceDQN
    from esrl.rl.ga3c import GA3C

    assert SerialBackend().transport == "in-process" and RayBackend.transport == "ray"
    assert GA3C.transport == "pipe" and DeviceDQN.transport == "pipe"
    setup = A3CSetup(A3CConfig(hidden=(8,)), SPEC, 0)
    params = nets.get_flat(setup.build_model())
    for sync, transport in (("lock", "shared-memory"), ("hogwild", "shared-memory"), ("param-server", "pipe")):
        store = make_store(sync, params, optim_spec(setup.cfg), CTX, slots=1)
        try:
            backend = ProcessBackend(1, 0, ctx=CTX)
            assert backend.transport == "pipe"  # replicas: tasks and results over pipes
            backend.start(setup, store=store)
            assert backend.transport == transport, sync  # free-running workers: the store's
            backend.close()
        finally:
            store.close()
    serial = SerialBackend(1)
    serial.start(setup, store=make_store("lock", params, optim_spec(setup.cfg), CTX))
    assert serial.transport == "in-process"


# --- RL stores and pools ----------------------------------------------------------------------

@pytest.mark.parametrize("shards", [1, 2])
def test_param_server_counts_a_message_per_shard(shards):
    store = make_store("param-server", torch.zeros(10), optim_spec(A3CConfig()), CTX, slots=1, shards=shards)
    try:
        client = store.client(0)
        buf = torch.zeros(10)
        v = client.pull(buf)
        assert client.messages == 2 * shards  # a request and a reply on each shard's pipe
        client.push(torch.ones(10), v)
        assert client.messages == 3 * shards  # a gradient slice to each shard
    finally:
        store.close()


def _setup(algo: str, workers: int, **kw: Any) -> Any:
    if algo == "a3c":
        return A3CSetup(A3CConfig(hidden=(16,), envs_per_worker=2, **kw), SPEC, 1)
    cfg = DQNConfig(hidden=(16,), learning_starts=32, batch_size=16, **kw)
    return DQNSetup(cfg, SPEC, 1).attach(CTX, workers)


def _pool(algo: str, sync: str, workers: int = 2, shards: int = 1) -> tuple[Any, Any, Any]:
    """Setup, store and processes backend built as train_rl builds them (start with `start(setup, store=store)`)."""
    setup = _setup(algo, workers, sync=sync, shards=shards)
    params = nets.get_flat(setup.build_model())
    store = make_store(sync, params, optim_spec(setup.cfg), CTX, slots=ProcessBackend.slots_needed(workers, 0),
                       shards=shards)
    return setup, store, ProcessBackend(workers, 0, ctx=CTX)


def _run_until(pool: Any, store_version: Any, updates: int, limit: float = 30) -> int:
    """Poll until the store has taken `updates` updates; the updates the reports counted."""
    counted, deadline = 0, time.monotonic() + limit
    while store_version() < updates and time.monotonic() < deadline:
        counted += sum(r.updates for r in pool.poll(0.05))
    return counted


def _poll_for(pool: Any, seconds: float) -> int:
    """Poll for `seconds` (a poll returns at the first report); the updates reported meanwhile."""
    counted, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        counted += sum(r.updates for r in pool.poll(0.05))
    return counted


@pytest.mark.parametrize(("algo", "sync", "shards", "per_update"),
                         [("a3c", "hogwild", 1, 2), ("dqn", "lock", 1, 2), ("a3c", "param-server", 2, 6)])
def test_processes_count_a_message_per_pull_and_push(algo, sync, shards, per_update):
    setup, store, pool = _pool(algo, sync, shards=shards)
    counted, t0 = 0, time.monotonic()
    try:
        pool.start(setup, store=store)
        counted = _run_until(pool, lambda: store.snapshot()[2], 40)
    finally:
        counted += sum(r.updates for r in pool.close())
        version = store.snapshot()[2]
        store.close()
    t = pool.traffic
    assert counted == version >= 40  # every update reported, so its messages were too
    assert t.received["report"] > 0 and t.startup == 0  # forked workers: nothing is sent to start them
    # pulls and pushes (per shard on the server), plus the reports: one per 0.1 s per worker, a last one, "done"
    reports = pool.n * ((time.monotonic() - t0) / 0.1 + 3)
    assert per_update * version < t.messages <= per_update * version + reports


@pytest.mark.parametrize("algo", ["a3c", "dqn"])
def test_serial_pool_counts_exactly_a_pull_and_a_push_per_update(algo):
    setup = _setup(algo, 2, sync="lock")
    store = make_store("lock", nets.get_flat(setup.build_model()), optim_spec(setup.cfg), CTX)
    pool = SerialBackend(2)
    pool.start(setup, store=store)
    updates = sum(r.updates for _ in range(60) for r in pool.poll(0))  # DQN learns after 32 transitions
    assert updates == store.version > 0 and pool.traffic.messages == 2 * updates
    pool.pause()
    assert pool.poll(0) == [] and store.version == updates
    pool.resume()
    assert sum(r.updates for r in pool.poll(0)) == 2


def test_a_paused_process_pool_makes_no_updates_then_resumes():
    setup, store, pool = _pool("a3c", "hogwild")
    counted = 0
    try:
        pool.start(setup, store=store)
        counted += _run_until(pool, lambda: store.version, 10)
        t0 = time.perf_counter()
        pool.pause()
        assert time.perf_counter() - t0 < 0.01  # a flag: nothing to wait for
        counted += _poll_for(pool, 0.2)  # an update in progress may finish
        v0 = store.version
        counted += _poll_for(pool, 0.3)
        assert store.version == v0  # no update began while paused
        assert counted == v0  # and each worker reported what it had done when it paused
        pool.resume()
        counted += _run_until(pool, lambda: store.version, v0 + 10, limit=10)
        assert store.version >= v0 + 10
        pool.pause()
        procs = [w.proc for w in pool._workers.values()]
    finally:
        t0 = time.perf_counter()
        counted += sum(r.updates for r in pool.close())  # a paused worker still sees stop
        closed_in = time.perf_counter() - t0
        version = store.version
        store.close()
    assert closed_in < 2 and all(p.exitcode == 0 for p in procs)  # they left on their own, not killed
    assert counted == version


# --- device arrangements ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ga3c", "device"])
def test_a_paused_device_arrangement_makes_no_updates_then_resumes(name):
    from esrl.rl.device_pool import make_arrangement

    setup = _setup("a3c" if name == "ga3c" else "dqn", 2, sync=name)
    arr = make_arrangement(name, setup, nets.get_flat(setup.build_model()), optim_spec(setup.cfg), 2, CTX, "cpu")
    counted = 0
    try:
        arr.start()
        counted += _run_until(arr, lambda: arr.version, 10)
        t0 = time.perf_counter()
        arr.pause()
        assert time.perf_counter() - t0 < 0.01
        counted += _poll_for(arr, 0.2)
        v0 = arr.version
        counted += _poll_for(arr, 0.3)
        assert arr.version == v0
        arr.resume()
        counted += _run_until(arr, lambda: arr.version, v0 + 5, limit=15)
        assert arr.version >= v0 + 5
        arr.pause()
    finally:
        t0 = time.perf_counter()
        counted += sum(r.updates for r in arr.close())
        closed_in = time.perf_counter() - t0
    assert closed_in < 3 and counted == arr.version
    t = arr.traffic
    assert t.received["report"] > 0 and t.messages > arr.version
    if name == "ga3c":  # observations and predictions per step: many messages per update
        assert t.messages >= 2 * arr.version and t.startup == 0
    else:  # each actor's first copy of the parameters is start-up
        assert t.startup == t.received["state"] == 2 * 4 * nets.get_flat(setup.build_model()).numel()


# --- Ray ----------------------------------------------------------------------------------------

@pytest.mark.usefixtures("local_ray")
def test_ray_free_running_workers_count_per_shard_messages_startup_and_pauses():
    from esrl.backends.ray_backend import RayBackend, rl_store

    setup = _setup("a3c", 2, sync="param-server", shards=2)
    pool = RayBackend(2, max_restarts=0)
    setup, store = rl_store(setup, nets.get_flat(setup.build_model()), optim_spec(setup.cfg), 2, pool)
    counted = 0
    try:
        pool.start(setup, store=store)
        assert pool.traffic.startup == pool.traffic.sent["state"] > 0  # setup and client with each actor
        counted += _run_until(pool, lambda: store.snapshot()[2], 20, limit=60)
        t0 = time.perf_counter()
        pool.pause()
        assert time.perf_counter() - t0 < 0.6
        counted += _poll_for(pool, 0.1)  # an update in progress may finish
        v0 = store.snapshot()[2]
        counted += _poll_for(pool, 0.5)  # the calls already queued end within their 0.1 s, beginning no update
        assert store.snapshot()[2] == v0 and counted == v0 and not pool._pending
        pool.resume()
        counted += _run_until(pool, lambda: store.snapshot()[2], v0 + 10, limit=30)
        pool.pause()
    finally:
        counted += sum(r.updates for r in pool.close())
        version = store.snapshot()[2]
        store.close()
    assert counted == version
    t = pool.traffic
    # a pull is a request and a reply per shard, a push a slice per shard: 6 messages an update
    assert t.messages > 6 * version and t.received["report"] > 0 and t.sent["report"] > 0


@pytest.mark.usefixtures("local_ray")
def test_ray_backend_counts_startup_and_one_message_per_call():
    from esrl.backends.ray_backend import RayBackend

    backend = RayBackend(2)
    try:
        backend.start(EchoSetup(), lambda: STATE)
        t = backend.traffic
        assert t.messages == 4  # per actor: its creation (with the setup), then the state
        assert t.startup == t.sent["state"] > 2 * STATE["theta"].nbytes
        before = t.snapshot()
        backend.run(["a", "b", "c"])
        backend.broadcast(np.zeros(16, np.float32))
        assert backend.verify("same") == []
        d = t.since(before)
        assert d.messages == 3 + 3 + 2 + 2 * 2 and d.startup == 0 and d.sent.get("state", 0) == 0
    finally:
        backend.close()


@pytest.mark.parametrize("sync", ["hogwild", "param-server"])
def test_settle_after_pause_counts_every_update_the_store_holds(sync):
    """What an evaluation snapshots is exactly what the coordinator has counted (env steps to threshold)."""
    setup, store, pool = _pool("a3c", sync)
    counted = 0

    def version() -> int:
        return int(store.snapshot()[2])

    try:
        pool.start(setup, store=store)
        counted += _run_until(pool, version, 20)
        pool.pause()
        counted += sum(r.updates for r in pool.settle())  # no sleeping: the acknowledgements say when
        assert counted == version()
        pool.resume()
        counted += _run_until(pool, version, version() + 10)
    finally:
        counted += sum(r.updates for r in pool.close())
        final = version()
        store.close()
    assert counted == final
