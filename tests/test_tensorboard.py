"""Watching a run: TensorBoard event files beside metrics.jsonl, and callbacks that can stop a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from esrl.config import A3CConfig
from esrl.runs.sinks import scalars
from esrl.train import train
from esrl.train_rl import train_rl
from tests.conftest import final_state, tiny_es, tiny_run

A3C = A3CConfig(hidden=(16,), envs_per_worker=2, report_every=20)


def lines(d: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]


def events(d: Path) -> EventAccumulator:
    acc = EventAccumulator(str(d / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def assert_same_figures(d: Path) -> EventAccumulator:
    """Every number of every metrics line is in the event files, at its line's env_steps."""
    acc = events(d)
    expected: dict[str, list[tuple[int, float]]] = {}
    for line in lines(d):
        for tag, v in scalars(line).items():
            expected.setdefault(tag, []).append((line["env_steps"], v))
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        np.testing.assert_allclose([v for _, v in got], [v for _, v in points], rtol=1e-6)  # float32 in the file
    return acc


def test_es_run_writes_eval_return_and_bytes_by_kind(tmp_path):
    d = tmp_path / "es"
    train(tiny_run(d, backend="processes", workers=2, max_iterations=4, eval_every_steps=200), tiny_es(),
          show_progress=False)
    acc = assert_same_figures(d)
    tags = set(acc.Tags()["scalars"])
    assert {"returns/eval_return", "returns/return_mean", "speed/steps_per_s", "traffic/bytes_sent_total",
            "traffic/messages", "bytes_sent/task", "bytes_received/result"} <= tags
    assert all(e.value > 0 for e in acc.Scalars("bytes_sent/task"))


def test_a3c_run_writes_losses_staleness_and_traffic(tmp_path):
    d = tmp_path / "a3c"
    train_rl("a3c", tiny_run(d, workers=2, max_iterations=3, eval_every_steps=100), A3C, show_progress=False)
    tags = set(assert_same_figures(d).Tags()["scalars"])
    assert {"returns/eval_return", "losses/policy", "losses/value", "staleness/staleness_mean",
            "speed/updates_per_s", "traffic/bytes_sent_total"} <= tags
    assert any(t.startswith("bytes_sent/") for t in tags)


def test_no_tensorboard_writes_no_event_files(tmp_path):
    d = tmp_path / "off"
    train(tiny_run(d, max_iterations=2, tensorboard=False), tiny_es(), show_progress=False)
    assert not (d / "tb").exists() and lines(d)


def test_a_resumed_run_replaces_what_the_lost_session_logged(tmp_path):
    d = tmp_path / "r"
    run = tiny_run(d, max_iterations=6)
    train(run, tiny_es(), show_progress=False)
    for stem in ("ckpt_00000006", "ckpt_00000005"):  # as if killed after the checkpoint of iteration 4
        for suffix in (".json", ".safetensors"):
            (d / "checkpoints" / (stem + suffix)).unlink(missing_ok=True)
    train(run, tiny_es(), resume=True, show_progress=False)
    assert len(list((d / "tb").glob("events.out.tfevents.*"))) == 2
    assert_same_figures(d)  # each step once: the first session's iterations 4 and 5 were purged


def test_es_callback_stops_cleanly_and_the_run_resumes_bit_identically(tmp_path):
    seen: list[dict[str, Any]] = []

    def stop_after_two(line: dict[str, Any]) -> bool:
        seen.append(line)
        return line["iteration"] < 2

    d = tmp_path / "cb"
    summary = train(tiny_run(d), tiny_es(), show_progress=False, callbacks=[stop_after_two])
    assert summary["stop_reason"] == "callback" and summary["iterations"] == 3
    assert seen == lines(d)
    resumed = train(tiny_run(d), tiny_es(), resume=True, show_progress=False)
    assert resumed["stop_reason"] == "budget" and resumed["iterations"] == 6
    train(tiny_run(tmp_path / "whole"), tiny_es(), show_progress=False)
    for k, v in final_state(tmp_path / "whole").items():
        np.testing.assert_array_equal(final_state(d)[k], v, err_msg=k)


def test_rl_callback_stops_cleanly_and_the_run_resumes(tmp_path):
    d = tmp_path / "a3c"
    run = tiny_run(d, workers=1, max_iterations=4)
    calls: list[int] = []
    summary = train_rl("a3c", run, A3C, show_progress=False, callbacks=[lambda line: calls.append(1) or False])
    assert summary["stop_reason"] == "callback" and summary["iterations"] == 1 and calls == [1]
    assert list((d / "checkpoints").glob("ckpt_*.json"))
    resumed = train_rl("a3c", run, A3C, resume=True, show_progress=False)
    assert resumed["stop_reason"] == "budget" and resumed["iterations"] == 4
    assert resumed["updates"] > summary["updates"]
    assert [m["iteration"] for m in lines(d)] == [0, 1, 2, 3]


def test_a_callback_that_returns_none_never_stops_a_run(tmp_path):
    summary = train(tiny_run(tmp_path / "n", max_iterations=3), tiny_es(), show_progress=False,
                    callbacks=[lambda line: None])
    assert summary["stop_reason"] == "budget"


@pytest.mark.parametrize("value", [float("nan"), None, True, "x", [1]])
def test_scalars_keep_finite_numbers_only(value):
    assert scalars({"env_steps": 5, "odd": value, "bytes_sent": {"task": 3, "bad": value}}) == {
        "run/env_steps": 5.0, "bytes_sent/task": 3.0}
