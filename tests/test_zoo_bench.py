"""benchmarks/zoo.py: the measured zoo table. A dry run of one esrl row (through `esrl train` and its preset) and
one Stable-Baselines3 row on a temporary zoo, the restart that skips them, and the rendered table."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import zoo as zb  # noqa: E402

HAS_SB3 = importlib.util.find_spec("stable_baselines3") is not None


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    """A zoo of two presets: ES on CartPole (run below) and A3C on Acrobot (never run: "not run yet")."""
    z = tmp_path / "zoo"
    (z / "es").mkdir(parents=True)
    (z / "a3c").mkdir()
    (z / "envs.toml").write_text('["CartPole-v1"]\neval_every_steps = 5000\n')
    (z / "es" / "CartPole-v1.toml").write_text('env = "CartPole-v1"\npopulation = 32\n')
    (z / "a3c" / "Acrobot-v1.toml").write_text('env = "Acrobot-v1"\n')
    monkeypatch.setenv("ESRL_ZOO_DIR", str(z))
    return z


def _zoo(*args, timeout=150):
    return subprocess.run([sys.executable, str(BENCH / "zoo.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())


def test_dry_run_appends_one_line_per_run_resumes_and_renders(tiny_zoo, tmp_path):
    out, runs = tmp_path / "zoo.jsonl", tmp_path / "runs"
    rows = "es:CartPole-v1" + (",sb3-a2c:CartPole-v1" if HAS_SB3 else "")
    cmd = ["--dry-run", "--rows", rows, "--workers", "1", "--out", str(out), "--runs-dir", str(runs)]
    t0 = time.perf_counter()
    res = _zoo(*cmd)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert time.perf_counter() - t0 < 60
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["bench"] for x in lines] == ["zoo_meta"] + ["zoo"] * (2 if HAS_SB3 else 1)
    meta, es = lines[0], lines[1]
    assert meta["dry_run"] and meta["zoo_dir"] == str(tiny_zoo) and "load_avg_1m" in meta and meta["commit"]
    assert es["arm"] == "es" and es["env"] == "CartPole-v1" and es["seed"] == 0 and es["budget_s"] == 3.0
    assert es["command"].startswith("esrl train es --env CartPole-v1 --workers 1 --seed 0 --max-seconds 3 ")
    assert not es.get("error"), es.get("error")
    assert es["preset"] == str(tiny_zoo / "es" / "CartPole-v1.toml")  # the run went through the zoo's selection
    assert es["target"] == 475.0 and es["confirm_episodes"] in (0, 3) and isinstance(es["solved"], bool)
    for k in ("commit", "commit_time", "date", "load_avg_1m", "time_to_threshold_s", "env_steps_to_threshold",
              "best_eval_return", "final_eval_return", "confirmed"):
        assert k in es
    if HAS_SB3:
        sb3 = lines[2]
        assert sb3["arm"] == "sb3-a2c" and not sb3.get("error"), sb3.get("error")
        assert sb3["preset"] == "rl-baselines3-zoo hyperparams/a2c.yml CartPole-v1"
        assert sb3["zoo_setting"]["n_envs"] == 8 and sb3["target"] == 475.0
        assert sb3["command"].startswith("python benchmarks/sb3_baseline.py a2c CartPole-v1 --seed 0 ")

    # a restarted slice skips what its file holds
    again = _zoo(*cmd)
    assert again.returncode == 0 and "skip es:CartPole-v1 seed 0" in again.stderr
    assert len(out.read_text().splitlines()) == len(lines)

    doc = tmp_path / "zoo.md"
    doc.write_text(f"# t\n\n{zb.BEGIN}\nold\n{zb.END}\nafter\n")
    res = _zoo("render", str(out), "--doc", str(doc))
    assert res.returncode == 0, res.stderr[-3000:]
    text = doc.read_text()
    assert "\nold\n" not in text and text.endswith(f"{zb.END}\nafter\n")
    table = {(ln.split(" | ")[0][2:], ln.split(" | ")[2]): ln for ln in text.splitlines() if ln.startswith("| ")}
    es_row = table[("CartPole-v1", "esrl es")]
    assert "| CartPole-v1 | classic control | esrl es | 475 | " in es_row
    assert "(dry run)" in es_row and es["commit"] in es_row
    assert "not run yet: `python benchmarks/zoo.py --rows a3c:Acrobot-v1" in table[("Acrobot-v1", "esrl a3c")]
    assert "| -100 |" in table[("Acrobot-v1", "esrl a3c")]
    if HAS_SB3:
        assert "1 process, 8 envs (dry run)" in table[("CartPole-v1", "sb3 a2c")]
        assert "not run yet" in table[("CartPole-v1", "sb3 ppo")] and "not run yet" in table[("Acrobot-v1", "sb3 dqn")]


def _line(seed=0, commit="a", commit_time=1, dry=False, **kw):
    base = {"bench": "zoo", "arm": "es", "framework": "esrl", "algo": "es", "env": "CartPole-v1", "seed": seed,
            "budget_s": 300.0, "workers": 2, "dry_run": dry, "commit": commit, "commit_time": commit_time,
            "date": "2026-11-27", "load_avg_1m": 1.0, "target": 475.0, "solved": True, "confirmed": True,
            "time_to_threshold_s": 10.0, "env_steps_to_threshold": 1000, "best_eval_return": 500.0,
            "final_eval_return": 500.0, "preset": "configs/zoo/es/CartPole-v1.toml"}
    return {**base, **kw}


def test_a_later_commit_replaces_a_result_and_a_rerun_at_the_same_commit_does_not(tiny_zoo):
    lines = [_line(0, "a", 1, time_to_threshold_s=10.0), _line(0, "a", 1, time_to_threshold_s=99.0),
             _line(1, "a", 1, confirmed=False, solved=True), _line(1, "b", 2, time_to_threshold_s=20.0),
             _line(2, "b", 2, time_to_threshold_s=30.0), _line(2, "c", 3, dry=True, time_to_threshold_s=0.1),
             _line(2, "a", 1, error="exit code 1")]
    chosen = zb.latest(lines)[("es", "CartPole-v1")]
    assert chosen[0]["time_to_threshold_s"] == 10.0  # same commit: the first stays
    assert chosen[1]["commit"] == "b"  # a later commit replaces
    assert chosen[2]["commit"] == "b" and not chosen[2]["dry_run"]  # a dry run never replaces a measurement
    table = zb.render_table(lines, [zb.Row("es", "CartPole-v1"), zb.Row("a3c", "Acrobot-v1")])
    es_rows = [ln for ln in table.splitlines() if "| esrl es |" in ln]
    assert len(es_rows) == 1  # one row per (algorithm, env): never two that contradict
    row = es_rows[0]
    assert "| 3/3 |" in row and "20.0 s (10.0–30.0)" in row and "a (1), b (2)" in row
    assert "esrl es** solved 1 of the 1 envs" in table and "not run yet" in table


def test_unconfirmed_and_failed_runs_are_counted_and_atari_reports_the_return(tiny_zoo):
    lines = [_line(0, confirmed=False), _line(1, error="timed out after 1800 s"), _line(2),
             _line(0, env="ALE/Pong-v5", target=None, solved=False, confirmed=None, best_eval_return=-5.0,
                   final_eval_return=-7.0, budget_s=3600.0)]
    table = zb.render_table(lines, [])
    row = next(ln for ln in table.splitlines() if ln.startswith("| CartPole-v1"))
    assert "| 1/3 (1 more reached the target but failed the confirmation; 1 crashed or timed out) |" in row
    pong = next(ln for ln in table.splitlines() if ln.startswith("| ALE/Pong-v5"))
    assert "n/a: return reached" in pong and "-5.0 / -7.0" in pong and "none (return reached)" in pong


def test_rows_and_classes_are_checked(tiny_zoo):
    assert zb.parse_rows("es:Pendulum-v1,sb3-ppo:ALE/Pong-v5") == [zb.Row("es", "Pendulum-v1"),
                                                                      zb.Row("sb3-ppo", "ALE/Pong-v5")]
    with pytest.raises(SystemExit, match="unknown algorithm"):
        zb.parse_rows("ppo:Pendulum-v1")
    with pytest.raises(SystemExit, match="no dqn setting"):
        zb.parse_rows("sb3-dqn:Pendulum-v1")
    assert [zb.env_class(e) for e in ("Acrobot-v1", "LunarLander-v3", "Hopper-v5", "ALE/Pong-v5")] == \
        ["classic", "box2d", "mujoco", "atari"]
    assert zb.Row("es", "Hopper-v5").seeds() == 3 and zb.Row("sb3-ppo", "Hopper-v5").seeds() == 2
    planned = zb.planned_rows()
    assert zb.Row("es", "CartPole-v1") in planned and zb.Row("a3c", "Acrobot-v1") in planned
    assert zb.Row("sb3-dqn", "Acrobot-v1") in planned and zb.Row("sb3-dqn", "Pendulum-v1") not in planned
