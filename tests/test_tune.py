"""`esrl tune`: tiny studies of ES on CartPole (a trial is a run of a second or two), resumed, pruned, refused."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

import pytest

optuna = pytest.importorskip("optuna")

from esrl import cli, config, zoo  # noqa: E402
from esrl.errors import InputError  # noqa: E402
from esrl.tune import (  # noqa: E402
    BUCKETS,
    SPACES,
    WARMUP_BUCKETS,
    Param,
    TuneSpec,
    _Reporter,
    markdown,
    progress,
    sample,
    score,
    tune,
)

# tiny trials: a population of 8-12 on a small net, evaluated every few iterations on 2 episodes
SPACE = (Param("population", 8, 12, why="tiny"), Param("sigma", 0.05, 0.2, log=True, why="tiny"),
         Param("lr", 0.02, 0.1, log=True, why="tiny"), Param("hidden", choices=("8", "8,8"), why="tiny"))
OVERRIDES = {"eval_every_steps": 300, "eval_episodes": 2, "confirm_episodes": 3, "noise_table_size": 1 << 16,
             "tensorboard": False}


def _spec(out: Path, **kw: Any) -> TuneSpec:
    base = {"env": "CartPole-v1", "trials": 2, "budget_s": 2.0, "workers": 1, "backend": "serial",
            "out": str(out)}
    return TuneSpec(**{**base, **kw})


def _study(out: Path) -> Any:
    return optuna.load_study(study_name="esrl-es-CartPole-v1", storage=f"sqlite:///{out.resolve()}/study.db")


def _lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]


def test_score_rule_by_hand():
    solved = {"solved": True, "confirmed": True, "time_to_threshold_s": 15.0, "target_return": 475.0}
    assert score(solved, 20.0, 60.0) == pytest.approx(1.75)
    # confirmation not asked (confirm_episodes 0): a solve still counts
    assert score({**solved, "confirmed": None}, 20.0, 60.0) == pytest.approx(1.75)
    # a failed confirmation scores as progress, at most 1: below every confirmed solve
    failed = {**solved, "confirmed": False, "best_eval_return": 490.0}
    assert score(failed, 20.0, 60.0) == 1.0
    assert score({"solved": False, "best_eval_return": 247.5, "target_return": 475.0}, 20.0, 60.0) == 0.5
    assert progress(-500.0, 20.0, 475.0) == -1.0  # clipped below
    assert progress(None, 20.0, 475.0) == -1.0 and progress(float("nan"), 20.0, 475.0) == -1.0


class _FakeTrial:
    def __init__(self, prune: bool) -> None:
        self.reports: dict[int, float] = {}
        self.prune = prune

    def report(self, value: float, step: int) -> None:
        assert step not in self.reports
        self.reports[step] = value

    def should_prune(self) -> bool:
        return self.prune


def test_reporter_fills_buckets_with_the_best_so_far():
    r = _Reporter(_FakeTrial(prune=True), 1, bucket_s=1.0, target=110.0)
    assert r({"eval_return": 10.0, "training_s": 0.5})  # evaluation 0, bucket 0: never pruned in the warm-up
    assert r({"eval_return": None, "training_s": 2.5})  # lines without an evaluation report nothing
    assert r({"eval_return": 60.0, "training_s": 3.2})
    assert not r({"eval_return": 30.0, "training_s": BUCKETS / 2})  # past the warm-up: the pruner decides
    r.finish()
    off = BUCKETS  # run 1 of a trial reports after run 0's steps
    got = r.trial.reports
    assert sorted(got) == list(range(off, off + BUCKETS))
    assert got[off] == 0.0 and got[off + 2] == 0.0 and got[off + 3] == 0.5 and got[off + BUCKETS - 1] == 0.5


def test_tune_runs_resumes_and_writes_a_preset(tmp_path, capsys):
    out = tmp_path / "tune"
    res = tune("es", _spec(out), space=SPACE, overrides=OVERRIDES)
    assert res["finished"] == 2 and res["best"] is not None
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000", "0001"]
    assert (out / "trials" / "0000" / "summary.json").is_file()
    lines = _lines(out)
    assert [x["state"] for x in lines] == ["complete", "complete"]
    for x in lines:
        assert set(x["params"]) == {"population", "sigma", "lr", "hidden"} and x["params"]["population"] % 2 == 0
        assert x["score"] is not None and x["runs"][0]["eval0"] is not None
    assert len(capsys.readouterr().err.strip().splitlines()) == 2  # one progress line per trial

    # best.toml is a preset: algo_preset accepts it, and the settings build and validate
    settings, _ = zoo.algo_preset("es", "CartPole-v1", out / "best.toml")
    cfg = config.build(config.ESConfig, settings)
    cfg.validate()
    best = max(lines, key=lambda x: x["score"])
    assert settings["population"] == best["params"]["population"] and settings["sigma"] == best["params"]["sigma"]
    assert f"trial {best['trial']}" in (out / "best.toml").read_text().splitlines()[0]

    # a trial that a kill left running is re-run first; --trials 3 means 3 finished in all, not 2 more
    study = _study(out)
    stale = study.ask()
    stale.suggest_int("population", 8, 12)
    stale.suggest_float("sigma", 0.05, 0.2, log=True)
    stale.suggest_float("lr", 0.02, 0.1, log=True)
    stale.suggest_categorical("hidden", ["8", "8,8"])
    res = tune("es", _spec(out, trials=3), space=SPACE, overrides=OVERRIDES, quiet=True)
    assert res["finished"] == 3
    trials = _study(out).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert trials[3].params == stale.params and trials[3].user_attrs["retry_of"] == 2
    assert len(_lines(out)) == 3
    assert tune("es", _spec(out, trials=3), space=SPACE, overrides=OVERRIDES, quiet=True)["finished"] == 3  # nothing to do

    # the study in OUT is kept: another algorithm or budget is refused, not run over it
    with pytest.raises(InputError, match=r"^out: .*holds the tune of es on CartPole-v1"):
        tune("a3c", TuneSpec("CartPole-v1", trials=1, budget_s=2.0, out=str(out)))
    with pytest.raises(InputError, match=r"^budget_s:"):
        tune("es", _spec(out, trials=4, budget_s=3.0), space=SPACE, overrides=OVERRIDES)
    with open(out / "tune.lock") as held:  # one tune at a time per study
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(InputError, match=r"^out: another esrl tune is running"):
            tune("es", _spec(out, trials=4), space=SPACE, overrides=OVERRIDES)


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: Any, trial: Any) -> bool:
        return True


def test_pruned_trials_stop_early_and_are_marked(tmp_path):
    out = tmp_path / "tune"
    # a target no run reaches: every trial runs until the pruner stops it, after the warm-up third
    res = tune("es", _spec(out, budget_s=1.5, target_return=1e9), space=SPACE, overrides=OVERRIDES,
               pruner=_AlwaysPrune(), quiet=True)
    assert res["finished"] == 2 and res["best"] is None and res["states"] == {"pruned": 2}
    assert not (out / "best.toml").exists()
    for x in _lines(out):
        assert x["state"] == "pruned"
        summary = json.loads(Path(x["runs"][0]["run_dir"], "summary.json").read_text())
        assert summary["stop_reason"] == "callback" and summary["training_s"] < 1.5
        assert x["pruned_at_s"] >= WARMUP_BUCKETS * 1.5 / BUCKETS  # never in the warm-up
    assert all(len(t.intermediate_values) >= 1 for t in _study(out).get_trials())


@pytest.mark.parametrize(("args", "field"), [
    (["--trials", "0"], "trials"), (["--budget-s", "0"], "budget_s"), (["--budget-s", "nan"], "budget_s"),
    (["--workers", "-1"], "workers"), (["--seeds", "0"], "seeds"), (["--trials", "x"], "trials"),
    (["--env", "Nope-v0"], "env"), (["--backend", "gpu"], "backend"),
])
def test_bad_input_is_one_line_and_exit_2_and_touches_nothing(tmp_path, capsys, args, field):
    out = tmp_path / "tune"
    assert cli.main(["tune", "es", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"esrl: error: {field}:"), err
    assert not out.exists()


def test_unknown_algo_and_a_foreign_out_are_refused(tmp_path, capsys):
    assert cli.main(["tune", "ppo", "--out", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.startswith("esrl: error: algo: unknown algorithm 'ppo'")
    assert cli.main(["tune"]) == 2
    assert capsys.readouterr().err.startswith("esrl: error: algo: missing")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "notes.txt").write_text("mine")
    assert cli.main(["tune", "es", "--out", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.startswith("esrl: error: out: ")
    assert [p.name for p in (tmp_path / "t").iterdir()] == ["notes.txt"]


def test_every_space_samples_settings_that_validate():
    """Every algorithm's documented ranges give a valid config at both ends (DQN's pairs are compatible)."""
    for algo in ("es", "a3c", "dqn", "dynaq"):
        assert markdown(algo).count("\n") == len(SPACES[algo]) + 1
        for end in (0, -1):
            study = optuna.create_study(sampler=_EndSampler(end))
            trial = study.ask()
            settings = sample(trial, SPACES[algo])
            if algo == "es" and settings["population"] % 2:
                settings["population"] += 1
            if algo == "es" and end == 0:
                assert settings["hidden"] == []  # the choice "linear": no hidden layer
            config.build(config.ALGORITHMS[algo], settings).validate()


class _EndSampler(optuna.samplers.RandomSampler):
    """Every parameter at its low (0) or high (-1) end, the first or last choice."""

    def __init__(self, end: int) -> None:
        super().__init__()
        self.end = end

    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            return dist.choices[self.end]
        return dist.low if self.end == 0 else dist.high


def test_cli_tune_smoke(tmp_path, capsys):
    """`esrl tune` end to end, with the documented ES space and the env's own measurement settings."""
    out = tmp_path / "tune"
    assert cli.main(["tune", "es", "--env", "CartPole-v1", "--trials", "1", "--budget-s", "2", "--workers", "1",
                     "--backend", "serial", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["finished"] == 1 and result["best"]["trial"] == 0
    assert captured.err.startswith("tune es CartPole-v1: trial 0 (1/1) score ")
    settings, _ = zoo.algo_preset("es", "CartPole-v1", result["best"]["best_toml"])
    config.build(config.ESConfig, settings).validate()
    assert json.loads((out / "trials" / "0000" / "config.json").read_text())["run"]["max_seconds"] == 2.0


def test_optuna_is_imported_only_by_a_tune():
    import subprocess
    import sys

    code = "import sys, esrl.cli, esrl.tune; print('optuna' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert res.stdout.strip() == "False"


def test_vectorized_tunes_leave_out_shared_seeds(tmp_path):
    """The vectorized backend refuses common_seeds, so its trials never sample it."""
    from esrl.tune import Tuner

    names = {p.name for p in Tuner("es", _spec(tmp_path / "t", backend="vectorized"), None, None, True).space}
    assert "common_seeds" not in names and "sigma" in names
    assert "common_seeds" in {p.name for p in Tuner("es", _spec(tmp_path / "u"), None, None, True).space}
    assert not (tmp_path / "t").exists()
