"""The accelerator machine's suite (benchmarks/device_suite.py): its dry run on the CPU, its plan, caps and bootstrap.

The machine is lent rarely and for minutes; these tests keep the suite from rotting in between.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import device_suite as ds  # noqa: E402

SECTIONS = ["preflight", "es_throughput", "es_time_to_threshold", "rl_device", "scaling_cartpole", "scaling_acrobot"]


def test_dry_run_writes_every_section_and_the_summary(tmp_path):
    out = tmp_path / "dev"
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, str(BENCH / "device_suite.py"), "--dry-run", "--out", str(out)],
                         capture_output=True, text=True, timeout=170)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert elapsed < 120, f"the dry run took {elapsed:.0f} s"
    # the full run's plan, with an expected time per part, is printed before any part starts
    first_part = res.stdout.index("part preflight: starting")
    planned = res.stdout.index("full run on the device machine")
    assert planned < first_part
    for name in SECTIONS:
        assert f"  {name} " in res.stdout[planned:first_part]
    for name in SECTIONS:
        s = json.loads((out / "sections" / f"{name}.json").read_text())
        assert s["status"] in ("measured", "skipped"), (name, s["status"], s["reason"])
        if s["status"] == "skipped":
            assert s["reason"], name
        assert not s["timed_out"] and s["cap_s"] <= ds.PART_CAP_LIMIT_S, name
    sec = {n: json.loads((out / "sections" / f"{n}.json").read_text()) for n in SECTIONS}
    assert sec["preflight"]["status"] == "measured"
    facts = next(r for r in sec["preflight"]["records"] if r["kind"] == "facts")
    assert facts["refused_imports"] == ["ray", "mujoco", "ale_py", "simpy"]  # esrl imported without them
    cuda = facts["cuda"]
    for name in ("es_throughput", "es_time_to_threshold", "rl_device"):
        assert sec[name]["status"] == ("measured" if cuda else "skipped")
        if not cuda:
            assert "CUDA" in sec[name]["reason"]
    # the same code ran: the torch rollout at tiny populations, the numpy path to the threshold, the RL arms
    assert {r["env"] for r in sec["es_throughput"]["records"] if r["kind"] == "throughput"
            and r["status"] == "measured"} == {"CartPole-v1", "Acrobot-v1", "Pendulum-v1"}
    fused = [r for r in sec["es_throughput"]["records"] if r.get("engine") == "fused" and r["status"] == "measured"]
    if importlib.util.find_spec("triton"):  # the fused kernel ran (in Triton's interpreter on the CPU), timed alone too
        assert fused and all(r["env"] == "CartPole-v1" and r["kernel_steps_per_s"] > 0 for r in fused)
    assert any(r["status"] == "measured" and r["device"] == "cpu" for r in sec["es_time_to_threshold"]["records"])
    assert {r["arm"] for r in sec["rl_device"]["records"] if r["status"] == "measured"} == {
        "a3c:ga3c", "dqn:device", "a3c:hogwild", "dqn:hogwild"}
    for name in ("scaling_cartpole", "scaling_acrobot"):
        assert sec[name]["status"] == "measured"
        sweep = next(r for r in sec[name]["records"] if r["kind"] == "sweep")
        assert sweep["runs_finished"] == sweep["runs_planned"] == 10 and sweep["report_md"]
        assert (out / sweep["report_md"]).is_file()
        rows = [r for r in sec[name]["records"] if r["kind"] == "scaling_row"]
        assert {(r["arm"], r["workers"]) for r in rows} == {(a, w) for a in ds.SCALING_ARMS for w in (1, 2)}
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {x["section"] for x in lines} == set(SECTIONS)
    md = (out / "summary.md").read_text()
    for name in SECTIONS:
        assert f"## {name}" in md


def test_the_full_plan_fits_eight_minutes_with_no_part_over_three():
    parts = ds.plan(False, ds.DEVICE_FACTS)
    assert [p["name"] for p in parts] == SECTIONS
    assert all(p["cap_s"] <= ds.PART_CAP_LIMIT_S and 0 < p["expected_s"] <= p["cap_s"] for p in parts)
    assert ds.BOOTSTRAP_CAP_S + sum(p["cap_s"] for p in parts) < ds.TOTAL_LIMIT_S
    by = {p["name"]: p for p in parts}
    assert by["es_throughput"]["params"]["populations"] == [4096, 16384, 65536, 262144, 1048576]
    assert by["es_throughput"]["params"]["fused_populations"][-1] >= 1 << 24
    assert by["rl_device"]["params"]["workers"] == 14
    assert by["scaling_cartpole"]["params"]["workers"] == [1, 2, 4, 8, 14]
    assert by["es_time_to_threshold"]["params"]["seeds"] == 5
    for p in parts[2:]:  # what a budget cut is said, not hidden
        assert any("runs stop at" in c for c in p["cuts"])
    small = {p["name"]: p for p in ds.plan(False, {"cuda": False, "cores": 8})}
    assert small["scaling_acrobot"]["params"]["workers"] == [1, 2, 4]
    assert small["rl_device"]["params"]["workers"] == 6
    assert any("8 cores" in c for c in small["scaling_acrobot"]["cuts"])


def test_fit_budget_takes_the_longest_useful_budget_then_the_seeds_that_fit():
    assert ds.fit_budget([1.0, 1.0], 3, 100.0, 0.5) == (3, 3.0, 9.0)  # the shortest budget is enough
    assert ds.fit_budget([4.0, 12.0], 3, 60.0, 1.0) == (3, 20.0, 54.0)  # at most twice the slowest estimate
    assert ds.fit_budget([50.0, 50.0], 3, 40.0, 1.0) == (1, 15.0, 32.0)  # one seed must fit
    assert ds.fit_budget([50.0] * 40, 3, 10.0, 1.0) == (1, ds.BUDGETS[-1], 160.0)  # nothing fits: the cap cuts


def test_a_part_past_its_cap_is_stopped_with_its_processes_and_keeps_its_records(tmp_path):
    rec = tmp_path / "part.jsonl"
    pid_file = tmp_path / "child.pid"
    code = (f"import json, subprocess, time; open({str(rec)!r}, 'a').write(json.dumps({{'status': 'measured'}}) + '\\n');"
            f"p = subprocess.Popen(['sleep', '60']); open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    t0 = time.perf_counter()
    ran = ds.run_part([sys.executable, "-c", code], 3.0, tmp_path / "log")
    assert ran["timed_out"] and time.perf_counter() - t0 < 8
    child = int(pid_file.read_text())
    time.sleep(0.2)
    assert not _running(child)  # the part's own processes went with it
    part = {"name": "x", "title": "x", "cap_s": 3.0, "expected_s": 1.0, "params": {}, "cuts": []}
    s = ds.section(part, ran, ds.read_lines(rec))
    assert s["timed_out"] and s["status"] == "measured" and len(s["records"]) == 1


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed child whose parent died may wait a moment to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _wheel(d: Path, name: str = "esrl_devtest_pkg") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    w = d / f"{name}-0.1-py3-none-any.whl"
    info = f"{name}-0.1.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{k},,\n" for k in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(w, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
    return w


@pytest.mark.parametrize("pip_works", [True, False])
def test_bootstrap_installs_the_bundled_wheels_where_a_module_is_missing(tmp_path, monkeypatch, pip_works):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    _wheel(tmp_path / "wheels")
    with monkeypatch.context() as m:
        if not pip_works:  # no pip on the machine: pure wheels are unzipped
            m.setattr(ds.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "No module named pip"))
        info, env = ds.bootstrap(tmp_path / "wheels", need=("esrl_devtest_pkg",), site=tmp_path / "site")
    assert info["missing"] == ["esrl_devtest_pkg"]
    assert info["method"].startswith("pip" if pip_works else "unzipped")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path / "site"), str(ds.SRC)]
    out = subprocess.run([sys.executable, "-c", "import esrl_devtest_pkg, esrl; print(esrl_devtest_pkg.VALUE)"],
                         env=env, capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "42"


def test_bootstrap_without_wheels_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="make device-bundle"):
        ds.bootstrap(tmp_path / "none", need=("esrl_devtest_missing",))
    info, _ = ds.bootstrap(tmp_path / "none", need=("json",))  # nothing missing: nothing installed
    assert info["method"] is None and info["missing"] == []
