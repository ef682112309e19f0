"""The simulated backend's network against a real one: Ray on two nodes joined by a rate-limited link.

Issue 12's network check. Two network namespaces joined by a veth pair with `tbf` at --rate-mbit on
both ends (`benchmarks/netns.py`); a Ray head in A that offers no CPU and a node in B with the CPUs.
The driver runs in A, so the coordinator and the parameter-server shard (esrl pins its store
actors to the driver's node) sit in A and every worker in B: every pull, push, task, result and
broadcast crosses the link. In the simulator's hub the same bytes cross the shard's (or the
coordinator's) link, which stands for the veth: with one shard the workers' links together never
carry more. A3C (param-server, one shard) and ES run through esrl's Python API (`train_rl`,
`train`); the same configs then run on `--backend simulated` with `bandwidth_gbit` = the tbf rate
and `latency_us` = half the TCP round trip measured over the idle veth; and A3C's messages run once
more over plain TCP sockets (`netns.ps_pattern`: the same sizes, the simulator's compute between
them, no Ray), which tells the network model's error from Ray's. The simulator charges TCP/IPv4 on
Ethernet's framing (`sim.framing.Framing`: 90 bytes per segment, ACKs on the reverse link); the tbf
counts 66 of those 90 (no FCS, preamble or gap on a veth), so on this link the model is about 2%
slow for large messages. Rates are taken over the metrics lines after the first (start-up
excluded), evaluations off; ES's is its median iteration.

A3C's hidden sizes (96, 96) make a gradient and a parameter reply 80 KB (0.032 s each at 20 Mbit/s).
Above 100 KiB Ray moves an argument or a result through its object store instead of the call, which
here halved the measured rate (107 KB: 11 updates/s measured, 22 simulated), a cost of Ray's.

Prints one JSON line per comparison: `ratio` = simulated / measured (issue 12 asks for 0.75-1.25),
`ratio_tcp` = simulated / plain TCP; `bytes_per_update` (what esrl counts, both directions; per
iteration for ES), `wire_bytes_per_update` (what crossed the veth, both directions: frame, IP and
TCP headers, ACKs, Ray's framing and control traffic); `link_busy`, `sim_link_busy`,
`tcp_link_busy`: the busier direction's bytes over the rate (the link is the bottleneck near 1).
Then one line with the link. Needs root; about 90 s. Run:
    .venv/bin/python benchmarks/sim_network.py [--rate-mbit 20] [--seconds 15] [--hidden 96,96] [--a3c-workers 4,2]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import netns
import provenance
from esrl.config import A3CConfig, ESConfig, RunConfig
from esrl.train import train
from esrl.train_rl import train_rl
from sim_validation import emit

BUSY = 0.8  # link_busy above this: the link is the bottleneck


@dataclass(frozen=True)
class Case:
    """One comparison: an algorithm on `workers` workers, all on node B; A3C's hidden sizes."""

    algo: str
    workers: int
    hidden: tuple[int, ...] = (96, 96)  # actor and critic: 19,875 parameters, an 80 KB gradient

    @property
    def name(self) -> str:
        return f"{self.algo}_w{self.workers}"


START_CAP_S = 120.0  # A3C: at most this long for Ray to start the actors before the measured window


@dataclass(frozen=True)
class Plan:
    """The cases, A3C's seconds per run (measured from its first metrics line: start-up, however slow on a
    loaded machine, does not eat the window) and ES's iterations, on each backend."""

    cases: tuple[Case, ...] = (Case("a3c", 4), Case("a3c", 2), Case("es", 2))
    seconds: float = 15.0
    es_iterations: int = 40

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        d = json.loads(text)
        cases = tuple(Case(c["algo"], c["workers"], tuple(c["hidden"])) for c in d.pop("cases"))
        return cls(cases=cases, **d)


def train_one(plan: Plan, case: Case, backend: str, run_dir: Path, dev: str = "", **extra: Any) -> list[dict[str, Any]]:
    """One run of `case` on `backend`; its metrics lines, each with `link`: the counters of this
    namespace's veth end `dev` when the line was written ((0, 0) without one)."""
    base = dict(env="CartPole-v1", seed=0, backend=backend, workers=case.workers, target_return=1e9,
                stop_on_solve=False, eval_every_steps=10**12, checkpoint_every=10**6, confirm_episodes=0,
                tensorboard=False, run_dir=str(run_dir), preset="none", **extra)
    lines: list[dict[str, Any]] = []

    def probe(line: dict[str, Any]) -> bool:
        lines.append({**line, "link": _counters(dev) if dev else (0, 0)})
        return case.algo == "es" or line["wall_s"] - lines[0]["wall_s"] < plan.seconds

    if case.algo == "es":
        train(RunConfig(**base, max_seconds=0, max_iterations=plan.es_iterations), ESConfig(population=48, hidden=(16,)),
              show_progress=False, callbacks=[probe])
    else:
        cfg = A3CConfig(sync="param-server", shards=1, hidden=case.hidden, envs_per_worker=4, report_every=20)
        run = RunConfig(**base, max_seconds=plan.seconds + START_CAP_S)
        train_rl(case.algo, run, cfg, show_progress=False, callbacks=[probe])
    return lines


def window(case: Case, lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The metric over the lines after the first (start-up excluded, as `sim_validation.rates`; ES: the
    median of its iterations, A3C: updates over the window), the bytes
    esrl counted per update (per iteration for ES, both directions) and the veth's bytes each way."""
    if len(lines) < 3:
        raise RuntimeError(f"{case.name}: {len(lines)} metrics lines, too few to measure (a longer --seconds)")
    first, last = lines[1], lines[-1]
    wall = last["wall_s"] - first["wall_s"]
    n = last["iteration"] - first["iteration"] if case.algo == "es" else last["updates"] - first["updates"]
    # each line counts the bytes of its own interval: the window's are those of the lines after `first`
    sent, received = (sum(m[k] for m in lines[2:]) for k in ("bytes_sent_total", "bytes_received_total"))
    tx, rx = (b - a for a, b in zip(first["link"], last["link"], strict=True))
    if case.algo == "es":  # the median iteration: one slow call of Ray's (or of this shared VM) moves a mean of 20-40
        value = statistics.median((b["wall_s"] - a["wall_s"]) / max(1, b["iteration"] - a["iteration"])
                                  for a, b in itertools.pairwise(lines[1:]))
    else:
        value = n / wall
    return {"value": value, "mean": wall / n if case.algo == "es" else n / wall, "seconds": wall, "n": n,
            "bytes_per_update": (sent + received) / n, "counted_each_way": max(sent, received) / wall,
            "compute_per_update": sum(m["compute_s"] for m in lines[2:]) / n, "tx": tx, "rx": rx}


# --- inside namespace A ------------------------------------------------------------------------------


def _counters(dev: str) -> tuple[int, int]:
    """(tx, rx) bytes of this namespace's veth end, A->B and B->A (`ip netns exec` mounts the namespace's /sys)."""
    stats = Path("/sys/class/net") / dev / "statistics"
    return int((stats / "tx_bytes").read_text()), int((stats / "rx_bytes").read_text())


def driver(plan: Plan, address: str, dev: str) -> None:
    """Run each case on the cluster at `address`; print one JSON line each: its window and the nodes
    (addresses) its actors ran on, by class."""
    import ray

    from esrl.backends.ray_backend import init

    init(address)  # joined here, so Ray outlives each run and its actor table can be read afterwards
    ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    seen: set[str] = set()
    for case in plan.cases:
        with tempfile.TemporaryDirectory() as tmp:
            measured = window(case, train_one(plan, case, "ray", Path(tmp) / "r", dev, address=address))
        placed: dict[str, list[str]] = {}
        # the GCS actor table, dead actors included (Ray's state API would need the dashboard, which is off)
        for aid, actor in ray._private.state.actors().items():
            if aid not in seen:
                seen.add(aid)
                placed.setdefault(actor["ActorClassName"], []).append(ips.get(actor["Address"]["NodeID"], "?"))
        print(json.dumps({**measured, "placed": {k: sorted(v) for k, v in placed.items()}}), flush=True)
    ray.shutdown()


# --- outside: the comparison -------------------------------------------------------------------------


def run_driver(link: netns.Link, plan: Plan, address: str) -> list[dict[str, Any]]:
    """The plan's cases on the cluster, from a driver in namespace A (`ip netns exec`)."""
    argv = [sys.executable, __file__, "--driver", address, "--dev", link.dev[0], "--plan", plan.to_json()]
    res = subprocess.run(link.cmd(0, argv), capture_output=True, text=True, env=netns.ray_env(), timeout=900)
    if res.returncode:
        raise RuntimeError(f"the driver in {link.ns[0]} failed: {res.stderr.strip()[-3000:]}")
    return [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]


def simulate(plan: Plan, case: Case, bandwidth_mbit: float, latency_us: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return window(case, train_one(plan, case, "simulated", Path(tmp) / "r", broadcast="hub",
                                      bandwidth_gbit=bandwidth_mbit / 1e3, latency_us=latency_us))


def compare(link: netns.Link, plan: Plan, tcp_seconds: float = 8.0) -> list[dict[str, Any]]:
    """Measure the link, run the plan on a Ray cluster across it and on the simulator, and A3C's messages
    over plain TCP (`netns.ps_pattern`); one record per case, then one for the link."""
    rate = link.rate_mbit
    assert rate is not None, "compare() needs a rate-limited link"
    net = netns.measure(link)
    with netns.ray_cluster(link, head_cpus=0, worker_cpus=max(c.workers for c in plan.cases)) as address:
        real = run_driver(link, plan, address)
    records: list[dict[str, Any]] = []
    for case, got in zip(plan.cases, real, strict=True):
        sim = simulate(plan, case, rate, net["latency_us"])
        busy = max(got["tx"], got["rx"]) / got["seconds"] / link.rate_bytes
        rec = dict(name=f"{case.name}_{rate:g}mbit", algo=case.algo, workers=case.workers,
                   metric="iteration_s" if case.algo == "es" else "updates_per_s", measured=got["value"],
                   simulated=sim["value"], ratio=sim["value"] / got["value"], measured_mean=got["mean"],
                   simulated_mean=sim["mean"], bandwidth_mbit=rate,
                   latency_us=net["latency_us"], bytes_per_update=got["bytes_per_update"],
                   sim_bytes_per_update=sim["bytes_per_update"],
                   wire_bytes_per_update=(got["tx"] + got["rx"]) / got["n"], link_busy=busy,
                   sim_link_busy=sim["counted_each_way"] / link.rate_bytes, link_bottleneck=busy > BUSY,
                   hidden=list(case.hidden) if case.algo != "es" else None, placed=got["placed"])
        if case.algo != "es":  # the same messages and the simulator's compute between them, over plain sockets
            tcp = netns.ps_pattern(link, case.workers, round(sim["bytes_per_update"] / 2),
                                   sim["compute_per_update"], tcp_seconds)
            rec.update(tcp=tcp["updates_per_s"], ratio_tcp=sim["value"] / tcp["updates_per_s"],
                       tcp_link_busy=tcp["link_busy"])
        records.append(rec)
    command = " ".join(["python", "benchmarks/sim_network.py", *sys.argv[1:]])
    return [*records, dict(name="link", bandwidth_mbit=rate, **net, command=command, **provenance.stamp())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate-mbit", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=Plan.seconds, help="A3C: seconds measured per run, from its first metrics line")
    parser.add_argument("--hidden", default="96,96", help="A3C hidden sizes")
    parser.add_argument("--a3c-workers", default="4,2", help="A3C's worker counts, one case each (ES runs on 2)")
    parser.add_argument("--driver", metavar="ADDRESS", help=argparse.SUPPRESS)  # inside namespace A, with:
    parser.add_argument("--dev", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        driver(Plan.from_json(args.plan), args.driver, args.dev)
        return
    why = netns.unavailable()
    if why:
        sys.exit(f"sim_network: {why}")
    hidden = tuple(int(x) for x in args.hidden.split(","))
    cases = (*(Case("a3c", int(w), hidden) for w in args.a3c_workers.split(",")), Case("es", 2))
    plan = Plan(cases=cases, seconds=args.seconds)
    t0 = time.perf_counter()
    with netns.two_namespaces(args.rate_mbit) as link:
        for record in compare(link, plan):
            emit(**record)
    print(f"done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
