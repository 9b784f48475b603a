"""Flash attention with T5's relative position bias and segment masks, in Pallas.

Forward and backward (FlashAttention-2 style, `jax.custom_vjp`) never form a [lq, lk] bias:
the bias is a per-head vector over clipped offsets `kv_pos - q_pos` in [-max_distance,
max_distance] (T5 buckets saturate there; flan_jax.model.attention builds the vector from the
bucket table), gathered per tile; its gradient is scatter-added per tile. Masks follow the
`xla` reference: same non-padding segment (0 = padding), key position <= query position when
causal, or, for a prefix LM (q_prefix / kv_prefix), both query and key in the prefix. Masked
scores get -1e9 (so they never raise a row's running max) and weigh exactly 0, which also
covers the keys that pad the last block (segment 0). Tiles masked everywhere (other segments
of a packed row, the future when causal unless it holds prefix pairs, padding) are skipped:
the skip tests each tile's own mask, so it is exact with or without a prefix. Only the row
statistic logsumexp is kept for the backward. A query row with no key to attend to (padding)
outputs 0 and passes no gradient, where the reference averages v over all keys: such rows
have loss weight 0 and their outputs reach no live position.

Modes: "interpret" (CPU, tests), "triton" (GPU; the bias gather and the atomic scatter-add of
its gradient lower to Triton pointer ops), "mosaic_tpu" (TPU: a separate kernel with a Mosaic
layout that builds each tile's bias with a strided roll instead of a gather, see
flan_jax.kernels.flash_attention_tpu; square blocks min(block_q, block_k)) and
"mosaic_tpu_interpret" (that kernel in Pallas' TPU interpret mode on CPU, tests).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from flan_jax.kernels.common import M_INIT as _M_INIT
from flan_jax.kernels.common import MASK_VALUE
from flan_jax.kernels.common import dot as _dot
from flan_jax.kernels.common import pack_prefix, unpack_prefix

MODES = ("interpret", "triton", "mosaic_tpu", "mosaic_tpu_interpret")


@dataclasses.dataclass(frozen=True)
class _Config:
    causal: bool
    has_bias: bool
    prefix: bool  # segment ids carry the prefix flag in bit 0 (`pack_prefix`)
    max_distance: int
    block_q: int
    block_k: int
    mode: str
    num_warps: int = 4
    num_stages: int = 2


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, q_segment_ids: jax.Array,
                    kv_segment_ids: jax.Array, q_positions: jax.Array, kv_positions: jax.Array,
                    bias: jax.Array | None = None, causal: bool = False,
                    q_prefix: jax.Array | None = None, kv_prefix: jax.Array | None = None,
                    max_distance: int = 128, block_q: int = 128, block_k: int = 128,
                    mode: str = "interpret") -> jax.Array:
    """q [b, lq, h, d], k/v [b, lk, h, d] -> [b, lq, h, d] in q's dtype (f32 accumulation).

    Segment ids / positions are int [b, lq] / [b, lk]. q_prefix / kv_prefix (bool or int
    [b, lq] / [b, lk], nonzero = prefix; seqio's decoder_causal_attention) make a causal mask
    a prefix-LM one, as `flan_jax.model.attention.attention_mask`: a prefix query also sees
    the later prefix keys of its segment. Segment ids must then be below 2**30 (they share an
    int32 with the flag). `bias` is f32 [h, 2*max_distance+1]:
    bias[:, r + max_distance] is added to every unmasked score whose clipped offset
    kv_pos - q_pos is r. Lengths that are not multiples of the blocks are padded here.
    The mosaic_tpu modes take the offset as key index - query index, which is the same
    wherever the bias applies (same segment) when positions count up by one within a segment
    (packed and unpacked T5 batches); masks use the positions in every mode.
    """
    if mode not in MODES:
        raise ValueError(f"flash_attention mode={mode!r}; choose one of {MODES}")
    b, lq, h, d = q.shape
    lk = k.shape[1]
    if k.shape != (b, lk, h, d) or v.shape != k.shape:
        raise ValueError(f"flash_attention: q {q.shape}, k {k.shape}, v {v.shape} disagree")
    if (q_prefix is None) != (kv_prefix is None):
        raise ValueError("flash_attention: give both q_prefix and kv_prefix, or neither")
    if q_prefix is not None and (q_prefix.shape != (b, lq) or kv_prefix.shape != (b, lk)):
        raise ValueError(f"flash_attention: q_prefix {q_prefix.shape} / kv_prefix "
                         f"{kv_prefix.shape}, expected {(b, lq)} / {(b, lk)}")
    if not causal:  # the prefix only widens a causal mask (as in the xla reference)
        q_prefix = kv_prefix = None
    if mode.startswith("mosaic_tpu"):
        from flan_jax.kernels.flash_attention_tpu import flash_attention_tpu
        return flash_attention_tpu(
            q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
            q_positions=q_positions, kv_positions=kv_positions, bias=bias, causal=causal,
            q_prefix=q_prefix, kv_prefix=kv_prefix, max_distance=max_distance,
            block=min(block_q, block_k), interpret=mode == "mosaic_tpu_interpret")
    # Small inputs get small blocks (>= 16, a power of two: Triton's dot needs both).
    bq = min(block_q, max(16, pl.next_power_of_2(lq)))
    bk = min(block_k, max(16, pl.next_power_of_2(lk)))
    lq_pad, lk_pad = pl.cdiv(lq, bq) * bq, pl.cdiv(lk, bk) * bk

    def pad(x, length):  # along axis 1, with zeros (segment 0 = padding)
        return jnp.pad(x, [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2))

    if bias is None:
        vec = jnp.zeros((h, 16), jnp.float32)  # unused placeholder
    else:
        width = 2 * max_distance + 1
        if bias.shape != (h, width):
            raise ValueError(f"flash_attention: bias {bias.shape}, expected {(h, width)}")
        vec = jnp.pad(bias.astype(jnp.float32),
                      [(0, 0), (0, pl.next_power_of_2(width) - width)])
    cfg = _Config(causal=causal, has_bias=bias is not None, prefix=q_prefix is not None,
                  max_distance=max_distance, block_q=bq, block_k=bk, mode=mode)
    i32 = jnp.int32
    q_seg, kv_seg = q_segment_ids.astype(i32), kv_segment_ids.astype(i32)
    if cfg.prefix:
        q_seg, kv_seg = pack_prefix(q_seg, q_prefix), pack_prefix(kv_seg, kv_prefix)
    out = _attention(cfg, pad(q, lq_pad), pad(k, lk_pad), pad(v, lk_pad), vec,
                     pad(q_seg, lq_pad), pad(kv_seg, lk_pad),
                     pad(q_positions.astype(i32), lq_pad), pad(kv_positions.astype(i32), lk_pad))
    return out[:, :lq]


# ---------------------------------------------------------------------------------------------
# custom_vjp over padded inputs


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(cfg, q, k, v, vec, qseg, kseg, qpos, kpos):
    return _forward(cfg, q, k, v, vec, qseg, kseg, qpos, kpos)[0]


def _attention_fwd(cfg, q, k, v, vec, qseg, kseg, qpos, kpos):
    o, lse = _forward(cfg, q, k, v, vec, qseg, kseg, qpos, kpos)
    return o, (q, k, v, vec, qseg, kseg, qpos, kpos, o, lse)


def _attention_bwd(cfg, res, do):
    q, k, v, vec, qseg, kseg, qpos, kpos, o, lse = res
    # delta_i = sum_d dO_id O_id = sum_j P_ij dP_ij, [b, h, lq] in f32.
    delta = jnp.einsum("bqhd,bqhd->bhq", do.astype(jnp.float32), o.astype(jnp.float32))
    rows = (lse, delta)
    dk, dv, dvec_parts = _backward_dkdv(cfg, q, k, v, vec, qseg, kseg, qpos, kpos, do, *rows)
    dq = _backward_dq(cfg, q, k, v, vec, qseg, kseg, qpos, kpos, do, *rows)
    dvec = dvec_parts.sum(axis=(0, 2)) if cfg.has_bias else jnp.zeros_like(vec)
    return dq, dk, dv, dvec, None, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


# ---------------------------------------------------------------------------------------------
# Shared tile math


def _tile_mask(cfg, qseg, kseg, qpos, kpos):
    """bool [bq, bk]: same non-padding segment, and key not in the future if causal (unless
    query and key are both in the prefix, with cfg.prefix)."""
    if cfg.prefix:
        (qseg, qpre), (kseg, kpre) = unpack_prefix(qseg), unpack_prefix(kseg)
    mask = (qseg[:, None] == kseg[None, :]) & (kseg[None, :] != 0)
    if cfg.causal:
        visible = kpos[None, :] <= qpos[:, None]
        if cfg.prefix:
            visible = visible | (qpre[:, None] & kpre[None, :])
        mask = mask & visible
    return mask


def _if_any(mask, visit, carry):
    """visit(carry) unless the whole tile is masked: skips the other segments' blocks of
    packed rows, future blocks when causal, and padding. Exact, as masked entries weigh 0.

    The test reads the tile's full mask (computed for every tile anyway), so with a prefix a
    future tile is visited exactly when it holds a live (prefix query, prefix key) pair of
    one segment: no per-block bounds needed. A prefix costs that work itself, plus
    unpacking the flags (a shift and an and per id) and one more and / or per mask entry."""
    return lax.cond(jnp.max(mask.astype(jnp.int32)) > 0, visit, lambda c: c, carry)


def _tile_scores(cfg, q, k, vec_ref, mask, qpos, kpos):
    """Scores + bias + mask for one [bq, bk] tile, f32; also the bias indices."""
    s = _dot(q, k, 1, 1)  # [bq, bk]
    idx = None
    if cfg.has_bias:
        m = cfg.max_distance
        idx = jnp.clip(kpos[None, :] - qpos[:, None], -m, m) + m
        bias = vec_ref[idx]  # gather from the per-offset vector
        s = s + jnp.where(mask, bias, MASK_VALUE)
    else:
        s = s + jnp.where(mask, 0.0, MASK_VALUE)
    return s, idx


def _block_start(j, size):
    start = j * size
    return start if isinstance(start, int) else pl.multiple_of(start, size)


def _call(cfg, kernel, grid, in_specs, out_specs, out_shape):
    kwargs = {}
    if cfg.mode == "interpret":
        kwargs["interpret"] = True
    elif cfg.mode == "triton":
        from jax.experimental.pallas import triton as plt
        kwargs["compiler_params"] = plt.CompilerParams(num_warps=cfg.num_warps,
                                                       num_stages=cfg.num_stages)
    return pl.pallas_call(functools.partial(kernel, cfg=cfg), grid=grid, in_specs=in_specs,
                          out_specs=out_specs, out_shape=out_shape, **kwargs)


def _specs(cfg, lq, lk, d, v_width, q_blocked: bool):
    """BlockSpecs for (q, k, v, vec, qseg, kseg, qpos, kpos) on grid (b, h, blocks).

    The side that is `blocked` follows the grid's last axis; the other side is whole and the
    kernel loops over it.
    """
    bq, bk = (cfg.block_q, lk) if q_blocked else (lq, cfg.block_k)
    q_map = (lambda b, h, i: (b, i, h, 0)) if q_blocked else (lambda b, h, j: (b, 0, h, 0))
    k_map = (lambda b, h, i: (b, 0, h, 0)) if q_blocked else (lambda b, h, j: (b, j, h, 0))
    qs_map = (lambda b, h, i: (b, i)) if q_blocked else (lambda b, h, j: (b, 0))
    ks_map = (lambda b, h, i: (b, 0)) if q_blocked else (lambda b, h, j: (b, j))
    q_spec = pl.BlockSpec((None, bq, None, d), q_map)
    k_spec = pl.BlockSpec((None, bk, None, d), k_map)
    qs_spec = pl.BlockSpec((None, bq), qs_map)
    ks_spec = pl.BlockSpec((None, bk), ks_map)
    vec_spec = pl.BlockSpec((None, v_width), lambda b, h, i: (h, 0))
    return q_spec, k_spec, qs_spec, ks_spec, vec_spec


# ---------------------------------------------------------------------------------------------
# Forward: grid (b, h, q blocks), loop over key blocks with an online softmax.


def _forward(cfg, q, k, v, vec, qseg, kseg, qpos, kpos):
    b, lq, h, d = q.shape
    lk = k.shape[1]
    q_spec, k_spec, qs_spec, ks_spec, vec_spec = _specs(cfg, lq, lk, d, vec.shape[1], True)
    row_spec = pl.BlockSpec((None, None, cfg.block_q), lambda b, h, i: (b, h, i))
    row = jax.ShapeDtypeStruct((b, h, lq), jnp.float32)
    return _call(
        cfg, _forward_kernel, (b, h, lq // cfg.block_q),
        [q_spec, k_spec, k_spec, vec_spec, qs_spec, ks_spec, qs_spec, ks_spec],
        [q_spec, row_spec],
        [jax.ShapeDtypeStruct(q.shape, q.dtype), row],
    )(q, k, v, vec, qseg, kseg, qpos, kpos)


def _forward_kernel(q_ref, k_ref, v_ref, vec_ref, qseg_ref, kseg_ref, qpos_ref, kpos_ref,
                    o_ref, lse_ref, *, cfg):
    bq, bk = cfg.block_q, cfg.block_k
    q, qseg, qpos = q_ref[...], qseg_ref[...], qpos_ref[...]

    def body(j, carry):
        start = _block_start(j, bk)
        keys = pl.ds(start, bk)
        kpos = kpos_ref[keys]
        mask = _tile_mask(cfg, qseg, kseg_ref[keys], qpos, kpos)

        def visit(carry):
            m, l, acc = carry  # running max [bq], normaliser [bq], output [bq, d], all f32
            s, _ = _tile_scores(cfg, q, k_ref[keys, :], vec_ref, mask, qpos, kpos)
            m_new = jnp.maximum(m, s.max(axis=1))
            alpha = jnp.exp(m - m_new)
            p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
            v = v_ref[keys, :]
            acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v, 1, 0)
            return m_new, l * alpha + p.sum(axis=1), acc

        return _if_any(mask, visit, carry)

    init = (jnp.full((bq,), _M_INIT, jnp.float32), jnp.zeros((bq,), jnp.float32),
            jnp.zeros((bq, q.shape[1]), jnp.float32))
    m, l, acc = lax.fori_loop(0, k_ref.shape[0] // bk, body, init)
    l = jnp.where(l > 0, l, 1.0)  # a row without a live key: output 0
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l)


# ---------------------------------------------------------------------------------------------
# Backward: dk, dv and the bias-vector gradient per key block; dq per query block.


def _backward_dkdv(cfg, q, k, v, vec, qseg, kseg, qpos, kpos, do, lse, delta):
    b, lq, h, d = q.shape
    lk = k.shape[1]
    nk = lk // cfg.block_k
    q_spec, k_spec, qs_spec, ks_spec, vec_spec = _specs(cfg, lq, lk, d, vec.shape[1], False)
    row_spec = pl.BlockSpec((None, None, lq), lambda b, h, j: (b, h, 0))
    dvec_spec = pl.BlockSpec((None, None, None, vec.shape[1]), lambda b, h, j: (b, h, j, 0))
    return _call(
        cfg, _dkdv_kernel, (b, h, nk),
        [q_spec, k_spec, k_spec, vec_spec, qs_spec, ks_spec, qs_spec, ks_spec, q_spec,
         row_spec, row_spec],
        [k_spec, k_spec, dvec_spec],
        [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype),
         jax.ShapeDtypeStruct((b, h, nk, vec.shape[1]), jnp.float32)],
    )(q, k, v, vec, qseg, kseg, qpos, kpos, do, lse, delta)


def _dkdv_kernel(q_ref, k_ref, v_ref, vec_ref, qseg_ref, kseg_ref, qpos_ref, kpos_ref, do_ref,
                 lse_ref, delta_ref, dk_ref, dv_ref, dvec_ref, *, cfg):
    bq, bk = cfg.block_q, cfg.block_k
    k, v, kseg, kpos = k_ref[...], v_ref[...], kseg_ref[...], kpos_ref[...]
    scatter_in_ref = cfg.has_bias and cfg.mode == "triton"
    if scatter_in_ref:  # atomics into this program's own row of the output
        from jax.experimental.pallas import triton as plt
        dvec_ref[...] = jnp.zeros(dvec_ref.shape, jnp.float32)
        plt.debug_barrier()

    def body(i, carry):
        rows = pl.ds(_block_start(i, bq), bq)
        qpos = qpos_ref[rows]
        mask = _tile_mask(cfg, qseg_ref[rows], kseg, qpos, kpos)

        def visit(carry):
            dk, dv, dvec = carry
            q, do = q_ref[rows, :], do_ref[rows, :]
            s, idx = _tile_scores(cfg, q, k, vec_ref, mask, qpos, kpos)
            p = jnp.where(mask, jnp.exp(s - lse_ref[rows][:, None]), 0.0)  # [bq, bk]
            dv = dv + _dot(p.astype(do.dtype), do, 0, 0)
            dp = _dot(do, v, 1, 1)
            ds = p * (dp - delta_ref[rows][:, None])
            dk = dk + _dot(ds.astype(q.dtype), q, 0, 0)
            if cfg.has_bias:
                ds_bias = jnp.where(mask, ds, 0.0)
                if scatter_in_ref:
                    plt.atomic_add(dvec_ref, (idx,), ds_bias)
                else:  # a scatter-add on a value (interpret mode)
                    dvec = dvec.at[idx.reshape(-1)].add(ds_bias.reshape(-1))
            return dk, dv, dvec

        return _if_any(mask, visit, carry)

    d = k.shape[1]
    init = (jnp.zeros((bk, d), jnp.float32), jnp.zeros((bk, d), jnp.float32),
            jnp.zeros(dvec_ref.shape, jnp.float32))
    dk, dv, dvec = lax.fori_loop(0, q_ref.shape[0] // bq, body, init)
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)
    if not scatter_in_ref:
        dvec_ref[...] = dvec


def _backward_dq(cfg, q, k, v, vec, qseg, kseg, qpos, kpos, do, lse, delta):
    b, lq, h, d = q.shape
    lk = k.shape[1]
    q_spec, k_spec, qs_spec, ks_spec, vec_spec = _specs(cfg, lq, lk, d, vec.shape[1], True)
    row_spec = pl.BlockSpec((None, None, cfg.block_q), lambda b, h, i: (b, h, i))
    return _call(
        cfg, _dq_kernel, (b, h, lq // cfg.block_q),
        [q_spec, k_spec, k_spec, vec_spec, qs_spec, ks_spec, qs_spec, ks_spec, q_spec,
         row_spec, row_spec],
        q_spec, jax.ShapeDtypeStruct(q.shape, q.dtype),
    )(q, k, v, vec, qseg, kseg, qpos, kpos, do, lse, delta)


def _dq_kernel(q_ref, k_ref, v_ref, vec_ref, qseg_ref, kseg_ref, qpos_ref, kpos_ref, do_ref,
               lse_ref, delta_ref, dq_ref, *, cfg):
    bk = cfg.block_k
    q, do, qseg, qpos = q_ref[...], do_ref[...], qseg_ref[...], qpos_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]

    def body(j, dq):
        start = _block_start(j, bk)
        keys = pl.ds(start, bk)
        kpos = kpos_ref[keys]
        mask = _tile_mask(cfg, qseg, kseg_ref[keys], qpos, kpos)

        def visit(dq):
            k, v = k_ref[keys, :], v_ref[keys, :]
            s, _ = _tile_scores(cfg, q, k, vec_ref, mask, qpos, kpos)
            p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
            ds = p * (_dot(do, v, 1, 1) - delta[:, None])
            return dq + _dot(ds.astype(k.dtype), k, 1, 0)

        return _if_any(mask, visit, dq)

    dq = lax.fori_loop(0, k_ref.shape[0] // bk, body,
                       jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = dq.astype(dq_ref.dtype)
