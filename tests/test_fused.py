"""The fused CartPole kernel (esrl.es.fused), run by Triton's interpreter on the CPU against the torch engine."""

import os

import numpy as np
import pytest
import torch

pytest.importorskip("triton", reason="Triton is the `gpu` extra (installed by `make test`)")


@pytest.fixture
def interpreted():
    """The kernel on the GPU, or in Triton's interpreter (numpy) where there is none (tests/conftest.py)."""
    from esrl.es import fused

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU, and TRITON_INTERPRET was not set before triton was imported")
    return fused


def _replica(engine, population=48, seed=1, hidden=(16,), **cfg):
    from esrl import envs
    from esrl.config import ESConfig
    from esrl.es.vectorized import ESTorchSetup

    return ESTorchSetup(ESConfig(population=population, sigma=0.5, hidden=hidden, **cfg), envs.spec_of("CartPole-v1"),
                        seed, device="cuda" if torch.cuda.is_available() else "cpu", engine=engine).build()


def test_fused_kernel_plays_the_torch_engines_episodes(interpreted):
    """Same members, same initial states: the same episodes up to float32 rounding, with observation sums."""
    outs = []
    for engine in ("fused", "torch"):
        rep = _replica(engine, obs_norm_fraction=0.5)
        assert rep.use_fused == (engine == "fused")
        outs.append(rep.run(("pop", 0, 0, 48)))
    fz, tz = outs
    assert tz["lengths"].std() > 0  # the members differ, so matching them checks the weights' addressing
    same = fz["lengths"] == tz["lengths"]
    assert same.mean() >= 0.95  # float32 dynamics against float64: a rare step can cross a bound
    np.testing.assert_array_equal(fz["returns"], fz["lengths"].astype(float))  # CartPole: 1 per step
    np.testing.assert_array_equal(fz["returns"][same], tz["returns"][same])
    assert [o[0] for o in fz["obs"]] == [o[0] for o in tz["obs"]] and len(fz["obs"]) > 0
    for (i, s1, q1, n1), (_, s2, q2, n2) in zip(fz["obs"], tz["obs"], strict=True):
        assert (n1 == n2) == same[i]
        if same[i]:
            np.testing.assert_allclose(s1, s2, rtol=1e-3, atol=1e-3)
            np.testing.assert_allclose(q1, q2, rtol=1e-3, atol=1e-3)


def test_fused_kernel_normalises_pads_the_hidden_layer_and_caps_episodes(interpreted):
    """A hidden size that is not a power of two, a live normaliser and the adaptive cap, as the torch engine runs them."""
    outs = []
    for engine in ("fused", "torch"):
        rep = _replica(engine, population=32, hidden=(12,))
        rep.obstat.total[:] = [0.1, -0.2, 0.01, 0.3]  # a normaliser far from the identity
        rep.obstat.sumsq[:] = [4.0, 9.0, 0.5, 16.0]
        rep.obstat.count = 10.0
        rep.step_cap = 30
        outs.append(rep.run(("pop", 0, 0, 32)))
    assert outs[1]["lengths"].max() == 30 and outs[0]["lengths"].max() == 30
    assert (outs[0]["lengths"] == outs[1]["lengths"]).mean() >= 0.9


def test_same_seed_same_episodes_other_seed_others(interpreted):
    a, b, c = (_replica("fused", seed=s).run(("pop", 0, 0, 48)) for s in (1, 1, 2))
    np.testing.assert_array_equal(a["lengths"], b["lengths"])
    assert not np.array_equal(a["lengths"], c["lengths"])


def test_auto_engine_uses_the_kernel_only_where_it_applies():
    from esrl.errors import InputError
    from esrl.es import fused

    assert _replica("auto").use_fused == torch.cuda.is_available()  # the CPU: the numpy engine
    assert fused.supports("CartPole-v1", [(4, 16), (16, 2)], 0.0) is None
    assert "one hidden layer" in fused.supports("CartPole-v1", [(4, 8), (8, 8), (8, 2)], 0.0)
    assert "Acrobot" in fused.supports("Acrobot-v1", [(6, 16), (16, 3)], 0.0)
    with pytest.raises(InputError, match=r"^engine: fused: the fused kernel runs an MLP with one hidden layer"):
        _replica("fused", hidden=(8, 8))
    with pytest.raises(InputError, match=r"^engine: must be one of"):
        _replica("cuda-ish")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_kernel_on_cuda_matches_the_torch_engine():
    from esrl import envs
    from esrl.config import ESConfig
    from esrl.es.vectorized import ESTorchSetup

    outs = [ESTorchSetup(ESConfig(population=4096, sigma=0.5), envs.spec_of("CartPole-v1"), 1, device="cuda",
                         engine=e).build().run(("pop", 0, 0, 4096)) for e in ("auto", "torch", "auto")]
    assert (outs[0]["lengths"] == outs[1]["lengths"]).mean() >= 0.95
    np.testing.assert_array_equal(outs[0]["lengths"], outs[2]["lengths"])
