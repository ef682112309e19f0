"""The shared noise table and the addressing of perturbations.

Every worker builds the same table from the run seed, so a perturbation travels as an
offset (an int) and never as a vector. Offsets of iteration t are a pure function of
(seed, t, member): whoever evaluates a member finds the same noise.
"""

from __future__ import annotations

import numpy as np

from esrl import seeding

_TABLES: dict[tuple[int, int], np.ndarray] = {}


def noise_table(seed: int, size: int) -> np.ndarray:
    """The float32 standard-normal table of `size` entries for run seed `seed` (cached per process).

    The cache matters for forked workers: a table built before the fork is shared, not rebuilt.
    """
    key = (int(seed), int(size))
    table = _TABLES.get(key)
    if table is None:
        table = seeding.rng(seed, "noise_table").standard_normal(size, dtype=np.float32)
        table.flags.writeable = False
        _TABLES.clear()  # one table per process is enough; do not pin old ones in memory
        _TABLES[key] = table
    return table


def auto_table_size(num_params: int) -> int:
    """Default table size: 4M floats (16 MB), or 64 x the parameter count for big policies."""
    return max(1 << 22, 64 * int(num_params))


def pair_offsets(seed: int, iteration: int, num_pairs: int, table_size: int, dim: int) -> np.ndarray:
    """Table offsets of the `num_pairs` mirrored pairs of iteration `iteration`.

    Pair k holds members 2k (+noise) and 2k+1 (-noise); both read the same slice.
    """
    if table_size < dim:
        raise ValueError(f"noise table of {table_size} floats cannot hold a {dim}-parameter slice")
    gen = seeding.rng(seed, "noise_offsets", iteration)
    return gen.integers(0, table_size - dim + 1, size=num_pairs, dtype=np.int64)


def weighted_noise_sum(
    table: np.ndarray, offsets: np.ndarray, weights: np.ndarray, dim: int, chunk: int = 512
) -> np.ndarray:
    """sum_k weights[k] * table[offsets[k] : offsets[k] + dim], in float32, in a fixed order.

    The order of summation is fixed by the pair index, so every replica gets the same bits.
    """
    total = np.zeros(dim, dtype=np.float32)
    ar = np.arange(dim)
    chunk = max(1, min(chunk, (1 << 22) // dim))  # bounds the gathered block to ~16 MB for big policies
    w32 = weights.astype(np.float32)
    for start in range(0, len(offsets), chunk):
        idx = offsets[start : start + chunk][:, None] + ar[None, :]
        total += w32[start : start + chunk] @ table[idx]
    return total
