"""A3C, DQN and Dyna-Q on Ray: parameter-server actors, Ray twins of the shared resources,
worker actors that die and are replaced, and shard actors that die."""

import dataclasses
import json
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from esrl import envs
from esrl.config import A3CConfig, DQNConfig, DynaQConfig, RunConfig, check_combination
from esrl.errors import InputError
from esrl.rl import nets, optim
from esrl.rl.common import optim_spec
from esrl.rl.optim import OptimSpec
from esrl.train_rl import train_rl

ray = pytest.importorskip("ray")

SPEC = envs.spec_of("CartPole-v1")
KILL_SWITCH = "esrl-test-kill-switch"
KILLED_ENV = "tests.test_ray_rl:esrl-test/RayKilledCartPole-v0"  # importable by the actors' processes


class KillSwitch:
    """Says yes once: the first worker to ask kills its own actor."""

    def __init__(self) -> None:
        self.armed = True

    def claim(self) -> bool:
        armed, self.armed = self.armed, False
        return armed


class RayKilledCartPole(CartPoleEnv):
    """At its 60th step, asks the kill switch; if told yes, ray.kill()s the actor it runs in."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.steps == 60:
            ctx = ray.get_runtime_context()
            if ctx.get_actor_id() is not None:  # a worker actor, not the coordinator's evaluation
                try:
                    switch = ray.get_actor(KILL_SWITCH)
                except ValueError:
                    switch = None
                if switch is not None and ray.get(switch.claim.remote()):
                    ray.kill(ctx.current_actor)
                    time.sleep(60)  # killed here, in the middle of an update
        return super().step(action)


gym.register("esrl-test/RayKilledCartPole-v0", entry_point=RayKilledCartPole, max_episode_steps=500)


pytestmark = pytest.mark.usefixtures("local_ray")  # one local Ray, shared (tests/conftest.py)


def tiny_a3c(**kw) -> A3CConfig:
    return dataclasses.replace(A3CConfig(hidden=(16,), envs_per_worker=2, report_every=20, sync="param-server"), **kw)


def run_cfg(d: Path, **kw) -> RunConfig:
    base = RunConfig(env="CartPole-v1", seed=1, backend="ray", workers=2, max_iterations=3, max_seconds=60,
                     target_return=1e9, eval_episodes=2, run_dir=str(d))
    return dataclasses.replace(base, **kw)


def _lines(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]


def test_ray_refuses_shared_memory_sync_naming_the_field():
    for sync in ("hogwild", "lock"):
        with pytest.raises(InputError, match=r"^sync: .*param-server"):
            check_combination("a3c", RunConfig(backend="ray"), A3CConfig(sync=sync))
    check_combination("dqn", RunConfig(backend="ray"), DQNConfig(sync="param-server"))


def test_a3c_on_ray_without_a_sync_uses_the_parameter_server(tmp_path):
    """`esrl train a3c --backend ray --workers 2`: the default sync follows the backend."""
    d = tmp_path / "auto"
    summary = train_rl("a3c", run_cfg(d, max_iterations=2), A3CConfig(hidden=(16,), envs_per_worker=2,
                                                                      report_every=20), show_progress=False)
    assert summary["sync"] == json.loads((d / "config.json").read_text())["a3c"]["sync"] == "param-server"
    assert summary["updates"] >= 20


def test_ray_store_applies_versions_and_counts_like_the_server_processes():
    import multiprocessing as mp

    from esrl.stores import make_store
    from esrl.stores.ray_store import RayStore

    spec = OptimSpec(kind="adam", lr=0.1)
    ray_store = RayStore(torch.arange(7.0), spec, shards=3)
    proc_store = make_store("param-server", torch.arange(7.0), spec, mp.get_context("fork"), slots=1, shards=3)
    try:
        ref, ref_state = torch.arange(7.0), spec.init_state(7)
        clients = [ray_store.client(0), proc_store.client(0)]
        for step in range(1, 4):
            g = torch.linspace(-1, 1, 7) * step
            for c in clients:
                buf = torch.zeros(7)
                assert c.pull(buf) == step - 1
                c.push(g, step - 1)
            optim.apply(spec, ref, g, ref_state, step)
        bufs = [torch.zeros(7), torch.zeros(7)]
        for c, b in zip(clients, bufs, strict=True):
            c.pull(b)
        assert torch.equal(bufs[0], ref) and torch.equal(bufs[1], ref)
        assert clients[0].staleness == [0, 0, 0]
        assert dict(clients[0].sent) == dict(clients[1].sent) and dict(clients[0].received) == dict(
            clients[1].received)  # the same framing, counted the same way
        params, state, version = ray_store.snapshot()
        assert version == 3 and torch.equal(params, ref) and torch.equal(state["v"], ref_state["v"])
        ray_store.load(torch.ones(7), {"m": torch.zeros(7), "v": torch.ones(7)}, 42)
        assert ray_store.snapshot()[2] == 42
    finally:
        ray_store.close()
        proc_store.close()


def test_a3c_on_ray_counts_every_update_and_its_bytes(tmp_path):
    d = tmp_path / "a3c"
    # the initial policy's evaluation, then one line per report_every updates
    summary = train_rl("a3c", run_cfg(d, max_iterations=4, eval_every_steps=10**9), tiny_a3c(shards=2),
                       show_progress=False)
    manifest = json.loads(sorted((d / "checkpoints").glob("*.json"))[-1].read_text())
    assert manifest["meta"]["version"] == summary["updates"] >= 60  # every counted update was applied
    assert summary["messages_total"] >= 2 * summary["updates"] and summary["transport"] == "ray"
    lines = _lines(d)[1:]
    assert [m["iteration"] for m in lines] == [1, 2, 3] and summary["sync"] == "param-server"
    for m in lines:
        assert m["bytes_sent"]["gradients"] > 0 and m["bytes_received"]["parameters"] > 0
        assert m["staleness_mean"] is not None and m["live_workers"] == 2
    n = summary["num_params"]
    assert sum(m["bytes_sent"]["gradients"] for m in lines) >= 4 * n * (lines[-1]["updates"] - 20)


def test_dqn_global_replay_and_dynaq_world_model_live_in_actors(tmp_path):
    dqn = DQNConfig(hidden=(16,), learning_starts=64, batch_size=32, report_every=50, target_update=20,
                    sync="param-server", replay="global")
    s = train_rl("dqn", run_cfg(tmp_path / "dqn", max_iterations=3), dqn, show_progress=False)
    lines = _lines(tmp_path / "dqn")
    assert s["updates"] >= 100 and sum(m["bytes_sent"].get("experience", 0) for m in lines) > 0
    assert sum(m["bytes_received"].get("experience", 0) for m in lines) > 0  # sampled from the replay actor
    dynaq = DynaQConfig(hidden=(16,), model_hidden=(16,), learning_starts=64, batch_size=32, report_every=50,
                        target_update=20, sync="param-server", planning_ratio=2.0)
    s = train_rl("dynaq", run_cfg(tmp_path / "dynaq", max_iterations=3), dynaq, show_progress=False)
    lines = _lines(tmp_path / "dynaq")
    real = sum(m["counts"].get("real_transitions", 0) for m in lines)
    sim = sum(m["counts"].get("simulated_transitions", 0) for m in lines)
    assert real > 0 and 0 < sim <= 2.0 * real + 32  # the shared counter throttles the planner
    assert any("model" in m["losses"] for m in lines) and any("td_simulated" in m["losses"] for m in lines)


def test_killed_worker_actor_is_logged_replaced_and_the_run_recovers(tmp_path):
    switch = ray.remote(num_cpus=0)(KillSwitch).options(name=KILL_SWITCH).remote()
    try:
        d = tmp_path / "r"
        summary = train_rl("a3c", run_cfg(d, env=KILLED_ENV, max_iterations=0, max_seconds=0, max_env_steps=8000),
                           tiny_a3c(), show_progress=False)
        assert not ray.get(switch.claim.remote())  # the switch was used: a worker did kill itself
    finally:
        ray.kill(switch)
    events = [e for m in _lines(d) for e in m["events"]]
    died = [e for e in events if e["event"] == "worker_died"]
    assert len(died) == 1 and died[0]["why"].endswith("Error") and "replacement_slot" in died[0]
    joined = [e for e in events if e["event"] == "worker_joined"]
    assert joined and joined[0]["worker"] == died[0]["worker"] and joined[0]["slot"] == died[0]["replacement_slot"]
    assert summary["error"] is None and summary["stop_reason"] == "budget"
    manifest = json.loads(sorted((d / "checkpoints").glob("*.json"))[-1].read_text())
    # applied, but never reported: the pushes of the dead worker's last (unreported) tenth of a second
    assert summary["updates"] <= manifest["meta"]["version"] <= summary["updates"] + 100


def _pool(workers: int, max_restarts: int):
    """Setup, store and Ray backend built as train_rl builds them (start with `start(setup, store=store)`)."""
    from esrl.backends.ray_backend import RayBackend, rl_store
    from esrl.rl.a3c import A3CSetup

    setup = A3CSetup(tiny_a3c(), SPEC, seed=2)
    backend = RayBackend(workers, max_restarts=max_restarts)
    setup, store = rl_store(setup, nets.get_flat(setup.build_model()), optim_spec(setup.cfg), 1, backend)
    return setup, store, backend


def _updates(pool, at_least: int, seconds: float = 30.0) -> int:
    """Poll until `at_least` updates were reported (or `seconds` passed; actors start in seconds)."""
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end and n < at_least:
        n += sum(r.updates for r in pool.poll(0.05))
    return n


def test_without_restarts_training_goes_on_with_fewer_workers():
    setup, store, pool = _pool(2, max_restarts=0)
    try:
        pool.start(setup, store=store)
        counted = _updates(pool, 20)
        assert counted >= 20 and pool.live_workers == 2
        ray.kill(pool._actors[0])
        after = _updates(pool, 30)
        assert [e["event"] for e in pool.events] == ["worker_died"] and pool.live_workers == 1
        assert after >= 30  # worker 1 goes on alone
        counted += after + sum(r.updates for r in pool.close())
        assert store.snapshot()[2] >= counted
    finally:
        pool.close()
        store.close()


def test_a_dead_shard_stops_the_run_with_a_named_error():
    from esrl.backends.base import WorkerFailure

    setup, store, pool = _pool(1, max_restarts=2)
    try:
        pool.start(setup, store=store)
        assert _updates(pool, 10) >= 10
        ray.kill(store.actors[0])
        with pytest.raises(WorkerFailure, match="actor of the run's stores died"):
            _updates(pool, 10**9, seconds=20.0)
        with pytest.raises(WorkerFailure, match="parameter-server shard died"):
            store.snapshot()
    finally:
        pool.close()
        store.close()


def test_replay_twin_keeps_frames_as_uint8_on_the_wire():
    import numpy as np

    from esrl.stores.ray_store import RayReplay

    replay = RayReplay(16, 3, torch.uint8)
    try:
        obs = np.array([[0, 7, 255], [1, 2, 3]], np.float32)
        replay.add(obs, np.array([1, 0]), np.array([0.5, -1.0]), obs[::-1].copy(), np.array([0.0, 1.0]))
        assert replay.sent["experience"] == 8 + 2 * 3 + 2 * 8 + 2 * 4 + 2 * 3 + 2 * 4  # frames: 1 byte a value
        o, a, r, o2, d = replay.sample(8, torch.Generator().manual_seed(0))
        assert o.dtype == torch.float32 and len(replay) == 2
        for i in range(8):  # every sampled row is one of the two added, whole
            k = int(a[i] == 0)
            assert o[i].tolist() == obs[k].tolist() and o2[i].tolist() == obs[1 - k].tolist()
            assert float(r[i]) == [0.5, -1.0][k] and float(d[i]) == float(k)
    finally:
        ray.kill(replay.actor)
