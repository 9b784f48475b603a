"""Vocabularies: the shipped default SentencePiece model, the T5 one by path, extra tokens.

The default model is trained by `flan_jax.data.train_vocab` on the synthetic corpus (`make
vocab` rebuilds it byte for byte) and follows T5's conventions: pad 0, EOS 1, UNK 2, no BOS,
and `extra_ids` sentinels (`<extra_id_0>` ... ) numbered down from the top of the vocabulary.
Its 384 pieces + 100 sentinels leave room in the tiny preset's 512 ids for user tokens
(Galactica's 10 markers: 494, see `galactica_vocabulary`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    path = _model_path(path, "sentencepiece_vocabulary")
    if special_tokens:
        path = with_special_tokens(path, special_tokens)
    return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


@gin.configurable
def galactica_vocabulary(path: str | None = None,
                         extra_ids: int = DEFAULT_EXTRA_IDS) -> CharSplitVocabulary:
    """Galactica's tokenization over the shipped model, or the SentencePiece model at `path`
    (e.g. T5's: `gin/vocab/t5_galactica.gin`): its markers (`galactica.TOKENS`) become
    pieces after the model's own and before the sentinels, and sequence spans and digits
    are split one character per token (`char_split`). Over the shipped model that is
    384 + 10 + 100 = 494 ids, inside the tiny preset's 512; over T5's 32000 + 10 + 100 =
    32110, inside its 32128 (a checkpoint trained without the markers needs its embedding
    rows remapped: `flan-jax convert --add_tokens galactica`). A model that has the markers
    already (the spiece.model that convert writes) is used as it is.
    """
    from flan_jax.data.galactica import TOKENS

    path = _model_path(str(DEFAULT_SPM_MODEL) if path is None else path,
                       "galactica_vocabulary")
    if not has_galactica_markers(path):
        path = with_special_tokens(path, TOKENS)
    return CharSplitVocabulary(path, extra_ids=extra_ids)


class CharSplitVocabulary(seqio.SentencePieceVocabulary):
    """A SentencePiece vocabulary whose encoding splits Galactica's sequence spans and all
    digits one character per token (`flan_jax.data.char_split`); decoding is unchanged.

    Equal only to another CharSplitVocabulary of the same model and settings: a plain
    vocabulary of the same file gives other ids, so a mixture must not treat them as one.
    """

    def __init__(self, sentencepiece_model_file: str, extra_ids: int = 0, **kwargs: Any):
        super().__init__(sentencepiece_model_file, extra_ids=extra_ids, **kwargs)
        self._splitter = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_splitter", None)  # rebuilt lazily, like seqio's own model context
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._splitter = None

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and super().__eq__(other)

    __hash__ = None  # (as seqio.SentencePieceVocabulary's)

    @property
    def splitter(self):
        from flan_jax.data.char_split import CharSplitter

        if self._splitter is None:
            self._splitter = CharSplitter(self.sp_model)  # (sentinels included)
        return self._splitter

    def _encode(self, s: str) -> list[int]:
        return self.splitter.encode(s)

    def _encode_tf(self, s):
        """A scalar string -> int32 [n]; a vector of strings -> a RaggedTensor [b, None]
        (what seqio's tf_text tokenizer gives), through the Python encoder."""
        import numpy as np
        import tensorflow as tf

        s = tf.convert_to_tensor(s, tf.string)
        if s.shape.rank == 0:
            ids = tf.numpy_function(
                lambda b: np.asarray(self._encode(b.decode("utf-8")), np.int32), [s],
                tf.int32, stateful=False)
            ids.set_shape([None])
            return ids
        if s.shape.rank != 1:
            raise ValueError(f"CharSplitVocabulary.encode_tf: a scalar or a vector of "
                             f"strings, not shape {s.shape}")

        def batch(texts):
            encoded = [self._encode(b.decode("utf-8")) for b in texts]
            return (np.asarray([i for e in encoded for i in e], np.int32),
                    np.asarray([len(e) for e in encoded], np.int64))

        values, lengths = tf.numpy_function(batch, [s], [tf.int32, tf.int64], stateful=False)
        values.set_shape([None])
        lengths.set_shape([None])
        return tf.RaggedTensor.from_row_lengths(values, lengths)


def vocabulary_of_file(path: str, extra_ids: int = DEFAULT_EXTRA_IDS
                       ) -> seqio.SentencePieceVocabulary:
    """The vocabulary a model dir's spiece.model stands for: Galactica's (character
    splitting) when the model holds Galactica's markers (as `flan-jax convert --add_tokens
    galactica` writes it), else the plain SentencePiece one."""
    path = _model_path(path, "--vocab")
    if has_galactica_markers(path):
        return CharSplitVocabulary(path, extra_ids=extra_ids)
    return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def write_model_file(vocabulary: seqio.Vocabulary, directory: str | os.PathLike[str]
                     ) -> Path | None:
    """Copies the SentencePiece model of `vocabulary` to `directory`/spiece.model when it is
    not the shipped one, so the model dir decodes with what it trained on (`flan-jax infer`
    reads it, `vocabulary_of_file`); the shipped vocabulary is what a dir without one uses."""
    if not isinstance(vocabulary, seqio.SentencePieceVocabulary):
        return None
    src = vocabulary.sentencepiece_model_file
    if src == str(DEFAULT_SPM_MODEL) and type(vocabulary) is seqio.SentencePieceVocabulary:
        return None
    import tensorflow as tf

    out = Path(directory) / "spiece.model"
    out.write_bytes(tf.io.gfile.GFile(src, "rb").read())
    return out


def has_galactica_markers(path: str) -> bool:
    """Whether the SentencePiece model at `path` has all of Galactica's markers as
    user-defined (never split) pieces."""
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    from flan_jax.data.galactica import TOKENS

    with open(path, "rb") as f:
        proto = spm_pb2.ModelProto.FromString(f.read())
    return set(TOKENS) <= {p.piece for p in proto.pieces if p.type == _USER_DEFINED}


def _model_path(path: Any, binding: str) -> str:
    """`path` as a string, checked to exist; `binding` names what set it in the error."""
    if not isinstance(path, (str, os.PathLike)):  # gin.REQUIRED left unbound
        raise VocabularyError(f"{binding}.path is not set; bind it, e.g. "
                              f"--gin.{binding}.path=\"'/path/spiece.model'\"")
    path = os.fspath(path)
    if not tf_exists(path):
        raise VocabularyError(f"{path}: no such SentencePiece model")
    return path


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
