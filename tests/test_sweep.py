"""Sweeps: arms (algo[:sync]), combinations refused before anything starts, the resolved target, resuming."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esrl.errors import InputError
from esrl.experiments.sweep import SweepSpec, _same_sweep, finished, parse_arm, run_name


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esrl.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_arms_parse_and_name_run_directories():
    assert parse_arm("es") == ("es", None)
    assert parse_arm("dqn:lock") == ("dqn", "lock")
    assert parse_arm("a3c:param-server") == ("a3c", "param-server")
    assert parse_arm("a3c:ga3c") == ("a3c", "ga3c")
    assert run_name("dqn:lock", 2, 0) == "dqn-lock-w2-s0"
    assert run_name("dqn:param-server", 4, 1) == "dqn-param-server-w4-s1"
    assert run_name("es", 1, 0) == "es-w1-s0"  # sweeps from before arms keep their directories


@pytest.mark.parametrize("arm, words", [("ppo", "unknown algorithm"), ("es:lock", "no sync"),
                                        ("dqn:bogus", "unknown sync"), ("dynaq:device", "unknown sync"),
                                        ("a3c:device", "unknown sync"), ("", "arm name")])
def test_bad_arms_are_one_line_errors_naming_algos(arm, words):
    with pytest.raises(InputError, match=r"^algos: ") as exc:
        parse_arm(arm)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_arm_settings_by_algorithm_and_by_arm():
    spec = SweepSpec(algos=["dqn:lock", "dqn:hogwild", "es"],
                     settings={"dqn": {"lr": 1e-3}, "dqn:lock": {"batch_size": 32}, "es": {"population": 16}})
    lock, hog = spec.arm_config("dqn:lock"), spec.arm_config("dqn:hogwild")
    assert (lock.sync, lock.lr, lock.batch_size) == ("lock", 1e-3, 32)
    assert (hog.sync, hog.lr, hog.batch_size) == ("hogwild", 1e-3, 64)
    assert spec.arm_config("es").population == 16
    with pytest.raises(InputError, match=r"^settings: "):
        SweepSpec(algos=["dqn:lock"], settings={"dqn": {"sync": "hogwild"}}).arm_config("dqn:lock")
    with pytest.raises(InputError, match=r"^settings: "):
        SweepSpec(algos=["dqn:lock"], settings={"a3c": {}}).validate()
    with pytest.raises(InputError, match=r"^algos: .*twice"):
        SweepSpec(algos=["es", "es"]).validate()


def test_population_per_worker_grows_es_populations_only():
    spec = SweepSpec(algos=["es", "a3c"], workers=[1, 16, 64], population_per_worker=2,
                     settings={"es": {"population": 48}}, preset="none")
    spec.validate()
    assert [spec.arm_config("es", w).population for w in (1, 16, 64)] == [48, 48, 128]
    assert not hasattr(spec.arm_config("a3c", 64), "population")
    assert SweepSpec(algos=["es"], settings={"es": {"population": 48}}).arm_config("es", 64).population == 48
    for bad in (-2, 3, True, "2"):
        with pytest.raises(InputError, match=r"^population_per_worker: "):
            SweepSpec(algos=["es"], population_per_worker=bad).validate()


def test_combinations_are_checked_before_anything_starts():
    with pytest.raises(InputError, match=r"^backend: "):
        SweepSpec(algos=["dqn"], backend="vectorized").validate()  # vectorized is ES-only
    with pytest.raises(InputError, match=r"^sync: "):
        SweepSpec(algos=["es", "dqn:lock"], backend="ray").validate()  # Ray needs param-server for RL
    SweepSpec(algos=["es", "dqn:param-server"], backend="ray", address="auto").validate()
    SweepSpec(algos=["es"], backend="vectorized", device="cpu").validate()
    with pytest.raises(InputError, match=r"^backend: "):
        SweepSpec(algos=["es"], backend="gpu").validate()
    with pytest.raises(InputError, match=r"^target_return: "):
        SweepSpec(algos=["es"], target_return="500").validate()


def test_run_config_passes_backend_address_and_device_through():
    run = SweepSpec(algos=["es"], backend="ray", address="10.0.0.1:6379", device="cpu").run_config(4, 2, Path("r"))
    assert (run.backend, run.address, run.device, run.workers, run.seed) == ("ray", "10.0.0.1:6379", "cpu", 4, 2)


def test_target_is_resolved_from_the_env():
    spec = SweepSpec(algos=["es"])
    spec.resolve_target()
    assert spec.target_return == 475.0 and spec.run_config(1, 0, Path("x")).target_return == 475.0
    given = SweepSpec(algos=["es"], target_return=100)
    given.resolve_target()
    assert given.target_return == 100.0
    with pytest.raises(InputError, match=r"^target_return: .*reward_threshold"):
        SweepSpec(algos=["es"], env="Pendulum-v1", preset="none").resolve_target()  # the zoo gives it -200


def test_old_sweep_json_still_resumes():
    wanted = {"algos": ["es"], "env": "CartPole-v1", "workers": [1, 2], "seeds": 2, "backend": "processes",
              "address": "", "device": "auto", "target_return": 475.0, "max_seconds": 60.0, "settings": {}}
    old = {k: v for k, v in wanted.items() if k not in ("address", "device")} | {"target_return": None}
    assert _same_sweep(old, wanted)
    assert not _same_sweep({**old, "seeds": 3}, wanted)
    assert not _same_sweep({**wanted, "device": "cpu"}, wanted)


def test_sweep_bad_input(tmp_path):
    res = _cli("sweep", "--algos", "es,ppo", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and res.stderr.startswith("esrl: error: algos:")
    res = _cli("sweep", "--algos", "es,dqn:bogus", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and res.stderr.startswith("esrl: error: algos:") and "bogus" in res.stderr
    res = _cli("sweep", "--algos", "a3c:lock", "--backend", "vectorized", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and res.stderr.startswith("esrl: error: backend:")
    assert not (tmp_path / "x").exists()


def test_sweep_settings_are_validated_before_any_run(tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("algos: [es, a3c]\nsettings:\n  es: {population: 15}\n")
    res = _cli("sweep", "--config", str(cfg), "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and res.stderr.startswith("esrl: error: population:"), res.stderr
    assert not (tmp_path / "x").exists()


def test_interrupted_runs_are_not_finished(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"stop_reason": "interrupted"}))
    assert not finished(d)
    (d / "summary.json").write_text(json.dumps({"stop_reason": "budget"}))
    assert finished(d)


def _count_summaries(out: Path) -> int:
    return len(list(out.glob("*/summary.json")))


def test_sweep_killed_and_resumed(tmp_path):
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
    recorded = json.loads((out / "sweep.json").read_text())
    assert recorded["target_return"] == 475.0 and recorded["algos"] == ["es"]  # resolved, never null
    machine = json.loads((out / "machine.json").read_text())["sessions"]
    assert len(machine) == 1 and {"cpu", "python", "torch", "commit"} <= set(machine[0])
    before = {p.name: (p / "summary.json").read_bytes() for p in out.iterdir() if (p / "summary.json").exists()}
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    records = json.loads(res.stdout)["runs"]
    assert sum(r["skipped"] for r in records) == done and len(records) == 4
    assert _count_summaries(out) == 4
    for name, data in before.items():  # finished runs were not run again
        assert (out / name / "summary.json").read_bytes() == data
    assert len(json.loads((out / "machine.json").read_text())["sessions"]) == 2
    changed = subprocess.run([*args[:-3], "--seeds", "3", "--out", str(out)], capture_output=True, text=True,
                             timeout=60)
    assert changed.returncode == 2 and changed.stderr.startswith("esrl: error: out:")
