"""The measurement protocol: one evaluation path, schedule, clock and confirmation for ES and RL."""

import dataclasses
import json
import time

import numpy as np
import pytest

from esrl import protocol
from esrl.config import A3CConfig
from esrl.protocol import Counters, Measurement
from esrl.train import train
from esrl.train_rl import train_rl
from tests.conftest import tiny_es, tiny_run


def tiny_a3c():
    return A3CConfig(hidden=(16,), envs_per_worker=2, report_every=20)


def metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def spy(monkeypatch):
    """Record every call of the one episode loop that evaluations go through."""
    calls = []
    real = protocol.play_episodes

    def play(spec, act, seeds):
        returns, lengths = real(spec, act, seeds)
        calls.append({"seeds": np.array(seeds), "lengths": lengths})
        return returns, lengths

    monkeypatch.setattr(protocol, "play_episodes", play)
    return calls


@pytest.mark.parametrize("algo", ["es", "a3c"])
def test_es_and_rl_evaluate_through_the_same_path_on_the_same_schedule(spy, tmp_path, algo):
    run = tiny_run(tmp_path / algo, eval_every_steps=500, max_iterations=0, max_env_steps=2_000, confirm_episodes=0)
    s = train(run, tiny_es(), show_progress=False) if algo == "es" else train_rl("a3c", run, tiny_a3c(),
                                                                                 show_progress=False)
    assert s["evaluations"] == len(spy) >= 4
    for k, call in enumerate(spy):  # evaluation k plays the seeds of evaluation k, whatever the algorithm
        assert np.array_equal(call["seeds"], protocol.eval_seeds(run.seed, k, run.eval_episodes))
    assert s["eval_env_steps"] == sum(int(c["lengths"].sum()) for c in spy)
    assert s["eval_episodes"] == run.eval_episodes * len(spy)
    lines = [m for m in metrics(tmp_path / algo) if m["eval_return"] is not None]
    assert len(lines) == len(spy)
    # evaluation k happens at the first check at or past k * eval_every_steps training steps, never before
    for k, m in enumerate(lines):
        assert m["env_steps"] >= k * run.eval_every_steps
    assert abs(s["training_s"] + s["eval_s"] - s["wall_s"]) < 1e-6


def test_evaluation_steps_never_count_as_training(tmp_path):
    """More evaluation episodes change eval counts only: training (serial, deterministic) is untouched."""
    a = train(tiny_run(tmp_path / "a", eval_episodes=1, eval_every_steps=200), tiny_es(), show_progress=False)
    b = train(tiny_run(tmp_path / "b", eval_episodes=6, eval_every_steps=200), tiny_es(), show_progress=False)
    assert (a["env_steps"], a["episodes"]) == (b["env_steps"], b["episodes"])
    assert a["evaluations"] == b["evaluations"] and b["eval_episodes"] == 6 * b["evaluations"]
    assert b["eval_env_steps"] > a["eval_env_steps"]
    assert [m["env_steps"] for m in metrics(tmp_path / "a")] == [m["env_steps"] for m in metrics(tmp_path / "b")]


def test_evaluation_time_is_off_the_training_clock(monkeypatch, tmp_path):
    real = protocol.play_episodes

    def slow(spec, act, seeds):
        time.sleep(0.3)
        return real(spec, act, seeds)

    monkeypatch.setattr(protocol, "play_episodes", slow)
    s = train(tiny_run(tmp_path / "r", eval_every_steps=300, confirm_episodes=0), tiny_es(), show_progress=False)
    assert s["evaluations"] >= 2 and s["eval_s"] >= 0.3 * s["evaluations"]
    assert s["training_s"] <= s["wall_s"] - 0.3 * s["evaluations"]


@pytest.mark.parametrize("algo", ["es", "a3c"])
def test_first_hit_is_saved_and_confirmed_on_fresh_seeds(spy, tmp_path, algo):
    # any return reaches this target: the initial policy solves at the first evaluation
    run = tiny_run(tmp_path / algo, target_return=-1e9, confirm_episodes=7)
    s = train(run, tiny_es(), show_progress=False) if algo == "es" else train_rl("a3c", run, tiny_a3c(),
                                                                                 show_progress=False)
    assert s["solved"] and s["stop_reason"] == "solved" and s["time_to_threshold_s"] is not None
    assert s["confirmed"] is True and s["confirm_episodes"] == 7
    confirm = spy[-1]
    assert np.array_equal(confirm["seeds"], protocol.confirm_seeds(run.seed, 7))
    assert not set(confirm["seeds"]) & set(spy[0]["seeds"])  # fresh seeds
    assert s["eval_episodes"] == run.eval_episodes  # the confirmation is not an evaluation of the run
    assert (tmp_path / algo / "threshold").is_dir()


def test_a_hit_whose_confirmation_fails_does_not_solve_and_training_goes_on():
    run = tiny_run("unused", target_return=100.0, confirm_episodes=5)
    m = Measurement(run, 100.0, Counters(env_steps=50), time.perf_counter())
    eval_seeds = set(protocol.eval_seeds(run.seed, 0, run.eval_episodes)) | set(
        protocol.eval_seeds(run.seed, 1, run.eval_episodes))
    played = []

    def play(confirm_return):  # evaluations score 120; confirmations score what the test says
        def _play(seeds):
            played.append(seeds)
            value = 120.0 if set(seeds) <= eval_seeds else confirm_return
            return np.full(len(seeds), value), np.full(len(seeds), 10)
        return _play

    ev = m.evaluate(play(80.0))
    assert ev.hit and not ev.first and not m.solved
    assert (m.counters.unconfirmed_hits, m.counters.confirmations, m.counters.confirmed_return) == (1, 1, None)
    assert m.counters.next_eval_step == run.eval_every_steps
    assert np.array_equal(played[1], protocol.confirm_seeds(run.seed, 5, 0))
    m.counters.env_steps = 70
    ev = m.evaluate(play(101.0))
    assert ev.hit and ev.first and m.solved
    assert np.array_equal(played[3], protocol.confirm_seeds(run.seed, 5, 1))  # a fresh set per confirmation
    assert not set(played[3]) & set(played[1])
    m.stop_clock()
    no_traffic = type("T", (), {"sent": {"x": 10}, "received": {"y": 6}, "messages": 3, "startup": 4})()
    s = m.summary(no_traffic, "pipe")
    assert s["solved"] is True and s["confirmed"] is True and s["confirmed_return"] == 101.0
    assert s["unconfirmed_hits"] == 1 and s["first_hit_s"] <= s["time_to_threshold_s"]
    assert s["threshold_return"] == 120.0 and s["env_steps_to_threshold"] == 70
    assert s["eval_episodes"] == 2 * run.eval_episodes  # confirmations are not evaluations of the run
    assert (s["bytes_total"], s["bytes_startup"], s["messages_total"]) == (16, 4, 3)
    assert s["bytes_per_env_step"] == (16 - 4) / 70 and s["transport"] == "pipe"


def test_without_confirmation_the_first_hit_solves():
    run = tiny_run("unused", target_return=100.0, confirm_episodes=0)
    m = Measurement(run, 100.0, Counters(env_steps=50), time.perf_counter())
    ev = m.evaluate(lambda seeds: (np.full(len(seeds), 120.0), np.full(len(seeds), 10)))
    assert ev.first and m.solved and m.counters.confirmations == 0
    assert m.summary(type("T", (), {"sent": {}, "received": {}, "messages": 0})(), "pipe")["confirmed"] is None


def test_counters_survive_a_resume_with_traffic_folded_in():
    run = tiny_run("unused")
    m = Measurement(run, None, Counters(bytes_total=100, messages_total=5), time.perf_counter())
    traffic = type("T", (), {"sent": {"a": 1}, "received": {}, "messages": 2, "startup": 0})()
    saved = Counters(**m.checkpoint_counters(traffic))
    assert (saved.bytes_total, saved.messages_total) == (101, 7)
    assert dataclasses.asdict(saved).keys() == dataclasses.asdict(Counters()).keys()
