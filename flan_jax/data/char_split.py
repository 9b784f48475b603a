"""Galactica-style tokenization over any SentencePiece model: sequence spans and digits one
character per token. The one home of the rule, for `vocab.CharSplitVocabulary` (seqio) and
`tokenizer.CharSplitTokenizer` (Grain workers), so it imports neither TensorFlow nor seqio.
"""

from __future__ import annotations

from collections.abc import Sequence

from flan_jax.data.galactica import CHAR_SPANS, TOKENS


def _always(c: str) -> bool:
    return True


# sentencepiece ModelProto.SentencePiece.Type
_NORMAL, _USER_DEFINED = 1, 4


class CharSplitter:
    """`encode(text) -> ids` over a SentencePiece model with the markers as pieces.

    The text is encoded as SentencePiece would, then each piece inside a span's contents
    (every character split) or holding a digit (the digits split) is replaced by smaller
    pieces whose strings concatenate to the same piece string, so ordinary SentencePiece
    decoding gives what it gives for the unsplit ids: the text, for text the model
    normalises to itself. A span runs from its start marker to the next matching end
    marker; an unclosed span runs to the end of the text (a long sequence cut short is
    still a sequence); a stray end marker is just its id. Markers, sentinels and other
    user-defined, control, unknown or byte pieces are never split. The markers must be
    user-defined pieces of the model (`vocab.with_special_tokens`), or it is refused.

    `model`: the serialized model (what seqio's `sp_model` gives, sentinels included).
    Picklable: the processor is rebuilt lazily from the bytes.
    """

    def __init__(self, model: bytes, spans: Sequence[tuple[str, str]] = CHAR_SPANS,
                 markers: Sequence[str] = TOKENS):
        self.model, self.spans, self.markers = model, tuple(spans), tuple(markers)
        self._sp = None

    def __getstate__(self) -> dict:
        # (only what it was built from: the tables are rebuilt with the processor)
        return {"model": self.model, "spans": self.spans, "markers": self.markers, "_sp": None}

    def _load(self) -> None:
        import sentencepiece
        from sentencepiece import sentencepiece_model_pb2 as spm_pb2

        proto = spm_pb2.ModelProto.FromString(self.model)
        types = {p.piece: p.type for p in proto.pieces}
        needed = {m for span in self.spans for m in span} | set(self.markers)
        missing = sorted(m for m in needed if types.get(m) != _USER_DEFINED)
        if missing:
            raise ValueError(f"char-split tokenization: {missing} are not user-defined pieces "
                             "of the SentencePiece model; add them with "
                             "flan_jax.data.vocab.with_special_tokens (galactica_vocabulary "
                             "does)")
        self._normal = {p.piece: i for i, p in enumerate(proto.pieces) if p.type == _NORMAL}
        self._pieces = [p.piece for p in proto.pieces]
        ids = {p.piece: i for i, p in enumerate(proto.pieces)}
        # start marker id -> its end marker id
        self._ends = {ids[start]: ids[end] for start, end in self.spans}
        self._starts = tuple(start for start, _ in self.spans)
        self._digit_ids = {i for p, i in self._normal.items() if any(c.isdigit() for c in p)}
        # A model that never merges a digit with anything (the shipped one: split_digits)
        # tokenizes text without a span exactly as SentencePiece does: no walk needed.
        self._merges_digits = any(len(self._pieces[i]) > 1 for i in self._digit_ids)
        self._in_span: dict[int, list[int]] = {}  # piece id -> its split (cached)
        self._digits: dict[int, list[int]] = {}
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=self.model)

    def encode(self, text: str) -> list[int]:
        if self._sp is None:
            self._load()
        ids = self._sp.encode(text)
        if not self._merges_digits and not any(start in text for start in self._starts):
            return ids
        out: list[int] = []
        end = None  # the end marker id of the span we are in, if any
        for i in ids:
            if end is not None:
                if i == end:
                    end = None
                    out.append(i)
                else:
                    out.extend(self._split_id(i, self._in_span, _always))
            elif i in self._ends:
                end = self._ends[i]
                out.append(i)
            elif i in self._digit_ids:
                out.extend(self._split_id(i, self._digits, str.isdigit))
            else:
                out.append(i)
        return out

    def _split_id(self, i: int, cache: dict[int, list[int]], alone) -> list[int]:
        """The split of piece `i` (normal pieces only: markers, sentinels, unknown and byte
        pieces are kept whole), cached per piece."""
        if i not in cache:
            piece = self._pieces[i]
            cache[i] = (self._split(piece, i, alone) if self._normal.get(piece) == i
                        else [i])
        return cache[i]

    def _split(self, piece: str, piece_id: int, alone) -> list[int]:
        """Ids of pieces that concatenate to `piece`: each char with `alone(c)` by itself,
        the runs between as one piece where the vocabulary has it, else char by char; the
        piece itself when some char has no piece of its own (it would become UNK)."""
        segments: list[str] = []
        run = ""
        for c in piece:
            if alone(c):
                if run:
                    segments.append(run)
                    run = ""
                segments.append(c)
            else:
                run += c
        if run:
            segments.append(run)
        out: list[int] = []
        for s in segments:
            if s in self._normal:
                out.append(self._normal[s])
            elif all(c in self._normal for c in s):
                out.extend(self._normal[c] for c in s)
            else:
                return [piece_id]
        return out
