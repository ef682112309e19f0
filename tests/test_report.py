"""The scaling report on synthetic run directories with known numbers: the verdict, confirmed solves, intervals."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from esrl.experiments.records import load
from esrl.experiments.report import report, table
from esrl.experiments.sweep import run_name
from esrl.experiments.verdict import median_interval, ratio_interval, speedup_interval

SPEC = {"algos": ["es", "a3c", "dqn:lock"], "env": "CartPole-v1", "workers": [1, 2], "seeds": 3,
        "backend": "processes", "address": "", "device": "auto", "target_return": 475.0, "max_seconds": 60.0,
        "settings": {}}
# time to threshold (s) by arm, workers, seed; None = not solved
TTT = {("es", 1): [2.0, 4.0, 3.0], ("es", 2): [1.0, 2.0, 1.5], ("a3c", 1): [6.0, 5.0, None],
       ("a3c", 2): [4.0, None, None], ("dqn:lock", 1): [8.0, 9.0, 10.0], ("dqn:lock", 2): [5.0, 6.0, 7.0]}
SYNC = {"es": None, "a3c": "hogwild", "dqn:lock": "lock"}
TRANSPORT = {"es": "pipe", "a3c": "shared-memory", "dqn:lock": "shared-memory"}
PARAMS = {"es": 58, "a3c": 4_610, "dqn:lock": 17_410}


def fake_sweep(root: Path, ttt: dict | None = None, seeds: int = 3) -> Path:
    ttt = ttt or TTT
    root.mkdir()
    (root / "sweep.json").write_text(json.dumps({**SPEC, "seeds": seeds}))
    for (arm, w), times in ttt.items():
        for seed, t in enumerate(times[:seeds]):
            d = root / run_name(arm, w, seed)
            d.mkdir()
            wall = t if t is not None else 60.0
            es = arm == "es"
            lines = []
            for i in range(4):
                lines.append({"iteration": i, "wall_s": wall * (i + 1) / 4, "env_steps": 1000 * (i + 1),
                              "eval_return": 100.0 * (i + 1) + (75 if i == 3 and t is not None else 0),
                              "bytes_sent": {"task": 10 * w} if es else {"gradients": 40_000},
                              "bytes_received": {"result": 200} if es else {"parameters": 40_000},
                              "bytes_sent_total": 10 * w if es else 40_000,
                              "bytes_received_total": 200 if es else 40_000,
                              "messages": 4 * w, "compute_s": 0.25})
            (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
            running = sum(x["bytes_sent_total"] + x["bytes_received_total"] for x in lines)
            (d / "summary.json").write_text(json.dumps({
                "solved": t is not None, "confirmed": True if t is not None else None,
                "confirmed_return": 480.0 if t is not None else None, "time_to_threshold_s": t,
                "stop_reason": "solved" if t is not None else "budget", "env_steps": 4000, "episodes": 40,
                "wall_s": wall, "bytes_total": running + 1000, "bytes_startup": 1000,
                "bytes_per_env_step": running / 4000, "transport": TRANSPORT[arm], "num_params": PARAMS[arm],
                "sync": SYNC[arm], "backend": "processes", "workers": w, "target_return": 475.0}))
    return root


def rows_of(root: Path) -> dict:
    spec, records = load(root)
    return {(r["arm"], r["workers"]): r for r in table(spec, records)}


def test_median_speedup_efficiency_known_numbers(tmp_path):
    rows = rows_of(fake_sweep(tmp_path / "s"))
    es1, es2 = rows[("es", 1)], rows[("es", 2)]
    assert es1["interval"] == "range"  # 3 seeds: a range, never a 95% CI
    assert (es1["ttt_median"], es1["ttt_lo"], es1["ttt_hi"]) == (3.0, 2.0, 4.0)  # min-max across seeds
    assert (es2["ttt_median"], es2["ttt_lo"], es2["ttt_hi"]) == (1.5, 1.0, 2.0)
    assert es2["speedup"] == pytest.approx(2.0) and es2["efficiency"] == pytest.approx(1.0)
    assert es2["speedup_lo"] <= 2.0 <= es2["speedup_hi"]
    assert es2["efficiency_lo"] == pytest.approx(es2["speedup_lo"] / 2)
    assert es2["efficiency_hi"] == pytest.approx(es2["speedup_hi"] / 2)
    # unsolved runs are counted, as infinitely slow: a3c with 2 workers solved 1 of 3, its median is unsolved
    a1, a2 = rows[("a3c", 1)], rows[("a3c", 2)]
    assert a1["confirmed"] == 2 and a1["ttt_median"] == 6.0
    assert a2["confirmed"] == 1 and math.isinf(a2["ttt_median"]) and a2["speedup"] == 0.0
    assert es2["bytes_per_iteration"] == {"result": 200.0, "task": 20.0}
    assert a2["bytes_per_iteration"] == {"gradients": 40_000.0, "parameters": 40_000.0}
    assert es1["steps_per_s"] == pytest.approx(4000 / 3.0)
    assert es1["episodes_to_threshold"] == 40 and es1["time_per_episode_s"] == pytest.approx(3.0 / 40)
    # traffic on one axis: bytes per env step, bytes to threshold (solved runs' totals, start-up included)
    d1 = rows[("dqn:lock", 1)]
    assert d1["bytes_per_env_step"] == pytest.approx(80.0) and d1["bytes_to_threshold"] == 4 * 80_000 + 1000
    assert d1["transport"] == "shared-memory" and d1["sync"] == "lock" and d1["num_params"] == 17_410
    assert a2["bytes_to_threshold"] == 4 * 80_000 + 1000  # only its one solved run


def test_interval_helpers():
    med, lo, hi = median_interval([1.0, 2.0, 3.0, 4.0, 5.0], "x", "95% CI")
    assert med == 3.0 and 1.0 <= lo <= 3.0 <= hi <= 5.0
    assert median_interval([1.0, 5.0, 3.0], "x", "range") == (3.0, 1.0, 5.0)
    s, lo, hi = speedup_interval([4.0, 4.0], [2.0, 2.0], "x", "range")
    assert s == lo == hi == 2.0
    # a ratio's range spans every resample: medians of [2, 4] over medians of [1, 1] lie in 2-4
    r, lo, hi = ratio_interval([2.0, 4.0], [1.0, 1.0], "x", "range")
    assert r == 3.0 and (lo, hi) == (2.0, 4.0)
    assert ratio_interval([math.inf, math.inf], [1.0, 1.0], "x", "range")[0] == math.inf
    # seeded: the same interval every time
    assert median_interval([1.0, 9.0, 2.0, 7.0, 5.0, 3.0], "y") == median_interval([1.0, 9.0, 2.0, 7.0, 5.0, 3.0], "y")


def test_solved_but_not_confirmed_counts_as_unsolved(tmp_path):
    root = fake_sweep(tmp_path / "s")
    for seed in range(3):  # es at 2 workers: every evaluation solve failed its confirmation
        p = root / run_name("es", 2, seed) / "summary.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "confirmed": False, "confirmed_return": 300.0}))
    out = report(root)
    rows = {(r["arm"], r["workers"]): r for r in out["rows"]}
    es2 = rows[("es", 2)]
    assert es2["solved_eval"] == 3 and es2["confirmed"] == 0 and math.isinf(es2["ttt_median"])
    assert es2["bytes_to_threshold"] is None
    md = Path(out["report_md"]).read_text()
    assert "| es | 2 | 3/3 | 0/3 |" in md  # both counts in the table
    at2 = next(v for v in out["verdict"]["by_workers"] if v["workers"] == 2)
    assert at2["faster"] == "dqn:lock"  # es no longer counts as having solved
    assert "failed confirmation" in out["verdict"]["text"]


def test_runs_without_confirmation_are_unsolved_and_said_so(tmp_path):
    root = fake_sweep(tmp_path / "s")
    for p in root.glob("*/summary.json"):  # runs written before confirmation, transport and traffic totals
        s = json.loads(p.read_text())
        for k in ("confirmed", "confirmed_return", "bytes_total", "bytes_startup", "bytes_per_env_step", "transport",
                  "num_params", "sync"):
            s.pop(k)
        p.write_text(json.dumps(s))
    out = report(root)
    rows = {(r["arm"], r["workers"]): r for r in out["rows"]}
    assert all(r["confirmed"] == 0 for r in rows.values()) and rows[("es", 1)]["solved_eval"] == 3
    assert rows[("es", 1)]["transport"] == "pipe (inferred)"
    assert rows[("es", 1)]["bytes_per_env_step"] == pytest.approx(4 * 210 / 4000)  # from the metrics lines
    assert "carry no confirmation" in out["verdict"]["text"]
    assert all(v["sure"] == "no solves" for v in out["verdict"]["by_workers"])


def test_report_opens_with_the_verdict(tmp_path):
    out = report(fake_sweep(tmp_path / "s"))
    md = Path(out["report_md"]).read_text()
    head, first, *_ = md.split("\n## ")
    assert head.startswith("# esrl scaling report") and len(head.splitlines()) <= 2
    assert first.startswith("Verdict")
    v = out["verdict"]
    at1, at2 = v["by_workers"]
    # 1 worker: es (median 3 s) against a3c (6 s, the next fastest): 2x sooner
    assert at1["workers"] == 1 and at1["faster"] == "es" and at1["slower"] == "a3c"
    assert at1["ratio"] == pytest.approx(2.0) and at1["lo"] <= 2.0 <= at1["hi"]
    assert at2["faster"] == "es" and at2["slower"] == "dqn:lock" and at2["ratio"] == pytest.approx(4.0)
    assert "es reaches the confirmed target sooner" in at1["text"] and at1["text"] in first
    assert v["interval"] == "range" and "range" in at1["text"] and "95% CI" not in md
    assert {c["arms"][1] for c in v["crossovers"]} == {"a3c", "dqn:lock"}
    assert all(c["model"] and c["measured"] for c in v["crossovers"])


def test_report_json_has_verdict_machine_and_arms(tmp_path):
    root = fake_sweep(tmp_path / "s")
    out = report(root)
    doc = json.loads(Path(out["report_json"]).read_text())  # strict JSON: infinities as strings
    assert set(doc) >= {"verdict", "machine", "rows", "arms", "model", "target_return", "interval"}
    for entry in doc["verdict"]["by_workers"]:
        assert {"workers", "faster", "ratio", "lo", "hi", "sure", "text"} <= set(entry)
    m = doc["machine"]
    assert {"cpu", "cores_logical", "memory_gib", "gpu", "os", "python", "torch", "gymnasium", "ray", "numpy",
            "esrl", "commit"} <= set(m)
    assert "wrote this report" in m["source"]  # the fake sweep recorded no machine.json
    arms = {a["arm"]: a for a in doc["arms"]}
    assert arms["dqn:lock"]["sync"] == "lock" and arms["dqn:lock"]["num_params"] == 17_410
    md = Path(out["report_md"]).read_text()
    assert "## Machine" in md and "## Arms" in md and "| dqn:lock | dqn | lock | 17410 |" in md
    assert doc["target_return"] == 475.0


def test_five_seeds_give_confidence_intervals(tmp_path):
    ttt = {k: (v * 2)[:5] for k, v in TTT.items()}
    out = report(fake_sweep(tmp_path / "s", ttt, seeds=5))
    md = Path(out["report_md"]).read_text()
    assert out["verdict"]["interval"] == "95% CI" and "95% CI" in md


def test_missing_and_corrupt_runs_are_reported_not_fatal(tmp_path):
    root = fake_sweep(tmp_path / "s")
    shutil.rmtree(root / run_name("es", 2, 1))
    (root / run_name("a3c", 1, 0) / "summary.json").write_text("{broken")
    (root / run_name("a3c", 2, 2) / "summary.json").unlink()
    out = report(root)
    md = Path(out["report_md"]).read_text()
    assert "es-w2-s1: missing" in md and "a3c-w1-s0: corrupt" in md and "a3c-w2-s2: unfinished" in md
    rows = {(r["arm"], r["workers"]): r for r in out["rows"]}
    assert rows[("es", 2)]["finished"] == 2 and rows[("es", 2)]["ttt_median"] == 1.25  # median of 1.0 and 1.5


def test_report_files_and_plots(tmp_path):
    root = fake_sweep(tmp_path / "s")
    out = report(root)
    html = Path(out["report_html"]).read_text()
    assert html.count("data:image/png;base64,") >= 12  # self-contained: every plot inlined
    for name in ("time_to_threshold", "speedup", "efficiency", "steps_per_s", "bytes_per_env_step",
                 "bytes_to_threshold", "bytes_per_iteration", "bytes_per_s", "episodes", "curves_time",
                 "curves_steps", "scaling_model"):
        png = root / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = Path(out["report_md"]).read_text()
    assert "Scaling model" in md and "Residuals" in md and "0.1-100 Gbit/s" in md
    assert "<h2>Verdict</h2>" in html and "<li>" in html
    # without --beside: no section, no plot, no key
    assert "## Beside" not in md and not (root / "plots" / "beside.png").exists()
    assert "beside" not in json.loads(Path(out["report_json"]).read_text())


def test_report_of_a_sweep_that_recorded_no_target(tmp_path):
    root = fake_sweep(tmp_path / "s")  # sweeps written before the target was resolved: the runs' own target
    (root / "sweep.json").write_text(json.dumps({k: v for k, v in SPEC.items() if k not in ("address", "device")}
                                                | {"target_return": None}))
    out = report(root)
    assert out["verdict"]["target_return"] == 475.0


def test_report_cli(tmp_path):
    import sys

    root = fake_sweep(tmp_path / "s")
    res = subprocess.run([sys.executable, "-m", "esrl.cli", "report", str(root), "--bandwidth-gbit", "10"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "report.json" in res.stdout and "10 Gbit/s hub" in (root / "report.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "esrl.cli", "report", str(root), "--bandwidth-gbit", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("esrl: error: bandwidth_gbit:")


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



# a simulated sweep of the same env and target to set beside the measured one: es overtakes a3c at 2 workers,
# dqn:lock is faster than es everywhere (no crossover within the grid)
TTT_SIM = {("es", 1): [4.0] * 3, ("es", 2): [2.0] * 3, ("es", 4): [1.0] * 3, ("a3c", 1): [3.0] * 3,
           ("a3c", 2): [2.5] * 3, ("a3c", 4): [2.0, None, 2.0], **{("dqn:lock", w): [0.5] * 3 for w in (1, 2, 4)}}


def fake_simulated_sweep(root: Path, **spec) -> Path:
    fake_sweep(root, TTT_SIM)
    (root / "sweep.json").write_text(json.dumps({**SPEC, "workers": [1, 2, 4], "backend": "simulated",
                                                 "sim": {"latency_s": 1e-4}, "settings": {"a3c": {"lr": 0.001}},
                                                 **spec}))
    return root


def test_report_beside_a_simulated_sweep(tmp_path):
    root, sim = fake_sweep(tmp_path / "m"), fake_simulated_sweep(tmp_path / "sim")
    out = report(root, beside=[sim])
    assert (root / "plots" / "beside.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (e,) = json.loads(Path(out["report_json"]).read_text())["beside"]  # strict JSON: inf as a string
    assert e["backend"] == "simulated" and e["this_backend"] == "processes" and e["clock"] == "virtual"
    assert e["differences"] == {"settings": [{}, {"a3c": {"lr": 0.001}}], "workers": [[1, 2], [1, 2, 4]]}
    es, a3c, dqn = (e["comparison"][a] for a in ("es", "a3c", "dqn:lock"))
    # es: medians 3 (2, 4, 3) and 1.5 measured, 4 and 2 virtual; 4 workers only beside
    assert [(p["workers"], p["this_median_s"], p["other_median_s"]) for p in es] == [(1, 3.0, 4.0), (2, 1.5, 2.0),
                                                                                      (4, None, 1.0)]
    assert [p["other_over_this"] for p in es] == [pytest.approx(4 / 3), pytest.approx(4 / 3), None]
    assert es[1]["this_speedup"] == pytest.approx(2.0) and es[2]["other_speedup"] == pytest.approx(4.0)
    # a3c at 2 workers: unsolved here (median inf, speedup 0), 2.5 beside: the ratio is 0
    assert a3c[0]["other_over_this"] == pytest.approx(0.5)
    assert a3c[1]["this_median_s"] == "inf" and a3c[1]["this_speedup"] == 0.0 and a3c[1]["other_over_this"] == 0.0
    assert a3c[1]["other_speedup"] == pytest.approx(1.2) and a3c[2]["other_speedup"] == pytest.approx(1.5)
    assert dqn[0]["other_over_this"] == pytest.approx(0.5 / 9)
    this, other = ({x["arms"][1]: x for x in e["crossovers"][k]} for k in ("this", "other"))
    assert this["a3c"]["workers"] == 1 and not this["a3c"]["overtakes"]  # es leads from 1 worker measured
    assert other["a3c"]["workers"] == 2 and other["a3c"]["overtakes"]  # a3c faster at 1 virtual, es from 2
    assert other["dqn:lock"]["workers"] is None and "no crossover within the grid" in other["dqn:lock"]["text"]
    md = Path(out["report_md"]).read_text()
    section = md.split(f"## Beside {sim} (simulated)\n")[1].split("\n## ")[0]
    assert "virtual seconds" in section and "workers: 1, 2 in this sweep, 1, 2, 4 beside" in section
    assert "| 1 | 3 | 1 | 4 | 1 | 1.33 |" in section and "| 2 | not solved | 0 | 2.5 | 1.2 | 0 |" in section
    assert "es overtakes a3c at 2 workers (a3c faster below)" in section
    assert "![beside](plots/beside.png)" in md and "<h3>dqn:lock</h3>" in Path(out["report_html"]).read_text()


@pytest.mark.parametrize("field", [{"env": "Acrobot-v1"}, {"target_return": 400.0}])
def test_beside_refuses_another_env_or_target(tmp_path, field):
    from esrl.errors import InputError

    root, sim = fake_sweep(tmp_path / "m"), fake_simulated_sweep(tmp_path / "sim", **field)
    with pytest.raises(InputError, match=r"^beside: .*not comparable"):
        report(root, beside=[sim])
    assert not (root / "report.md").exists()  # refused before anything was written


def test_report_cli_beside(tmp_path, capsys):
    from esrl.cli import main

    root, sim = fake_sweep(tmp_path / "m"), fake_simulated_sweep(tmp_path / "sim")
    other = fake_simulated_sweep(tmp_path / "other", env="Acrobot-v1")
    assert main(["report", str(root), "--beside", str(other)]) == 2
    assert capsys.readouterr().err.startswith("esrl: error: beside: ")
    assert main(["report", str(root), "--beside", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("esrl: error: beside: ")
    assert main(["report", str(root), "--beside", str(sim)]) == 0
    assert (root / "plots" / "beside.png").is_file()
    assert [e["dir"] for e in json.loads((root / "report.json").read_text())["beside"]] == [str(sim)]
