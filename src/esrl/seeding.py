"""Every random stream in esrl comes from (run seed, role, index...) through this module.

No global RNG is touched. A role is a short string; it is hashed to a stable integer so that
streams of different roles never collide and adding a role never shifts another one.
"""

from __future__ import annotations

import zlib

import numpy as np


def _role_key(role: str) -> int:
    return zlib.crc32(role.encode("utf-8"))


def seed_sequence(seed: int, role: str, *index: int) -> np.random.SeedSequence:
    """The SeedSequence of stream `role` at `index` under run seed `seed`."""
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(_role_key(role), *map(int, index)))


def rng(seed: int, role: str, *index: int) -> np.random.Generator:
    """A fresh numpy Generator for (seed, role, *index)."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, role, *index)))


def derive_int(seed: int, role: str, *index: int) -> int:
    """A 31-bit integer seed for libraries that take one (e.g. ``env.reset(seed=...)``)."""
    return int(seed_sequence(seed, role, *index).generate_state(1, dtype=np.uint32)[0] >> 1)
