"""Galactica's scientific markup (Taylor et al. 2022): its special tokens and spans.

Citations sit in `[START_REF] ... [END_REF]`, step-by-step reasoning in a working-memory
block `<work> ... </work>` before the answer, and molecules, proteins and DNA in spans
whose contents the `galactica` vocabulary tokenizes one character per token. Documents
are separated by `</s>`, which is T5's EOS: packing already ends every example with it.
"""

from __future__ import annotations

REF = ("[START_REF]", "[END_REF]")
WORK = ("<work>", "</work>")
SMILES = ("[START_SMILES]", "[END_SMILES]")
AMINO = ("[START_AMINO]", "[END_AMINO]")
DNA = ("[START_DNA]", "[END_DNA]")

# Spans whose contents are split one character per token (Galactica's sequence spans).
CHAR_SPANS: tuple[tuple[str, str], ...] = (SMILES, AMINO, DNA)
# Every marker, in the order the vocabulary adds them (their ids follow this order).
TOKENS: tuple[str, ...] = (*REF, *WORK, *SMILES, *AMINO, *DNA)
