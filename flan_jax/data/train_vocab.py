"""Trains the default SentencePiece vocabulary on the synthetic corpus (`make vocab`).

    python -m flan_jax.data.train_vocab [--out PATH] [--pieces 384] [--special TOKEN ...]

Deterministic: one thread, the corpus in a fixed order, no sampling, so the shipped model is
reproduced byte for byte (tests/data/test_vocab.py checks it). Digits are split one per piece,
as small models learn arithmetic far better that way; every printable ASCII character is kept
so that any English prompt encodes without unknown pieces.
"""

from __future__ import annotations

import argparse
import io
import os
import string
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from flan_jax.data.vocab import DEFAULT_SPM_MODEL, PIECES

SAMPLES_PER_FAMILY = 3000


def train(*, pieces: int = PIECES, samples_per_family: int = SAMPLES_PER_FAMILY,
          special_tokens: Sequence[str] = (), seed: int = 0) -> bytes:
    """The serialized SentencePiece model (T5 ids: pad 0, EOS 1, UNK 2, no BOS)."""
    import sentencepiece as spm

    from flan_jax.data.synthetic import sample_texts

    model = io.BytesIO()
    required = "".join(c for c in string.printable if not c.isspace())
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sample_texts(samples_per_family, seed=seed))),
        model_writer=model, model_type="unigram", vocab_size=pieces,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        required_chars=required, split_digits=True, num_threads=1,
        shuffle_input_sentence=False, input_sentence_size=0,
        user_defined_symbols=list(special_tokens), minloglevel=2)
    return model.getvalue()


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flan_jax.data.train_vocab",
        description="Train the default SentencePiece model on the synthetic task corpus.")
    parser.add_argument("--out", type=Path, default=DEFAULT_SPM_MODEL,
                        help="where to write the .model file (default: the packaged one)")
    parser.add_argument("--pieces", type=int, default=PIECES,
                        help="vocabulary size before the 100 T5 sentinels (default %(default)s)")
    parser.add_argument("--samples-per-family", type=int, default=SAMPLES_PER_FAMILY,
                        help="rendered examples per family and format (default %(default)s)")
    parser.add_argument("--special", nargs="*", default=(), metavar="TOKEN",
                        help="extra unsplittable tokens to build into the model")
    args = parser.parse_args(argv)
    from flan_jax.quiet import import_tensorflow
    import_tensorflow()
    data = train(pieces=args.pieces, samples_per_family=args.samples_per_family,
                 special_tokens=args.special)
    write_atomically(args.out, data)
    print(f"wrote {args.out} ({args.pieces} pieces, {len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
