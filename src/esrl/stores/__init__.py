"""Parameter stores: one interface, several transports, versioned parameters.

A store holds the global flat parameter vector and its optimizer state. Workers use a
*client* of it: `pull(out) -> version` copies the current parameters, `push(grad, version)`
applies a gradient computed at `version`. The staleness of each applied gradient (updates
applied by others between its pull and its apply) is measured where the apply happens and
collected in `client.staleness`. Every client counts the bytes it moves by kind
(`parameters`, `gradients`) and the messages (`client.messages`: a pipe or Ray message, or a
copy into or out of shared memory); a store's `transport` names how they move. Transports:

- `lock`: shared memory, pulls and applies serialized by one lock;
- `hogwild`: shared memory, lock-free (Recht et al. 2011), optimizer statistics shared
  too; only the version counter is atomic, so no update goes uncounted;
- `param-server`: server processes own the parameters (split into `shards` slices) and
  apply gradients that workers send over pipes; workers pull fresh parameters from them.
"""

from __future__ import annotations

from typing import Any

from esrl.errors import InputError
from esrl.rl.optim import OptimSpec

SYNC_MODES = ("hogwild", "lock", "param-server")


def make_store(sync: str, params: Any, spec: OptimSpec, ctx: Any, slots: int = 1, shards: int = 1) -> Any:
    """The store for sync mode `sync` over the flat float32 tensor `params`."""
    if sync in ("hogwild", "lock"):
        from esrl.stores.shared import SharedStore

        return SharedStore(params, spec, ctx, lock_apply=(sync == "lock"))
    if sync == "param-server":
        from esrl.stores.server import ServerStore

        return ServerStore(params, spec, ctx, slots=slots, shards=shards)
    raise InputError("sync", f"unknown sync mode {sync!r}", ", ".join(SYNC_MODES))
