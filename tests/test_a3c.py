"""A3C: its synchronization is tested, not assumed."""

import dataclasses
import json
import multiprocessing as mp
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from esrl import envs
from esrl.config import A3CConfig, RunConfig
from esrl.errors import InputError
from esrl.rl import nets
from esrl.rl.a3c import A3CSetup, gae, gradient
from esrl.rl.common import optim_spec
from esrl.stores import make_store
from esrl.train_rl import train_rl

CTX = mp.get_context("fork")
SPEC = envs.spec_of("CartPole-v1")


def tiny(**kw) -> A3CConfig:
    return dataclasses.replace(A3CConfig(hidden=(16,), envs_per_worker=2, report_every=20), **kw)


def run_cfg(d: Path, **kw) -> RunConfig:
    base = RunConfig(env="CartPole-v1", seed=1, workers=2, max_iterations=4, max_seconds=60, target_return=1e9,
                     eval_episodes=2, run_dir=str(d))
    return dataclasses.replace(base, **kw)


def test_gae_hand_computed():
    r = torch.tensor([[1.0], [1.0], [1.0]])
    v = torch.tensor([[0.5], [0.5], [0.5]])
    term = torch.tensor([[False], [True], [False]])
    adv, ret = gae(r, v, term, torch.tensor([2.0]), gamma=0.9, lam=1.0)
    # t=2: 1 + 0.9*2 = 2.8; t=1 terminal: 1; t=0: 1 + 0.9*1 = 1.9
    assert torch.allclose(ret[:, 0], torch.tensor([1.9, 1.0, 2.8]))
    assert torch.allclose(adv[:, 0], ret[:, 0] - 0.5)


def _one_update(setup, client, out):
    torch.set_num_threads(1)  # as the pool's workers do: a forked child must not touch the parent's thread pool
    w = setup.build_worker(0, client)
    w.step()
    out.put([p.grad is None for p in w.model.parameters()])


@pytest.mark.parametrize("sync", ["hogwild", "lock", "param-server"])
def test_one_update_in_a_worker_process_equals_the_serial_update(sync):
    setup = A3CSetup(tiny(), SPEC, seed=4)
    params = nets.get_flat(setup.build_model())
    store = make_store(sync, params, optim_spec(setup.cfg), CTX, slots=1)
    try:
        q = CTX.Queue()
        p = CTX.Process(target=_one_update, args=(setup, store.client(0), q))
        p.start()
        no_grads = q.get(timeout=60)
        p.join(60)
        remote = store.snapshot()
    finally:
        store.close()
    local_store = make_store("lock", params, optim_spec(setup.cfg), CTX)
    worker = setup.build_worker(0, local_store.client(0))
    worker.step()
    local = local_store.snapshot()
    assert remote[2] == local[2] == 1
    assert torch.equal(remote[0], local[0]) and not torch.equal(local[0], params)
    assert torch.equal(remote[1]["m"], local[1]["m"]) and torch.equal(remote[1]["v"], local[1]["v"])
    assert all(no_grads)  # nothing accumulates in .grad between updates


def test_gradient_does_not_accumulate_across_updates():
    """Each pushed gradient equals a fresh model's gradient on that update's weights and data."""
    setup = A3CSetup(tiny(), SPEC, seed=5)
    store = make_store("lock", nets.get_flat(setup.build_model()), optim_spec(setup.cfg), CTX)
    pushed, pulled = [], []

    class Recorder:
        def __init__(self, inner):
            self.inner, self.sent, self.received, self.staleness = inner, {}, {}, []

        def pull(self, out):
            v = self.inner.pull(out)
            pulled.append(out.clone())
            return v

        def push(self, grad, version):
            pushed.append(grad.clone())
            self.inner.push(grad, version)

    worker = setup.build_worker(0, Recorder(store.client(0)))
    for k in range(3):
        worker.step()
        fresh = setup.build_model()
        nets.set_flat(fresh, pulled[k])
        expected, _ = gradient(fresh, worker.last_batch, setup.cfg)
        assert torch.equal(pushed[k], expected), k
        assert all(p.grad is None for p in worker.model.parameters())
    assert not torch.equal(pulled[0], pulled[2])  # the weights were re-synced from the global model


def test_serial_backend_is_exactly_reproducible(tmp_path):
    a = train_rl("a3c", run_cfg(tmp_path / "a", backend="serial"), tiny(), show_progress=False)
    b = train_rl("a3c", run_cfg(tmp_path / "b", backend="serial"), tiny(), show_progress=False)
    c = train_rl("a3c", run_cfg(tmp_path / "c", backend="serial", seed=2), tiny(), show_progress=False)

    def lines(d):
        keys = ("updates", "env_steps", "episodes", "return_mean", "eval_return", "losses")
        return [{k: json.loads(x)[k] for k in keys} for x in (d / "metrics.jsonl").read_text().splitlines()]

    assert lines(tmp_path / "a") == lines(tmp_path / "b") and lines(tmp_path / "a") != lines(tmp_path / "c")
    assert a["updates"] == b["updates"] and a["env_steps"] == b["env_steps"] and c["updates"] > 0


@pytest.mark.parametrize("sync", ["hogwild", "lock", "param-server"])
def test_step_count_equals_updates_applied_and_metrics(tmp_path, sync):
    d = tmp_path / sync
    # one line for the evaluation of the initial policy, then one per report_every updates
    summary = train_rl("a3c", run_cfg(d, max_iterations=4, eval_every_steps=10**9), tiny(sync=sync, shards=2),
                       show_progress=False)
    manifest = json.loads(sorted((d / "checkpoints").glob("*.json"))[-1].read_text())
    assert manifest["meta"]["version"] == summary["updates"] >= 60
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [0, 1, 2, 3]
    assert lines[0]["eval_return"] is not None and all(m["eval_return"] is None for m in lines[1:])
    assert summary["messages_total"] >= 2 * summary["updates"]  # every pull and every push is a message
    for m in lines[1:]:
        assert m["bytes_sent"]["gradients"] > 0 and m["bytes_received"]["parameters"] > 0
        assert m["staleness_mean"] is not None and m["live_workers"] == 2 and m["updates_per_s"] > 0
    # parameters and gradients move whole: about 4 bytes per parameter per update each way
    n = summary["num_params"]
    total = sum(m["bytes_sent"]["gradients"] for m in lines[1:])
    assert total >= 4 * n * (lines[-1]["updates"] - 20)


class DyingCartPole(CartPoleEnv):
    """The first worker process to step it dies; the coordinator (which evaluates with it) is spared."""

    marker: Path | None = None
    coordinator = os.getpid()

    def step(self, action):
        if DyingCartPole.marker is not None and os.getpid() != DyingCartPole.coordinator \
                and not DyingCartPole.marker.exists():
            try:
                os.close(os.open(DyingCartPole.marker, os.O_CREAT | os.O_EXCL))
                os._exit(9)
            except FileExistsError:
                pass
        return super().step(action)


class NaNCartPole(CartPoleEnv):
    def step(self, action):
        obs, _r, term, trunc, info = super().step(action)
        return obs, float("nan"), term, trunc, info


gym.register("esrl-test/DyingCartPole-v0", entry_point=DyingCartPole, max_episode_steps=500)
gym.register("esrl-test/NaNRewardCartPole-v0", entry_point=NaNCartPole, max_episode_steps=500)


@pytest.mark.parametrize("sync", ["hogwild", "lock", "param-server"])
def test_dead_worker_is_replaced_and_the_run_goes_on(tmp_path, sync):
    DyingCartPole.marker = tmp_path / "died"
    d = tmp_path / "r"
    summary = train_rl("a3c", run_cfg(d, env="esrl-test/DyingCartPole-v0", max_iterations=3), tiny(sync=sync),
                       show_progress=False)
    DyingCartPole.marker = None
    assert (tmp_path / "died").exists()
    events = [e for x in (d / "metrics.jsonl").read_text().splitlines() for e in json.loads(x)["events"]]
    died = [e for e in events if e["event"] == "worker_died"]
    assert len(died) == 1 and died[0]["exitcode"] == 9 and "replacement_slot" in died[0]
    assert summary["iterations"] == 3 and summary["error"] is None


@pytest.mark.parametrize("backend", ["serial", "processes"])
def test_nonfinite_reward_stops_the_run_naming_the_worker(tmp_path, backend):
    d = tmp_path / "r"
    with pytest.raises(InputError, match=r"worker \d+, update \d+: non-finite reward"):
        train_rl("a3c", run_cfg(d, env="esrl-test/NaNRewardCartPole-v0", backend=backend), tiny(),
                 show_progress=False)
    assert not list((d / "checkpoints").glob("*"))  # no checkpoint of a run that saw NaN
    assert json.loads((d / "summary.json").read_text())["stop_reason"] == "nonfinite"


def test_box_actions_learn_on_pendulum_without_error(tmp_path):
    spec = envs.spec_of("Pendulum-v1")
    setup = A3CSetup(tiny(), spec, seed=0)
    rets, _ = setup.evaluate(nets.get_flat(setup.build_model()), np.array([1, 2]))
    assert rets.shape == (2,) and np.all(rets < 0)
    s = train_rl("a3c", run_cfg(tmp_path / "p", env="Pendulum-v1", max_iterations=3), tiny(), show_progress=False)
    assert s["updates"] >= 40


def test_reward_scaler_follows_vecnormalize():
    """Rewards divided by the running std of each env's discounted return (SB3's VecNormalize), clipped,
    the return reset where an episode ended; the raw rewards are untouched."""
    from esrl.rl.common import RewardScaler

    gamma, rng = 0.99, np.random.default_rng(0)
    scale = RewardScaler(3, gamma)
    ret, seen = np.zeros(3), []
    for t in range(500):
        raw = rng.normal(-5.0, 2.0, size=3)
        done = np.array([t % 50 == 49, False, t % 7 == 6])
        before = raw.copy()
        out = scale(raw, done)
        assert np.array_equal(raw, before)
        ret = ret * gamma + raw
        seen.append(ret.copy())
        var = np.var(np.concatenate(seen))  # the running variance, within its 1e-4 prior count
        assert np.allclose(out, np.clip(raw / np.sqrt(var + 1e-8), -10, 10), rtol=1e-3)
        ret[done] = 0.0
    assert np.array_equal(scale.ret, ret)


def test_reward_norm_is_refused_unless_on_or_off():
    with pytest.raises(InputError, match="reward_norm"):
        A3CConfig(reward_norm="yes").validate()


class _Store:
    """A store of one parameter vector for a worker in this process: pull copies it, push is recorded."""

    def __init__(self, flat: torch.Tensor) -> None:
        self.flat, self.pushed = flat.clone(), []

    def pull(self, out: torch.Tensor) -> int:
        out.copy_(self.flat)
        return 0

    def push(self, grad: torch.Tensor, version: int) -> None:
        self.pushed.append(grad)


def test_gsde_noise_is_the_features_times_one_matrix_per_rollout():
    """With gSDE each env's action noise is (policy features) @ (a Gaussian matrix) held for the rollout
    (sde_sample_freq -1), or for sde_sample_freq steps; log_std holds one entry per (feature, action)."""
    from esrl.rl.a3c import StateNoise

    spec = envs.spec_of("Pendulum-v1")
    cfg = tiny(use_sde=True, log_std_init=0.0, n_steps=6)
    setup = A3CSetup(cfg, spec, seed=3)
    model = setup.build_model()
    assert model.log_std.shape == (16, 1)
    worker = setup.build_worker(0, _Store(nets.get_flat(model)))
    inner, seen = worker.noise, []

    class Recorder:  # what the worker's noise was given and gave, step by step
        def reset(self) -> None:
            inner.reset()

        def __call__(self, mean: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            seen.append((mean, z, inner(mean, z)))
            return seen[-1][2]

    worker.noise = Recorder()
    worker.step()
    assert len(seen) == 6
    z = torch.cat([s[1] for s in seen])  # (6 * envs, 16): per step, the features of each env
    noise = torch.stack([s[2] - s[0] for s in seen])  # (6, envs, 1)
    matrix = inner.matrix  # (envs, 16, 1): one per env, the same at every step of the rollout
    for t, (_, zt, _) in enumerate(seen):
        assert torch.allclose(noise[t], torch.einsum("el,ela->ea", zt, matrix), atol=1e-6)
    assert z.abs().sum() > 0 and noise.abs().sum() > 0
    # a new matrix every 2 steps with sde_sample_freq 2
    gen = torch.Generator().manual_seed(0)
    every = StateNoise(model, 2, 2, gen)
    every.reset()
    mats = []
    for _ in range(5):
        every(torch.zeros(2, 1), torch.ones(2, 16))
        mats.append(every.matrix.clone())
    assert torch.equal(mats[0], mats[1]) and not torch.equal(mats[1], mats[2])
    assert torch.equal(mats[2], mats[3]) and not torch.equal(mats[3], mats[4])


def test_gsde_log_prob_is_the_gaussian_of_features_times_the_std_matrix():
    """The loss scores an action under N(mean, sqrt(z^2 @ exp(log_std)^2)), z the policy features, detached: the
    marginal of features x a Gaussian matrix; without gSDE the std is exp(log_std) as before."""
    from esrl.rl.a3c import loss_terms

    spec = envs.spec_of("Pendulum-v1")
    model = A3CSetup(tiny(use_sde=True, log_std_init=-1.0), spec, seed=2).build_model()
    obs = torch.randn(5, 3)
    acts, adv, ret = torch.randn(5, 1), torch.ones(5), torch.zeros(5)
    mean, _, z = model.features(obs)
    std = (z.pow(2) @ torch.full((16, 1), -1.0).exp().pow(2) + 1e-6).sqrt()
    want = torch.distributions.Normal(mean, std).log_prob(acts).sum(-1)
    assert torch.allclose(loss_terms(model, obs, acts, adv, ret)["policy"], -want.mean(), atol=1e-6)
    plain = A3CSetup(tiny(), spec, seed=2).build_model()
    assert plain.log_std.shape == (1,)
    mean, _ = plain(obs)
    want = torch.distributions.Normal(mean, plain.log_std.exp()).log_prob(acts).sum(-1)
    assert torch.allclose(loss_terms(plain, obs, acts, adv, ret)["policy"], -want.mean(), atol=1e-6)


def test_gsde_is_refused_where_it_cannot_run(tmp_path):
    with pytest.raises(InputError, match="sde_sample_freq"):
        A3CConfig(sde_sample_freq=0).validate()
    with pytest.raises(InputError, match="use_sde"):
        A3CConfig(use_sde=True, sync="ga3c").validate()
    with pytest.raises(InputError, match=r"use_sde.*discrete"):
        train_rl("a3c", run_cfg(tmp_path / "c"), tiny(use_sde=True), show_progress=False)
    assert not (tmp_path / "c").exists()


def test_gsde_trains_and_its_policy_samples(tmp_path):
    from esrl.policy import load

    s = train_rl("a3c", run_cfg(tmp_path / "g", env="MountainCarContinuous-v0", max_iterations=2),
                 tiny(use_sde=True, sde_sample_freq=4), show_progress=False)
    assert s["updates"] >= 20
    policy = load(str(tmp_path / "g"))
    obs = np.zeros((3, 2), np.float32)
    a, b = policy.predict(obs, deterministic=False)[0], policy.predict(obs, deterministic=False)[0]
    assert a.shape == (3, 1) and not np.array_equal(a, b)
    assert np.array_equal(policy.predict(obs)[0], policy.predict(obs)[0])
