"""The RL settings decided per run: sync (auto follows the backend; an arrangement only by name),
observation normalization (one statistic for acting, evaluation and checkpoints) and reward clipping."""

import dataclasses
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from esrl import envs
from esrl.cli import main
from esrl.config import A3CConfig, DQNConfig, DynaQConfig, RunConfig, check_combination, resolve_rl
from esrl.errors import InputError
from esrl.obstat import CLIP, ObsStat
from esrl.rl import a3c, nets
from esrl.rl.a3c import A3CSetup
from esrl.rl.dqn import DQNSetup
from esrl.runs import checkpoint
from esrl.train_rl import train_rl


class BigRewardCartPole(CartPoleEnv):
    """CartPole paying 10 per step: clipped, a learner sees 1."""

    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        return obs, 10.0 * r, term, trunc, info


gym.register("esrl-test/BigRewardCartPole-v0", entry_point=BigRewardCartPole, max_episode_steps=500)


class Client:
    """A store client holding fixed parameters: pulls copy them, pushes are counted and dropped."""

    def __init__(self, params: torch.Tensor) -> None:
        self.params, self.pushes = params.clone(), 0

    def pull(self, out: torch.Tensor) -> int:
        out.copy_(self.params)
        return 0

    def push(self, grad: torch.Tensor, version: int) -> None:
        self.pushes += 1


def run_cfg(d: Path, **kw) -> RunConfig:
    base = RunConfig(env="CartPole-v1", seed=2, backend="serial", workers=1, max_iterations=3, max_seconds=60,
                     target_return=1e9, eval_episodes=2, confirm_episodes=0, run_dir=str(d))
    return dataclasses.replace(base, **kw)


# --- sync -------------------------------------------------------------------------------------

def test_sync_auto_follows_the_backend_and_only_an_explicit_conflict_is_refused():
    for cls in (A3CConfig, DQNConfig, DynaQConfig):
        assert cls().sync == "auto"
        assert resolve_rl("a3c", RunConfig(backend="processes"), cls()).sync == "hogwild"
        assert resolve_rl("a3c", RunConfig(backend="serial"), cls()).sync == "hogwild"
        assert resolve_rl("a3c", RunConfig(backend="ray"), cls()).sync == "param-server"
        assert resolve_rl("a3c", RunConfig(backend="ray"), cls(sync="lock")).sync == "lock"  # a choice is kept
    check_combination("a3c", RunConfig(backend="ray"), A3CConfig())  # auto on Ray: no error
    with pytest.raises(InputError, match=r"^sync: hogwild .*param-server"):
        check_combination("a3c", RunConfig(backend="ray"), A3CConfig(sync="hogwild"))


def test_help_shows_the_auto_default_and_what_it_means(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "500")  # one line per option: no wrap inside hyphenated words
    assert main(["train", "a3c", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ("(auto: hogwild on processes and serial, param-server on ray; ga3c: the model on --device, CPU actors) "
            "[default: 'auto']") in text


def test_config_and_summary_record_the_resolved_sync(tmp_path):
    d = tmp_path / "r"
    s = train_rl("a3c", run_cfg(d, backend="processes", workers=1, max_iterations=2),
                 A3CConfig(hidden=(8,), envs_per_worker=2, report_every=10), show_progress=False)
    saved = json.loads((d / "config.json").read_text())
    assert s["sync"] == saved["a3c"]["sync"] == saved["resolved"]["sync"] == "hogwild"
    assert saved["a3c"]["obs_norm"] == "off" and saved["a3c"]["clip_rewards"] == "off"  # CartPole


@pytest.mark.parametrize(("algo", "sync"), [("a3c", "lock"), ("dqn", "hogwild"), ("a3c", "auto"),
                                            ("dqn", "param-server")])
def test_device_cuda_never_picks_an_arrangement(tmp_path, capsys, algo, sync):
    """Refused before the hardware is looked at: the same one-line error with or without a GPU."""
    code = main(["train", algo, "--sync", sync, "--device", "cuda", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "error: device: cuda serves only the" in err[0] and "sync" in err[0]
    assert not (tmp_path / "r").exists()


def test_an_arrangement_is_chosen_by_name_only():
    from esrl.rl.device_pool import device_arrangement

    assert device_arrangement("a3c", RunConfig(device="cpu"), A3CConfig(sync="hogwild")) is None
    assert device_arrangement("a3c", RunConfig(device="cpu"), A3CConfig(sync="ga3c")) == "ga3c"
    assert device_arrangement("dqn", RunConfig(device="auto"), DQNConfig(sync="device")) == "device"
    check_combination("a3c", RunConfig(device="cuda"), A3CConfig(sync="ga3c"))  # no conflict: cuda serves it
    with pytest.raises(InputError, match=r"^device: dynaq has no device arrangement"):
        check_combination("dynaq", RunConfig(device="cuda"), DynaQConfig())


# --- observation normalization ----------------------------------------------------------------

def test_obs_norm_and_clip_rewards_auto_follow_the_env():
    cheetah, pong, cart = envs.spec_of("HalfCheetah-v5"), envs.spec_of("ALE/Pong-v5"), envs.spec_of("CartPole-v1")
    run = RunConfig()
    assert resolve_rl("a3c", run, A3CConfig(), cheetah).obs_norm == "on"
    assert resolve_rl("a3c", run, A3CConfig(sync="ga3c"), cheetah).obs_norm == "off"  # no normalizer there yet
    assert resolve_rl("dynaq", run, DynaQConfig(), cheetah).obs_norm == "off"
    assert resolve_rl("a3c", run, A3CConfig(), cart).obs_norm == "off"
    assert resolve_rl("a3c", run, A3CConfig(), pong).obs_norm == "off"  # frames: the CNN scales them
    assert resolve_rl("dqn", run, DQNConfig(), pong).clip_rewards == "on"
    assert resolve_rl("a3c", run, A3CConfig(), pong).clip_rewards == "on"
    assert resolve_rl("a3c", run, A3CConfig(), cheetah).clip_rewards == "off"
    assert resolve_rl("a3c", run, A3CConfig(clip_rewards="on", obs_norm="off"), cheetah).clip_rewards == "on"
    with pytest.raises(InputError, match=r"^obs_norm: "):
        check_combination("dynaq", run, DynaQConfig(obs_norm="on"))
    with pytest.raises(InputError, match=r"^obs_norm: "):
        check_combination("a3c", run, A3CConfig(obs_norm="on"), spec=pong)


def test_the_normalizer_is_es_normalization_of_the_same_statistics():
    stat = ObsStat.empty((3,))
    stat.add_batch(np.array([[1.0, -2.0, 100.0], [3.0, 2.0, 120.0], [2.0, 0.0, 80.0]]))
    spec = envs.spec_of("Pendulum-v1")
    model = A3CSetup(A3CConfig(hidden=(8,), obs_norm="on"), spec, 0).build_model()
    nets.set_normalizer(model, stat)
    x = np.array([[0.0, 1.0, 110.0], [50.0, -50.0, 0.0]], np.float32)
    mean, inv_std = stat.normalizer()
    expected = np.clip((x - mean) * inv_std, -CLIP, CLIP)  # what ES's MLP computes from the same pair
    np.testing.assert_allclose(model.norm(torch.from_numpy(x)).numpy(), expected, rtol=1e-6)
    assert nets.get_flat(model).numel() == nets.get_flat(A3CSetup(A3CConfig(hidden=(8,)), spec, 0).build_model()).numel()


@pytest.mark.parametrize("algo", ["a3c", "dqn"])
def test_workers_update_statistics_and_evaluation_normalizes_the_same_way(algo):
    spec = envs.spec_of("Pendulum-v1" if algo == "a3c" else "CartPole-v1")
    if algo == "a3c":
        setup: object = A3CSetup(A3CConfig(hidden=(8,), envs_per_worker=2, obs_norm="on"), spec, 0)
    else:
        setup = DQNSetup(DQNConfig(hidden=(8,), learning_starts=32, batch_size=16, obs_norm="on"), spec, 0)
    params = nets.get_flat(setup.build_model())  # type: ignore[attr-defined]
    worker = setup.build_worker(0, Client(params))  # type: ignore[attr-defined]
    reported = ObsStat.empty((spec.obs_dim,))
    steps = 0
    for _ in range(40):
        rep = worker.step()
        reported.merge(rep.obs)
        steps += rep.env_steps
    # every observation acted on is counted once, in the worker's statistics and in its reports
    assert reported.count == pytest.approx(steps + 0.01)
    np.testing.assert_allclose(reported.total, worker.obs.stat.total)
    np.testing.assert_allclose(reported.sumsq, worker.obs.stat.sumsq)
    assert np.abs(reported.mean).max() > 0  # the statistics moved off the prior
    # the next update acts with the statistics as they are now; evaluation given them acts identically
    now = worker.obs.stat.copy()
    worker.step()
    acting = worker.model if algo == "a3c" else worker.learner.q
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 3, (64, spec.obs_dim)).astype(np.float32))
    with torch.no_grad():  # as evaluation plays (common.evaluate_greedy)
        out = acting(x)
        acted = np.clip(out[0].numpy(), spec.low, spec.high) if algo == "a3c" else out.argmax(-1).numpy()
        np.testing.assert_array_equal(setup.act_greedy(params, now)(x), acted)  # type: ignore[attr-defined]
        if algo == "a3c":  # without the statistics the policy acts otherwise: the comparison can fail
            prior = ObsStat.empty((spec.obs_dim,))
            assert not np.array_equal(setup.act_greedy(params, prior)(x), acted)  # type: ignore[attr-defined]


def test_a_run_checkpoints_its_statistics_and_resumes_and_evaluates_with_them(tmp_path):
    from esrl import policy

    d = tmp_path / "r"
    cfg = A3CConfig(hidden=(8,), envs_per_worker=2, report_every=10, obs_norm="on")
    s = train_rl("a3c", run_cfg(d), cfg, show_progress=False)
    tensors, manifest = checkpoint.load(checkpoint.latest(d / "checkpoints"), "a3c")
    assert manifest["meta"]["obs_count"] == pytest.approx(s["env_steps"] + 0.01)  # one worker: all it saw
    assert tensors["obs_sum"].shape == (4,) and np.abs(tensors["obs_sumsq"]).sum() > 0
    s2 = train_rl("a3c", run_cfg(d, max_iterations=5), cfg, resume=True, show_progress=False)
    tensors, manifest = checkpoint.load(checkpoint.latest(d / "checkpoints"), "a3c")
    assert manifest["meta"]["obs_count"] == pytest.approx(s2["env_steps"] + 0.01)  # went on from the saved ones
    pol = policy.load(d)  # `esrl evaluate` and the Python API normalize as training did
    stat = ObsStat(tensors["obs_sum"], tensors["obs_sumsq"], manifest["meta"]["obs_count"])
    np.testing.assert_allclose(pol.model.norm.mean.numpy(), stat.normalizer()[0])
    np.testing.assert_allclose(pol.model.norm.inv_std.numpy(), stat.normalizer()[1])


# --- reward clipping --------------------------------------------------------------------------

def test_dqn_clips_training_rewards_never_returns_or_evaluation():
    spec = envs.spec_of("esrl-test/BigRewardCartPole-v0")
    setup = DQNSetup(DQNConfig(hidden=(8,), learning_starts=32, batch_size=16, clip_rewards="on"), spec, 0)
    params = nets.get_flat(setup.build_model())
    worker = setup.build_worker(0, Client(params))
    returns = []
    for _ in range(60):
        returns += worker.step().returns
    stored = worker.replay.reward[: len(worker.replay)].numpy()
    assert set(np.unique(stored)) == {1.0}  # the learner sees clipped rewards
    assert returns and all(r % 10 == 0 and r >= 10 for r in returns)  # episode returns are the env's own
    ret, lengths = setup.evaluate(params, np.arange(2))
    np.testing.assert_array_equal(ret, 10.0 * lengths)  # evaluation never clips
    plain = DQNSetup(dataclasses.replace(setup.cfg, clip_rewards="off"), spec, 0).build_worker(0, Client(params))
    plain.step()
    assert set(np.unique(plain.replay.reward[: len(plain.replay)].numpy())) == {10.0}


def test_a3c_learns_from_clipped_rewards(monkeypatch):
    seen = []
    real_gae = a3c.gae

    def spy(rewards, *args, **kw):
        seen.append(rewards.clone())
        return real_gae(rewards, *args, **kw)

    monkeypatch.setattr(a3c, "gae", spy)
    spec = envs.spec_of("esrl-test/BigRewardCartPole-v0")
    for clip, top in (("on", 1.0), ("off", 10.0)):
        seen.clear()
        setup = A3CSetup(A3CConfig(hidden=(8,), envs_per_worker=2, clip_rewards=clip), spec, 0)
        worker = setup.build_worker(0, Client(nets.get_flat(setup.build_model())))
        for _ in range(5):
            worker.step()
        assert float(torch.stack(seen).max()) == top
