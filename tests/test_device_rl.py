"""A3C's GA3C arrangement and DQN's device learner: run on the CPU here, on CUDA where there is one."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from esrl.cli import main
from esrl.config import A3CConfig, DQNConfig, DynaQConfig, RunConfig
from esrl.errors import InputError
from esrl.rl.device_dqn import LEAD_UPDATES, DeviceReplay
from esrl.runs import checkpoint
from esrl.train_rl import train_rl

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def run_cfg(d: Path, **kw) -> RunConfig:
    base = RunConfig(env="CartPole-v1", seed=1, workers=2, max_iterations=3, max_seconds=60, target_return=1e9,
                     eval_episodes=2, device="cpu", run_dir=str(d))
    return dataclasses.replace(base, **kw)


def lines(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]


def test_ga3c_runs_updates_and_writes_the_run_dir(tmp_path):
    cfg = A3CConfig(sync="ga3c", hidden=(16,), envs_per_worker=2, report_every=20)
    s = train_rl("a3c", run_cfg(tmp_path / "r", max_iterations=4), cfg, show_progress=False)
    assert s["sync"] == "ga3c" and s["stop_reason"] == "budget"
    assert s["iterations"] == 4 and s["updates"] >= 60 and s["env_steps"] > 0
    ms = lines(tmp_path / "r")
    assert len(ms) == 4 and ms[0]["eval_return"] is not None  # the initial policy's evaluation
    assert any(m["staleness_mean"] is not None for m in ms)
    counts = {k: sum(m["counts"].get(k, 0) for m in ms) for k in ("predictor_batches", "predicted_rows",
                                                                    "trainer_trajectories")}
    assert counts["predicted_rows"] >= counts["predictor_batches"] > 0
    assert counts["trainer_trajectories"] >= sum(m["updates_per_s"] > 0 for m in ms)
    for kind, where in (("observations", "bytes_sent"), ("experience", "bytes_sent"),
                        ("predictions", "bytes_received")):  # actors report every 0.1 s: a line may hold none
        assert sum(m[where].get(kind, 0) for m in ms) > 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["resolved"]["sync"] == "ga3c"
    assert checkpoint.latest(tmp_path / "r" / "checkpoints") is not None
    assert (tmp_path / "r" / "summary.json").exists()


def test_ga3c_learns_cartpole_a_bit(tmp_path):
    cfg = A3CConfig(sync="ga3c", hidden=(32,), envs_per_worker=4, report_every=100, lr=3e-3)
    s = train_rl("a3c", run_cfg(tmp_path / "r", max_iterations=0, max_seconds=40, target_return=150,
                                eval_episodes=5), cfg, show_progress=False)
    assert s["solved"], s  # a random CartPole policy returns about 22


def test_ga3c_resumes_from_its_checkpoint(tmp_path):
    cfg = A3CConfig(sync="ga3c", hidden=(16,), envs_per_worker=2, report_every=20)
    first = train_rl("a3c", run_cfg(tmp_path / "r", max_iterations=2), cfg, show_progress=False)
    again = train_rl("a3c", run_cfg(tmp_path / "r", max_iterations=4), cfg, resume=True, show_progress=False)
    assert again["iterations"] == 4 and again["updates"] > first["updates"]
    assert [m["iteration"] for m in lines(tmp_path / "r")] == [0, 1, 2, 3]


def test_device_dqn_learner_runs_on_the_cpu(tmp_path):
    cfg = DQNConfig(sync="device", hidden=(32,), learning_starts=64, batch_size=32, report_every=50, n_steps=1,
                    envs_per_worker=2, target_update=20)
    s = train_rl("dqn", run_cfg(tmp_path / "r", max_iterations=4), cfg, show_progress=False)
    assert s["sync"] == "device" and s["iterations"] == 4 and s["updates"] >= 150
    ms = lines(tmp_path / "r")
    assert all("td" in m["losses"] for m in ms[1:])  # line 0: the initial policy's evaluation
    assert sum(m["bytes_received"].get("parameters", 0) for m in ms) > 0  # actors refreshed their copies
    assert any(m["staleness_max"] for m in ms)  # actors act with copies that lag the learner
    # the replay ratio of the CPU DQN: one update per n_steps x envs_per_worker (2) transitions, both ways:
    # the learner never runs ahead of the transitions, the actors never run far ahead of the learner
    assert s["updates"] <= s["env_steps"] // 2
    assert s["env_steps"] <= 64 + (s["updates"] + LEAD_UPDATES * 2) * 2 + 2 * 2  # + one send in flight per actor


def test_device_replay_ring_and_sampling():
    rep = DeviceReplay(4, 2, torch.device("cpu"))
    obs = torch.arange(12, dtype=torch.float32).view(6, 2)
    rep.add(obs, torch.arange(6), torch.arange(6, dtype=torch.float32), obs + 100, torch.zeros(6))
    assert len(rep) == 4 and rep.added == 6
    assert rep.action.tolist() == [4, 5, 2, 3]  # the two newest overwrote the two oldest
    o, a, r, nxt, _ = rep.sample(50, torch.Generator().manual_seed(0))
    assert set(a.tolist()) <= {2, 3, 4, 5}
    np.testing.assert_array_equal((o[:, 0] / 2).long().numpy(), a.numpy())
    np.testing.assert_array_equal(nxt.numpy(), o.numpy() + 100)
    np.testing.assert_array_equal(r.numpy(), a.numpy())


def test_device_arrangement_input_errors(tmp_path, capsys):
    with pytest.raises(InputError, match=r"^backend: "):
        train_rl("a3c", run_cfg(tmp_path / "a", backend="serial"), A3CConfig(sync="ga3c"), show_progress=False)
    with pytest.raises(InputError, match=r"^sync: "):
        train_rl("dynaq", run_cfg(tmp_path / "b"), DynaQConfig(sync="device"), show_progress=False)
    with pytest.raises(InputError, match=r"^sync: "):
        A3CConfig(sync="device").validate()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    if not torch.cuda.is_available():
        code = main(["train", "a3c", "--device", "cuda", "--run-dir", str(tmp_path / "c"), "--max-seconds", "5"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "error: device: " in err[0]
        assert not (tmp_path / "c").exists()


@pytest.mark.gpu
@CUDA
def test_ga3c_on_cuda(tmp_path):
    cfg = A3CConfig(sync="ga3c", hidden=(16,), envs_per_worker=2, report_every=20)  # chosen by name, not by cuda
    s = train_rl("a3c", run_cfg(tmp_path / "r", device="cuda"), cfg, show_progress=False)
    assert s["sync"] == "ga3c" and s["updates"] >= 60


@pytest.mark.gpu
@CUDA
def test_device_dqn_on_cuda(tmp_path):
    cfg = DQNConfig(sync="device", hidden=(32,), learning_starts=64, batch_size=32, report_every=50)
    s = train_rl("dqn", run_cfg(tmp_path / "r", device="cuda"), cfg, show_progress=False)
    assert s["sync"] == "device" and s["updates"] >= 150


def test_a_dead_ga3c_actor_ends_the_run_with_its_name():
    import multiprocessing as mp
    import os
    import signal
    import time

    from esrl import envs
    from esrl.backends.base import WorkerFailure
    from esrl.rl import nets
    from esrl.rl.a3c import A3CSetup
    from esrl.rl.common import optim_spec
    from esrl.rl.ga3c import GA3C

    setup = A3CSetup(A3CConfig(hidden=(8,), envs_per_worker=1), envs.spec_of("CartPole-v1"), 0)
    arr = GA3C(setup, nets.get_flat(setup.build_model()), optim_spec(setup.cfg), 2, mp.get_context("fork"),
               torch.device("cpu"))
    arr.start()
    try:
        deadline = time.monotonic() + 10
        while sum(r.updates for r in arr.poll(0.05)) == 0 and time.monotonic() < deadline:
            pass
        os.kill(arr.procs[1].pid, signal.SIGKILL)
        with pytest.raises(WorkerFailure, match="actor 1 died"):
            while time.monotonic() < deadline:
                arr.poll(0.05)
    finally:
        arr.close()
    assert arr.live_workers == 0


def test_ga3c_runs_continuous_actions(tmp_path):
    cfg = A3CConfig(sync="ga3c", hidden=(16,), envs_per_worker=2, report_every=10)
    s = train_rl("a3c", run_cfg(tmp_path / "r", env="Pendulum-v1", max_iterations=3), cfg, show_progress=False)
    assert s["updates"] >= 20 and s["env_steps"] > 0 and np.isfinite(s["final_eval_return"])
