"""ES and DQN on a Ray cluster of several nodes on this machine: runs span nodes; ES survives losing one."""

import numpy as np
import pytest

from esrl import envs
from esrl.config import ESConfig
from esrl.es import algorithm as es

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    c = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [c.add_node(num_cpus=2) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def _iteration(backend, master, cfg, t):
    res = es.gather(backend.run(es.tasks(t, cfg.population, backend.live_workers)), cfg.population)
    update, _ = es.make_update(cfg, t, res, 500)
    backend.broadcast(update)
    master.apply(update)


def test_run_spans_both_nodes_and_survives_losing_one(cluster):
    from esrl.backends.ray_backend import RayBackend

    c, nodes = cluster
    cfg = ESConfig(population=16, hidden=(8,), noise_table_size=1 << 16)
    setup = es.ESSetup(cfg, envs.spec_of("CartPole-v1"), 0)
    master, twin = setup.build(), setup.build()
    backend = RayBackend(2, address=c.address)
    backend.start(setup, master.get_state)
    try:
        assert len(set(backend.nodes().values())) == 2  # the actors really sit on two nodes
        for t in range(2):
            _iteration(backend, master, cfg, t)
        c.remove_node(nodes[0])
        for t in range(2, 4):
            _iteration(backend, master, cfg, t)
        assert any(e["event"] == "worker_died" for e in backend.events)
        assert backend.live_workers == 2 and backend.verify(master.digest()) == []
    finally:
        backend.close()
    for t in range(4):  # the same four iterations without any failure
        res = es.gather([twin.run(task) for task in es.tasks(t, 16, 1)], 16)
        twin.apply(es.make_update(cfg, t, res, 500)[0])
    assert np.array_equal(master.theta, twin.theta)


def test_dqn_workers_span_both_nodes_around_one_replay_and_parameter_server(cluster):
    import multiprocessing as mp
    import time

    from esrl.backends.ray_backend import RayBackend, rl_store
    from esrl.config import DQNConfig
    from esrl.rl import nets
    from esrl.rl.common import optim_spec
    from esrl.rl.dqn import DQNSetup

    c, _nodes = cluster
    c.add_node(num_cpus=2)  # the ES test may have removed one of the two
    c.wait_for_nodes()
    cfg = DQNConfig(hidden=(16,), learning_starts=64, batch_size=32, target_update=20, sync="param-server",
                    replay="global")
    setup = DQNSetup(cfg, envs.spec_of("CartPole-v1"), 0).attach(mp.get_context("fork"), 2)
    pool = RayBackend(2, max_restarts=0)
    setup, store = rl_store(setup, nets.get_flat(setup.build_model()), optim_spec(cfg), 2, pool)
    try:
        pool.start(setup, store=store)
        counted, end = 0, time.monotonic() + 60
        while counted < 50 and time.monotonic() < end:
            counted += sum(r.updates for r in pool.poll(0.05))
        assert counted >= 50  # learning from the one replay actor, through two shards
        assert len(set(pool.nodes().values())) == 2  # the worker actors really sit on two nodes
        assert pool.traffic.sent["experience"] > 0 and pool.traffic.received["experience"] > 0
        counted += sum(r.updates for r in pool.close())
        assert store.snapshot()[2] >= counted
    finally:
        pool.close()
        store.close()


def test_a3c_goes_on_when_a_worker_node_is_removed(cluster):
    import time

    from esrl.backends.ray_backend import RayBackend, rl_store
    from esrl.config import A3CConfig
    from esrl.rl import nets
    from esrl.rl.a3c import A3CSetup
    from esrl.rl.common import optim_spec

    c, _nodes = cluster
    while len([n for n in c.list_all_nodes() if n is not c.head_node]) < 2:
        c.add_node(num_cpus=2)
    c.wait_for_nodes()
    cfg = A3CConfig(hidden=(16,), envs_per_worker=2, sync="param-server")
    setup = A3CSetup(cfg, envs.spec_of("CartPole-v1"), 0)
    pool = RayBackend(2, max_restarts=2)
    setup, store = rl_store(setup, nets.get_flat(setup.build_model()), optim_spec(cfg), 1, pool)

    def updates(n: int) -> int:
        counted, end = 0, time.monotonic() + 60
        while counted < n and time.monotonic() < end:
            counted += sum(r.updates for r in pool.poll(0.05))
        return counted

    try:
        pool.start(setup, store=store)
        assert updates(30) >= 30
        where = pool.nodes()
        assert len(set(where.values())) == 2
        doomed = next(n for n in c.list_all_nodes() if n.node_id == where[0])
        c.remove_node(doomed)  # worker 0's node; the parameter server (no CPUs asked) stays on the head
        assert updates(100) >= 100  # training goes on, from the other worker and then the replacement
        deadline = time.monotonic() + 60
        while not any(e["event"] == "worker_joined" for e in pool.events) and time.monotonic() < deadline:
            pool.poll(0.05)
        died = [e for e in pool.events if e["event"] == "worker_died"]
        assert died and died[0]["worker"] == 0
        assert any(e["event"] == "worker_joined" for e in pool.events)
        assert pool.live_workers == 2 and where[0] not in pool.nodes().values()
    finally:
        pool.close()
        store.close()
