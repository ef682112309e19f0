"""The Ray backend: the same bits as the processes backend, and a killed actor recovered."""

import numpy as np
import pytest

from esrl.train import train
from tests.conftest import det_metrics, final_state, tiny_es, tiny_run
from tests.test_faults import DyingReplica, _wrap

ray = pytest.importorskip("ray")


pytestmark = pytest.mark.usefixtures("local_ray")  # one local Ray, shared (tests/conftest.py)


def test_ray_matches_processes_bit_for_bit(tmp_path):
    train(tiny_run(tmp_path / "p", backend="processes", workers=2), tiny_es(), show_progress=False)
    train(tiny_run(tmp_path / "r", backend="ray", workers=2), tiny_es(), show_progress=False)
    for key in ("theta", "opt_m", "opt_v", "obs_sum"):
        assert np.array_equal(final_state(tmp_path / "p")[key], final_state(tmp_path / "r")[key]), key
    assert det_metrics(tmp_path / "p") == det_metrics(tmp_path / "r")


def test_ray_traffic_is_counted_and_scalar_only(tmp_path):
    import json

    sizes = {}
    for hidden in [(8,), (256, 256)]:
        d = tmp_path / f"h{len(hidden)}"
        train(tiny_run(d, backend="ray", workers=2, max_iterations=3, eval_episodes=1),
              tiny_es(hidden=hidden, obs_norm=False, noise_table_size=0), show_progress=False)
        line = json.loads((d / "metrics.jsonl").read_text().splitlines()[1])
        assert line["bytes_sent"]["task"] > 0 and line["bytes_received"]["result"] > 0
        sizes[hidden] = (line["bytes_sent"]["task"], line["bytes_sent"]["apply"])
    assert sizes[(8,)] == sizes[(256, 256)]


def test_killed_actor_is_replaced_and_the_result_is_unchanged(tmp_path):
    import json

    train(tiny_run(tmp_path / "clean", backend="ray", workers=2), tiny_es(), show_progress=False)
    d = tmp_path / "faulty"
    train(tiny_run(d, backend="ray", workers=2), tiny_es(), show_progress=False,
          worker_setup=_wrap(tmp_path / "died", DyingReplica))
    assert (tmp_path / "died").exists()
    events = [e for x in (d / "metrics.jsonl").read_text().splitlines() for e in json.loads(x)["events"]]
    died = [e for e in events if e["event"] == "worker_died"]
    assert len(died) == 1 and "replacement" in died[0] and died[0]["requeued_task"] is not None
    assert np.array_equal(final_state(d)["theta"], final_state(tmp_path / "clean")["theta"])


def test_default_workers_are_one_per_cluster_cpu(local_ray):
    from esrl.backends.ray_backend import RayBackend

    backend = RayBackend(0)
    try:
        assert backend.n == int(local_ray.cluster_resources()["CPU"]) == 4  # the shared instance has 4 CPUs
    finally:
        backend.close()
