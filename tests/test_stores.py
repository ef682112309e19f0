"""Parameter stores: versions, staleness, byte counts, shards; and updates are never lost."""

import multiprocessing as mp

import pytest
import torch

from esrl.rl import optim
from esrl.rl.optim import OptimSpec
from esrl.stores import make_store

CTX = mp.get_context("fork")
SPEC = OptimSpec(kind="adam", lr=0.1)


def _pusher(client, n, value):
    torch.set_num_threads(1)
    buf = torch.zeros(10)
    for _ in range(n):
        version = client.pull(buf)
        client.push(torch.full((10,), value), version)
    client.pull(buf)  # a param-server client learns the staleness of its pushes on its next pull


@pytest.mark.parametrize("sync", ["lock", "hogwild", "param-server"])
def test_racing_workers_lose_no_update(sync):
    store = make_store(sync, torch.zeros(10), SPEC, CTX, slots=2, shards=2)
    try:
        procs = [CTX.Process(target=_pusher, args=(store.client(i), 200, 1.0)) for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        params, _state, version = store.snapshot()
        assert version == 400  # every push counted, whoever raced whom
        assert torch.all(params < 0)  # and every push descended
        ref, ref_state = torch.zeros(10), SPEC.init_state(10)
        for step in range(1, 401):  # the same 400 constant gradients, applied serially
            optim.apply(SPEC, ref, torch.ones(10), ref_state, step)
        if sync == "hogwild":  # racing read-modify-writes may lose a little of some steps, never much
            torch.testing.assert_close(params, ref, rtol=0.05, atol=0.0)
        else:  # serialized applies: serial Adam, bit for bit
            assert torch.equal(params, ref)
    finally:
        store.close()


@pytest.mark.parametrize("sync", ["lock", "hogwild", "param-server"])
def test_single_client_matches_the_optimizer_exactly(sync):
    store = make_store(sync, torch.arange(6.0), SPEC, CTX, slots=1, shards=3)
    try:
        client = store.client(0)
        ref = torch.arange(6.0)
        ref_state = SPEC.init_state(6)
        buf = torch.zeros(6)
        for step in range(1, 4):
            g = torch.linspace(-1, 1, 6) * step
            v = client.pull(buf)
            assert v == step - 1
            client.push(g, v)
            optim.apply(SPEC, ref, g, ref_state, step)
        client.pull(buf)
        assert torch.equal(buf, ref)
        assert client.staleness == [0, 0, 0]
        assert client.sent["gradients"] >= 3 * 6 * 4 and client.received["parameters"] >= 4 * 6 * 4
        _params, state, version = store.snapshot()
        assert version == 3 and torch.equal(state["m"], ref_state["m"]) and torch.equal(state["v"], ref_state["v"])
    finally:
        store.close()


def test_staleness_counts_updates_in_between():
    store = make_store("lock", torch.zeros(3), SPEC, CTX)
    a, b = store.client(0), store.client(1)
    buf = torch.zeros(3)
    va = a.pull(buf)
    for _ in range(3):
        b.push(torch.ones(3), b.pull(buf))
    a.push(torch.ones(3), va)
    assert a.staleness == [3] and b.staleness == [0, 0, 0]


def test_store_load_round_trip():
    store = make_store("param-server", torch.zeros(7), SPEC, CTX, slots=1, shards=2)
    try:
        p = torch.arange(7.0)
        st = {"m": torch.ones(7), "v": torch.full((7,), 2.0)}
        store.load(p, st, 42)
        params, state, version = store.snapshot()
        assert torch.equal(params, p) and torch.equal(state["v"], st["v"]) and version == 42
    finally:
        store.close()


def _die_mid_message(client):
    import os
    import struct

    client.on_start()
    # the length header promises 4,000 bytes; only 12 arrive before the process dies
    os.write(client.conns[0].fileno(), struct.pack("!i", 4000) + b"g" + b"\0" * 11)
    os._exit(9)


def _die_holding_the_lock(store):
    import os

    store._lock.__enter__()
    os._exit(9)


def test_lock_store_survives_a_worker_killed_while_holding_the_lock():
    store = make_store("lock", torch.zeros(10), SPEC, CTX)
    p = CTX.Process(target=_die_holding_the_lock, args=(store,))
    p.start()
    p.join(10)
    q = CTX.Process(target=_pusher, args=(store.client(1), 5, 1.0))
    q.start()
    q.join(30)
    assert q.exitcode == 0 and store.snapshot()[2] == 5


def _ask_and_die(client):
    import os

    client.on_start()
    client.conns[0].send_bytes(b"p")
    os._exit(9)


@pytest.mark.parametrize("die", [_die_mid_message, _ask_and_die], ids=["mid-message", "before-reply"])
def test_param_server_survives_a_worker_dying_on_the_wire(die):
    store = make_store("param-server", torch.zeros(10), SPEC, CTX, slots=2, shards=1)
    try:
        p = CTX.Process(target=die, args=(store.client(0),))
        p.start()
        store.release(0)
        p.join(10)
        q = CTX.Process(target=_pusher, args=(store.client(1), 5, 1.0))
        q.start()
        store.release(1)
        q.join(30)
        assert q.exitcode == 0
        assert store.snapshot()[2] == 5  # the server dropped the dead pipe and served the others
    finally:
        store.close()


def test_process_locks_leave_no_files():
    import glob

    from esrl.shm import Counter

    before = set(glob.glob("/tmp/esrl-lock-*"))
    c = Counter(CTX)
    p = CTX.Process(target=c.add, args=(5,))
    p.start()
    p.join(10)
    assert c.add(1) == 6  # the child's increment went through the same lock and memory
    assert set(glob.glob("/tmp/esrl-lock-*")) == before  # unlinked at birth: nothing to leak


def _sgd_writer(client, stop):
    torch.set_num_threads(1)
    ones = torch.ones(client.store.params.numel())
    while not stop.is_set():
        client.push(ones, client.store.version)


def test_hogwild_snapshot_is_a_consistent_copy():
    """SGD with lr 1 and gradient 1 from 0: a consistent copy has every parameter at -version exactly."""
    n = 1 << 20  # a copy long enough for a lock-free writer to tear it
    store = make_store("hogwild", torch.zeros(n), OptimSpec(kind="sgd", lr=1.0), CTX)
    stop = CTX.Event()
    writer = CTX.Process(target=_sgd_writer, args=(store.client(0), stop))
    writer.start()
    try:
        seen = set()
        while len(seen) < 20:
            params, _state, version = store.snapshot()
            assert torch.all(params == -float(version)), (version, params.min().item(), params.max().item())
            seen.add(version)
    finally:
        stop.set()
        writer.join(10)
        store.close()
