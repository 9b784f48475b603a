"""Trim, EOS and pack: token lists -> exactly the features of one of seqio's converters.

`CONVERTERS` names the layouts, after seqio's converters: "enc_dec" (`EncDecFeatureConverter`:
inputs to the encoder, targets to the decoder), "decoder" and "prefix_lm" (seqio's
`DecoderFeatureConverter` / `PrefixLMFeatureConverter`: inputs + targets as one decoder
sequence of inputs_length + targets_length, loss on the targets only; "prefix_lm" adds
`decoder_causal_attention`, 1 on the inputs and one position more, as seqio marks it);
"semi_causal" (METALM's semi-causal model) is "prefix_lm" with `decoder_encoded_span` in
place of `decoder_causal_attention`: 1 where `decoder_input_tokens` holds the inputs, the
span the model's encoder reads (seqio's marks less the segment's first position, the BOS).
`trim_eos` does what seqio's `append_eos_after_trim` does (keep length - 1 tokens, add EOS).
`pack` places examples first-fit into rows (an example goes to the first row where all its
parts still fit), in the order given, and writes segment ids (from 1) and positions (from 0
per segment); `decoder_input_tokens` are the decoder sequence shifted right within each
segment with 0 (the start token) at every segment start. `pad` is the pack=False twin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from flan_jax.errors import ReaderError

Features = dict[str, np.ndarray]
Example = tuple[Sequence[int], Sequence[int]]  # (inputs, targets) token ids, EOS included


@dataclasses.dataclass(frozen=True)
class Converter:
    """One feature layout: which features, of which lengths, as seqio's `seqio_class`."""

    name: str
    seqio_class: str  # the seqio converter whose features (pack or not) these are
    concatenated: bool  # inputs and targets form one decoder sequence (decoder-only models)
    causal_attention: bool  # writes `decoder_causal_attention` (the inputs region + 1)
    encoded_span: bool = False  # writes `decoder_encoded_span` (the inputs in the input tokens)

    def features(self, pack: bool) -> tuple[str, ...]:
        """The feature names, in seqio's order of mention."""
        names = [] if self.concatenated else ["encoder_input_tokens"]
        if pack and not self.concatenated:
            names += ["encoder_segment_ids", "encoder_positions"]
        names += ["decoder_target_tokens", "decoder_input_tokens"]
        if pack:
            names += ["decoder_segment_ids", "decoder_positions"]
        names.append("decoder_loss_weights")
        if self.causal_attention:
            names.append("decoder_causal_attention")
        if self.encoded_span:
            names.append("decoder_encoded_span")
        return tuple(names)

    def lengths(self, inputs_length: int, targets_length: int,
                pack: bool = True) -> dict[str, int]:
        """Each feature's length (seqio's `get_model_feature_lengths`)."""
        decoder = inputs_length + targets_length if self.concatenated else targets_length
        return {n: inputs_length if n.startswith("encoder") else decoder
                for n in self.features(pack)}

    def room(self, inputs_length: int, targets_length: int) -> list[int]:
        """A row's capacity, per part that first-fit must fit."""
        if self.concatenated:
            return [inputs_length + targets_length]
        return [inputs_length, targets_length]

    def sizes(self, examples: Sequence[Example]) -> np.ndarray:
        """[examples, parts] the room each example takes (parts as in `room`)."""
        sizes = np.asarray([(len(i), len(t)) for i, t in examples], np.int64).reshape(-1, 2)
        return sizes.sum(axis=1, keepdims=True) if self.concatenated else sizes


CONVERTERS = {c.name: c for c in (
    Converter("enc_dec", "EncDecFeatureConverter", concatenated=False, causal_attention=False),
    # seqio's DecoderFeatureConverter hands "inputs"+"targets" tasks to PrefixLMFeatureConverter,
    # whose decoder_causal_attention a fully causal model has no use for: "decoder" leaves it out.
    Converter("decoder", "DecoderFeatureConverter", concatenated=True, causal_attention=False),
    Converter("prefix_lm", "PrefixLMFeatureConverter", concatenated=True, causal_attention=True),
    # seqio has no semi-causal converter: the seqio reader derives the span from the prefix-LM
    # features (`encoded_span_from_prefix_lm`).
    Converter("semi_causal", "PrefixLMFeatureConverter", concatenated=True,
              causal_attention=False, encoded_span=True),
)}


def converter(name: str) -> Converter:
    """The layout called `name`, or a ReaderError naming the setting and the choices."""
    if name not in CONVERTERS:
        raise ReaderError(f"DataConfig.feature_converter={name!r}: choose one of "
                          f"{tuple(CONVERTERS)}")
    return CONVERTERS[name]


def trim_eos(ids: Sequence[int], length: int, eos_id: int) -> list[int]:
    """seqio's `append_eos_after_trim`: the first length - 1 ids, then EOS."""
    return [*ids[:length - 1], eos_id]


def first_fit(sizes: np.ndarray, room: Sequence[int]) -> list[list[int]]:
    """Rows of example indices: each example, in order, joins the first row where every
    part of it still fits (`sizes`: [examples, parts]; `room`: [parts] a row holds)."""
    free = np.zeros((0, len(room)), np.int64)  # [rows, parts] free positions per row
    rows: list[list[int]] = []
    for i, need in enumerate(sizes):
        if (need > room).any():
            raise ValueError(f"example {i} is longer than the lengths; trim it first")
        fits = np.flatnonzero((free >= need).all(axis=1))
        if fits.size:
            row = int(fits[0])
        else:
            row = len(rows)
            free = np.concatenate([free, [room]])
            rows.append([])
        free[row] -= need
        rows[row].append(i)
    return rows


def pack(examples: Sequence[Example], inputs_length: int, targets_length: int,
         feature_converter: str = "enc_dec") -> Features:
    """First-fit packing of (inputs, targets) token lists into rows of the given lengths."""
    conv = converter(feature_converter)
    rows = first_fit(conv.sizes(examples), conv.room(inputs_length, targets_length))
    return _write(conv, examples, rows, inputs_length, targets_length, packed=True)


def pad(examples: Sequence[Example], inputs_length: int, targets_length: int,
        feature_converter: str = "enc_dec") -> Features:
    """One example per row, padded with 0: pack=False's features."""
    conv = converter(feature_converter)
    rows = [[i] for i in range(len(examples))]
    out = _write(conv, examples, rows, inputs_length, targets_length, packed=False)
    # seqio shifts an unpacked row as a whole: its first padding position holds the EOS.
    out["decoder_input_tokens"][:, 1:] = out["decoder_target_tokens"][:, :-1]
    return out


def _write(conv: Converter, examples: Sequence[Example], rows: Sequence[Sequence[int]],
           inputs_length: int, targets_length: int, *, packed: bool) -> Features:
    lengths = conv.lengths(inputs_length, targets_length, packed)
    out = {n: np.zeros((len(rows), n_), np.int32) for n, n_ in lengths.items()}
    for r, members in enumerate(rows):
        at_enc = at_dec = 0
        for seg, i in enumerate(members, start=1):
            inp, tgt = examples[i]
            if conv.concatenated:
                seq, prefix = [*inp, *tgt], len(inp)
            else:
                seq, prefix = list(tgt), 0
                _put(out, "encoder", r, at_enc, inp, seg)
                at_enc += len(inp)
            end = at_dec + len(seq)
            _put(out, "decoder", r, at_dec, seq, seg)
            out["decoder_input_tokens"][r, at_dec + 1:end] = seq[:-1]
            out["decoder_loss_weights"][r, at_dec + prefix:end] = np.asarray(seq[prefix:]) > 0
            if conv.causal_attention:  # seqio's off-by-one: the inputs and one position more
                out["decoder_causal_attention"][r, at_dec:at_dec + prefix + 1] = 1
            if conv.encoded_span:  # where decoder_input_tokens holds the inputs
                out["decoder_encoded_span"][r, at_dec + 1:at_dec + prefix + 1] = 1
            at_dec = end
    return out


def _put(out: Features, side: str, row: int, at: int, ids: Sequence[int], seg: int) -> None:
    tokens = "encoder_input_tokens" if side == "encoder" else "decoder_target_tokens"
    n = len(ids)
    out[tokens][row, at:at + n] = ids
    if f"{side}_segment_ids" in out:  # packed
        out[f"{side}_segment_ids"][row, at:at + n] = seg
        out[f"{side}_positions"][row, at:at + n] = np.arange(n)
