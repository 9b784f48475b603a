"""Vocabularies: the shipped default SentencePiece model, the T5 one by path, extra tokens.

The default model is trained by `flan_jax.data.train_vocab` on the synthetic corpus (`make
vocab` rebuilds it byte for byte) and follows T5's conventions: pad 0, EOS 1, UNK 2, no BOS,
and `extra_ids` sentinels (`<extra_id_0>` ... ) numbered down from the top of the vocabulary.
Its 384 pieces + 100 sentinels leave room in the tiny preset's 512 ids for user tokens.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import gin
import seqio

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_SPM_MODEL = ASSETS / "default_spm.model"
DEFAULT_EXTRA_IDS = 100
PIECES = 384  # pieces of the default model, before sentinels
# sentencepiece ModelProto.SentencePiece.Type.USER_DEFINED: always one piece, never split.
_USER_DEFINED = 4


class VocabularyError(ValueError):
    """A vocabulary file or token list that can't be used; the message names it."""


@gin.configurable
def default_vocabulary(extra_ids: int = DEFAULT_EXTRA_IDS,
                       special_tokens: Sequence[str] = ()) -> seqio.SentencePieceVocabulary:
    """The shipped SentencePiece vocabulary, optionally with user special tokens appended."""
    return sentencepiece_vocabulary(str(DEFAULT_SPM_MODEL), extra_ids=extra_ids,
                                    special_tokens=special_tokens)


@gin.configurable
def sentencepiece_vocabulary(path: str, extra_ids: int = DEFAULT_EXTRA_IDS,
                             special_tokens: Sequence[str] = ()
                             ) -> seqio.SentencePieceVocabulary:
    """Any SentencePiece model by path, e.g. the standard T5 one (`gin/vocab/t5.gin`).

    `special_tokens` become unsplittable pieces placed after the model's own pieces and
    before the sentinels, so token ids of existing text do not change.
    """
    if not isinstance(path, (str, os.PathLike)):  # gin.REQUIRED left unbound
        raise VocabularyError("sentencepiece_vocabulary.path is not set; bind it, e.g. "
                              "--gin.sentencepiece_vocabulary.path=\"'/path/spiece.model'\"")
    path = os.fspath(path)
    if not tf_exists(path):
        raise VocabularyError(f"{path}: no such SentencePiece model")
    if special_tokens:
        path = with_special_tokens(path, special_tokens)
    return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def tf_exists(path: str) -> bool:
    """Existence check that also understands gs:// and other tf.io.gfile paths."""
    if "://" not in path:
        return os.path.exists(path)
    import tensorflow as tf
    return tf.io.gfile.exists(path)


def with_special_tokens(path: str, tokens: Sequence[str], cache_dir: str | None = None) -> str:
    """A copy of the SentencePiece model at `path` with `tokens` added as user-defined pieces.

    The copy is cached by content hash, written to a temp file and renamed, so concurrent
    callers never see a half-written model.
    """
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    tokens = list(tokens)
    if len(set(tokens)) != len(tokens):
        raise VocabularyError(f"special tokens repeat: {tokens}")
    with open(path, "rb") as f:
        data = f.read()
    proto = spm_pb2.ModelProto()
    proto.ParseFromString(data)
    existing = {p.piece for p in proto.pieces}
    for tok in tokens:
        if not tok or any(c.isspace() for c in tok):
            raise VocabularyError(f"special token {tok!r}: must be non-empty, without spaces")
        if tok in existing:
            raise VocabularyError(f"special token {tok!r} is already a piece of {path}")
        proto.pieces.add(piece=tok, score=0.0, type=_USER_DEFINED)
    digest = hashlib.blake2b(data + "\0".join(tokens).encode(), digest_size=8).hexdigest()
    cache = Path(cache_dir or Path(tempfile.gettempdir()) / "flan_jax_vocab")
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{Path(path).stem}-{digest}.model"
    if not out.exists():
        from flan_jax.atomic import atomic_file

        with atomic_file(out, "wb") as f:
            f.write(proto.SerializeToString())
    return str(out)
