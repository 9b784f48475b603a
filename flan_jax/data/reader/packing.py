"""Trim, EOS and pack: token lists -> exactly seqio's `EncDecFeatureConverter` features.

`trim_eos` does what seqio's `append_eos_after_trim` does (keep length - 1 tokens, add EOS).
`pack` places examples first-fit into rows (an example goes to the first row where both its
inputs and its targets still fit), in the order given, and writes segment ids (from 1) and
positions (from 0 per segment); `decoder_input_tokens` are the targets shifted right within
each segment with 0 (the start token) at every segment start, and `decoder_loss_weights`
mark real target tokens, as seqio's converter makes them. `pad` is the pack=False twin.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Features = dict[str, np.ndarray]
PACKED = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
          "decoder_target_tokens", "decoder_input_tokens", "decoder_segment_ids",
          "decoder_positions", "decoder_loss_weights")
UNPACKED = ("encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens",
            "decoder_loss_weights")


def trim_eos(ids: Sequence[int], length: int, eos_id: int) -> list[int]:
    """seqio's `append_eos_after_trim`: the first length - 1 ids, then EOS."""
    return [*ids[:length - 1], eos_id]


def pack(examples: Sequence[tuple[Sequence[int], Sequence[int]]], inputs_length: int,
         targets_length: int) -> Features:
    """First-fit packing of (inputs, targets) token lists into rows of the two lengths."""
    room = np.zeros((0, 2), np.int64)  # [rows, (inputs, targets)] free positions per row
    placed: list[list[int]] = []
    need = np.zeros(2, np.int64)
    for i, (inp, tgt) in enumerate(examples):
        need[0], need[1] = len(inp), len(tgt)
        if need[0] > inputs_length or need[1] > targets_length:
            raise ValueError(f"example {i} is longer than the lengths; trim it first")
        fits = np.flatnonzero((room >= need).all(axis=1))
        if fits.size:
            row = int(fits[0])
        else:
            row = len(placed)
            room = np.concatenate([room, [[inputs_length, targets_length]]])
            placed.append([])
        room[row] -= need
        placed[row].append(i)
    out = _empty(len(placed), inputs_length, targets_length, PACKED)
    for r, members in enumerate(placed):
        at_in = at_tg = 0
        for seg, i in enumerate(members, start=1):
            inp, tgt = examples[i]
            _put(out, "encoder", r, at_in, inp, seg)
            _put(out, "decoder", r, at_tg, tgt, seg)
            dec_in = out["decoder_input_tokens"][r]
            dec_in[at_tg + 1:at_tg + len(tgt)] = tgt[:-1]
            at_in, at_tg = at_in + len(inp), at_tg + len(tgt)
    out["decoder_loss_weights"] = (out["decoder_target_tokens"] > 0).astype(np.int32)
    return out


def pad(examples: Sequence[tuple[Sequence[int], Sequence[int]]], inputs_length: int,
        targets_length: int) -> Features:
    """One example per row, padded with 0: pack=False's features."""
    out = _empty(len(examples), inputs_length, targets_length, UNPACKED)
    for r, (inp, tgt) in enumerate(examples):
        out["encoder_input_tokens"][r, :len(inp)] = inp
        out["decoder_target_tokens"][r, :len(tgt)] = tgt
    out["decoder_input_tokens"][:, 1:] = out["decoder_target_tokens"][:, :-1]  # seqio's shift
    out["decoder_loss_weights"] = (out["decoder_target_tokens"] > 0).astype(np.int32)
    return out


def _empty(rows: int, inputs_length: int, targets_length: int,
           names: Sequence[str]) -> Features:
    return {n: np.zeros((rows, inputs_length if n.startswith("encoder") else targets_length),
                        np.int32) for n in names}


def _put(out: Features, side: str, row: int, at: int, ids: Sequence[int], seg: int) -> None:
    tokens = "encoder_input_tokens" if side == "encoder" else "decoder_target_tokens"
    n = len(ids)
    out[tokens][row, at:at + n] = ids
    out[f"{side}_segment_ids"][row, at:at + n] = seg
    out[f"{side}_positions"][row, at:at + n] = np.arange(n)
