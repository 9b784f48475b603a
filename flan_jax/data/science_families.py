"""Scientific task families in Galactica's markup (`galactica.py`): DNA, SMILES, proteins,
units and citations, procedural like `synthetic_families.py` and kept apart from its
`FAMILIES`, so the default mixture and the vocabulary trained on it never change.

`mixtures/science.py` registers them (tasks `synth_sci_<family>:<format>`) through
`synthetic.spec`, with the `<work>` CoT format for the family that has worked answers.
"""

from __future__ import annotations

import random
import re

from flan_jax.data.galactica import AMINO, DNA, REF, SMILES
from flan_jax.data.synthetic_families import COT, Example, Family
from flan_jax.data.templates import Template as T

VARIANT = "sci"  # task base names: synth_sci_<family> (`synthetic.base_name`)
BASES = "ACGT"
COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A"}
# Fragments joined into SMILES-like strings (not always real molecules; the counts are exact).
SMILES_FRAGMENTS = ("C", "CC", "O", "N", "C(=O)O", "C(C)", "c1ccccc1", "Cl", "F", "S", "C#N",
                    "OC", "N(C)C", "Br", "CO")
ELEMENTS = {"C": "carbon", "N": "nitrogen", "O": "oxygen", "S": "sulfur", "F": "fluorine",
            "Cl": "chlorine", "Br": "bromine"}
# One atom per match: two-letter symbols first; lowercase letters are aromatic atoms.
_ATOM = re.compile(r"Cl|Br|[BCNOSPFI]|[cnosp]")
RESIDUES = {"A": "alanine", "C": "cysteine", "D": "aspartate", "E": "glutamate",
            "F": "phenylalanine", "G": "glycine", "H": "histidine", "I": "isoleucine",
            "K": "lysine", "L": "leucine", "M": "methionine", "N": "asparagine",
            "P": "proline", "Q": "glutamine", "R": "arginine", "S": "serine",
            "T": "threonine", "V": "valine", "W": "tryptophan", "Y": "tyrosine"}
SCI_UNITS = (  # (big unit, small unit, factor)
    ("kilometers", "meters", 1000), ("meters", "centimeters", 100),
    ("kilograms", "grams", 1000), ("grams", "milligrams", 1000),
    ("liters", "milliliters", 1000), ("hours", "minutes", 60), ("minutes", "seconds", 60),
    ("kilojoules", "joules", 1000), ("moles", "millimoles", 1000))
# (title, first author, what it introduced): a small fixed bibliography.
BIBLIOGRAPHY = (
    ("Attention Is All You Need", "Vaswani", "the Transformer"),
    ("Deep Residual Learning for Image Recognition", "He", "residual networks"),
    ("Galactica: A Large Language Model for Science", "Taylor", "the Galactica model"),
    ("Language Models are Few-Shot Learners", "Brown", "GPT-3"),
    ("Finetuned Language Models Are Zero-Shot Learners", "Wei", "instruction tuning"),
    ("Adam: A Method for Stochastic Optimization", "Kingma", "the Adam optimizer"),
    ("Molecular Structure of Nucleic Acids", "Watson", "the double helix"),
    ("Highly Accurate Protein Structure Prediction with AlphaFold", "Jumper", "AlphaFold"),
    ("Dropout: A Simple Way to Prevent Neural Networks from Overfitting", "Srivastava",
     "dropout"),
    ("Long Short-Term Memory", "Hochreiter", "the LSTM"),
    ("Generative Adversarial Nets", "Goodfellow", "GANs"),
    ("Scaling Instruction-Finetuned Language Models", "Chung", "Flan-T5"),
)
CITE_VERBS = ("was introduced in", "was first described in", "is presented in",
              "comes from", "was proposed in")


def wrap(span: tuple[str, str], text: str) -> str:
    """`[START_X]text[END_X]`: Galactica writes sequence spans without inner spaces."""
    return f"{span[0]}{text}{span[1]}"


def reverse_complement(seq: str) -> str:
    return "".join(COMPLEMENT[b] for b in reversed(seq))


def count_atoms(smiles: str, element: str) -> int:
    """Atoms of `element` (a symbol such as "C" or "Cl") in a SMILES string; aromatic
    lowercase atoms count as their element."""
    return sum(a[0].upper() + a[1:] == element for a in _ATOM.findall(smiles))


# --- DNA reverse complement ----------------------------------------------------------------

def _dna_revcomp(rng: random.Random) -> Example:
    seq = "".join(rng.choice(BASES) for _ in range(rng.randint(6, 14)))
    return {"sequence": wrap(DNA, seq), "answer": wrap(DNA, reverse_complement(seq))}


DNA_REVCOMP = Family(
    "dna_revcomp", "the reverse complement of a short DNA sequence", _dna_revcomp,
    templates=(
        T("Give the reverse complement of {sequence}", "{answer}"),
        T("DNA: {sequence}\nReverse complement:", "{answer}"),
        T("What is the reverse complement of the DNA sequence {sequence}?", "{answer}"),
        T("Write the opposite strand of {sequence}, read 5' to 3'.", "{answer}"),
        T("Complement each base of {sequence} and reverse the result.", "{answer}"),
    ),
    inversion_templates=(
        T("Which DNA sequence has the reverse complement {answer}?", "{sequence}"),
        T("The opposite strand reads {answer}. Give the original strand.", "{sequence}"),
    ),
)


# --- GC content ----------------------------------------------------------------------------

def _gc_content(rng: random.Random) -> Example:
    seq = "".join(rng.choice(BASES) for _ in range(rng.choice((10, 20, 25))))
    gc = sum(b in "GC" for b in seq)
    if rng.random() < 0.5:
        quantity, answer = "the number of G and C bases", str(gc)
    else:  # the lengths divide 100, so the percentage is a whole number
        quantity, answer = "the GC content in percent", f"{100 * gc // len(seq)}%"
    return {"sequence": wrap(DNA, seq), "quantity": quantity, "answer": answer}


GC_CONTENT = Family(
    "gc_content", "GC count or percentage of a DNA sequence", _gc_content,
    templates=(
        T("What is {quantity} of {sequence}?", "{answer}"),
        T("DNA: {sequence}\nGive {quantity}.", "{answer}"),
        T("Compute {quantity} for the sequence {sequence}.", "{answer}"),
        T("Q: For {sequence}, what is {quantity}?\nA:", "{answer}"),
        T("Look at the bases of {sequence} and report {quantity}.", "{answer}"),
    ),
)


# --- atoms in a SMILES string --------------------------------------------------------------

def _smiles_atoms(rng: random.Random) -> Example:
    smiles = "".join(rng.choice(SMILES_FRAGMENTS) for _ in range(rng.randint(2, 5)))
    present = sorted(e for e in ELEMENTS if count_atoms(smiles, e))
    element = rng.choice(present) if rng.random() < 0.8 else rng.choice(sorted(ELEMENTS))
    return {"smiles": wrap(SMILES, smiles), "element": element, "name": ELEMENTS[element],
            "answer": str(count_atoms(smiles, element))}


SMILES_ATOMS = Family(
    "smiles_atoms", "how many atoms of an element a SMILES string has", _smiles_atoms,
    templates=(
        T("How many {name} atoms are in {smiles}?", "{answer}"),
        T("Molecule: {smiles}\nCount the {element} atoms.", "{answer}"),
        T("Count the atoms of {name} ({element}) in the SMILES {smiles}.", "{answer}"),
        T("Q: {smiles} has how many {element} atoms?\nA:", "{answer}"),
        T("In the molecule {smiles}, what is the number of {name} atoms?", "{answer}"),
    ),
)


# --- amino-acid composition (held out) -----------------------------------------------------

def _amino_count(rng: random.Random) -> Example:
    residues = sorted(RESIDUES)
    seq = "".join(rng.choice(residues) for _ in range(rng.randint(8, 20)))
    residue = rng.choice(seq) if rng.random() < 0.8 else rng.choice(residues)
    return {"protein": wrap(AMINO, seq), "residue": residue, "name": RESIDUES[residue],
            "answer": str(seq.count(residue))}


AMINO_COUNT = Family(
    "amino_count", "how often a residue occurs in a protein sequence", _amino_count,
    held_out=True,
    templates=(
        T("How many {name} residues ({residue}) are in {protein}?", "{answer}"),
        T("Protein: {protein}\nCount the residue {residue}.", "{answer}"),
        T("Count how often {residue} occurs in the sequence {protein}.", "{answer}"),
        T("Q: How many times does {name} appear in {protein}?\nA:", "{answer}"),
        T("In the protein {protein}, what is the number of {residue} residues?", "{answer}"),
    ),
)


# --- unit arithmetic with worked steps -----------------------------------------------------

def _unit_arithmetic(rng: random.Random) -> Example:
    big, small, factor = rng.choice(SCI_UNITS)
    a = rng.randint(2, 9)
    converted = a * factor
    step = f"{a} {big} is {a} times {factor}, which is {converted} {small}."
    op = rng.choice(("plus", "minus", "times"))
    if op == "times":
        k = rng.randint(2, 5)
        total = k * converted
        question = f"What is {k} times {a} {big}, in {small}?"
        rationale = f"{step} Then {k} times {converted} is {total}."
    else:
        b = rng.randint(1, factor - 1)
        total = converted + b if op == "plus" else converted - b
        question = f"What is {a} {big} {op} {b} {small}, in {small}?"
        rationale = f"{step} Then {converted} {op} {b} is {total}."
    return {"question": question, "rationale": rationale, "answer": f"{total} {small}"}


UNIT_ARITHMETIC = Family(
    "unit_arithmetic", "arithmetic on quantities in two units, with worked steps",
    _unit_arithmetic,
    templates=(
        T("{question}", "{answer}"),
        T("Convert and compute. {question}", "{answer}"),
        T("Q: {question}\nA:", "{answer}"),
        T("Here is a units problem.\n{question}\nGive the number and unit.", "{answer}"),
        T("Answer with the amount: {question}", "{answer}"),
    ),
    cot_templates=(
        T("{question} Let's work it out step by step.", COT),
        T("Solve and show your working.\n{question}", COT),
        T("Question: {question}\nConvert first, then compute.", COT),
        T("Work through the units: {question}", COT),
        T("Explain each step. {question}", COT),
    ),
    inversion_templates=(
        T("Write a units question whose answer is {answer}.", "{question}"),
        T("Here is a worked solution: {rationale}\nWhat question does it answer?",
          "{question}"),
    ),
)


# --- citation completion -------------------------------------------------------------------

def _citation(rng: random.Random) -> Example:
    title, author, topic = rng.choice(BIBLIOGRAPHY)
    context = f"{topic[0].upper()}{topic[1:]} {rng.choice(CITE_VERBS)}"
    return {"context": context, "title": title, "author": author,
            "answer": f"{REF[0]} {title}, {author} {REF[1]}"}


CITATION = Family(
    "citation", "the reference a sentence cites, in [START_REF] markers", _citation,
    templates=(
        T("Complete the citation: {context}", "{answer}"),
        T("Cite the paper. {context}", "{answer}"),
        T("Text: {context}\nAdd the reference.", "{answer}"),
        T("Which paper is cited here? {context}", "{answer}"),
        T("Finish the sentence with its reference: {context}", "{answer}"),
    ),
    inversion_templates=(
        T("What did the paper {answer} introduce? Write the citing sentence.", "{context}"),
        T("Write a sentence that cites {title} by {author}.", "{context}"),
    ),
)


SCIENCE_FAMILIES: tuple[Family, ...] = (
    DNA_REVCOMP, GC_CONTENT, SMILES_ATOMS, AMINO_COUNT, UNIT_ARITHMETIC, CITATION)
