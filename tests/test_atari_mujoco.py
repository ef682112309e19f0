"""MuJoCo and Atari: preprocessing, snapshot resets, the ES CNN's virtual batch norm, tiny runs, videos."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from esrl import envs
from esrl.config import A3CConfig, DQNConfig, DynaQConfig, ESConfig, RunConfig, build, load_file, split_settings
from esrl.errors import InputError
from esrl.es.algorithm import ESSetup
from esrl.policies_cnn import ConvPolicy, reference_batch

pytest.importorskip("ale_py")
pytest.importorskip("mujoco")

PONG = "ALE/Pong-v5"
CHEETAH = "HalfCheetah-v5"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def pong() -> envs.EnvSpec:
    return envs.spec_of(PONG)


def tiny_cnn_es(**kw) -> ESConfig:
    return dataclasses.replace(ESConfig(population=4, vbn_batch=16, noise_table_size=1 << 21), **kw)


# --- preprocessing -------------------------------------------------------------------------------

def test_atari_preprocessing_shapes_and_dtypes(pong):
    assert pong.obs_shape == (4, 84, 84) and pong.image and pong.discrete and pong.act_dim == 6
    assert pong.max_episode_steps == 108_000 // 4
    env = envs.make(PONG)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    obs, r, *_ = env.step(0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8 and r in (-1.0, 0.0, 1.0)
    # the stack holds the last four frames: each step shifts it by one
    prev = obs
    obs, *_ = env.step(2)
    assert np.array_equal(obs[:3], prev[1:])
    env.close()


def test_snapshot_reset_is_a_function_of_the_seed_alone():
    env = envs.make(PONG)

    def episode(seed: int) -> list[int]:
        obs, _ = env.reset(seed=seed)
        sums = [int(obs.sum())]
        for i in range(150):
            obs, r, *_ = env.step((i * 5) % 6)
            sums.append(int(obs.sum()) + int(r))
        return sums

    first = episode(11)
    other = episode(12)
    episode(13)
    assert episode(11) == first  # after other episodes: same trajectory
    assert other != first  # the seed draws the no-op start
    env.close()


def test_episodic_life_ends_the_episode_on_a_lost_life():
    env = envs.make("ALE/Breakout-v5", episodic_life=True)
    env.reset(seed=0)
    lives = env.unwrapped.ale.lives()
    for _ in range(2000):
        _, _, term, trunc, _ = env.step(1)  # FIRE serves the ball; a paddle that never moves loses it
        if term or trunc:
            break
    assert term and 0 < env.unwrapped.ale.lives() == lives - 1
    env.close()
    with pytest.raises(InputError, match="episodic_life"):
        envs.make("CartPole-v1", episodic_life=True)


# --- virtual batch normalization ------------------------------------------------------------------

def test_reference_batch_is_rebuilt_from_the_seed(pong):
    a, b = reference_batch(pong, 5, 12), reference_batch(pong, 5, 12)
    assert a.shape == (12, 4, 84, 84) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, reference_batch(pong, 6, 12))


def test_vbn_statistics_come_from_the_reference_batch_only(pong):
    ref = reference_batch(pong, 0, 16)
    pol = ConvPolicy(pong, ref)
    gen = np.random.default_rng(0)
    params = np.stack([pol.init(gen), pol.init(gen), pol.init(gen)])
    params += 0.05 * gen.standard_normal(params.shape).astype(np.float32)
    # first layer's statistics by hand: conv of the reference frames, mean and variance per channel
    import torch
    import torch.nn.functional as F

    w0 = torch.from_numpy(pol.unflatten(params[1])["conv0.weight"])
    h = F.conv2d(torch.from_numpy(ref).float() / 255, w0, stride=4)
    stats = pol.reference_stats(params)
    np.testing.assert_allclose(stats[0][0][1], h.mean(dim=(0, 2, 3)).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats[0][1][1], h.var(dim=(0, 2, 3), unbiased=False).numpy(), rtol=1e-4, atol=1e-6)
    # normalized on the reference batch, the last hidden layer has zero mean and unit variance per unit
    prep = pol.split(params)
    frames = torch.from_numpy(ref).float() / 255
    feats = pol._trunk(prep, frames[None].expand(3, *frames.shape), None)
    assert feats.shape == (3, 16, 256)
    # an action depends on its own frame and member only: any batch composition gives the same outputs
    env = envs.make(PONG)
    obs = np.stack([env.reset(seed=s)[0] for s in range(3)])
    env.close()
    together = pol.forward(params, obs)
    alone = np.concatenate([pol.forward(params[i : i + 1], obs[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    sub = pol.subset(prep, [2, 0])
    np.testing.assert_allclose(pol.forward(sub, obs[[2, 0]]), together[[2, 0]], rtol=1e-4, atol=1e-5)
    # and changing a member's weights changes its statistics
    other = pol.reference_stats(params * 1.5)
    assert not np.allclose(other[0][0], stats[0][0])


def test_cnn_policy_only_for_images():
    with pytest.raises(InputError, match="policy"):
        ESSetup(ESConfig(policy="cnn"), envs.spec_of("CartPole-v1"), 0).build()


# --- tiny runs -----------------------------------------------------------------------------------

def _run(tmp: Path, env: str, **kw) -> RunConfig:
    """One iteration; Pong episodes capped at 150 steps (a whole game is about 800)."""
    base = RunConfig(env=env, seed=1, backend="serial", workers=1, max_iterations=1, max_seconds=0,
                     target_return=1e9, eval_episodes=1, checkpoint_every=1, run_dir=str(tmp),
                     max_episode_steps=150 if env == PONG else 0)
    return dataclasses.replace(base, **kw)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_es_on_pong_serial_and_processes_agree(tmp_path):
    from esrl.train import train

    from .conftest import final_state

    a, b = tmp_path / "serial", tmp_path / "procs"
    train(_run(a, PONG), tiny_cnn_es(), show_progress=False)
    train(_run(b, PONG, backend="processes", workers=2), tiny_cnn_es(), show_progress=False)
    m = _metrics(a)
    assert m[0]["env_steps"] == (4 + 1) * 150 and np.isfinite(m[0]["return_mean"])
    assert m == _metrics(a)
    np.testing.assert_array_equal(final_state(a)["theta"], final_state(b)["theta"])
    assert [x["return_mean"] for x in _metrics(b)] == [x["return_mean"] for x in m]


def test_es_on_halfcheetah(tmp_path):
    from esrl.train import train

    run = _run(tmp_path, CHEETAH, max_iterations=2, backend="processes", workers=2)
    summary = train(run, ESConfig(population=8, hidden=(16,), noise_table_size=1 << 16), show_progress=False)
    m = _metrics(tmp_path)
    assert summary["iterations"] == 2 and m[-1]["env_steps"] == 2 * (8 + 1) * 1000  # no termination in HalfCheetah
    assert all(np.isfinite(x["return_mean"]) for x in m)


@pytest.mark.parametrize("env", [PONG, CHEETAH])
def test_a3c_runs(tmp_path, env):
    from esrl.train_rl import train_rl

    cfg = A3CConfig(report_every=5, envs_per_worker=1)
    summary = train_rl("a3c", _run(tmp_path, env, max_iterations=2, backend="serial"), cfg, show_progress=False)
    assert summary["updates"] >= 10 and summary["error"] is None
    assert (tmp_path / "checkpoints").is_dir()


def test_dqn_on_pong_stores_frames_as_uint8(tmp_path):
    import torch

    from esrl.rl.replay import Replay, obs_dtype
    from esrl.train_rl import train_rl

    cfg = DQNConfig(buffer_size=300, learning_starts=50, batch_size=8, report_every=5)
    summary = train_rl("dqn", _run(tmp_path, PONG, max_iterations=2, backend="serial"), cfg, show_progress=False)
    assert summary["updates"] >= 10 and summary["error"] is None
    spec = envs.spec_of(PONG)

    replay = Replay(10, spec.obs_dim, obs_dtype=obs_dtype(spec))
    frame = np.full((1, spec.obs_dim), 200.0, np.float32)
    replay.add(frame, np.array([1]), np.array([1.0]), frame, np.array([0.0]))
    assert replay.obs.dtype == torch.uint8
    obs, *_ = replay.sample(1, torch.Generator().manual_seed(0))
    assert obs.dtype == torch.float32 and float(obs.max()) == 200.0


def test_discrete_only_algorithms_refuse_halfcheetah_and_dynaq_refuses_frames(tmp_path):
    from esrl.train_rl import train_rl

    with pytest.raises(InputError):
        train_rl("dqn", _run(tmp_path / "a", CHEETAH), DQNConfig(), show_progress=False)
    with pytest.raises(InputError, match="env"):
        train_rl("dynaq", _run(tmp_path / "b", PONG), DynaQConfig(), show_progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --- presets and videos --------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_presets_are_valid(path):
    from esrl.config import ALGORITHMS

    algo = path.stem.rsplit("-", 1)[1]
    run_vals, algo_vals = split_settings(load_file(path), ALGORITHMS[algo])
    run, cfg = build(RunConfig, run_vals), build(ALGORITHMS[algo], algo_vals)
    run.validate()
    cfg.validate()
    envs.spec_of(run.env, **run.env_options())


def test_pong_video_decodes(tmp_path):
    import imageio.v3 as iio

    from esrl.evaluate import evaluate
    from esrl.train import train

    train(_run(tmp_path / "run", PONG), tiny_cnn_es(population=2), show_progress=False)
    out = evaluate(str(tmp_path / "run"), episodes=1, video=str(tmp_path / "pong.mp4"))
    frames = iio.imread(tmp_path / "pong.mp4")
    assert frames.shape[1:] == (210, 160, 3) and len(frames) == out["lengths"][0]
    assert frames.std() > 0


def test_mujoco_video_decodes(tmp_path):
    import imageio.v3 as iio

    from esrl.evaluate import evaluate
    from esrl.train import train

    train(_run(tmp_path / "run", CHEETAH, max_episode_steps=20), ESConfig(population=2, hidden=(), noise_table_size=1 << 12),
          show_progress=False)
    try:
        out = evaluate(str(tmp_path / "run"), episodes=1, video=str(tmp_path / "cheetah.mp4"))
    except Exception as exc:  # no EGL/OSMesa on this machine
        if "GL" in type(exc).__name__ or "GL" in str(exc) or "display" in str(exc).lower():
            pytest.skip(f"no headless OpenGL: {exc}")
        raise
    frames = iio.imread(tmp_path / "cheetah.mp4")
    assert len(frames) == out["lengths"][0] == 20 and frames.shape[-1] == 3 and frames.std() > 0


def test_bfloat16_cnn_tracks_float32(pong):
    ref = reference_batch(pong, 0, 16)
    f32, b16 = ConvPolicy(pong, ref), ConvPolicy(pong, ref, dtype="bfloat16")
    gen = np.random.default_rng(1)
    params = np.stack([f32.init(gen) for _ in range(3)])
    params[:, -6:] = gen.standard_normal(6)  # output biases large enough to separate the logits
    env = envs.make(PONG)
    obs = np.stack([env.reset(seed=s)[0] for s in range(3)])
    env.close()
    a, b = f32.forward(params, obs), b16.forward(params, obs)
    assert b.dtype == np.float32 and not np.array_equal(a, b)
    np.testing.assert_allclose(b, a, atol=0.05)
    np.testing.assert_array_equal(b16.to_actions(b), f32.to_actions(a))
