"""What Galactica's character splitting costs: tokens per second of `CharSplitTokenizer` (what
the Grain workers run for a `galactica_vocabulary` mixture) against plain SentencePiece over
the same model (the peer, measured in the same run), on the science mixture's rendered text
and on DNA spans from 10 to 10,000 bases (the cost should grow with the text, not faster).

    python bench/galactica_tokens.py [--quick] [--json out.json]

One process, one core: a Grain reader runs this in each of its workers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rate(encode, texts: list[str], min_s: float) -> tuple[float, float, int]:
    """(texts/s, tokens/s, tokens per pass) of `encode` over `texts`, timed for >= min_s."""
    tokens = sum(len(encode(t)) for t in texts)  # (warm: loads the model)
    passes, start = 0, time.perf_counter()
    while True:
        for t in texts:
            encode(t)
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return passes * len(texts) / elapsed, passes * tokens / elapsed, tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few texts, short timings")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    from flan_jax.data import export
    from flan_jax.data.tokenizer import SentencePieceTokenizer, tokenizer_for
    from flan_jax.data.vocab import galactica_vocabulary

    export.import_modules()
    vocab = galactica_vocabulary()
    split, plain = tokenizer_for(vocab), SentencePieceTokenizer(vocab.sp_model)
    n, min_s = (50, 0.2) if args.quick else (2000, 2.0)
    rows = itertools.islice(export.rows("flan_jax_science", "train", seed=0), n)
    texts = [t for r in rows for t in (r["inputs"], r["targets"])]
    result: dict = {"texts": len(texts)}

    print(f"science mixture: {len(texts)} texts (inputs and targets), one core")
    print(f"{'tokenizer':<22}{'texts/s':>10}{'tokens/s':>12}{'tokens':>9}")
    for name, tok in (("plain SentencePiece", plain), ("Galactica char-split", split)):
        texts_s, tokens_s, tokens = _rate(tok.encode, texts, min_s)
        result[name] = {"texts_per_s": texts_s, "tokens_per_s": tokens_s, "tokens": tokens}
        print(f"{name:<22}{texts_s:>10,.0f}{tokens_s:>12,.0f}{tokens:>9,}")
    ratio = (result["Galactica char-split"]["texts_per_s"]
             / result["plain SentencePiece"]["texts_per_s"])
    result["char_split_over_plain"] = ratio
    print(f"char-split / plain (texts/s): {ratio:.2f}x")

    rng = random.Random(0)
    lengths = (10, 100, 1000) if args.quick else (10, 100, 1000, 10_000)
    print(f"\nDNA span length vs cost (char-split), {'bases':>8}{'us/text':>10}{'ns/base':>9}")
    result["dna"] = []
    for length in lengths:
        seq = "".join(rng.choice("ACGT") for _ in range(length))
        text = [f"Give the reverse complement of [START_DNA]{seq}[END_DNA]"]
        texts_s, _, tokens = _rate(split.encode, text, min_s / 4)
        assert tokens >= length  # (one token per base)
        row = {"bases": length, "us_per_text": 1e6 / texts_s,
               "ns_per_base": 1e9 / texts_s / length}
        result["dna"].append(row)
        print(f"{'':<44}{length:>8,}{row['us_per_text']:>10,.1f}{row['ns_per_base']:>9,.0f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
