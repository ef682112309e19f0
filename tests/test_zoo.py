"""The zoo's presets: every one loads, validates and runs two iterations; `esrl train` picks, records and yields."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from esrl import config, envs, zoo
from esrl.errors import InputError
from tests.test_cli import assert_input_error, esrl

ENTRIES = zoo.entries()
DISCRETE = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "LunarLander-v3", "ALE/Pong-v5")
ISSUE_ENVS = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Pendulum-v1",
              "LunarLander-v3", "LunarLanderContinuous-v3", "BipedalWalker-v3", "InvertedPendulum-v5", "Hopper-v5",
              "HalfCheetah-v5", "Walker2d-v5", "Swimmer-v5", "ALE/Pong-v5")


def test_the_zoo_covers_every_env_of_the_study():
    have = {(a, e) for a, e, _ in ENTRIES}
    for env_id in ISSUE_ENVS:
        assert ("es", env_id) in have and ("a3c", env_id) in have, env_id
    for env_id in DISCRETE:
        assert ("dqn", env_id) in have, env_id
    for env_id in DISCRETE[:-1]:  # Dyna-Q's world model predicts flat observations, not frames
        assert ("dynaq", env_id) in have, env_id
    for algo, env_id, path in ENTRIES:  # the file name follows the env id
        assert path.name == zoo.file_name(env_id) and path.parent.name == algo


def _smoke(algo: str, env_id: str, tmp: Path) -> tuple[config.RunConfig, object]:
    """The preset's config exactly as `esrl train` builds it, with budgets cut to two short iterations."""
    values, label = zoo.resolve(algo, {"env": env_id}, from_config_file=False)
    assert label.endswith(f"{algo}/{zoo.file_name(env_id)}")
    run_vals, algo_vals = config.split_settings(values, config.ALGORITHMS[algo])
    run = config.build(config.RunConfig, run_vals)
    cfg = config.build(config.ALGORITHMS[algo], algo_vals)
    run.validate()
    cfg.validate()
    if algo != "es":
        cfg = config.resolve_rl(algo, run, cfg, run.env_spec())
    spec = run.env_spec()
    config.check_combination(algo, run, cfg, spec.obs_onehot, spec)
    # what the smoke run changes: budgets, episode length and reporting, never the learning settings
    run = dataclasses.replace(run, backend="serial", workers=1, max_iterations=2, max_seconds=0,
                              max_episode_steps=40, eval_episodes=1, confirm_episodes=0, eval_every_steps=10**9, target_return=1e9,
                              run_dir=str(tmp / "run"), tensorboard=False)
    if algo != "es":
        smoke = {"report_every": 2}
        if hasattr(cfg, "learning_starts"):
            smoke["learning_starts"] = cfg.batch_size
            smoke["buffer_size"] = min(cfg.buffer_size, 1000)  # Pong's 100k frames take seconds to allocate
        cfg = dataclasses.replace(cfg, **smoke)
    elif cfg.policy != "mlp" and spec.image:
        cfg = dataclasses.replace(cfg, population=4, vbn_batch=8)  # the CNN at full population takes minutes
    return run, cfg


@pytest.mark.parametrize(("algo", "env_id"), [(a, e) for a, e, _ in ENTRIES], ids=[f"{a}-{e}" for a, e, _ in ENTRIES])
def test_every_preset_loads_validates_and_runs_two_iterations(algo, env_id, tmp_path):
    try:
        envs.spec_of(env_id)
    except InputError as exc:  # an env family whose extra is not installed
        pytest.skip(str(exc))
    run, cfg = _smoke(algo, env_id, tmp_path)
    if algo == "es":
        from esrl.train import train

        summary = train(run, cfg, show_progress=False)
    else:
        from esrl.train_rl import train_rl

        summary = train_rl(algo, run, cfg, show_progress=False)
    assert summary["iterations"] == 2 and summary["env_steps"] > 0


def test_train_picks_records_and_yields_to_options(tmp_path):
    run = tmp_path / "p"
    res = esrl("train", "es", "--env", "Pendulum-v1", "--max-iterations", "1", "--max-seconds", "0",
               "--max-episode-steps", "20", "--population", "8", "--noise-table-size", "65536", "--confirm-episodes",
               "0", "--no-tensorboard", "--run-dir", str(run))
    assert res.returncode == 0, res.stderr
    assert "settings from the zoo:" in res.stderr and "es/Pendulum-v1.toml" in res.stderr
    stored = json.loads((run / "config.json").read_text())
    assert stored["run"]["preset"].endswith("es/Pendulum-v1.toml")
    preset, _ = zoo.algo_preset("es", "Pendulum-v1")
    assert stored["es"]["population"] == 8 != preset["population"]  # the option given beats the preset's
    assert stored["es"]["hidden"] == list(preset["hidden"]) and stored["es"]["sigma"] == preset["sigma"]  # the rest
    # the env's measurement settings: the target Gymnasium lacks, the evaluation schedule
    assert stored["run"]["target_return"] == -200.0 and stored["run"]["eval_episodes"] == 30


def test_a_config_file_or_preset_none_leaves_the_zoo_out(tmp_path):
    cfg = tmp_path / "mine.toml"
    cfg.write_text('env = "Pendulum-v1"\ntarget_return = -1000.0\n')
    common = ["--max-iterations", "1", "--max-seconds", "0", "--max-episode-steps", "20", "--population", "8",
              "--noise-table-size", "65536", "--confirm-episodes", "0", "--no-tensorboard", "--quiet"]
    res = esrl("train", "es", "--config", str(cfg), *common, "--run-dir", str(tmp_path / "a"))
    assert res.returncode == 0, res.stderr
    stored = json.loads((tmp_path / "a" / "config.json").read_text())
    assert stored["run"]["preset"] == "none" and stored["es"]["hidden"] == [16]
    res = esrl("train", "es", "--env", "Pendulum-v1", "--preset", "none", "--target-return", "-1000", *common,
               "--run-dir", str(tmp_path / "b"))
    assert res.returncode == 0, res.stderr
    stored = json.loads((tmp_path / "b" / "config.json").read_text())
    assert stored["run"]["preset"] == "none" and stored["es"]["sigma"] == config.ESConfig.sigma


@pytest.mark.parametrize(("text", "field"), [
    ('env = "Pendulum-v1"\nsigma = 0.1\neval_episodes = 3\n', "eval_episodes"),  # the measurement is the env's
    ('env = "Acrobot-v1"\nsigma = 0.1\n', "preset"),  # tuned for another env
    ('env = "Pendulum-v1"\nalgorithm = "a3c"\n', "preset"),  # another algorithm's
    ('env = "Pendulum-v1"\nsigmaa = 0.1\n', "sigmaa"),
])
def test_a_bad_preset_file_is_one_line_naming_the_field(tmp_path, text, field):
    preset = tmp_path / "p.toml"
    preset.write_text(text)
    run = tmp_path / "r"
    run.mkdir()
    (run / "keep").write_text("x")
    res = esrl("train", "es", "--env", "Pendulum-v1", "--preset", str(preset), "--run-dir", str(run), "--overwrite")
    assert_input_error(res, field)
    assert (run / "keep").read_text() == "x"  # nothing on disk touched


def test_a_sweep_gives_each_arm_its_preset_and_every_arm_the_same_measurement():
    from esrl.experiments.sweep import SweepSpec

    spec = SweepSpec(algos=["es", "a3c"], env="Pendulum-v1", workers=[1])
    spec.validate()
    preset, _ = zoo.algo_preset("es", "Pendulum-v1")
    assert spec.arm_config("es").population == preset["population"] != config.ESConfig().population
    assert spec.arm_config("a3c").gamma == 0.9
    assert spec.arm_preset("es").endswith("es/Pendulum-v1.toml")
    run = spec.run_config(1, 0, Path("."))
    assert (run.target_return, run.eval_every_steps, run.eval_episodes) == (-200.0, 50_000, 30)
    bare = SweepSpec(algos=["es"], env="Pendulum-v1", workers=[1], preset="none")
    assert bare.arm_config("es").population == config.ESConfig.population
    assert bare.run_config(1, 0, Path(".")).target_return is None
