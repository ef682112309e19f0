"""Ray transports for the RL stores: parameter-server shard actors, and Ray twins of the
shared-memory resources a setup attaches (the global replay, Dyna-Q's world-model store,
its counter of simulated transitions).

The shard actors run the parameter server's own `Shard` on the same raw binary messages
(one-byte kind, little-endian int64 header, float32 payload) and the clients are the
parameter server's own `ServerClient` over actor "connections", so the two transports
version, apply and count bytes identically. Ray pickles only between the cluster's own
processes; what esrl sends is raw bytes, parsed with `np.frombuffer`.

Pushes are fire-and-forget (calls from one caller run in order on an actor, so a worker's
next pull sees its own push); `flush()` waits until the pushes sent so far are applied.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from collections import defaultdict, deque
from typing import Any

import numpy as np
import torch

from esrl.rl.optim import OptimSpec
from esrl.stores.server import ServerClient, ServerStore, Shard, shard_slices

_Q = struct.Struct("<q")
_CONTROL = -1  # the coordinator's key on every shard (snapshots, loads)
REFRESH_S = 0.05  # how stale a twin's cached replay size may be (it only grows: a lower bound)


def _ray() -> Any:
    import ray

    return ray


def _store_actor(cls: type) -> Any:
    """`cls` as an actor of the run's stores, pinned to the coordinator's node.

    The stores (parameter-server shards, replay, counters) ask for no CPU, so Ray could put
    them on any node; on the coordinator's they share its fate only, and losing a worker
    node costs only the workers on it (tests/test_ray_cluster.py removes one mid-run).
    """
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0, max_restarts=0, scheduling_strategy=here)(cls)


class ShardActor:
    """One parameter-server shard in a Ray actor."""

    def __init__(self, params: np.ndarray, spec: OptimSpec) -> None:
        torch.set_num_threads(1)
        self.shard = Shard(torch.from_numpy(params.copy()), spec)

    def handle(self, key: int, data: bytes) -> bytes | None:
        return self.shard.handle(key, data)


class ActorConn:
    """The `send_bytes`/`recv_bytes` half of a pipe, over calls to a shard actor."""

    def __init__(self, actor: Any, key: int) -> None:
        self.actor, self.key = actor, key
        self._replies: deque[Any] = deque()
        self._last: Any = None

    def send_bytes(self, data: bytes) -> None:
        ref = self.actor.handle.remote(self.key, data)
        if data[:1] == b"g":
            self._last = ref  # no reply; kept so that flush() can wait for it
        else:
            self._replies.append(ref)

    def recv_bytes(self) -> bytes:
        data: bytes = _ray().get(self._replies.popleft())
        return data

    def flush(self) -> None:
        if self._last is not None:
            _ray().get(self._last)
            self._last = None

    def __getstate__(self) -> dict[str, Any]:  # a client travels to its worker with nothing in flight
        return {"actor": self.actor, "key": self.key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["actor"], state["key"])  # type: ignore[misc]


class RayClient(ServerClient):
    """A worker's handle on every shard: the parameter server's client over actor calls."""

    def flush(self) -> None:
        for c in self.conns:
            c.flush()  # type: ignore[attr-defined]


class RayStore(ServerStore):
    """`shards` shard actors, each owning a contiguous slice; the optimizer runs in them.

    Shards ask Ray for no CPU (like the server processes, they mostly wait on messages), so
    Ray may place them on a head node that runs no workers. `owned` are further actors of
    the run (its twins' actors) that `close()` ends with the shards; `shutdown` also stops Ray.
    """

    transport = "ray"

    def __init__(self, params: torch.Tensor, spec: OptimSpec, shards: int = 1, owned: list[Any] | None = None,
                 shutdown: bool = False) -> None:
        flat = params.detach().float().clone()
        self.n = flat.numel()
        self.slices = shard_slices(self.n, shards)
        cls = _store_actor(ShardActor)
        self.actors = [cls.remote(flat[lo:hi].numpy(), spec) for lo, hi in self.slices]
        self._controls = [ActorConn(a, _CONTROL) for a in self.actors]
        self.owned, self.shutdown = owned or [], shutdown

    def snapshot(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        try:
            return super().snapshot()
        except _ray().exceptions.RayActorError as exc:
            from esrl.backends.base import WorkerFailure

            raise WorkerFailure(f"a parameter-server shard died ({type(exc).__name__})") from None

    def client(self, slot: int) -> RayClient:
        return RayClient([ActorConn(a, slot) for a in self.actors], self.slices)  # type: ignore[misc]

    def close(self) -> None:
        ray = _ray()
        for a in [*self.actors, *self.owned]:
            try:
                ray.kill(a)
            except Exception:  # already gone
                pass
        self.actors = []
        if self.shutdown:
            ray.shutdown()


# --- twins of the shared-memory resources ---------------------------------------------------

_COLS = (("obs", None), ("action", np.int64), ("reward", np.float32), ("next_obs", None), ("done", np.float32))


def _pack(n: int, obs_dtype: Any, cols: tuple[Any, ...]) -> bytes:
    """n transitions as raw bytes; observations in the replay's own dtype (uint8 frames stay uint8)."""
    return _Q.pack(n) + b"".join(np.ascontiguousarray(np.asarray(c), dtype=dt or obs_dtype).tobytes()
                                 for c, (_, dt) in zip(cols, _COLS, strict=True))


def _unpack(data: bytes, obs_dim: int, obs_dtype: Any) -> tuple[np.ndarray, ...]:
    (n,) = _Q.unpack_from(data, 0)
    out, offset = [], 8
    for _name, dt in _COLS:
        a = np.frombuffer(data, dt or obs_dtype, n * obs_dim if dt is None else n, offset)
        offset += a.nbytes
        out.append(a.reshape(n, obs_dim) if dt is None else a)
    return tuple(out)


def _np_dtype(torch_dtype: torch.dtype) -> Any:
    return np.uint8 if torch_dtype == torch.uint8 else np.float32


class ReplayActor:
    """The global replay memory of a run, in one actor."""

    def __init__(self, capacity: int, obs_dim: int, obs_dtype: torch.dtype = torch.float32) -> None:
        from esrl.rl.replay import Replay

        torch.set_num_threads(1)
        self.obs_dim, self.obs_np = obs_dim, _np_dtype(obs_dtype)
        self.replay = Replay(capacity, obs_dim, obs_dtype=obs_dtype)

    def add(self, data: bytes) -> None:
        self.replay.add(*_unpack(data, self.obs_dim, self.obs_np))

    def added(self) -> int:
        return self.replay.added

    def sample(self, n: int, seed: int) -> bytes:
        batch = self.replay.sample(n, torch.Generator().manual_seed(seed))
        return _Q.pack(self.replay.added) + _pack(n, self.obs_np, tuple(t.numpy() for t in batch))


class RayReplay:
    """Stands in for a shared `Replay`: `add`, `sample`, `added` and `len()` over a ReplayActor.

    Adds are fire-and-forget. `added` is cached for up to REFRESH_S seconds: it only grows,
    so a cached value is a lower bound (a learner starts a little later; planners stay
    under their ratio). Each sample draws a seed from the worker's own generator, so the
    sampled rows follow the run seed.
    """

    def __init__(self, capacity: int, obs_dim: int, obs_dtype: torch.dtype = torch.float32, actor: Any = None) -> None:
        self.capacity, self.obs_dim, self.obs_dtype = capacity, obs_dim, obs_dtype
        self.actor = actor if actor is not None else _store_actor(ReplayActor).remote(
            capacity, obs_dim, obs_dtype)
        self._reset()

    def _reset(self) -> None:
        self.sent: dict[str, int] = defaultdict(int)
        self.received: dict[str, int] = defaultdict(int)
        self.messages = 0  # a call and its reply are two; a fire-and-forget add is one
        self.staleness: list[int] = []
        self._known, self._at, self._last = 0, 0.0, None

    def __getstate__(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "obs_dim": self.obs_dim, "obs_dtype": self.obs_dtype, "actor": self.actor}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def added(self) -> int:
        if time.monotonic() - self._at > REFRESH_S:
            self._known = max(self._known, int(_ray().get(self.actor.added.remote())))
            self._at = time.monotonic()
            self.sent["requests"] += 1
            self.received["requests"] += 8
            self.messages += 2
        return self._known

    def __len__(self) -> int:
        return min(self.added, self.capacity)

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
            done: np.ndarray) -> None:
        msg = _pack(len(obs), _np_dtype(self.obs_dtype), (obs, action, reward, next_obs, done))
        self._last = self.actor.add.remote(msg)
        self._known += len(obs)
        self.sent["experience"] += len(msg)
        self.messages += 1

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        data: bytes = _ray().get(self.actor.sample.remote(n, seed))
        self.sent["requests"] += 16
        self.received["experience"] += len(data)
        self.messages += 2
        (added,) = _Q.unpack_from(data, 0)
        self._known, self._at = max(self._known, added), time.monotonic()
        cols = _unpack(data[8:], self.obs_dim, _np_dtype(self.obs_dtype))
        obs, action, reward, next_obs, done = (torch.from_numpy(a.copy()) for a in cols)
        return obs.float(), action, reward, next_obs.float(), done  # as Replay.sample: observations as float32

    def flush(self) -> None:
        if self._last is not None:
            _ray().get(self._last)
            self._last = None


class CounterActor:
    def __init__(self, value: int) -> None:
        self.value = value

    def add(self, n: int) -> int:
        self.value += n
        return self.value

    def get(self) -> int:
        return self.value


class RayCounter:
    """Stands in for a shared `Counter`: `add` is exact (one round trip), `value` reads it."""

    def __init__(self, value: int = 0, actor: Any = None) -> None:
        self.actor = actor if actor is not None else _store_actor(CounterActor).remote(
            value)
        self.sent: dict[str, int] = defaultdict(int)
        self.received: dict[str, int] = defaultdict(int)
        self.messages = 0
        self.staleness: list[int] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"actor": self.actor}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(actor=state["actor"])  # type: ignore[misc]

    def _call(self, ref: Any) -> int:
        self.sent["requests"] += 8
        self.received["requests"] += 8
        self.messages += 2
        return int(_ray().get(ref))

    @property
    def value(self) -> int:
        return self._call(self.actor.get.remote())

    def add(self, n: int = 1) -> int:
        return self._call(self.actor.add.remote(n))


def to_ray(setup: Any) -> tuple[Any, list[Any]]:
    """The setup with each shared-memory resource it attached swapped for a Ray twin.

    A shared `Replay` becomes a RayReplay, a `SharedStore` (Dyna-Q's world model) a one-shard
    RayStore with the same parameters and optimizer, a `Counter` a RayCounter. Returns the
    new setup and the twins (the caller ends their actors).
    """
    from esrl.rl.replay import Replay
    from esrl.shm import Counter
    from esrl.stores.shared import SharedStore

    if not dataclasses.is_dataclass(setup) or isinstance(setup, type):
        return setup, []
    swaps: dict[str, Any] = {}
    for f in dataclasses.fields(setup):
        value = getattr(setup, f.name)
        if isinstance(value, Replay):
            swaps[f.name] = RayReplay(value.capacity, value.obs.shape[1], value.obs.dtype)
        elif isinstance(value, SharedStore):
            swaps[f.name] = twin = RayStore(value.params, value.spec)
            twin.load(*value.snapshot())  # moments and version too (a resumed Dyna-Q's world model)
        elif isinstance(value, Counter):
            swaps[f.name] = RayCounter(value.value)
    if not swaps:
        return setup, []
    twins = list(swaps.values())
    owned = [a for t in twins for a in (t.actors if isinstance(t, RayStore) else [t.actor])]
    return dataclasses.replace(setup, **swaps), owned


def twins_of(setup: Any) -> list[Any]:
    """The setup's Ray twins that count bytes (a worker reports them with its own client's)."""
    if not dataclasses.is_dataclass(setup):
        return []
    return [v for f in dataclasses.fields(setup) if isinstance(v := getattr(setup, f.name), RayReplay | RayCounter)]
