"""Parallel DQN and Dyna-Q: TD targets by hand, replay, sync modes end to end, planning counts."""

import dataclasses
import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch

from esrl import envs
from esrl.config import DQNConfig, DynaQConfig, RunConfig
from esrl.errors import InputError
from esrl.rl import nets
from esrl.rl.common import Report
from esrl.rl.dqn import DQNSetup, td_gradient
from esrl.rl.replay import Replay
from esrl.train_rl import train_rl

SPEC = envs.spec_of("CartPole-v1")


def tiny_dqn(**kw) -> DQNConfig:
    return dataclasses.replace(DQNConfig(hidden=(16,), learning_starts=64, batch_size=32, report_every=50,
                                         target_update=20), **kw)


def tiny_dynaq(**kw) -> DynaQConfig:
    return dataclasses.replace(DynaQConfig(hidden=(16,), model_hidden=(16,), learning_starts=64, batch_size=32,
                                           report_every=50, target_update=20), **kw)


def run_cfg(d: Path, **kw) -> RunConfig:
    base = RunConfig(env="CartPole-v1", seed=1, workers=2, max_iterations=3, max_seconds=60, target_return=1e9,
                     eval_episodes=2, run_dir=str(d))
    return dataclasses.replace(base, **kw)


def test_td_target_hand_computed():
    q = nets.QNet(SPEC, ())  # linear Q: easy to reason about
    with torch.no_grad():
        q.net[0].weight.zero_()
        q.net[0].bias.copy_(torch.tensor([1.0, 3.0]))
    target = nets.QNet(SPEC, ())
    with torch.no_grad():
        target.net[0].weight.zero_()
        target.net[0].bias.copy_(torch.tensor([2.0, 0.5]))
    obs = torch.zeros(2, 4)
    batch = (obs, torch.tensor([0, 1]), torch.tensor([1.0, 1.0]), obs, torch.tensor([0.0, 1.0]))
    # double: argmax of q (action 1) evaluated by target: 0.5 -> y = [1 + 0.9*0.5, 1]; plain: max target = 2
    for double, y0 in ((True, 1.45), (False, 2.8)):
        _, loss = td_gradient(q, target, batch, gamma=0.9, double=double, max_grad_norm=0)
        err = torch.tensor([1.0 - y0, 3.0 - 1.0])
        expected = torch.where(err.abs() < 1, 0.5 * err**2, err.abs() - 0.5).mean()
        assert torch.isclose(loss, expected), (double, loss, expected)


def test_replay_ring_and_shared():
    ctx = mp.get_context("fork")
    for rep in (Replay(4, 2), Replay(4, 2, ctx, shared=True)):
        for k in range(6):
            rep.add(np.full((1, 2), k, np.float32), np.array([k % 2]), np.array([k], np.float32),
                    np.full((1, 2), k + 1, np.float32), np.array([0.0], np.float32))
        assert len(rep) == 4 and rep.added == 6
        assert sorted(rep.reward.tolist()) == [2.0, 3.0, 4.0, 5.0]  # the oldest two were overwritten
        obs, _act, r, nxt, _done = rep.sample(16, torch.Generator().manual_seed(0))
        assert torch.equal(nxt[:, 0], obs[:, 0] + 1) and set(r.tolist()) <= {2.0, 3.0, 4.0, 5.0}


def test_dqn_refuses_continuous_actions(tmp_path):
    with pytest.raises(InputError, match="Discrete"):
        train_rl("dqn", run_cfg(tmp_path / "r", env="Pendulum-v1"), tiny_dqn(), show_progress=False)


def test_per_worker_final_epsilon():
    setup = DQNSetup(tiny_dqn(eps_final=0.1), SPEC, 0, workers=3)
    finals = [setup.build_worker(i, None).eps_final for i in range(3)]
    assert finals[0] == pytest.approx(0.1) and finals[1] == pytest.approx(0.1**1.5) and finals[2] == pytest.approx(0.01)


@pytest.mark.parametrize(("sync", "replay"), [("hogwild", "local"), ("lock", "global"), ("param-server", "local")])
def test_dqn_sync_modes_run_and_count(tmp_path, sync, replay):
    d = tmp_path / sync
    # the first line is the initial policy's evaluation, then one line per report_every updates
    s = train_rl("dqn", run_cfg(d, max_iterations=4, eval_every_steps=10**9), tiny_dqn(sync=sync, replay=replay,
                 shards=2), show_progress=False)
    manifest = json.loads(sorted((d / "checkpoints").glob("*.json"))[-1].read_text())
    assert manifest["meta"]["version"] == s["updates"] >= 150
    assert s["messages_total"] >= 2 * s["updates"]  # every pull and every push is a message
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert all(m["bytes_sent"]["gradients"] > 0 and m["staleness_mean"] is not None for m in lines[1:])


def test_dqn_serial_is_reproducible(tmp_path):
    a = train_rl("dqn", run_cfg(tmp_path / "a", backend="serial"), tiny_dqn(), show_progress=False)
    b = train_rl("dqn", run_cfg(tmp_path / "b", backend="serial"), tiny_dqn(), show_progress=False)
    la = [json.loads(x)["losses"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["losses"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb and a["env_steps"] == b["env_steps"]


@pytest.mark.parametrize("workers", [1, 3])
def test_dynaq_plans_at_the_configured_ratio(tmp_path, workers):
    d = tmp_path / f"w{workers}"
    s = train_rl("dynaq", run_cfg(d, workers=workers, max_iterations=4), tiny_dynaq(planning_ratio=2.0),
                 show_progress=False)
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    real = sum(m["counts"].get("real_transitions", 0) for m in lines)
    sim = sum(m["counts"].get("simulated_transitions", 0) for m in lines)
    assert real > 0 and sim > 0
    # planning is throttled to planning_ratio x real transitions (one batch of slack in all). The metrics
    # lines miss the reports that arrive at shutdown, so the real side is the run's total (the summary's
    # env steps, final reports included): a bound the planners' reservations guarantee at every moment.
    assert real <= s["env_steps"]
    assert sim <= 2.0 * s["env_steps"] + 32
    assert any("model" in m["losses"] for m in lines) and s["updates"] > 0


def test_dynaq_without_planning_learns_from_real_transitions_only(tmp_path):
    d = tmp_path / "r"
    train_rl("dynaq", run_cfg(d, workers=1, backend="serial"), tiny_dynaq(planning_ratio=0.0), show_progress=False)
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert sum(m["counts"].get("simulated_transitions", 0) for m in lines) == 0


def test_rl_evaluate_and_resume_through_the_cli(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    base = [sys.executable, "-m", "esrl.cli"]
    args = ["train", "dqn", "--hidden", "16", "--learning-starts", "64", "--batch-size", "32", "--report-every",
            "50", "--max-iterations", "2", "--target-return", "1e9", "--eval-episodes", "1", "--run-dir", str(run),
            "--quiet", "--workers", "2"]
    assert subprocess.run(base + args, capture_output=True, timeout=120).returncode == 0
    ev = subprocess.run([*base, "evaluate", str(run), "--episodes", "2"], capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["algorithm"] == "dqn" and len(json.loads(ev.stdout)["returns"]) == 2
    res = subprocess.run([*base, "train", "--resume", str(run), "--max-iterations", "4", "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [0, 1, 2, 3]
    assert lines[2]["updates"] > lines[1]["updates"]  # resumed from the checkpoint's version, not from zero


def test_global_replay_is_one_memory_for_all_workers():
    setup = DQNSetup(tiny_dqn(replay="global"), SPEC, 0).attach(mp.get_context("fork"), 2)
    local = DQNSetup(tiny_dqn(replay="local"), SPEC, 0).attach(mp.get_context("fork"), 2)
    a, b = setup.build_worker(0, None), setup.build_worker(1, None)
    for w in (a, b):
        for _ in range(5):
            w.collect(Report())
    assert a.replay is b.replay and a.replay.added == 2 * 5 * setup.cfg.n_steps
    c, d = local.build_worker(0, None), local.build_worker(1, None)
    assert c.replay is not d.replay


def _newest(run_dir: Path) -> dict:
    from tests.conftest import final_state

    return final_state(run_dir)


def test_resumed_dynaq_keeps_its_world_model_and_planning_counts(tmp_path):
    from esrl.rl.dynaq import DynaQSetup
    from esrl.train_rl import context

    d, cfg = tmp_path / "q", tiny_dynaq(planning_ratio=1.0)
    run = run_cfg(d, workers=2, backend="serial", max_iterations=4)
    train_rl("dynaq", run, cfg, show_progress=False)
    saved = _newest(d)
    version, simulated, real = (int(x) for x in saved["model_counts"])
    assert version > 0 and simulated > 0 and real > 0  # the world model trained and the planners planned
    # a resumed run attaches fresh stores, then puts the checkpoint's world model and counts back
    setup = DynaQSetup(cfg, SPEC, run.seed).attach(context(), 2).restore(saved)
    params, state, v = setup.model_store.snapshot()
    assert v == version and setup.simulated.value == simulated and setup.real_transitions() == real
    for name, t in (("model_params", params), ("model_opt_m", state["m"]), ("model_opt_v", state["v"])):
        assert np.array_equal(t.numpy(), saved[name]), name  # bit for bit
    init = nets.get_flat(setup.build_world_model())
    assert not torch.equal(init, params)
    # end to end: the resumed run's counts go on from the checkpoint's, not from zero
    train_rl("dynaq", dataclasses.replace(run, max_iterations=6), cfg, resume=True, show_progress=False)
    after = _newest(d)["model_counts"]
    assert after[0] > version and after[2] > real


def test_planners_imagine_the_actors_epsilon_greedy_actions():
    from esrl.rl.dynaq import DynaQSetup, Planner
    from esrl.train_rl import context

    obs = torch.randn(64, SPEC.obs_dim)
    for eps, expect_greedy in ((0.0, True), (1.0, False)):
        cfg = tiny_dynaq(eps_start=eps, eps_final=eps)
        setup = DynaQSetup(cfg, SPEC, 0).attach(context(), 2)
        planner = Planner(setup, 1, make_client())
        greedy = planner.learner.q(obs).argmax(-1)
        acts = planner.imagined_actions(obs)
        assert torch.equal(acts, greedy) is expect_greedy
    uniform = Planner(DynaQSetup(tiny_dynaq(planning_actions="uniform", eps_start=0.0, eps_final=0.0), SPEC, 0)
                      .attach(context(), 2), 1, make_client())
    assert not torch.equal(uniform.imagined_actions(obs), uniform.learner.q(obs).argmax(-1))


def make_client():
    """A client of a store holding a fresh Q-network (a planner's learner only needs one to exist)."""
    from esrl.rl.optim import OptimSpec
    from esrl.stores import make_store
    from esrl.train_rl import context

    params = nets.get_flat(DQNSetup(tiny_dqn(), SPEC, 0).build_model())
    return make_store("lock", params, OptimSpec(), context()).client(0)
