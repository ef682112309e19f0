"""The `esrl` command: smoke runs, config files, and bad input (one line, exit code 2, nothing lost)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import final_state

FAST = ["--population", "16", "--hidden", "8", "--max-iterations", "3", "--max-seconds", "0",
        "--eval-episodes", "2", "--noise-table-size", "65536", "--quiet"]


def esrl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esrl.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def assert_input_error(res: subprocess.CompletedProcess, field: str) -> None:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"esrl: error: {field}:"), lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    res = esrl("train", "es", "--env", "CartPole-v1", "--workers", "2", "--seed", "0", "--target-return", "1e9", *FAST,
               "--run-dir", str(run))
    assert res.returncode == 0, res.stderr
    return run


def test_train_writes_the_run_directory(trained):
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["algorithm"] == "es" and cfg["run"]["workers"] == 2 and cfg["es"]["hidden"] == [8]
    lines = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [0, 1, 2]
    for key in ("wall_s", "env_steps", "episodes", "return_mean", "return_max", "return_min", "eval_return",
                "unperturbed_rank", "update_norm", "step_cap", "bytes_sent", "bytes_received", "compute_s",
                "wait_s", "live_workers"):
        assert key in lines[-1], key
    assert lines[-1]["live_workers"] == 2
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["iterations"] == 3 and summary["solved"] is False and summary["time_to_threshold_s"] is None
    assert summary["env_steps"] == lines[-1]["env_steps"] > 0
    manifest = json.loads(sorted((trained / "checkpoints").glob("*.json"))[-1].read_text())
    assert manifest["algorithm"] == "es" and manifest["format_version"] == 1 and len(manifest["sha256"]) == 64
    assert manifest["shapes"]["theta"] == list(final_state(trained)["theta"].shape)


def test_evaluate_and_video(trained, tmp_path):
    video = tmp_path / "ep.mp4"
    res = esrl("evaluate", str(trained), "--episodes", "2", "--video", str(video))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["episodes"] == 2 and len(out["returns"]) == 2
    import imageio.v3 as iio

    frames = iio.imread(video)
    assert frames.shape[0] == sum(out["lengths"]) and frames.shape[-1] == 3


def test_solves_cartpole_and_records_time_to_threshold(tmp_path):
    run = tmp_path / "solve"
    res = esrl("train", "es", "--env", "CartPole-v1", "--workers", "2", "--seed", "0", "--target-return", "475",
               "--max-seconds", "60", "--run-dir", str(run), "--quiet")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["solved"] and summary["final_eval_return"] >= 475
    assert 0 < summary["time_to_threshold_s"] <= summary["training_s"] <= summary["wall_s"]
    # the solve is confirmed (or not) on 100 fresh episodes of the parameters that first reached the target
    assert summary["confirm_episodes"] == 100 and summary["confirmed"] is (summary["confirmed_return"] >= 475)
    ev = json.loads(esrl("evaluate", str(run), "--episodes", "100").stdout)
    assert abs(ev["mean_return"] - summary["confirmed_return"]) < 60  # the saved policy is the one confirmed


def test_config_file_with_command_line_override(tmp_path):
    cfg = tmp_path / "es.toml"
    cfg.write_text('env = "Acrobot-v1"\nsigma = 0.05\nhidden = [4]\nseed = 9\n')
    run = tmp_path / "r"
    res = esrl("train", "es", "--config", str(cfg), "--sigma", "0.07", *FAST, "--run-dir", str(run), "--backend",
               "serial")
    assert res.returncode == 0, res.stderr
    stored = json.loads((run / "config.json").read_text())
    assert stored["run"]["env"] == "Acrobot-v1" and stored["run"]["seed"] == 9
    assert stored["es"]["sigma"] == 0.07 and stored["es"]["hidden"] == [8]  # the command line wins


def test_yaml_config(tmp_path):
    cfg = tmp_path / "es.yaml"
    cfg.write_text("sigma: 0.03\nbackend: serial\n")
    res = esrl("train", "es", "--config", str(cfg), *FAST, "--run-dir", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "r" / "config.json").read_text())["es"]["sigma"] == 0.03


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--env", "NoSuchEnv-v0"], "env"),
        (["--sigma", "0"], "sigma"),
        (["--sigma", "-1"], "sigma"),
        (["--population", "1"], "population"),
        (["--population", "15"], "population"),
        (["--workers", "-1"], "workers"),
        (["--obs-norm-fraction", "2"], "obs_norm_fraction"),
        (["--policy", "cnn"], "policy"),
        (["--policy", "rnn"], "policy"),
        (["--episodic-life"], "episodic_life"),
        (["--max-episode-steps", "-3"], "max_episode_steps"),
        (["--vbn-batch", "-1"], "vbn_batch"),
        (["--cnn-dtype", "float16"], "cnn_dtype"),
    ],
)
def test_bad_settings(tmp_path, args, field):
    res = esrl("train", "es", *FAST, *args, "--run-dir", str(tmp_path / "r"))
    assert_input_error(res, field)
    assert not (tmp_path / "r").exists()


def test_bad_config_file_keys(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("sigmaa = 0.1\n")
    assert_input_error(esrl("train", "es", "--config", str(cfg), "--run-dir", str(tmp_path / "r")), "sigmaa")
    cfg.write_text("sigma = 'big'\n")
    assert_input_error(esrl("train", "es", "--config", str(cfg), "--run-dir", str(tmp_path / "r")), "sigma")
    assert_input_error(esrl("train", "es", "--config", str(tmp_path / "none.toml")), "config")


def test_existing_run_dir_is_not_touched(trained):
    before = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()}
    assert_input_error(esrl("train", "es", *FAST, "--run-dir", str(trained)), "run_dir")
    assert {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()} == before


def test_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_input_error(esrl("train", "es", *FAST, "--run-dir", str(blocker / "run")), "run_dir")
    assert_input_error(esrl("train", "es", *FAST, "--run-dir", str(blocker)), "run_dir")
    assert blocker.read_text() == "x"


def test_overwrite_replaces_a_run(tmp_path):
    run = tmp_path / "r"
    assert esrl("train", "es", *FAST, "--backend", "serial", "--run-dir", str(run)).returncode == 0
    (run / "stale").write_text("old")
    assert esrl("train", "es", *FAST, "--backend", "serial", "--run-dir", str(run), "--overwrite").returncode == 0
    assert not (run / "stale").exists() and (run / "summary.json").exists()


def test_missing_algo_and_bad_episodes(trained):
    assert_input_error(esrl("train"), "algo")
    assert_input_error(esrl("evaluate", str(trained), "--episodes", "0"), "episodes")
    assert_input_error(esrl("evaluate", str(trained.parent / "nope")), "run_dir")


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    """Without ale-py (or mujoco, Box2D) an env of that family names the extra that brings it."""
    import builtins

    import gymnasium as gym

    from esrl import envs
    from esrl.errors import InputError

    real_import = builtins.__import__

    def no_box2d(name, *args, **kwargs):
        if name == "Box2D" or name.startswith("Box2D."):
            raise ImportError("No module named 'Box2D'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_box2d)
    for mod in [m for m in list(sys.modules) if m.startswith(("Box2D", "gymnasium.envs.box2d"))]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(InputError) as err:
        envs.make("LunarLander-v3")
    assert str(err.value).startswith("env:") and "esrl[box2d]" in str(err.value) and "\n" not in str(err.value)
    assert envs.extra_for("ALE/Pong-v5") == "atari" and envs.extra_for("HalfCheetah-v5") == "mujoco"
    assert envs.extra_for("CartPole-v1") is None and gym.spec("LunarLander-v3") is not None
