"""The simulated backend: real learning on N logical workers, time from a fixed cost model.

Costs are injected (`sim_costs`), so these runs are the same on every machine."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simpy

from esrl.config import A3CConfig, DQNConfig, DynaQConfig, RunConfig
from esrl.errors import InputError
from esrl.es import algorithm as es
from esrl.sim.costs import CostModel, load
from esrl.sim.faults import WorkerModel
from esrl.sim.network import COORDINATOR, ETHERNET, Framing, NetSpec, Network, tree_parent
from esrl.train import train
from esrl.train_rl import train_rl
from tests.conftest import det_metrics, final_state, tiny_run
from tests.conftest import tiny_es as _tiny_es

COSTS = {"env_step_s": 2e-5, "row_step_s": 3e-5, "call_s": 2e-5, "update_s": 5e-4, "apply_s": 1e-4, "copy_s": 1e-5,
         "byte_s": 1e-9, "message_s": {"task": 1e-6, "result": 1e-5, "apply": 1e-5, "state": 1e-5, "digest": 1e-6,
                                       "parameters": 5e-6, "gradients": 5e-6, "requests": 1e-6}}


def tiny_es(**kw: Any) -> Any:
    # every optional stream on: obs statistics, action noise, adaptive cap
    return _tiny_es(obs_norm_fraction=0.3, action_noise=0.01, adaptive_cap=True, **kw)


@pytest.fixture(scope="module")
def costs(tmp_path_factory: Any) -> str:
    path = tmp_path_factory.mktemp("costs") / "costs.json"
    path.write_text(json.dumps(COSTS))
    return str(path)


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory: Any) -> Path:
    d = tmp_path_factory.mktemp("serial") / "run"
    train(tiny_run(d, tensorboard=False), tiny_es(), show_progress=False)
    return d


def sim(d: Path, costs: str, **kw: Any) -> RunConfig:
    return tiny_run(d, backend="simulated", sim_costs=costs, tensorboard=False, **kw)


def lines(d: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]


# --- ES --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [dict(workers=1), dict(workers=7, broadcast="hub"),
                                     dict(workers=64, failure_prob=0.3, straggler_prob=0.3, restart_s=0.001)])
def test_es_matches_serial_bit_for_bit(serial_run: Path, costs: str, tmp_path: Path, options: dict[str, Any]) -> None:
    d = tmp_path / "run"
    summary = train(sim(d, costs, **options), tiny_es(), show_progress=False)
    a, b = final_state(serial_run), final_state(d)
    for key in ("theta", "opt_m", "opt_v", "obs_sum", "obs_sumsq"):
        assert np.array_equal(a[key], b[key]), key
    assert det_metrics(serial_run) == det_metrics(d)
    assert summary["clock"] == "virtual" and summary["transport"] == "simulated"
    if options.get("failure_prob"):  # lost tasks were requeued and replacements brought up with the full state
        events = [e["event"] for line in lines(d) for e in line["events"]]
        assert "worker_died" in events and "worker_replaced" in events


def test_es_same_seed_same_run_bit_for_bit(costs: str, tmp_path: Path) -> None:
    for name in ("a", "b"):
        train(sim(tmp_path / name, costs, workers=16, straggler_prob=0.2, failure_prob=0.1), tiny_es(),
              show_progress=False)
    # every line, virtual times included, and the summary
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()
    sa, sb = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("a", "b"))
    assert {k: v for k, v in sa.items() if k != "run_dir"} == {k: v for k, v in sb.items() if k != "run_dir"}
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["resolved"]["clock"] == "virtual"
    assert config["resolved"]["cost_model"]["row_step_s"] == COSTS["row_step_s"]


def test_es_virtual_time_follows_the_schedule(costs: str, tmp_path: Path) -> None:
    def iteration_s(name: str, **kw: Any) -> float:
        train(sim(tmp_path / name, costs, max_iterations=3, **kw), tiny_es(), show_progress=False)
        return sum(line["iteration_s"] for line in lines(tmp_path / name))

    base = iteration_s("base", workers=8)
    assert iteration_s("slow-net", workers=8, bandwidth_gbit=0.001) > 2 * base  # the broadcast and results queue
    assert iteration_s("stragglers", workers=8, straggler_prob=1.0, straggler_slowdown=10) > 3 * base
    assert iteration_s("fast", workers=8, worker_speed=4.0) < base
    # 64 workers on a slow hub: the coordinator sends every copy of the broadcast; a tree relays them
    hub = iteration_s("hub", workers=64, bandwidth_gbit=0.01, broadcast="hub")
    assert iteration_s("tree", workers=64, bandwidth_gbit=0.01, broadcast="tree", fanout=4) < hub


def test_es_counts_messages_like_the_processes_backend(costs: str, tmp_path: Path) -> None:
    workers, cfg = 5, tiny_es()
    d = tmp_path / "run"
    train(sim(d, costs, workers=workers, max_iterations=3, verify_every=100), cfg, show_progress=False)
    for line in lines(d):
        t = line["iteration"]
        work = es.tasks(t, cfg.population, workers)
        task_bytes = sum(len(pickle.dumps(("task", (i, w)), pickle.HIGHEST_PROTOCOL)) for i, w in enumerate(work))
        assert line["bytes_sent"]["task"] == task_bytes
        assert line["messages"] == 2 * len(work) + workers  # task and result each, one broadcast copy per worker
    summary = json.loads((d / "summary.json").read_text())
    assert summary["bytes_startup"] > 0  # each worker's full state at start


# --- A3C, DQN, Dyna-Q ------------------------------------------------------------------------------

def rl_run(d: Path, costs: str, **kw: Any) -> RunConfig:
    base = dict(backend="simulated", seed=1, max_seconds=0, max_iterations=3, target_return=1e9, eval_episodes=2,
                eval_every_steps=500, confirm_episodes=0, tensorboard=False, run_dir=str(d), sim_costs=costs)
    return RunConfig(**{**base, **kw})


def test_a3c_same_seed_same_run_and_counts_messages(costs: str, tmp_path: Path) -> None:
    cfg = A3CConfig(report_every=16, shards=2, hidden=(16,))
    for name in ("a", "b"):
        summary = train_rl("a3c", rl_run(tmp_path / name, costs, workers=8), cfg, show_progress=False)
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()
    assert np.array_equal(final_state(tmp_path / "a")["params"], final_state(tmp_path / "b")["params"])
    assert summary["clock"] == "virtual" and summary["sync"] == "param-server" and summary["updates"] >= 32
    n = summary["num_params"]
    for line in lines(tmp_path / "a")[1:]:
        sent = line["bytes_sent"]
        # per update: one framed gradient slice per shard, and before it a 1-byte request per shard
        assert sent["gradients"] % (2 * 9 + 4 * n) == 0
        pushes = sent["gradients"] // (2 * 9 + 4 * n)
        assert pushes > 0 and sent["requests"] == 2 * pushes
        assert line["staleness_mean"] is not None


@pytest.mark.parametrize("sync", ["lock", "hogwild", "param-server"])
def test_dqn_every_sync_mode(costs: str, tmp_path: Path, sync: str) -> None:
    cfg = DQNConfig(sync=sync, report_every=40, learning_starts=64, batch_size=32, hidden=(32,))
    summary = train_rl("dqn", rl_run(tmp_path / "run", costs, workers=4), cfg, show_progress=False)
    assert summary["updates"] >= 80 and summary["sync"] == sync
    assert summary["transport"] == ("simulated" if sync == "param-server" else "shared-memory")
    stale = [line["staleness_mean"] for line in lines(tmp_path / "run") if line["staleness_mean"] is not None]
    assert stale and max(stale) > 0  # four workers: others apply between a pull and its push
    # two workers pull, compute and push on one store: the lock makes its queue, hogwild waits for no one
    if sync == "lock":
        assert summary["messages_total"] >= 2 * summary["updates"]


def test_dynaq_runs(costs: str, tmp_path: Path) -> None:
    cfg = DynaQConfig(sync="lock", report_every=40, learning_starts=64, batch_size=32, hidden=(32,),
                      model_hidden=(32,))
    summary = train_rl("dynaq", rl_run(tmp_path / "run", costs, workers=3), cfg, show_progress=False)
    counts = [line["counts"] for line in lines(tmp_path / "run")]
    assert summary["updates"] > 0 and any(c.get("simulated_transitions") for c in counts)


def test_rl_failures_replace_workers(costs: str, tmp_path: Path) -> None:
    cfg = A3CConfig(report_every=16, hidden=(16,))
    summary = train_rl("a3c", rl_run(tmp_path / "run", costs, workers=4, failure_prob=0.2, restart_s=0.001), cfg,
                       show_progress=False)
    events = [e["event"] for line in lines(tmp_path / "run") for e in line["events"]]
    assert "worker_died" in events and "worker_replaced" in events and summary["updates"] > 0


# --- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, field", [
    (dict(backend="processes", bandwidth_gbit=1.0), "bandwidth_gbit"),
    (dict(backend="serial", straggler_prob=0.1), "straggler_prob"),
    (dict(backend="simulated", workers=5000), "workers"),
    (dict(backend="simulated", bandwidth_gbit=0.0), "bandwidth_gbit"),
    (dict(backend="simulated", latency_us=-1.0), "latency_us"),
    (dict(backend="simulated", broadcast="ring"), "broadcast"),
    (dict(backend="simulated", fanout=0), "fanout"),
    (dict(backend="simulated", worker_speed=0.0), "worker_speed"),
    (dict(backend="simulated", straggler_prob=1.5), "straggler_prob"),
    (dict(backend="simulated", straggler_slowdown=0.5), "straggler_slowdown"),
    (dict(backend="simulated", failure_prob=0.9), "failure_prob"),
    (dict(backend="simulated", restart_s=-1.0), "restart_s"),
])
def test_bad_settings_are_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as err:
        dataclasses.replace(RunConfig(), **changes).validate()
    assert err.value.field == field
    assert "\n" not in str(err.value)


def test_bad_cost_file_and_device_arrangement_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "costs.json"
    for text in ("{not json", json.dumps({"row_step_s": -1}), json.dumps({"warp_s": 1.0}), "[1, 2]"):
        bad.write_text(text)
        with pytest.raises(InputError) as err:
            train(sim(tmp_path / "run", str(bad), workers=2), tiny_es(), overwrite=True, show_progress=False)
        assert err.value.field == "sim_costs"
    with pytest.raises(InputError) as err:
        train(sim(tmp_path / "run", str(tmp_path / "missing.json"), workers=2), tiny_es(), overwrite=True,
              show_progress=False)
    assert err.value.field == "sim_costs"
    with pytest.raises(InputError) as err:
        train_rl("a3c", rl_run(tmp_path / "rl", str(bad), workers=2), A3CConfig(sync="ga3c"), show_progress=False)
    assert err.value.field == "sync"


def test_calibrated_costs_are_recorded_and_reusable(tmp_path: Path) -> None:
    """Without --sim-costs the model is measured here; a run given that config.json repeats the first."""
    run = tiny_run(tmp_path / "a", backend="simulated", workers=4, max_iterations=2, tensorboard=False)
    train(run, tiny_es(), show_progress=False)
    model = json.loads((tmp_path / "a" / "config.json").read_text())["resolved"]["cost_model"]
    assert model["source"] == "calibrated" and model["row_step_s"] > 0 and model["byte_s"] > 0
    assert set(model["message_s"]) >= {"task", "result", "apply", "state", "digest"}
    again = dataclasses.replace(run, run_dir=str(tmp_path / "b"), sim_costs=str(tmp_path / "a" / "config.json"))
    train(again, tiny_es(), show_progress=False)
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()


# --- the pieces, against hand-computed numbers -------------------------------------------------------

def test_network_links_queue_then_latency() -> None:
    env = simpy.Environment()
    net = Network(env, NetSpec(bandwidth=1000.0, latency=0.5, framing=Framing(frame=0, ack=0)))  # payload only
    arrived: dict[str, float] = {}

    def send(name: str, src: Any, nbytes: int) -> Any:
        yield from net.transfer(src, COORDINATOR, nbytes)
        arrived[name] = env.now

    env.process(send("a", ("worker", 0), 100))
    env.process(send("b", ("worker", 1), 100))  # queues for the coordinator's downlink behind a
    env.process(send("c", ("worker", 2), 0))  # behind b too: one message at a time per link
    env.run()
    assert arrived == pytest.approx({"a": 0.1 + 0.5, "b": 0.2 + 0.5, "c": 0.2 + 0.5})


def test_framing_segments_headers_and_acks() -> None:
    f = ETHERNET
    assert [float(f.segments(n)) for n in (0, 1, 1448, 1449, 80_000)] == [1, 1, 1, 2, 56]
    assert float(f.wire_bytes(80_000)) == 80_000 + 90 * 56 and float(f.ack_bytes(80_000)) == 84 * 28
    assert float(f.ack_bytes(1)) == 84  # a lone segment is ACKed too
    # a large message moves at 1448 / 1538 of the bit rate: Gigabit Ethernet's 941 Mbit/s of TCP goodput
    assert 1e6 / float(f.wire_bytes(1e6)) == pytest.approx(0.9415, abs=1e-3)
    # several messages are taken as equal in size; arrays work as the scaling model uses them
    assert float(f.segments(3000, 2)) == 4 and float(f.segments(10, 0)) == 0
    assert np.allclose(f.wire_bytes(np.array([1000.0, 4000.0]), np.array([1.0, 2.0])), [1090, 4360])


def test_network_charges_frames_and_the_acks_a_busy_link_owes() -> None:
    env = simpy.Environment()
    framing = Framing(mss=100, frame=10, ack=5, ack_every=2)
    net = Network(env, NetSpec(bandwidth=1000.0, latency=0.0, framing=framing))
    arrived: list[float] = []

    def exchange() -> Any:
        yield from net.transfer(("worker", 0), COORDINATOR, 250)  # 3 segments, 280 bytes; 2 ACKs owed back
        arrived.append(env.now)
        yield from net.transfer(COORDINATOR, ("worker", 0), 100)  # 110 bytes + the 10 bytes of ACKs it carries
        arrived.append(env.now)
        yield from net.transfer(COORDINATOR, ("worker", 0), 100)  # its predecessor's ACKs went the other way
        arrived.append(env.now)
        # 285 bytes: the worker's uplink still owes the ACK of the message just received, 2 ACKs owed back
        yield from net.transfer(("worker", 0), COORDINATOR, 250)
        yield env.timeout(0.004)  # the idle links send 4 of their 10 bytes of ACKs
        yield from net.transfer(COORDINATOR, ("worker", 0), 100)  # 110 + 6
        arrived.append(env.now)
        yield from net.transfer(("worker", 0), COORDINATOR, 250)
        yield env.timeout(0.5)  # long enough to send them all
        yield from net.transfer(COORDINATOR, ("worker", 0), 100)
        arrived.append(env.now)

    env.process(exchange())
    env.run()
    t = 0.51 + 0.285 + 0.004 + 0.116
    assert arrived == pytest.approx([0.28, 0.40, 0.51, t, t + 0.285 + 0.5 + 0.11])


def test_tree_parents_and_worker_draws() -> None:
    assert [tree_parent(i, 2) for i in range(7)] == [-1, -1, 0, 0, 1, 1, 2]
    assert [tree_parent(i, 4) for i in range(6)] == [-1, -1, -1, -1, 0, 0]
    slow = WorkerModel(seed=0, speed=2.0, straggler_prob=1.0, straggler_slowdown=3.0).draws(0)
    assert slow.duration(1.0) == (1.5, None)
    dying = WorkerModel(seed=0, failure_prob=0.5).draws(3)
    draws = [dying.duration(2.0) for _ in range(200)]
    assert all(s == 2.0 for s, _ in draws)
    deaths = [d for _, d in draws if d is not None]
    assert 60 < len(deaths) < 140 and all(0 <= d <= 2.0 for d in deaths)
    again = WorkerModel(seed=0, failure_prob=0.5).draws(3)
    assert [again.duration(2.0) for _ in range(200)] == draws  # seeded per slot


def test_cost_model_prices_messages_and_round_trips(tmp_path: Path) -> None:
    model = CostModel.from_dict(COSTS, "test")
    assert model.message("result", 1000) == pytest.approx(1e-5 + 1000 * 1e-9)
    assert model.message("unknown", 10) == pytest.approx(10 * 1e-9)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(model.to_dict()))
    assert dataclasses.replace(load(str(path)), source="test") == model


def test_rl_lock_waits_and_server_queues_come_from_the_schedule(tmp_path: Path) -> None:
    """One costly apply: under lock every update waits for it, hogwild waits for no one; a slow hub
    queues a one-shard parameter server, and four shards split its load."""
    slow_apply = tmp_path / "slow_apply.json"
    slow_apply.write_text(json.dumps({**COSTS, "apply_s": 5e-3, "update_s": 1e-3}))
    cfg = A3CConfig(report_every=32, hidden=(16,))

    def updates_per_s(name: str, sync: str, shards: int = 1, **kw: Any) -> float:
        summary = train_rl("a3c", rl_run(tmp_path / name, str(slow_apply), workers=8, max_iterations=4, **kw),
                           dataclasses.replace(cfg, sync=sync, shards=shards), show_progress=False)
        return summary["updates"] / summary["training_s"]

    lock = updates_per_s("lock", "lock")
    assert lock <= 1 / 5e-3 * 1.01  # one apply at a time
    assert updates_per_s("hogwild", "hogwild") > 3 * lock
    one = updates_per_s("ps1", "param-server", bandwidth_gbit=0.05)
    assert updates_per_s("ps4", "param-server", shards=4, bandwidth_gbit=0.05) > 1.5 * one


def test_a_sweep_runs_on_the_simulated_cluster_with_one_cost_model_per_arm(tmp_path: Path) -> None:
    """Calibrated once per arm (its first run), read back by the others; times are virtual and say so."""
    from esrl.experiments.sweep import SweepSpec, sweep

    spec = SweepSpec(algos=["es"], env="CartPole-v1", workers=[1, 8], seeds=1, backend="simulated",
                     target_return=1e9, max_seconds=0.5, preset="none",
                     settings={"es": {"population": 16, "hidden": [8], "noise_table_size": 1 << 16}},
                     sim={"bandwidth_gbit": 1.0, "latency_us": 100.0})
    records = sweep(spec, tmp_path / "sw", show_progress=False)
    assert [r.get("error") for r in records] == [None, None]
    first, other = (json.loads((tmp_path / "sw" / n / "config.json").read_text())
                    for n in ("es-w1-s0", "es-w8-s0"))
    assert first["run"]["sim_costs"] == "" and first["run"]["bandwidth_gbit"] == 1.0
    assert other["run"]["sim_costs"].endswith("es-w1-s0/config.json")
    model = {k: v for k, v in first["resolved"]["cost_model"].items() if k != "source"}
    assert {k: v for k, v in other["resolved"]["cost_model"].items() if k != "source"} == model
    summary = json.loads((tmp_path / "sw" / "es-w8-s0" / "summary.json").read_text())
    assert summary["clock"] == "virtual" and summary["workers"] == 8
    from esrl.experiments.report import report

    out = report(tmp_path / "sw", bandwidth=1e9 / 8, latency=1e-4)
    assert "virtual seconds" in Path(out["report_md"]).read_text()
