"""benchmarks/study.py: the study's points are ordinary simulated runs sharing one cost model per arm, and the
rendered tables say what the points hold (medians over seeds, an unconfirmed run counted as never)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import study  # noqa: E402


def test_medians_count_an_unconfirmed_run_as_never_and_saturation_reads_the_curve():
    runs = [{"confirmed": True, "time_to_threshold_s": 1.0}, {"confirmed": None, "time_to_threshold_s": None},
            {"confirmed": True, "time_to_threshold_s": 3.0}]
    assert study._ttt(runs) == 3.0  # median of 1, 3, never
    assert study._ttt(runs[:2]) is None  # half never: the median is never
    assert study.saturation([(1, 1.0), (4, 3.9), (16, 15.0), (64, 16.0), (256, 17.0)]) == 16
    assert study.saturation([(1, 1.0), (4, 3.0), (16, 9.0)]) is None


def test_points_share_the_first_points_cost_model_and_render(tmp_path):
    out, runs = tmp_path / "study.jsonl", tmp_path / "runs"
    subprocess.run([sys.executable, str(BENCH / "study.py"), "--envs", "CartPole-v1", "--arms", "es",
                    "--workers", "1,4", "--nets", "10", "--out", str(out), "--runs-dir", str(runs)],
                   check=True, capture_output=True, text=True, timeout=300)
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["workers"], r["bandwidth_gbit"], r["clock"]) for r in recs] == [(1, 10.0, "virtual"), (4, 10.0, "virtual")]
    assert "--sim-costs" not in recs[0]["command"]  # the first point calibrates
    assert f"--sim-costs {runs / 'CartPole-v1-es-w1-10gbit-s0' / 'config.json'}" in recs[1]["command"]
    models = [json.loads((Path(r["run_dir"]) / "config.json").read_text())["resolved"]["cost_model"] for r in recs]
    assert {k: v for k, v in models[0].items() if k != "source"} == {k: v for k, v in models[1].items() if k != "source"}
    assert all(r["confirmed"] and r["population"] == 48 and r["commit"] for r in recs)

    doc = tmp_path / "study.md"
    doc.write_text(f"# x\n\n{study.BEGIN}\nSTALE-TABLE\n{study.END}\n\ntail\n")
    study.render(recs, doc)
    text = doc.read_text()
    assert "STALE-TABLE" not in text and text.endswith("tail\n") and "### CartPole-v1, 10 Gbit/s" in text
    t1, t4 = (r["time_to_threshold_s"] for r in recs)
    assert f"| 1 | 48 | 1/1 | {study._fmt(t1)} s | 1 |" in text
    assert f"| 4 | 48 | 1/1 | {study._fmt(t4)} s | {study._fmt(t1 / t4)} |" in text
    assert "Not run yet" in text  # the envs without points say so, with their command
