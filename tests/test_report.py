"""The scaling report on synthetic run directories with known numbers; sweeps killed and resumed."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from esrl.experiments import model
from esrl.experiments.report import load, median_ci, report, speedup_ci, table
from esrl.experiments.sweep import run_name

SPEC = {"algos": ["es", "a3c"], "env": "CartPole-v1", "workers": [1, 2], "seeds": 3, "backend": "processes",
        "target_return": 475.0, "max_seconds": 60.0, "settings": {}}
# time to threshold (s) by algorithm, workers, seed; None = not solved
TTT = {("es", 1): [2.0, 4.0, 3.0], ("es", 2): [1.0, 2.0, 1.5], ("a3c", 1): [6.0, 5.0, None],
       ("a3c", 2): [4.0, None, None]}


def fake_sweep(root: Path) -> Path:
    root.mkdir()
    (root / "sweep.json").write_text(json.dumps(SPEC))
    for (algo, w), times in TTT.items():
        for seed, t in enumerate(times):
            d = root / run_name(algo, w, seed)
            d.mkdir()
            wall = t if t is not None else 60.0
            lines = []
            for i in range(4):
                lines.append({"iteration": i, "wall_s": wall * (i + 1) / 4, "env_steps": 1000 * (i + 1),
                              "eval_return": 100.0 * (i + 1) + (75 if i == 3 and t is not None else 0),
                              "bytes_sent": {"task": 10 * w} if algo == "es" else {"gradients": 40_000},
                              "bytes_received": {"result": 200} if algo == "es" else {"parameters": 40_000},
                              "bytes_sent_total": 10 * w if algo == "es" else 40_000,
                              "bytes_received_total": 200 if algo == "es" else 40_000,
                              "messages": 4 * w, "compute_s": 0.25})
            (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
            (d / "summary.json").write_text(json.dumps({"solved": t is not None, "time_to_threshold_s": t,
                                                        "env_steps": 4000, "episodes": 40, "wall_s": wall}))
    return root


def test_median_speedup_efficiency_known_numbers(tmp_path):
    spec, records = load(fake_sweep(tmp_path / "s"))
    rows = {(r["algo"], r["workers"]): r for r in table(spec, records)}
    es1, es2 = rows[("es", 1)], rows[("es", 2)]
    assert es1["ttt_median"] == 3.0 and es2["ttt_median"] == 1.5
    assert es2["speedup"] == pytest.approx(2.0) and es2["efficiency"] == pytest.approx(1.0)
    assert es1["ttt_lo"] <= 3.0 <= es1["ttt_hi"] and 2.0 <= es1["ttt_lo"] and es1["ttt_hi"] <= 4.0
    assert es2["speedup_lo"] <= 2.0 <= es2["speedup_hi"]
    # unsolved runs are counted, as infinitely slow: a3c with 2 workers solved 1 of 3, its median is unsolved
    a1, a2 = rows[("a3c", 1)], rows[("a3c", 2)]
    assert a1["solved"] == 2 and a1["ttt_median"] == 6.0
    assert a2["solved"] == 1 and math.isinf(a2["ttt_median"]) and a2["speedup"] == 0.0
    assert es2["bytes_per_iteration"] == {"result": 200.0, "task": 20.0}
    assert a2["bytes_per_iteration"] == {"gradients": 40_000.0, "parameters": 40_000.0}
    assert es1["steps_per_s"] == pytest.approx(4000 / 3.0)
    assert es1["episodes_to_train"] == 40 and es1["time_per_episode_s"] == pytest.approx(3.0 / 40)


def test_bootstrap_helpers():
    med, lo, hi = median_ci([1.0, 2.0, 3.0, 4.0, 5.0], "x")
    assert med == 3.0 and 1.0 <= lo <= 3.0 <= hi <= 5.0
    s, lo, hi = speedup_ci([4.0, 4.0], [2.0, 2.0], 2, "x")
    assert s == lo == hi == 2.0


def test_missing_and_corrupt_runs_are_reported_not_fatal(tmp_path):
    root = fake_sweep(tmp_path / "s")
    shutil.rmtree(root / run_name("es", 2, 1))
    (root / run_name("a3c", 1, 0) / "summary.json").write_text("{broken")
    (root / run_name("a3c", 2, 2) / "summary.json").unlink()
    out = report(root)
    md = Path(out["report_md"]).read_text()
    assert "es-w2-s1: missing" in md and "a3c-w1-s0: corrupt" in md and "a3c-w2-s2: unfinished" in md
    rows = {(r["algo"], r["workers"]): r for r in out["rows"]}
    assert rows[("es", 2)]["finished"] == 2 and rows[("es", 2)]["ttt_median"] == 1.25  # median of 1.0 and 1.5


def test_report_files_and_plots(tmp_path):
    root = fake_sweep(tmp_path / "s")
    out = report(root)
    html = Path(out["report_html"]).read_text()
    assert html.count("data:image/png;base64,") >= 10  # self-contained: every plot inlined
    for name in ("time_to_threshold", "speedup", "efficiency", "steps_per_s", "bytes_per_iteration", "bytes_per_s",
                 "episodes", "curves_time", "curves_steps", "scaling_model"):
        png = root / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "Scaling model" in Path(out["report_md"]).read_text()


def test_scaling_model_es_scales_a3c_is_bandwidth_bound(tmp_path):
    spec, records = load(fake_sweep(tmp_path / "s"))
    fits = model.fit(spec, records)
    n = np.array([1.0, 1024.0])
    es = model.predict_speedup(fits["es"], n, bandwidth=125e6, latency=1e-4)
    a3c = model.predict_speedup(fits["a3c"], n, bandwidth=125e6, latency=1e-4)
    assert es[0] == pytest.approx(1.0) and es[1] > 100 and es[1] > 1.5 * a3c[1]
    # hand check of the fitted terms: 1 s of compute per 4000 steps; a3c moves 80,000 bytes per 1000 env steps
    f = fits["a3c"]
    assert f["compute_s_per_step"] == pytest.approx(250e-6) and f["bytes_per_step"] == pytest.approx(80.0)
    # at 1024 workers A3C's traffic through the hub outlasts its compute: bandwidth-bound; ES's does not
    assert 4000 * 80 / 125e6 > 4000 * 250e-6 / 1024
    e = fits["es"]
    assert 4000 * (e["bytes_per_step"] + 1024 * e["bytes_per_step_per_worker"]) / 125e6 < 4000 * 250e-6 / 1024


def _count_summaries(out: Path) -> int:
    return len(list(out.glob("*/summary.json")))


def test_sweep_killed_and_resumed(tmp_path):
    import os
    import signal
    import time

    out = tmp_path / "sw"
    args = [sys.executable, "-m", "esrl.cli", "sweep", "--algos", "es", "--workers", "1,2", "--seeds", "2",
            "--max-seconds", "30", "--backend", "serial", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _count_summaries(out) < 2:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    done = _count_summaries(out)
    assert 2 <= done < 4, "the kill must land mid-sweep"
    before = {p.name: (p / "summary.json").read_bytes() for p in out.iterdir() if (p / "summary.json").exists()}
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    records = json.loads(res.stdout)["runs"]
    assert sum(r["skipped"] for r in records) == done and len(records) == 4
    assert _count_summaries(out) == 4
    for name, data in before.items():  # finished runs were not run again
        assert (out / name / "summary.json").read_bytes() == data
    changed = subprocess.run([*args[:-3], "--seeds", "3", "--out", str(out)], capture_output=True, text=True,
                             timeout=60)
    assert changed.returncode == 2 and changed.stderr.startswith("esrl: error: out:")


def test_sweep_bad_input(tmp_path):
    res = subprocess.run([sys.executable, "-m", "esrl.cli", "sweep", "--algos", "es,ppo", "--out",
                          str(tmp_path / "x")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.startswith("esrl: error: algos:")
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_html_report_renders_in_headless_chromium(tmp_path):
    root = fake_sweep(tmp_path / "s")
    out = report(root)
    shot = tmp_path / "shot.png"
    res = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2600",
                          f"--screenshot={shot}", Path(out["report_html"]).resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.exists(), res.stderr[-500:]
    import imageio.v3 as iio

    img = iio.imread(shot)
    assert img.shape[0] == 2600 and img.shape[1] == 1200
    # the plots rendered: far from a blank page (plot lines and text make many distinct colors)
    assert len(np.unique(img.reshape(-1, img.shape[-1])[:, :3], axis=0)) > 200


def test_weak_scaling_keeps_es_per_worker_traffic_flat(tmp_path):
    spec, records = load(fake_sweep(tmp_path / "s"))
    f = model.fit(spec, records)["es"]
    n = np.array([4096.0])
    fixed = model.predict_speedup(f, n, 125e6, 1e-4)
    weak = model.predict_speedup(f, n, 125e6, 1e-4, weak=True)
    assert weak[0] > fixed[0]  # with the population growing with the workers ES keeps scaling
    t_weak = model.predict_time(f, n, 125e6, 1e-4, weak=True)[0]
    w, c = f["steps_to_threshold"], f["compute_s_per_step"]
    b = f["bytes_per_step"] + 2 * f["bytes_per_step_per_worker"]  # per-worker terms as measured at 2 workers
    m = f["messages_per_step"] + 2 * f["messages_per_step_per_worker"]
    assert t_weak == pytest.approx(max(w * c / 4096, w * b / 125e6) + w * m * 1e-4 / 4096)


def test_sweep_settings_are_validated_before_any_run(tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("algos: [es, a3c]\nsettings:\n  es: {population: 15}\n")
    res = subprocess.run([sys.executable, "-m", "esrl.cli", "sweep", "--config", str(cfg), "--out",
                          str(tmp_path / "x")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.startswith("esrl: error: population:"), res.stderr
    assert not (tmp_path / "x").exists()


def test_interrupted_runs_are_not_finished(tmp_path):
    from esrl.experiments.sweep import SweepSpec, finished

    d = tmp_path / "r"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"stop_reason": "interrupted"}))
    assert not finished(d)
    (d / "summary.json").write_text(json.dumps({"stop_reason": "budget"}))
    assert finished(d)
    from esrl.errors import InputError

    with pytest.raises(InputError, match=r"^backend: "):
        SweepSpec(algos=["dqn"], backend="vectorized").validate()
    with pytest.raises(InputError, match=r"^target_return: "):
        SweepSpec(algos=["es"], target_return="500").validate()


def test_model_fits_bytes_and_wait_per_message(tmp_path):
    spec, records = load(fake_sweep(tmp_path / "s"))
    f = model.fit(spec, records)["a3c"]
    # a3c lines: 80,000 bytes and 4 x workers messages each; at 1 and 2 workers 4 + 8 messages per line pair
    n_lines = {1: 4 * 3, 2: 4 * 3}
    msgs = sum(4 * w * n for w, n in n_lines.items())
    assert f["bytes_per_message"] == pytest.approx(80_000 * sum(n_lines.values()) / msgs)
    assert f["measured_s_per_message"] == 0.0  # the synthetic lines record no waiting time
