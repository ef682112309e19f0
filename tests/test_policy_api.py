"""A policy you can use: esrl.load(...).predict / evaluate for every algorithm, the best checkpoint,
`esrl evaluate --checkpoint`, and `esrl export` files that run with torch alone."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import esrl
from esrl import protocol
from esrl.cli import main
from esrl.config import A3CConfig, DQNConfig, DynaQConfig
from esrl.errors import InputError
from esrl.export import export
from esrl.train import train
from esrl.train_rl import train_rl
from tests.conftest import tiny_es, tiny_run


def rl_run(d: Path, **kw):
    return tiny_run(d, workers=1, max_iterations=2, eval_every_steps=40, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny run per algorithm (and ES on a Box action space), trained once for the module."""
    root = tmp_path_factory.mktemp("runs")
    out = {name: root / name for name in ("es", "es_box", "es_onehot", "a3c", "a3c_box", "dqn", "dynaq")}
    show = {"show_progress": False}
    train(tiny_run(out["es"], max_iterations=5, eval_every_steps=150), tiny_es(), **show)
    train(tiny_run(out["es_box"], env="Pendulum-v1", max_iterations=2, max_episode_steps=50, eval_every_steps=400),
          tiny_es(), **show)
    train(tiny_run(out["es_onehot"], env="FrozenLake-v1", max_iterations=2), tiny_es(), **show)
    a3c = A3CConfig(hidden=(16,), envs_per_worker=2, report_every=20)
    train_rl("a3c", rl_run(out["a3c"]), a3c, **show)
    train_rl("a3c", rl_run(out["a3c_box"], env="Pendulum-v1", max_episode_steps=50), a3c, **show)
    dqn = {"hidden": (16,), "batch_size": 8, "buffer_size": 200, "learning_starts": 16, "report_every": 20}
    train_rl("dqn", rl_run(out["dqn"]), DQNConfig(**dqn), **show)
    train_rl("dynaq", rl_run(out["dynaq"]), DynaQConfig(**dqn), **show)
    return out


def observations(policy: esrl.policy.Policy, n: int, seed: int = 0) -> np.ndarray:
    """Observations the run's env really produces (random actions), a batch (n, *obs_shape)."""
    env = policy.make_env()
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    out = []
    while len(out) < n:
        out.append(np.asarray(obs))
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    return np.stack(out)


@pytest.mark.parametrize("name", ["es", "es_box", "es_onehot", "a3c", "a3c_box", "dqn", "dynaq"])
def test_predict_one_observation_or_a_batch_like_stable_baselines3(runs, name):
    policy = esrl.load(runs[name])
    obs = observations(policy, 16)
    actions, state = policy.predict(obs, deterministic=True)
    assert state is None
    action, _ = policy.predict(obs[3], deterministic=True)
    env = policy.make_env()
    if policy.spec.discrete:
        assert actions.shape == (16,) and np.issubdtype(actions.dtype, np.integer)
        assert np.ndim(action) == 0 and action == actions[3]
    else:
        assert actions.shape == (16, policy.spec.act_dim)
        assert action.shape == (policy.spec.act_dim,)
        np.testing.assert_allclose(action, actions[3], rtol=1e-6)
        assert np.all(actions >= np.asarray(policy.spec.low)) and np.all(actions <= np.asarray(policy.spec.high))
    env.reset(seed=0)
    assert env.action_space.contains(action)  # SB3's `action, _ = model.predict(obs)` goes straight to env.step
    env.close()
    with pytest.raises(InputError, match="obs"):
        policy.predict(np.zeros((3, 7)))


def test_a3c_samples_its_stochastic_policy_when_not_deterministic(runs):
    policy = esrl.load(runs["a3c"])
    obs = np.repeat(observations(policy, 1), 400, axis=0)
    greedy, _ = policy.predict(obs, deterministic=True)
    sampled, _ = policy.predict(obs, deterministic=False)
    assert len(set(greedy.tolist())) == 1
    assert len(set(sampled.tolist())) == 2  # an untrained softmax over 2 actions: both are drawn


def test_best_checkpoint_holds_the_highest_evaluation(runs):
    d = runs["es"]
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    evals = [m["eval_return"] for m in lines if m.get("eval_return") is not None]
    assert len(evals) >= 3
    best = esrl.load(d, checkpoint="best")
    manifest = json.loads(best.manifest.read_text())
    k = manifest["meta"]["counters"]["evaluations"] - 1  # the evaluation that saved it
    run = best.run
    returns, _ = protocol.play_episodes(best.spec, best._act, protocol.eval_seeds(run.seed, k, run.eval_episodes))
    assert float(np.mean(returns)) == max(evals) == json.loads((d / "summary.json").read_text())["best_eval_return"]
    assert len(list((d / "best").glob("ckpt_*.json"))) <= 3


def test_checkpoint_by_name_or_number_and_refusals(runs):
    d = runs["es"]
    latest = esrl.load(d)
    assert latest.checkpoint == 5 and esrl.load(d, "latest").manifest == latest.manifest
    assert esrl.load(d, 4).checkpoint == 4 and esrl.load(d, "4").checkpoint == 4
    with pytest.raises(InputError, match="checkpoint") as exc:
        esrl.load(d, 999)
    assert "5" in str(exc.value)  # the numbers it has are listed
    with pytest.raises(InputError, match="checkpoint"):
        esrl.load(d, "newest")
    with pytest.raises(InputError, match="threshold"):
        esrl.load(d, "threshold")  # the target (1e9) was never reached


def test_evaluate_default_env_another_id_and_an_env_instance(runs):
    import gymnasium as gym

    policy = esrl.load(runs["es"], "best")
    a = policy.evaluate(3)
    assert a["episodes"] == 3 and len(a["returns"]) == 3
    assert a["mean_return"] == pytest.approx(np.mean(a["returns"])) and a["std_return"] == pytest.approx(
        np.std(a["returns"]))
    assert policy.evaluate(3, env="CartPole-v1") == a  # the same seeds, the same env
    env = gym.make("CartPole-v1")
    assert policy.evaluate(3, env=env)["returns"] == a["returns"]
    env.close()
    with pytest.raises(InputError, match="env"):
        policy.evaluate(1, env="Pendulum-v1")


def test_cli_evaluate_uses_the_same_loader(runs, capsys):
    d = runs["dqn"]
    assert main(["evaluate", str(d), "--episodes", "2", "--checkpoint", "best"]) == 0
    out = json.loads(capsys.readouterr().out)
    policy = esrl.load(d, "best")
    assert out["checkpoint"] == policy.checkpoint and out["checkpoint_path"] == str(policy.manifest)
    assert out["returns"] == policy.evaluate(2)["returns"]
    assert main(["evaluate", str(d), "--checkpoint", "nope"]) == 2
    assert "checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["es", "es_box", "es_onehot", "a3c", "a3c_box", "dqn"])
def test_exported_torchscript_acts_like_predict(runs, name, tmp_path):
    policy = esrl.load(runs[name], "best")
    out = export(runs[name], checkpoint="best", out=tmp_path / "p.pt")
    extra = {"esrl.json": ""}
    module = torch.jit.load(out["out"], _extra_files=extra)
    assert json.loads(extra["esrl.json"])["checkpoint"] == policy.checkpoint
    obs = observations(policy, 64, seed=1)
    expected, _ = policy.predict(obs)
    with torch.no_grad():
        got = module(torch.from_numpy(obs.astype(np.float32))).numpy()
    if policy.spec.discrete:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_exported_file_needs_no_esrl(runs, tmp_path):
    path = tmp_path / "cartpole.pt"
    assert main(["export", str(runs["es"]), "--out", str(path)]) == 0
    code = ("import sys, torch; m = torch.jit.load(sys.argv[1]); a = m(torch.zeros(3, 4)); "
            "assert a.shape == (3,) and not [k for k in sys.modules if k.startswith('esrl')]; print('ok')")
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "ok", res.stderr


def test_export_refuses_an_unknown_format_in_one_line(runs, capsys):
    assert main(["export", str(runs["es"]), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("esrl: error: format:") and err.count("\n") == 1


def test_import_esrl_loads_neither_torch_nor_ray():
    code = "import sys, esrl; assert callable(esrl.load); print(sorted({'torch', 'ray'} & set(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "[]", res.stderr


def test_a_run_without_evaluations_has_no_best(tmp_path):
    d = tmp_path / "r"
    train(dataclasses.replace(tiny_run(d, max_iterations=1)), tiny_es(), show_progress=False)
    assert (d / "best").is_dir()  # evaluation 0 happens at step 0 and is the first best
    (d / "best").rename(d / "gone")
    with pytest.raises(InputError, match="no best checkpoint"):
        esrl.load(d, "best")


@pytest.mark.parametrize("shape", [(4, 44, 44), (44, 44, 3)])
def test_exported_es_cnn_acts_like_the_policy(shape):
    from esrl.envs import EnvSpec
    from esrl.es.policies_cnn import ConvPolicy
    from esrl.export import _ESCNN

    gen = np.random.default_rng(0)
    spec = EnvSpec("Frames", int(np.prod(shape)), False, True, 6, None, None, 100, shape)
    pol = ConvPolicy(spec, reference=gen.integers(0, 256, (16, *shape), dtype=np.uint8))
    theta = pol.init(gen) + 0.05 * gen.standard_normal(pol.num_params).astype(np.float32)
    frames = gen.integers(0, 256, (8, *shape), dtype=np.uint8)
    prepared = pol.split(theta[None])
    expected = np.concatenate([pol.to_actions(pol.forward(prepared, pol.preprocess(frames[i : i + 1])))
                               for i in range(len(frames))])
    assert len(set(expected.tolist())) > 1  # the frames lead to different actions: a real comparison
    module = torch.jit.trace(_ESCNN(pol, theta).eval(), torch.zeros((2, *shape)))
    with torch.no_grad():
        np.testing.assert_array_equal(module(torch.from_numpy(frames)).numpy(), expected)
