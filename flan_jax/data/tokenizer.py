"""Tokenizers without TensorFlow or seqio: the same ids as a seqio vocabulary, for workers.

The Grain reader tokenizes in worker processes that must not import TensorFlow (seqio's
vocabularies import it). `tokenizer_for(vocabulary)` makes a picklable twin of a seqio
vocabulary: SentencePiece from the model bytes seqio itself loads (with Galactica's
character splitting for `vocab.CharSplitVocabulary`), bytes for `seqio.ByteVocabulary`.
Few-shot budgets count tokens with it in both readers, so the two render the same text.
"""

from __future__ import annotations

from typing import Any, Protocol


class Tokenizer(Protocol):
    eos_id: int

    def encode(self, text: str) -> list[int]: ...


class SentencePieceTokenizer:
    """`seqio.SentencePieceVocabulary.encode` (SentencePiece EncodeAsIds) from model bytes."""

    def __init__(self, model: bytes, eos_id: int = 1):
        self.model, self.eos_id = model, eos_id
        self._sp = None

    def __getstate__(self) -> dict[str, Any]:
        return {"model": self.model, "eos_id": self.eos_id, "_sp": None}

    def encode(self, text: str) -> list[int]:
        if self._sp is None:
            import sentencepiece

            self._sp = sentencepiece.SentencePieceProcessor(model_proto=self.model)
        return self._sp.EncodeAsIds(text)


class CharSplitTokenizer(SentencePieceTokenizer):
    """`vocab.CharSplitVocabulary.encode`: the same `char_split.CharSplitter`, same bytes."""

    def encode(self, text: str) -> list[int]:
        if self._sp is None:
            from flan_jax.data.char_split import CharSplitter

            self._sp = CharSplitter(self.model)
        return self._sp.encode(text)


class ByteTokenizer:
    """`seqio.ByteVocabulary.encode`: UTF-8 bytes shifted past pad, EOS and UNK."""

    eos_id = 1
    offset = 3

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]


class VocabularyTokenizer:
    """Any other seqio vocabulary, called as it is (imports what the vocabulary imports)."""

    def __init__(self, vocabulary: Any):
        self.vocabulary, self.eos_id = vocabulary, vocabulary.eos_id

    def encode(self, text: str) -> list[int]:
        return list(self.vocabulary.encode(text))


_SHARED: dict[tuple[type, int, int], SentencePieceTokenizer] = {}


def tokenizer_for(vocabulary: Any) -> Tokenizer:
    """The TF-free twin of a seqio vocabulary (falls back to calling the vocabulary).

    One tokenizer per SentencePiece model: thousands of tasks over one vocabulary share it,
    so a worker process loads the model once, not once per task.
    """
    import seqio

    from flan_jax.data.vocab import CharSplitVocabulary

    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        # (the subclass first: it shares its model bytes with a plain vocabulary of the file)
        kind = (CharSplitTokenizer if isinstance(vocabulary, CharSplitVocabulary)
                else SentencePieceTokenizer)
        model = vocabulary.sp_model  # (seqio keeps one bytes object per model file)
        key = (kind, id(model), vocabulary.eos_id)
        if key not in _SHARED or _SHARED[key].model is not model:
            _SHARED[key] = kind(model, vocabulary.eos_id)
        return _SHARED[key]
    if type(vocabulary) is seqio.ByteVocabulary:
        return ByteTokenizer()
    return VocabularyTokenizer(vocabulary)


def token_counter(tokenizer: Tokenizer):
    """`count_tokens` for few-shot budgets: a picklable callable."""
    return _Counter(tokenizer)


class _Counter:
    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> int:
        return len(self.tokenizer.encode(text))
