"""Two network namespaces joined by a rate-limited veth pair, and a Ray cluster across them.

The real network the simulated backend's is checked against (issue 12; `benchmarks/sim_network.py`,
`tests/test_sim_netns.py`): namespace A holds 10.213.0.1, namespace B 10.213.0.2, one veth pair
between them with a `tbf` qdisc on both ends, so each direction is limited to the rate. Nothing
is routed out of either namespace: a process in one reaches the other's address and its own
loopback, nothing else. Needs root and iproute2 (`ip netns`, `ip link`, `tc`).

`two_namespaces()` creates everything under names that carry this process's id and always takes
it down: every process still inside either namespace (the Ray nodes started there and whatever
they forked, all started from here) is killed by its id, then the namespaces are deleted, which
deletes the veth pair. `ray_cluster()` never calls `ray stop`, which would end every Ray of the
machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ADDRS = ("10.213.0.1", "10.213.0.2")  # a /30 of the pair's own, inside the namespaces only
RAY_PORT = 6379
PROBE_PORT = 7801  # the TCP probes' servers (measure, ps_pattern)
_TOKEN = secrets.token_hex(32)  # the cluster's authentication token, made here (no ~/.ray/auth_token is read)


def _sh(*argv: str, timeout: float = 60, env: dict[str, str] | None = None) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if res.returncode:
        raise RuntimeError(f"{' '.join(argv[:6])}: {(res.stderr or res.stdout).strip()[-2000:]}")
    return res.stdout


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None: try): not root, or no iproute2."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    return f"{' and '.join(missing)} not found (iproute2)" if missing else None


@dataclass
class Link:
    """The two namespaces (0: A, 1: B), their veth ends, and the rate each direction is limited to."""

    ns: tuple[str, str]
    dev: tuple[str, str]
    rate_mbit: float | None = None  # None: no tbf, the veth's own speed
    burst_bytes: int = 16_000
    queue_ms: float = 200.0

    def cmd(self, side: int, argv: Sequence[str]) -> list[str]:
        """`argv` to run inside namespace `side`."""
        return ["ip", "netns", "exec", self.ns[side], *argv]

    def tx_bytes(self, side: int) -> int:
        """Bytes the veth end in namespace `side` has sent: whole frames, every protocol's headers included."""
        out = json.loads(_sh("ip", "-n", self.ns[side], "-j", "-s", "link", "show", "dev", self.dev[side]))
        return int(out[0]["stats64"]["tx"]["bytes"])

    def limit(self, rate_mbit: float | None) -> None:
        """Put a `tbf` of `rate_mbit` on both veth ends (None: take it off)."""
        for ns, dev in zip(self.ns, self.dev, strict=True):
            if self.rate_mbit is not None:
                _sh("tc", "-n", ns, "qdisc", "del", "dev", dev, "root")
            if rate_mbit is not None:
                _sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{rate_mbit}mbit",
                    "burst", str(self.burst_bytes), "latency", f"{self.queue_ms}ms")
        self.rate_mbit = rate_mbit

    @property
    def rate_bytes(self) -> float:
        """The limit in bytes/s (tc's mbit is 10^6 bit/s); inf without one."""
        return float("inf") if self.rate_mbit is None else self.rate_mbit * 1e6 / 8


@contextlib.contextmanager
def two_namespaces(rate_mbit: float | None = 20.0, burst_bytes: int = 16_000, queue_ms: float = 200.0
                   ) -> Iterator[Link]:
    """Namespaces A and B, a veth pair between them, `tbf` at `rate_mbit` on both ends; all removed on exit.

    `burst_bytes`: the bucket (above one 1,514-byte frame, small next to a 100 KB message, so the rate
    holds within one); `queue_ms`: how long a packet may wait in the qdisc before it is dropped,
    long enough that TCP seldom loses one. Raises RuntimeError (with `ip`'s message) when the
    namespaces cannot be made.
    """
    tag = f"esrl{os.getpid()}"
    link = Link(ns=(f"{tag}a", f"{tag}b"), dev=(f"{tag}va", f"{tag}vb"), burst_bytes=burst_bytes, queue_ms=queue_ms)
    made: list[str] = []
    try:
        for ns in link.ns:
            _sh("ip", "netns", "add", ns)
            made.append(ns)
        _sh("ip", "link", "add", link.dev[0], "netns", link.ns[0], "type", "veth", "peer", "name", link.dev[1],
            "netns", link.ns[1])
        for side, (ns, dev) in enumerate(zip(link.ns, link.dev, strict=True)):
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "-n", ns, "addr", "add", f"{ADDRS[side]}/30", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
        link.limit(rate_mbit)
        yield link
    finally:
        _kill_inside(made)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _kill_inside(namespaces: Sequence[str]) -> None:
    """SIGKILL every process in `namespaces` (all of them started from here), by id."""
    for ns in namespaces:
        res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        for pid in (int(p) for p in res.stdout.split()):
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# --- the link as TCP sees it --------------------------------------------------------------------------

_ECHO = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1); print("ready", flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while len(head := c.recv(8, socket.MSG_WAITALL)) == 8:
    left = int.from_bytes(head, "little")
    while left:
        left -= len(c.recv(min(left, 1 << 20)))
    c.sendall(b"k")
"""

_CLIENT = """
import json, socket, sys, time
host, port, rounds, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c = socket.create_connection((host, port), timeout=30); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def send(n):
    c.sendall(n.to_bytes(8, "little") + bytes(n)); assert c.recv(1) == b"k"
for _ in range(20): send(0)
t0 = time.perf_counter()
for _ in range(rounds): send(0)
rtt = (time.perf_counter() - t0) / rounds
t0 = time.perf_counter(); send(big); took = time.perf_counter() - t0 - rtt
print(json.dumps({"latency_us": rtt / 2 * 1e6, "goodput_mbit": big * 8 / took / 1e6}))
"""


def measure(link: Link, rounds: int = 500, nbytes: int = 1_000_000) -> dict[str, float]:
    """`latency_us`: half the round trip of an 8-byte TCP message over the idle veth (there is no ping here);
    `goodput_mbit`: the payload rate of one `nbytes` message from A to B. The server runs in B, the
    client in A: both only see the veth's two addresses."""
    server = subprocess.Popen(link.cmd(1, [sys.executable, "-c", _ECHO, ADDRS[1], str(PROBE_PORT)]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = [sys.executable, "-c", _CLIENT, ADDRS[1], str(PROBE_PORT), str(rounds), str(nbytes)]
        out: dict[str, float] = json.loads(_sh(*link.cmd(0, client)))
        return out
    finally:
        server.kill()
        server.wait()


_PS_SERVER = """
import socket, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reply = bytes(n)
    while kind := c.recv(1):
        if kind == b"p":
            c.sendall(reply)
        else:
            c.recv(n, socket.MSG_WAITALL)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((host, port)); s.listen(64)
print("ready", flush=True)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""

_PS_CLIENT = """
import json, socket, sys, threading, time
host, port, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pause, seconds = float(sys.argv[5]), float(sys.argv[6])
done, failed = [0] * workers, []
def work(i):
    try:
        c = socket.create_connection((host, port), timeout=30)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        push, end = b"g" + bytes(n), time.perf_counter() + seconds
        while time.perf_counter() < end:
            c.sendall(b"p")
            got = 0
            while got < n:  # recv(MSG_WAITALL) returns early on a socket with a timeout
                chunk = c.recv(n - got)
                assert chunk, "the server closed"
                got += len(chunk)
            time.sleep(pause)
            c.sendall(push)
            done[i] += 1
    except Exception as exc:
        failed.append(repr(exc))
threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
t0 = time.perf_counter()
for t in threads: t.start()
for t in threads: t.join()
if failed: sys.exit(failed[0])
print(json.dumps({"updates": sum(done), "seconds": time.perf_counter() - t0}))
"""


def ps_pattern(link: Link, workers: int, nbytes: int, pause_s: float, seconds: float = 8.0) -> dict[str, float]:
    """A parameter server's messages over plain TCP, no Ray: each of `workers` clients in B pulls (a 1-byte
    request, an `nbytes` reply from A), pauses `pause_s` (its compute), pushes `nbytes`, again.
    Returns `updates_per_s` and `link_busy` (the busier direction's veth bytes over the rate)."""
    server = subprocess.Popen(link.cmd(0, [sys.executable, "-c", _PS_SERVER, ADDRS[0], str(PROBE_PORT), str(nbytes)]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        before = link.tx_bytes(0), link.tx_bytes(1)
        argv = [sys.executable, "-c", _PS_CLIENT, ADDRS[0], str(PROBE_PORT), str(nbytes), str(workers), str(pause_s),
                str(seconds)]
        got = json.loads(_sh(*link.cmd(1, argv), timeout=seconds + 60))
        sent = max(link.tx_bytes(0) - before[0], link.tx_bytes(1) - before[1])
        return {"updates_per_s": got["updates"] / got["seconds"], "link_busy": sent / got["seconds"] / link.rate_bytes}
    finally:
        server.kill()
        server.wait()


# --- Ray across the namespaces ------------------------------------------------------------------------


def ray_env() -> dict[str, str]:
    """The environment of the cluster's processes and of its driver: Ray's token authentication, with a token
    of this process's own."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never another cluster
    return {**env, "RAY_DISABLE_USAGE_STATS": "1", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _TOKEN}


@contextlib.contextmanager
def ray_cluster(link: Link, head_cpus: int = 0, worker_cpus: int = 2) -> Iterator[str]:
    """A Ray head in A offering `head_cpus` and a node in B offering `worker_cpus`; yields the head's address.

    Each node has its own temporary directory (the namespaces share the filesystem); its sockets
    listen on its namespace's address and loopback only. On exit every process in both namespaces
    is killed by its id and the directories are removed.
    """
    ray = str(Path(sys.executable).parent / "ray")
    tmp = Path(tempfile.mkdtemp(prefix="esrlray", dir="/tmp"))  # short: Ray's socket paths are length-limited
    address = f"{ADDRS[0]}:{RAY_PORT}"
    common = ["--disable-usage-stats", "--include-dashboard=false"]
    try:
        _sh(*link.cmd(0, [ray, "start", "--head", "--node-ip-address", ADDRS[0], "--port", str(RAY_PORT),
                          "--num-cpus", str(head_cpus), "--temp-dir", str(tmp / "a"), *common]), timeout=120,
            env=ray_env())
        _sh(*link.cmd(1, [ray, "start", "--address", address, "--node-ip-address", ADDRS[1],
                          "--num-cpus", str(worker_cpus), "--temp-dir", str(tmp / "b"), *common[:1]]), timeout=120,
            env=ray_env())
        yield address
    finally:
        _kill_inside(link.ns)
        time.sleep(0.2)  # the killed processes' files
        shutil.rmtree(tmp, ignore_errors=True)
