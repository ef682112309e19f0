"""Default hyperparameters solve CartPole-v1 and Acrobot-v1 in every seed (slow: `make test-slow`)."""

import pytest

from esrl.config import ESConfig, RunConfig
from esrl.train import train


@pytest.mark.slow
@pytest.mark.parametrize(("env", "target", "budget"), [("CartPole-v1", 475.0, 60.0), ("Acrobot-v1", -100.0, 120.0)])
@pytest.mark.parametrize("seed", range(5))
def test_default_es_solves(tmp_path, env, target, budget, seed):
    run = RunConfig(env=env, seed=seed, workers=2, target_return=target, max_seconds=budget,
                    run_dir=str(tmp_path / "r"))
    summary = train(run, ESConfig(), show_progress=False)
    assert summary["solved"], summary
    assert summary["final_eval_return"] >= target
