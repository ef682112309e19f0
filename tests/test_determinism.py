"""Order-free ES: theta is bit-identical whoever computes the members."""

import numpy as np
import pytest

from esrl.train import train
from tests.conftest import det_metrics, final_state, tiny_run
from tests.conftest import tiny_es as _tiny_es


def tiny_es(**kw):
    # every optional stream on: obs statistics, action noise, adaptive cap
    return _tiny_es(obs_norm_fraction=0.3, action_noise=0.01, adaptive_cap=True, **kw)


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("serial") / "run"
    train(tiny_run(d), tiny_es(), show_progress=False)
    return d


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_processes_match_serial_bit_for_bit(serial_run, tmp_path, workers):
    d = tmp_path / "run"
    train(tiny_run(d, backend="processes", workers=workers), tiny_es(), show_progress=False)
    a, b = final_state(serial_run), final_state(d)
    for key in ("theta", "opt_m", "opt_v", "obs_sum", "obs_sumsq"):
        assert np.array_equal(a[key], b[key]), key
    assert det_metrics(serial_run) == det_metrics(d)


def test_same_seed_same_metrics_other_seed_differs(serial_run, tmp_path):
    train(tiny_run(tmp_path / "again"), tiny_es(), show_progress=False)
    train(tiny_run(tmp_path / "other", seed=4), tiny_es(), show_progress=False)
    assert det_metrics(tmp_path / "again") == det_metrics(serial_run)
    assert det_metrics(tmp_path / "other") != det_metrics(serial_run)
    assert not np.array_equal(final_state(tmp_path / "other")["theta"], final_state(serial_run)["theta"])


def test_chunking_does_not_change_results(serial_run, tmp_path):
    train(tiny_run(tmp_path / "c", backend="processes", workers=2), tiny_es(chunk=2), show_progress=False)
    assert np.array_equal(final_state(tmp_path / "c")["theta"], final_state(serial_run)["theta"])
