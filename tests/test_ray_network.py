"""What a Ray run exposes on the network: a local instance listens on loopback only, and an
address where nothing answers is a quick one-line error."""

import ipaddress
import os
import socket
import subprocess
import sys
import time

import pytest

from esrl.backends.ray_backend import probe
from esrl.errors import InputError

ray = pytest.importorskip("ray")


def _conns(proc) -> list:
    import psutil

    try:
        return proc.net_connections(kind="inet")
    except (psutil.NoSuchProcess, psutil.ZombieProcess):  # exited since it was listed
        return []


def _exposed(proc) -> list[str]:
    """The sockets of `proc` that accept connections or datagrams on a non-loopback address."""
    import psutil

    out = []
    for c in _conns(proc):
        listening = c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)
        if not listening:
            continue
        ip = ipaddress.ip_address(c.laddr.ip.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_loopback:
            out.append(f"{proc.name()} (pid {proc.pid}) on {c.laddr.ip}:{c.laddr.port}")
    return out


def test_a_local_instance_listens_on_loopback_only(local_ray):
    """The session's instance is started by esrl's own path (tests/conftest.py), as a run's is."""
    psutil = pytest.importorskip("psutil")

    @ray.remote(num_cpus=0)
    class Probe:
        def pid(self) -> int:
            return os.getpid()

    actor = Probe.remote()
    actor_pid = ray.get(actor.pid.remote())  # a worker process with its own gRPC server
    try:
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        assert actor_pid in {p.pid for p in procs}  # the tree below is the whole instance
        names = {p.name() for p in procs if any(c.status == psutil.CONN_LISTEN for c in _conns(p))}
        assert {"gcs_server", "raylet"} <= names  # the servers are seen listening: the check below can fail
        exposed = [line for p in procs for line in _exposed(p)]
        assert not exposed, exposed
    finally:
        ray.kill(actor)


@pytest.mark.parametrize("algo", ["es", "a3c"])
def test_an_address_that_does_not_answer_is_a_quick_one_line_error(tmp_path, algo):
    d = tmp_path / "r"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "esrl.cli", "train", algo, "--backend", "ray", "--address",
                          "127.0.0.1:1", "--workers", "2", "--run-dir", str(d), "--quiet"],
                         capture_output=True, text=True, timeout=60, env=env)
    took = time.monotonic() - t0
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1, out.stderr
    assert err[0].startswith("esrl: error: address: nothing answers at 127.0.0.1:1")
    assert took < 15, took
    assert not d.exists()


def test_probe_refuses_what_is_not_host_port():
    for bad in ("nonsense", "host:", ":6379", "host:99999"):
        with pytest.raises(InputError, match=r"^address: "):
            probe(bad)
