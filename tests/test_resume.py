"""A killed run resumes from its last checkpoint and continues bit-identically."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from tests.conftest import det_metrics, final_state

ARGS = ["--env", "CartPole-v1", "--seed", "5", "--population", "16", "--hidden", "8", "--workers", "2",
        "--target-return", "1e9", "--max-seconds", "0", "--max-iterations", "40", "--eval-episodes", "2",
        "--checkpoint-every", "1", "--noise-table-size", "65536", "--quiet"]


def esrl(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "esrl.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_kill_and_resume_equals_straight_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert esrl("train", "es", *ARGS, "--run-dir", str(straight)).wait(120) == 0

    proc = esrl("train", "es", *ARGS, "--run-dir", str(killed), start_new_session=True)
    metrics = killed / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 12:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and its workers, without warning
    proc.wait(10)
    done = len(metrics.read_text().splitlines())
    assert 12 <= done < 40, "the kill must land mid-run"

    res = esrl("train", "--resume", str(killed))
    out, err = res.communicate(timeout=120)
    assert res.returncode == 0, err
    a, b = final_state(straight), final_state(killed)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert det_metrics(straight) == det_metrics(killed)
    assert json.loads(out)["iterations"] == 40


def test_resume_refuses_to_change_hyperparameters(tmp_path):
    run = tmp_path / "r"
    assert esrl("train", "es", *ARGS, "--max-iterations", "2", "--run-dir", str(run)).wait(60) == 0
    before = (run / "metrics.jsonl").read_bytes()
    res = esrl("train", "--resume", str(run), "--sigma", "0.5")
    _, err = res.communicate(timeout=60)
    assert res.returncode == 2 and err.strip().startswith("esrl: error: sigma:")
    assert (run / "metrics.jsonl").read_bytes() == before


def test_sigterm_stops_at_an_iteration_boundary_and_resumes_bit_identically(tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert esrl("train", "es", *ARGS, "--checkpoint-every", "1000", "--run-dir", str(straight)).wait(120) == 0
    proc = esrl("train", "es", *ARGS, "--checkpoint-every", "1000", "--run-dir", str(stopped))
    metrics = stopped / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 8):
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 130
    assert json.loads((stopped / "summary.json").read_text())["stop_reason"] == "interrupted"
    assert len(metrics.read_text().splitlines()) < 40
    res = esrl("train", "--resume", str(stopped))
    _, err = res.communicate(timeout=120)
    assert res.returncode == 0, err
    a, b = final_state(straight), final_state(stopped)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert det_metrics(straight) == det_metrics(stopped)
