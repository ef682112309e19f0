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
from esrl.es.policies_cnn import ConvPolicy, reference_batch

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


# --- virtual batch normalization ------------------------------------------------------------------

def test_reference_batch_is_rebuilt_from_the_seed(pong):
    a, b = reference_batch(pong, 5, 12), reference_batch(pong, 5, 12)
    assert a.shape == (12, 4, 84, 84) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, reference_batch(pong, 6, 12))


def _cnn_params(pol: ConvPolicy, n: int, seed: int = 0) -> np.ndarray:
    """n members with random gamma and beta, so that the test can tell them from 1 and 0."""
    gen = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        t = pol.unflatten(pol.init(gen))
        for k, v in t.items():
            if k.endswith("gamma"):
                t[k] = gen.uniform(0.5, 2.0, v.shape).astype(np.float32)
            elif k.endswith("beta"):
                t[k] = gen.uniform(-1.0, 1.0, v.shape).astype(np.float32)
        rows.append(pol.flatten(t))
    return np.stack(rows)


def test_vbn_statistics_come_from_the_reference_batch_only(pong):
    import torch
    import torch.nn.functional as F

    ref = reference_batch(pong, 0, 16)
    pol = ConvPolicy(pong, ref)
    params = _cnn_params(pol, 3)
    trace = pol.reference_trace(params)
    # layer 0 by hand for member 1: normalize the convolution of the reference frames with their own statistics
    t = pol.unflatten(params[1])
    h = F.conv2d(torch.from_numpy(ref).float() / 255, torch.from_numpy(t["conv0.weight"]), stride=4).double()
    mean, var = h.mean(dim=(0, 2, 3), keepdim=True), h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    expect = (h - mean) / torch.sqrt(var + 1e-5) * torch.from_numpy(t["norm0.gamma"]).double()[:, None, None] \
        + torch.from_numpy(t["norm0.beta"]).double()[:, None, None]
    np.testing.assert_allclose(trace[1][0], expect.numpy(), atol=2e-4)
    # every layer of every member, normalized on the reference batch: mean beta and std |gamma| per unit
    for b in range(3):
        t = pol.unflatten(params[b])
        for layer, pre in enumerate(trace[b]):
            np.testing.assert_allclose(pre.mean(axis=(0, 2, 3)), t[f"norm{layer}.beta"], atol=2e-3)
            ratio = pre.std(axis=(0, 2, 3)) / np.abs(t[f"norm{layer}.gamma"])  # below 1 by VBN's epsilon only
            assert (ratio <= 1.001).all() and np.median(ratio) > 0.99, (b, layer, ratio)
    # changing a member's weights changes its statistics (they move with the member)
    other = pol.reference_trace(params * 1.5)
    assert not np.allclose(other[0][1], trace[0][1], atol=1e-2)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_members_actions_do_not_depend_on_its_batch(pong, dtype):
    pol = ConvPolicy(pong, reference_batch(pong, 0, 16), dtype=dtype)
    params = _cnn_params(pol, 4)
    env = envs.make(PONG)
    obs = np.stack([env.reset(seed=s)[0] for s in range(4)])
    env.close()
    together = pol.forward(params, obs)
    alone = np.concatenate([pol.forward(params[i : i + 1], obs[i : i + 1]) for i in range(4)])
    np.testing.assert_array_equal(together, alone)  # exactly: order-free ES groups members arbitrarily
    np.testing.assert_array_equal(pol.forward(pol.subset(pol.split(params), [3, 1]), obs[[3, 1]]), together[[3, 1]])
    np.testing.assert_array_equal(pol.forward(params[::-1].copy(), obs[::-1].copy()), together[::-1])


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

    from .conftest import det_metrics, final_state

    a, b = tmp_path / "serial", tmp_path / "procs"
    train(_run(a, PONG), tiny_cnn_es(), show_progress=False)
    train(_run(b, PONG, backend="processes", workers=2), tiny_cnn_es(), show_progress=False)
    m = _metrics(a)
    assert m[0]["env_steps"] == 4 * 150 and np.isfinite(m[0]["return_mean"])  # evaluation steps counted apart
    assert det_metrics(a) == det_metrics(b)
    np.testing.assert_array_equal(final_state(a)["theta"], final_state(b)["theta"])


def test_es_on_halfcheetah(tmp_path):
    from esrl.train import train

    run = _run(tmp_path, CHEETAH, max_iterations=2, backend="processes", workers=2)
    summary = train(run, ESConfig(population=8, hidden=(16,), noise_table_size=1 << 16), show_progress=False)
    m = _metrics(tmp_path)
    assert summary["iterations"] == 2 and m[-1]["env_steps"] == 2 * 8 * 1000  # no termination in HalfCheetah
    assert all(np.isfinite(x["return_mean"]) for x in m)


@pytest.mark.parametrize("env", [PONG, CHEETAH])
def test_a3c_runs(tmp_path, env):
    from esrl.train_rl import train_rl

    cfg = A3CConfig(report_every=5, envs_per_worker=1)
    # 3 lines: the initial policy's evaluation, then two of report_every updates
    summary = train_rl("a3c", _run(tmp_path, env, max_iterations=3, backend="serial"), cfg, show_progress=False)
    assert summary["updates"] >= 10 and summary["error"] is None
    assert (tmp_path / "checkpoints").is_dir()


def test_dqn_on_pong_stores_frames_as_uint8(tmp_path):
    import torch

    from esrl.rl.replay import Replay, obs_dtype
    from esrl.train_rl import train_rl

    cfg = DQNConfig(buffer_size=300, learning_starts=50, batch_size=8, report_every=5)
    summary = train_rl("dqn", _run(tmp_path, PONG, max_iterations=3, backend="serial"), cfg, show_progress=False)
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


def test_sticky_actions_come_from_the_episode_seed():
    """Two seeds with the same no-op start still differ: sticky actions are drawn from the seed too."""
    import gymnasium as gym

    def noops(seed: int) -> int:  # AtariPreprocessing's first draw from the freshly seeded generator
        return int(gym.utils.seeding.np_random(seed)[0].integers(1, 31))

    s1 = 0
    s2 = next(s for s in range(1, 1000) if noops(s) == noops(s1))

    def episode(e, seed: int) -> list[int]:
        obs, _ = e.reset(seed=seed)
        out = [int(obs.sum())]
        for i in range(300):
            obs, r, *_ = e.step((i // 7) % 6)
            out.append(int(obs.sum()) + int(r))
        return out

    plain = envs.make(PONG, repeat_action_probability=0.0)
    assert episode(plain, s1) == episode(plain, s2)  # the no-op start is the only other randomness
    plain.close()
    sticky = envs.make(PONG)  # v5: sticky actions with probability 0.25
    a = episode(sticky, s1)
    assert episode(sticky, s2) != a
    assert episode(sticky, s1) == a  # reproducible after other episodes
    sticky.close()


def test_episodic_life_continues_the_game_and_es_refuses_it(tmp_path):
    env = envs.make("ALE/Breakout-v5", episodic_life=True)
    env.reset(seed=0)
    ale = env.unwrapped.ale
    lives = ale.lives()
    for _ in range(3000):
        _, _, term, trunc, _ = env.step(1)
        if term or trunc:
            break
    assert term and ale.lives() == lives - 1
    frame = ale.getFrameNumber()
    env.reset(seed=123)  # not a new game: the same one goes on
    assert ale.lives() == lives - 1 and ale.getFrameNumber() > frame
    env.close()
    from esrl.train import train

    with pytest.raises(InputError, match="episodic_life"):
        train(_run(tmp_path / "r", "ALE/Breakout-v5", episodic_life=True), tiny_cnn_es(), show_progress=False)
    assert not (tmp_path / "r").exists()
