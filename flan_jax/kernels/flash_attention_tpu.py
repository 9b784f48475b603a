"""The T5 flash-attention kernel for TPU (Pallas' Mosaic lowering).

Same contract as `flash_attention.flash_attention` (which dispatches here for
mode="mosaic_tpu" / "mosaic_tpu_interpret"), with a layout Mosaic can lower:

- q, k, v are moved to [b, h, l, d] (one transpose each way), so a block is [block, head_dim];
  segment ids / positions travel as [b, l, 1] (query side) and [b, 1, l] (key side), the
  row statistics (logsumexp, and the backward's delta) as [b, h, l, 1]; no 1-D vectors
  inside the kernels.
- Every tile pair is a grid step (grid (b, h, i, j) forward and for dq, (h, b, j, i) for
  dk / dv), the reduction axis last and sequential, its accumulators in VMEM scratch: VMEM
  holds a few [B, d] blocks and one head's window table, whatever the length (16k and 32k
  compile for v5e, see docs/benchmarks.md). A tile with no live pair computes nothing.
- Square tiles (block_q == block_k == B; a multiple of 128 on TPU). The bias of tile (i, j)
  depends on key - query index differences (j - i) * B + c - r, a Toeplitz matrix: it is built
  from a window of 2B entries with one strided `pltpu.roll` (row r rolled by one more than row
  r - 1), no gather. The windows of all nq + nk - 1 block diagonals are gathered outside the
  kernel into a table [h, nq + nk - 1, 2B] (O(h * L) memory, differentiable in plain JAX back
  to the [h, 2M+1] vector). The gradient of a tile's window is the sum over its diagonals
  (rows reversed by an exact permutation matmul, a strided roll, a sum over rows), accumulated
  in a per-head output block that stays in VMEM over the (sequential) batch and block grid
  axes. Strided rolls exist in Mosaic on TPU v5 and newer only.
- Offsets are key index - query index. They equal kv_pos - q_pos wherever the bias is used
  (same segment) when positions count up by one within each segment, as packed (seqio) and
  unpacked rows do. Masks still use the given positions.

Masked entries weigh exactly 0 and rows with no key to attend to output 0, as in the GPU
kernel. A prefix LM's flags travel in bit 0 of the segment ids (`pack_prefix`), so the
kernels take no extra inputs; a tile is skipped when its own mask (prefix pairs included) is
empty, which is exact and costs a prefix nothing but the tiles it makes live.

Verified in TPU interpret mode on CPU, and compiled by Mosaic for TPU v5e / v6e from CPU (a
compile-only topology with libtpu installed; tests/kernels). Running on a real TPU and speed
are untested.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

# One tile matmul (f32 accumulation) and the running max's start, shared with the GPU kernel.
from flan_jax.kernels.common import M_INIT as _M_INIT
from flan_jax.kernels.common import MASK_VALUE
from flan_jax.kernels.common import dot as _dot
from flan_jax.kernels.common import pack_prefix, unpack_prefix


@dataclasses.dataclass(frozen=True)
class _Config:
    causal: bool
    has_bias: bool
    prefix: bool  # segment ids carry the prefix flag in bit 0 (`pack_prefix`)
    block: int
    nq: int
    nk: int
    interpret: bool


def flash_attention_tpu(q, k, v, *, q_segment_ids, kv_segment_ids, q_positions, kv_positions,
                        bias, causal, max_distance, block, interpret, q_prefix=None,
                        kv_prefix=None):
    b, lq, h, d = q.shape
    lk = k.shape[1]
    if block % 8:
        raise ValueError(f"flash_attention (mosaic_tpu): block {block} is not a multiple of 8")
    nq, nk = pl.cdiv(lq, block), pl.cdiv(lk, block)
    lq_pad, lk_pad = nq * block, nk * block
    i32 = jnp.int32

    def pad(x, length):
        return jnp.pad(x, [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2))

    def heads_first(x, length):
        return pad(x, length).transpose(0, 2, 1, 3)

    if bias is None:
        table = jnp.zeros((h, 8, 128), jnp.float32)  # unused placeholder
    else:
        m = max_distance
        if bias.shape != (h, 2 * m + 1):
            raise ValueError(f"flash_attention: bias {bias.shape}, expected {(h, 2 * m + 1)}")
        # table[:, g, t]: bias of offset (g - nq) * B + t + 1 (block diagonal g = j - i + nq - 1,
        # t = c - r + B - 1); the last column is never read.
        g = np.arange(nq + nk - 1)[:, None]
        t = np.arange(2 * block)[None, :]
        idx = np.clip((g - nq) * block + t + 1, -m, m) + m
        table = bias.astype(jnp.float32)[:, idx]
    prefix = causal and q_prefix is not None  # the prefix only widens a causal mask
    cfg = _Config(causal=causal, has_bias=bias is not None, prefix=prefix, block=block,
                  nq=nq, nk=nk, interpret=interpret)
    q_seg, kv_seg = q_segment_ids.astype(i32), kv_segment_ids.astype(i32)
    if prefix:
        q_seg, kv_seg = pack_prefix(q_seg, q_prefix), pack_prefix(kv_seg, kv_prefix)
    out = _attention(cfg, heads_first(q, lq_pad), heads_first(k, lk_pad),
                     heads_first(v, lk_pad), table,
                     pad(q_seg, lq_pad)[:, :, None], pad(kv_seg, lk_pad)[:, None, :],
                     pad(q_positions.astype(i32), lq_pad)[:, :, None],
                     pad(kv_positions.astype(i32), lk_pad)[:, None, :])
    return out.transpose(0, 2, 1, 3)[:, :lq]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(cfg, q, k, v, table, qseg, kseg, qpos, kpos):
    return _forward(cfg, q, k, v, table, qseg, kseg, qpos, kpos)[0]


def _attention_fwd(cfg, q, k, v, table, qseg, kseg, qpos, kpos):
    o, lse = _forward(cfg, q, k, v, table, qseg, kseg, qpos, kpos)
    return o, (q, k, v, table, qseg, kseg, qpos, kpos, o, lse)


def _attention_bwd(cfg, res, do):
    q, k, v, table, qseg, kseg, qpos, kpos, o, lse = res
    delta = jnp.einsum("bhqd,bhqd->bhq", do.astype(jnp.float32),
                       o.astype(jnp.float32))[..., None]
    args = (q, k, v, table, qseg, kseg, qpos, kpos, do, lse, delta)
    dk, dv, dtable = _backward_dkdv(cfg, *args)
    dq = _backward_dq(cfg, *args)
    return dq, dk, dv, dtable, None, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


# ---------------------------------------------------------------------------------------------
# Tile math


def _tile_mask(cfg, qseg, kseg, qpos, kpos):
    """bool [B, B] from [B, 1] query-side and [1, B] key-side ids / positions; a causal
    mask also lets prefix queries see prefix keys with cfg.prefix."""
    if cfg.prefix:  # unpacked on the [B, 1] / [1, B] sides, before broadcasting
        (qseg, qpre), (kseg, kpre) = unpack_prefix(qseg), unpack_prefix(kseg)
    mask = (qseg == kseg) & (kseg != 0)
    if cfg.causal:
        visible = kpos <= qpos
        if cfg.prefix:
            visible = visible | (qpre & kpre)
        mask = mask & visible
    return mask


def _diagonal(cfg, i, j):
    return j - i + cfg.nq - 1


def _tile_scores(cfg, q, k, table_ref, mask, i, j):
    bsz = cfg.block
    s = _dot(q, k, 1, 1)
    if cfg.has_bias:
        window = table_ref[pl.ds(_diagonal(cfg, i, j), 1), :]  # [1, 2B]
        # Row r rolled by B + 1 + r: bias[r, c] = window[c - r + B - 1] (Toeplitz).
        bias = pltpu.roll(jnp.broadcast_to(window, (bsz, 2 * bsz)), bsz + 1, 1,
                          stride=1, stride_axis=0)[:, :bsz]
        s = s + jnp.where(mask, bias, MASK_VALUE)
    else:
        s = s + jnp.where(mask, 0.0, MASK_VALUE)
    return s


def _window_grad(cfg, ds_bias, passes):
    """[B, B] -> [1, 2B]: sums of the diagonals c - r + B - 1 (the transpose of the roll).

    That transpose is a roll by -r per row, which Mosaic's strided roll cannot do (only small
    positive strides), so the rows are reversed first (an exact permutation matmul on the MXU,
    f32 carried as `passes` bf16 parts), after which row r' = B - 1 - r rolled by r' puts entry
    (r, c) at lane c - r + B - 1, and a sum over rows gives the window gradient.
    """
    bsz = cfg.block
    rows = lax.broadcasted_iota(jnp.int32, (bsz, bsz), 0)
    cols = lax.broadcasted_iota(jnp.int32, (bsz, bsz), 1)
    flip = (rows + cols == bsz - 1).astype(jnp.bfloat16)
    rest, reversed_rows = ds_bias, jnp.zeros_like(ds_bias)
    for _ in range(passes):
        part = rest.astype(jnp.bfloat16)
        reversed_rows = reversed_rows + _dot(flip, part, 1, 0)
        rest = rest - part.astype(jnp.float32)
    x = jnp.concatenate([reversed_rows, jnp.zeros_like(reversed_rows)], axis=1)
    y = pltpu.roll(x, 0, 1, stride=1, stride_axis=0)  # row r' rolled by r'
    return y.sum(axis=0, keepdims=True)


def _when_any(mask):
    """Run the decorated tile update only when the tile has a live (query, key) pair: exact
    for prefix LMs too, as the mask includes the prefix pairs (a future tile runs only when it
    holds one)."""
    return pl.when(jnp.max(mask.astype(jnp.int32)) > 0)


def _call(cfg, kernel, grid, in_specs, out_specs, out_shape, semantics, scratch):
    kwargs = {}
    if cfg.interpret:
        kwargs["interpret"] = pltpu.InterpretParams()
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg), grid=grid, in_specs=in_specs,
        out_specs=out_specs, out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM(shape, jnp.float32) for shape in scratch],
        compiler_params=pltpu.CompilerParams(dimension_semantics=semantics), **kwargs)


# ---------------------------------------------------------------------------------------------
# Forward and dq: grid (b, h, query blocks i, key blocks j); j is the sequential reduction
# axis, carried in VMEM scratch, read and written at its first / last step.


def _q_major(b, h, i, j):
    """Grid ids -> (batch, head, query block, key block) for the (b, h, i, j) grids."""
    return b, h, i, j


def _k_major(h, b, j, i):
    """The same for dk / dv's (h, b, j, i) grid."""
    return b, h, i, j


def _specs(cfg, d, order):
    """BlockSpecs of a query-side block, a key-side block, query-side and key-side ids /
    positions, and a row statistic, on a grid whose ids `order` names."""
    bsz = cfg.block

    def spec(shape, index):
        return pl.BlockSpec(shape, lambda *ids: index(*order(*ids)))

    return (spec((None, None, bsz, d), lambda b, h, i, j: (b, h, i, 0)),
            spec((None, None, bsz, d), lambda b, h, i, j: (b, h, j, 0)),
            spec((None, bsz, 1), lambda b, h, i, j: (b, i, 0)),
            spec((None, 1, bsz), lambda b, h, i, j: (b, 0, j)),
            spec((None, None, bsz, 1), lambda b, h, i, j: (b, h, i, 0)))


def _table_spec(table, head_axis):
    def index(*ids):
        return (ids[head_axis], 0, 0)
    return pl.BlockSpec((None,) + table.shape[1:], index)


_Q_MAJOR = ("parallel", "parallel", "parallel", "arbitrary")


def _forward(cfg, q, k, v, table, qseg, kseg, qpos, kpos):
    b, h, lq, d = q.shape
    q_spec, k_spec, qs_spec, ks_spec, row_spec = _specs(cfg, d, _q_major)
    row = jax.ShapeDtypeStruct((b, h, lq, 1), jnp.float32)
    bsz = cfg.block
    return _call(
        cfg, _forward_kernel, (b, h, cfg.nq, cfg.nk),
        [q_spec, k_spec, k_spec, _table_spec(table, 1), qs_spec, ks_spec, qs_spec, ks_spec],
        [q_spec, row_spec], [jax.ShapeDtypeStruct(q.shape, q.dtype), row],
        _Q_MAJOR, [(bsz, 1), (bsz, 1), (bsz, d)],
    )(q, k, v, table, qseg, kseg, qpos, kpos)


def _forward_kernel(q_ref, k_ref, v_ref, table_ref, qseg_ref, kseg_ref, qpos_ref, kpos_ref,
                    o_ref, lse_ref, m_acc, l_acc, acc, *, cfg):
    i, j = pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _():
        m_acc[...] = jnp.full(m_acc.shape, _M_INIT, jnp.float32)
        l_acc[...] = jnp.zeros(l_acc.shape, jnp.float32)
        acc[...] = jnp.zeros(acc.shape, jnp.float32)

    mask = _tile_mask(cfg, qseg_ref[...], kseg_ref[...], qpos_ref[...], kpos_ref[...])

    @_when_any(mask)
    def _():
        s = _tile_scores(cfg, q_ref[...], k_ref[...], table_ref, mask, i, j)
        m = m_acc[...]
        m_new = jnp.maximum(m, s.max(axis=1, keepdims=True))
        alpha = jnp.exp(m - m_new)
        p = jnp.where(mask, jnp.exp(s - m_new), 0.0)
        v = v_ref[...]
        acc[...] = acc[...] * alpha + _dot(p.astype(v.dtype), v, 1, 0)
        l_acc[...] = l_acc[...] * alpha + p.sum(axis=1, keepdims=True)
        m_acc[...] = m_new

    @pl.when(j == cfg.nk - 1)
    def _():
        l = l_acc[...]
        l = jnp.where(l > 0, l, 1.0)
        o_ref[...] = (acc[...] / l).astype(o_ref.dtype)
        lse_ref[...] = m_acc[...] + jnp.log(l)


def _backward_dq(cfg, q, k, v, table, qseg, kseg, qpos, kpos, do, lse, delta):
    b, h, lq, d = q.shape
    q_spec, k_spec, qs_spec, ks_spec, row_spec = _specs(cfg, d, _q_major)
    return _call(
        cfg, _dq_kernel, (b, h, cfg.nq, cfg.nk),
        [q_spec, k_spec, k_spec, _table_spec(table, 1), qs_spec, ks_spec, qs_spec, ks_spec,
         q_spec, row_spec, row_spec],
        q_spec, jax.ShapeDtypeStruct(q.shape, q.dtype), _Q_MAJOR, [(cfg.block, d)],
    )(q, k, v, table, qseg, kseg, qpos, kpos, do, lse, delta)


def _dq_kernel(q_ref, k_ref, v_ref, table_ref, qseg_ref, kseg_ref, qpos_ref, kpos_ref, do_ref,
               lse_ref, delta_ref, dq_ref, dq_acc, *, cfg):
    i, j = pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _():
        dq_acc[...] = jnp.zeros(dq_acc.shape, jnp.float32)

    mask = _tile_mask(cfg, qseg_ref[...], kseg_ref[...], qpos_ref[...], kpos_ref[...])

    @_when_any(mask)
    def _():
        k, v, do = k_ref[...], v_ref[...], do_ref[...]
        s = _tile_scores(cfg, q_ref[...], k, table_ref, mask, i, j)
        p = jnp.where(mask, jnp.exp(s - lse_ref[...]), 0.0)
        ds = p * (_dot(do, v, 1, 1) - delta_ref[...])
        dq_acc[...] = dq_acc[...] + _dot(ds.astype(k.dtype), k, 1, 0)

    @pl.when(j == cfg.nk - 1)
    def _():
        dq_ref[...] = dq_acc[...].astype(dq_ref.dtype)


# ---------------------------------------------------------------------------------------------
# dk, dv and the window-table gradient: grid (h, b, key blocks j, query blocks i), all but the
# head axis sequential, so each head's table gradient block stays in VMEM and accumulates in
# place; dk / dv accumulate over i in scratch.


def _backward_dkdv(cfg, q, k, v, table, qseg, kseg, qpos, kpos, do, lse, delta):
    b, h, lq, d = q.shape
    q_spec, k_spec, qs_spec, ks_spec, row_spec = _specs(cfg, d, _k_major)
    out_specs = [k_spec, k_spec]
    out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
    if cfg.has_bias:
        out_specs.append(_table_spec(table, 0))
        out_shape.append(jax.ShapeDtypeStruct(table.shape, jnp.float32))
    outs = _call(
        cfg, _dkdv_kernel, (h, b, cfg.nk, cfg.nq),
        [q_spec, k_spec, k_spec, _table_spec(table, 0), qs_spec, ks_spec, qs_spec, ks_spec,
         q_spec, row_spec, row_spec],
        out_specs, out_shape, ("parallel", "arbitrary", "arbitrary", "arbitrary"),
        [(cfg.block, d)] * 2,
    )(q, k, v, table, qseg, kseg, qpos, kpos, do, lse, delta)
    if not cfg.has_bias:
        outs = (*outs, jnp.zeros_like(table))
    return outs


def _dkdv_kernel(q_ref, k_ref, v_ref, table_ref, qseg_ref, kseg_ref, qpos_ref, kpos_ref,
                 do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *rest, cfg):
    *dtable_ref, dk_acc, dv_acc = rest
    j, i = pl.program_id(2), pl.program_id(3)

    @pl.when(i == 0)
    def _():
        dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

    if cfg.has_bias:
        (dtable_ref,) = dtable_ref

        @pl.when((pl.program_id(1) == 0) & (j == 0) & (i == 0))
        def _():
            dtable_ref[...] = jnp.zeros(dtable_ref.shape, jnp.float32)

    mask = _tile_mask(cfg, qseg_ref[...], kseg_ref[...], qpos_ref[...], kpos_ref[...])

    @_when_any(mask)
    def _():
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        s = _tile_scores(cfg, q, k, table_ref, mask, i, j)
        p = jnp.where(mask, jnp.exp(s - lse_ref[...]), 0.0)
        dv_acc[...] = dv_acc[...] + _dot(p.astype(do.dtype), do, 0, 0)
        ds = p * (_dot(do, v, 1, 1) - delta_ref[...])
        dk_acc[...] = dk_acc[...] + _dot(ds.astype(q.dtype), q, 0, 0)
        if cfg.has_bias:
            g = pl.ds(_diagonal(cfg, i, j), 1)
            # f32 inputs: an exact f32 reversal; bf16: as precise as dk (ds in bf16).
            passes = 3 if q.dtype == jnp.float32 else 1
            dtable_ref[g, :] = dtable_ref[g, :] + _window_grad(
                cfg, jnp.where(mask, ds, 0.0), passes)

    @pl.when(i == cfg.nq - 1)
    def _():
        dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)
