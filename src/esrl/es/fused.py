"""CartPole ES episodes as one fused GPU kernel: each member's whole episode in registers.

The batched torch path (`esrl.es.vectorized`) materialises every member's perturbed weights
and then runs a few dozen small kernels per env step, with a host sync per step to drop
finished rows. Here one Triton program runs BLOCK members from reset to the end of their
episodes:

- each member's weights are read once, straight from the shared noise table at its offset
  (theta + sigma * sign * table[offset : offset + dim]); nothing per member is written to memory;
- observation normalisation, the tanh MLP, the argmax, CartPole's Euler step, the return,
  the length and the observation sums all stay in registers for the whole episode;
- the host launches one kernel per chunk and reads back returns, lengths and the sums once.

Supported: CartPole-v1 with one hidden layer (the default MLP) and no action noise;
`supports` says why not otherwise, and the caller falls back to the torch path. The
dynamics run in float32 where the torch path uses float64, so results match that path's
episodes (same initial states) up to float32 rounding, not bit for bit, and a GPU run is
bit-reproducible on the same GPU and Triton version. On the CPU the kernel runs only under
Triton's interpreter (TRITON_INTERPRET=1), which the tests use to check it against the torch
path.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch

ENV_ID = "CartPole-v1"
BLOCK = 64  # members per program
NUM_WARPS = 4


def supports(env_id: str, layer_sizes: list[tuple[int, int]], action_noise: float) -> str | None:
    """None where the fused kernel can run this configuration, else why not (one line)."""
    if env_id != ENV_ID:
        return f"the fused kernel has {ENV_ID}'s dynamics only, not {env_id}'s"
    if len(layer_sizes) != 2:
        return f"the fused kernel runs an MLP with one hidden layer, not {len(layer_sizes) - 1}"
    if action_noise:
        return "the fused kernel adds no action noise"
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    return None


@functools.cache
def _kernel() -> Any:
    """The Triton kernel, built on first use (so TRITON_INTERPRET set by then takes effect)."""
    import triton
    import triton.language as tl

    @triton.jit
    def cartpole_episodes(theta, table, offs, signs, init, mean, istd, n_rows, sigma, clip, cap,
                          ret_out, len_out, osum_out, osq_out,
                          HID: tl.constexpr, HP: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        r = pid * BLOCK + tl.arange(0, BLOCK)
        valid = r < n_rows
        off = tl.load(offs + r, mask=valid, other=0)
        sg = tl.load(signs + r, mask=valid, other=0.0) * sigma
        j = tl.arange(0, HP)  # hidden units (padded to a power of two)
        i = tl.arange(0, 4)  # observation
        a = tl.arange(0, 2)  # actions
        hm = j < HID
        # flat layout (esrl.es.policies.MLP): W1 (HID, 4), b1 (HID), W2 (2, HID), b2 (2)
        w1i = j[:, None] * 4 + i[None, :]
        m1 = hm[:, None] & (i[None, :] < 4)
        w1 = tl.load(theta + w1i, mask=m1, other=0.0)[None, :, :] + sg[:, None, None] * tl.load(
            table + off[:, None, None] + w1i[None, :, :], mask=valid[:, None, None] & m1[None, :, :], other=0.0)
        b1i = 4 * HID + j
        b1 = tl.load(theta + b1i, mask=hm, other=0.0)[None, :] + sg[:, None] * tl.load(
            table + off[:, None] + b1i[None, :], mask=valid[:, None] & hm[None, :], other=0.0)
        w2i = 5 * HID + a[:, None] * HID + j[None, :]
        m2 = (a[:, None] < 2) & hm[None, :]
        w2 = tl.load(theta + w2i, mask=m2, other=0.0)[None, :, :] + sg[:, None, None] * tl.load(
            table + off[:, None, None] + w2i[None, :, :], mask=valid[:, None, None] & m2[None, :, :], other=0.0)
        b2i = 7 * HID + a
        b2 = tl.load(theta + b2i)[None, :] + sg[:, None] * tl.load(table + off[:, None] + b2i[None, :],
                                                                    mask=valid[:, None], other=0.0)
        mu = tl.load(mean + i)[None, :]
        inv = tl.load(istd + i)[None, :]

        x = tl.load(init + r * 4 + 0, mask=valid, other=0.0)
        xd = tl.load(init + r * 4 + 1, mask=valid, other=0.0)
        th = tl.load(init + r * 4 + 2, mask=valid, other=0.0)
        thd = tl.load(init + r * 4 + 3, mask=valid, other=0.0)
        alive = valid
        ret = tl.zeros([BLOCK], dtype=tl.float32)
        length = tl.zeros([BLOCK], dtype=tl.int32)
        osum = tl.zeros([BLOCK, 4], dtype=tl.float32)
        osq = tl.zeros([BLOCK, 4], dtype=tl.float32)
        n_alive = tl.sum(alive.to(tl.int32), axis=0)
        while n_alive > 0:
            col = i[None, :]
            obs = tl.where(col == 0, x[:, None], tl.where(col == 1, xd[:, None],
                                                          tl.where(col == 2, th[:, None], thd[:, None])))
            keep = alive.to(tl.float32)[:, None]
            osum += obs * keep
            osq += obs * obs * keep
            h = tl.minimum(tl.maximum((obs - mu) * inv, -clip), clip)
            z = tl.sum(w1 * h[:, None, :], axis=2) + b1
            h1 = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)  # tanh, exact at both tails, with no libdevice call
            out = tl.sum(w2 * h1[:, None, :], axis=2) + b2
            o0 = tl.sum(tl.where(a[None, :] == 0, out, 0.0), axis=1)
            o1 = tl.sum(tl.where(a[None, :] == 1, out, 0.0), axis=1)
            force = tl.where(o1 > o0, 10.0, -10.0)  # argmax, ties to action 0 as torch's argmax
            # CartPole-v1 (Gymnasium's Euler step): gravity 9.8, cart 1.0, pole 0.1, half-length 0.5, tau 0.02
            c = tl.cos(th)
            s = tl.sin(th)
            temp = (force + 0.05 * thd * thd * s) / 1.1
            tha = (9.8 * s - c * temp) / (0.5 * (4.0 / 3.0 - 0.1 * c * c / 1.1))
            xa = temp - 0.05 * tha * c / 1.1
            nx = x + 0.02 * xd
            nxd = xd + 0.02 * xa
            nth = th + 0.02 * thd
            nthd = thd + 0.02 * tha
            x = tl.where(alive, nx, x)
            xd = tl.where(alive, nxd, xd)
            th = tl.where(alive, nth, th)
            thd = tl.where(alive, nthd, thd)
            ret += alive.to(tl.float32)
            length += alive.to(tl.int32)
            term = (nx < -2.4) | (nx > 2.4) | (nth < -0.20943951023931953) | (nth > 0.20943951023931953)
            alive = alive & (~term) & (length < cap)
            n_alive = tl.sum(alive.to(tl.int32), axis=0)
        tl.store(ret_out + r, ret, mask=valid)
        tl.store(len_out + r, length, mask=valid)
        oi = r[:, None] * 4 + i[None, :]
        tl.store(osum_out + oi, osum, mask=valid[:, None])
        tl.store(osq_out + oi, osq, mask=valid[:, None])

    return cartpole_episodes


def cartpole_episodes(theta: torch.Tensor, table: torch.Tensor, offsets: torch.Tensor, signs: torch.Tensor,
                      init: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor, hidden: int, sigma: float,
                      clip: float, cap: int, block: int = BLOCK, num_warps: int = NUM_WARPS) -> dict[str, torch.Tensor]:
    """One episode per row: rows' weights theta + sigma * signs[k] * table[offsets[k]:][:dim], from init states (n, 4).

    Every tensor on one device (float32; offsets int64). Returns float32 returns, int32 lengths and
    the float32 sums of each row's observations and their squares (n, 4), on that device.
    """
    n = int(offsets.numel())
    dev = theta.device
    out = {"returns": torch.empty(n, dtype=torch.float32, device=dev),
           "lengths": torch.empty(n, dtype=torch.int32, device=dev),
           "obs_sum": torch.empty(n, 4, dtype=torch.float32, device=dev),
           "obs_sq": torch.empty(n, 4, dtype=torch.float32, device=dev)}
    if n == 0:
        return out
    hp = 1 << max(0, (hidden - 1).bit_length())
    grid = ((n + block - 1) // block,)
    _kernel()[grid](theta, table, offsets, signs, init.contiguous(), mean, inv_std, n, float(sigma), float(clip),
                    int(cap), out["returns"], out["lengths"], out["obs_sum"], out["obs_sq"],
                    HID=hidden, HP=hp, BLOCK=block, num_warps=num_warps)
    return out
