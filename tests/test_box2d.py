"""Box2D envs (the Box2D wheel): a tiny ES and A3C run on each kind of observation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from esrl import envs
from esrl.config import A3CConfig, ESConfig, RunConfig
from esrl.es.policies_cnn import ConvPolicy

pytest.importorskip("Box2D")


@pytest.mark.parametrize("env", ["LunarLander-v3", "BipedalWalker-v3", "CarRacing-v3"])
def test_es_and_a3c_run(tmp_path, env):
    from esrl.train import train
    from esrl.train_rl import train_rl

    run = RunConfig(env=env, seed=0, backend="serial", max_iterations=1, max_seconds=0, eval_episodes=1,
                    target_return=1e9, run_dir=str(tmp_path / "es"), max_episode_steps=30)
    s = train(run, ESConfig(population=4, vbn_batch=8, noise_table_size=1 << 21), show_progress=False)
    assert s["env_steps"] <= 5 * 30 and s["iterations"] == 1 and np.isfinite(s["final_eval_return"])
    s = train_rl("a3c", dataclasses.replace(run, run_dir=str(tmp_path / "a3c"), max_iterations=2),
                 A3CConfig(report_every=3, envs_per_worker=1), show_progress=False)
    assert s["updates"] >= 3 and s["error"] is None


def test_channels_last_images_are_transposed():
    spec = envs.spec_of("CarRacing-v3")
    assert spec.obs_shape == (96, 96, 3) and spec.channels_last and spec.chw == (3, 96, 96)
    pol = ConvPolicy(spec, None)
    frames = np.random.default_rng(0).integers(0, 255, (2, 96, 96, 3), dtype=np.uint8)
    x = pol.preprocess(frames)
    assert x.shape == (2, 3, 96, 96) and np.array_equal(x[1, 2], frames[1, :, :, 2])
    params = np.stack([pol.init(np.random.default_rng(i)) for i in range(2)])
    assert pol.forward(params, x).shape == (2, 3)
