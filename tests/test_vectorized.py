"""ES on the vectorized backend: reproducible on a device, learning, and its input errors."""

import dataclasses

import numpy as np
import pytest
import torch

from esrl.config import RunConfig
from esrl.errors import InputError
from esrl.train import train
from tests.conftest import det_metrics, final_state, tiny_es


def vec_run(d, **kw):
    base = RunConfig(env="CartPole-v1", seed=3, backend="vectorized", device="cpu", max_iterations=5, max_seconds=0,
                     target_return=1e9, eval_episodes=3, run_dir=str(d))
    return dataclasses.replace(base, **kw)


def test_same_seed_same_theta_on_the_device(tmp_path):
    cfg = tiny_es(population=32, obs_norm_fraction=0.3)
    train(vec_run(tmp_path / "a"), cfg, show_progress=False)
    train(vec_run(tmp_path / "b"), cfg, show_progress=False)
    train(vec_run(tmp_path / "c", seed=4), cfg, show_progress=False)
    assert np.array_equal(final_state(tmp_path / "a")["theta"], final_state(tmp_path / "b")["theta"])
    assert np.array_equal(final_state(tmp_path / "a")["obs_sum"], final_state(tmp_path / "b")["obs_sum"])
    assert det_metrics(tmp_path / "a") == det_metrics(tmp_path / "b") != det_metrics(tmp_path / "c")


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "MountainCarContinuous-v0", "MountainCar-v0"])
def test_other_torch_envs_run(tmp_path, env_id):
    s = train(vec_run(tmp_path / "r", env=env_id, max_iterations=2), tiny_es(population=8), show_progress=False)
    assert s["env_steps"] > 0 and s["iterations"] == 2


def test_vectorized_learns_cartpole(tmp_path):
    s = train(vec_run(tmp_path / "r", target_return=475, max_iterations=0, max_seconds=60), tiny_es(hidden=(16,)),
              show_progress=False)
    assert s["solved"]


@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "CartPole-v0"])
def test_gymnasium_env_without_torch_version_runs_with_device_policies(tmp_path, env_id):
    """No esrl version: Gymnasium steps it (CartPole-v0: its numpy vector env; FrozenLake: env by env),
    the population's policies run batched in torch; same seed, same theta."""
    cfg = tiny_es(population=16, obs_norm_fraction=0.5)
    a = train(vec_run(tmp_path / "a", env=env_id, max_iterations=3), cfg, show_progress=False)
    train(vec_run(tmp_path / "b", env=env_id, max_iterations=3), cfg, show_progress=False)
    assert a["env_steps"] > 0
    assert np.array_equal(final_state(tmp_path / "a")["theta"], final_state(tmp_path / "b")["theta"])
    assert det_metrics(tmp_path / "a") == det_metrics(tmp_path / "b")


def test_input_errors(tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match=r"^device: "):
            train(vec_run(tmp_path / "r", device="cuda"), tiny_es(), show_progress=False)
    assert not (tmp_path / "r").exists()


def test_vectorized_refuses_action_noise(tmp_path):
    with pytest.raises(InputError, match=r"^action_noise: "):
        train(vec_run(tmp_path / "r"), tiny_es(action_noise=0.1), show_progress=False)
    assert not (tmp_path / "r").exists()


def test_numpy_cpu_path_matches_torch_path_from_the_same_initial_states(monkeypatch):
    """The numpy engine (CPU) and the torch engine play the same episodes when started from the same states."""
    from esrl import envs
    from esrl.config import ESConfig
    from esrl.es.envs_np import CartPole
    from esrl.es.envs_torch import make_torch_env
    from esrl.es.vectorized import ESTorchSetup

    seeds = []
    monkeypatch.setattr(CartPole, "initial", lambda self, gen, n: make_torch_env(
        "CartPole-v1", n, seed=seeds[-1]).reset().numpy().T.copy())
    orig = ESTorchSetup.build

    def build(setup):
        rep = orig(setup)
        inner = rep._rollout_np
        rep._rollout_np = lambda params, seed, caps, record: (seeds.append(seed), inner(params, seed, caps, record))[1]
        return rep

    monkeypatch.setattr(ESTorchSetup, "build", build)
    spec = envs.spec_of("CartPole-v1")
    cfg = ESConfig(population=64, sigma=0.5)
    outs = []
    for engine in ("auto", "torch"):
        rep = ESTorchSetup(cfg, spec, 1, device="cpu", engine=engine).build()
        outs.append(rep.run(("pop", 0, 0, 64)))
    assert len(seeds) == 1  # the torch engine did not go through the numpy path
    same = outs[0]["lengths"] == outs[1]["lengths"]
    assert outs[0]["lengths"].std() > 0
    assert same.mean() >= 0.95  # float32 matmuls may round differently and flip a rare argmax
    np.testing.assert_array_equal(outs[0]["returns"][same], outs[1]["returns"][same])


def _gym_replica(use_vector_entry, population=32):
    from esrl import envs
    from esrl.config import ESConfig
    from esrl.es.vectorized import ESTorchSetup

    rep = ESTorchSetup(ESConfig(population=population, sigma=0.5), envs.spec_of("CartPole-v0"), 2,
                       device="cpu").build()
    rep.use_vector_entry = use_vector_entry
    return rep


def test_vector_entry_point_steps_the_population_in_one_gymnasium_vector_env(monkeypatch):
    """CartPole-v0 has no esrl version but a numpy vector_entry_point: one CartPoleVectorEnv serves the batch.

    From the per-member path's initial states it plays the per-member path's episodes exactly.
    """
    import gymnasium as gym
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

    made = []
    orig_make_vec = gym.make_vec
    monkeypatch.setattr(gym, "make_vec", lambda *a, **k: made.append(a) or orig_make_vec(*a, **k))
    per_member = _gym_replica(False).run(("pop", 0, 0, 32))
    assert not made
    vec_a = _gym_replica(True).run(("pop", 0, 0, 32))
    vec_b = _gym_replica(True).run(("pop", 0, 0, 32))
    assert made and np.array_equal(vec_a["returns"], vec_b["returns"])  # same seed, same episodes
    assert vec_a["lengths"].std() > 0

    states = []  # the per-member path's initial states, in member order
    rep = _gym_replica(False)
    real_envs_for = rep.envs_for

    def envs_for(n):
        out = real_envs_for(n)
        for e in out:
            real_reset = e.reset
            e.reset = lambda seed=None, _r=real_reset, _e=e: (_r(seed=seed), states.append(np.array(_e.state)))[0]
        return out

    rep.envs_for = envs_for
    rep.run(("pop", 0, 0, 32))
    orig_reset = CartPoleVectorEnv.reset

    def reset_to_member_states(self, **kw):
        orig_reset(self, **kw)
        self.state = np.stack(states, 1)
        return self.state.T.astype(np.float32), {}

    monkeypatch.setattr(CartPoleVectorEnv, "reset", reset_to_member_states)
    same_start = _gym_replica(True).run(("pop", 0, 0, 32))
    np.testing.assert_array_equal(same_start["returns"], per_member["returns"])
    np.testing.assert_array_equal(same_start["lengths"], per_member["lengths"])


def test_vectorized_refuses_the_cnn_policy(tmp_path):
    with pytest.raises(InputError, match=r"^policy: "):
        train(vec_run(tmp_path / "r"), tiny_es(policy="cnn"), show_progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_seed_same_theta_on_cuda(tmp_path):
    cfg = tiny_es(population=64, obs_norm_fraction=0.3)
    train(vec_run(tmp_path / "a", device="cuda"), cfg, show_progress=False)
    train(vec_run(tmp_path / "b", device="cuda"), cfg, show_progress=False)
    assert np.array_equal(final_state(tmp_path / "a")["theta"], final_state(tmp_path / "b")["theta"])
    assert det_metrics(tmp_path / "a") == det_metrics(tmp_path / "b")


def test_population_is_chunked_to_bound_memory_and_the_peak_is_reported(tmp_path, monkeypatch):
    from esrl.es import vectorized

    cfg = tiny_es(population=64)
    whole = train(vec_run(tmp_path / "whole"), cfg, show_progress=False)
    dim = whole["num_params"]
    monkeypatch.setattr(vectorized, "MAX_BATCH_FLOATS", 8 * dim)  # chunks of 8 members
    chunked = train(vec_run(tmp_path / "chunked"), cfg, show_progress=False)
    n_eval = 3  # vec_run's evaluation episodes ride with the first chunk
    assert chunked["iterations"] == whole["iterations"] and chunked["env_steps"] > 0
    assert chunked["batch_peak_bytes"] <= (8 + n_eval) * dim * 4 < whole["batch_peak_bytes"]
