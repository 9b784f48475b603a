"""The science families (Galactica markup): every template renders, answers are right
against hand counts, draws are deterministic, the mixtures keep held-out families out,
the default mixture is unchanged, and `flan-jax show` prints the markers."""

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import seqio

import mixtures.default as D
import mixtures.science as S
from flan_jax.data import formats as F
from flan_jax.data import galactica as G
from flan_jax.data import synthetic
from flan_jax.data.flan import render_every_template
from flan_jax.data.mixing import split_task_name
from flan_jax.data.science_families import (BIBLIOGRAPHY, ELEMENTS, RESIDUES,
                                            SCIENCE_FAMILIES, VARIANT, count_atoms,
                                            reverse_complement)
from flan_jax.data.synthetic_families import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"train": 40, "validation": 10, "test": 10}
BY_NAME = {f.name: f for f in SCIENCE_FAMILIES}


def _draw(name, n=200, split="train", seed=0):
    return list(itertools.islice(synthetic.examples(BY_NAME[name], split, seed=seed), n))


def _inner(span, text):
    m = re.fullmatch(re.escape(span[0]) + r"([^\[\]]*)" + re.escape(span[1]), text)
    assert m, text
    return m.group(1)


def test_catalogue_shape_and_kept_apart_from_the_default_families():
    assert {f.name for f in SCIENCE_FAMILIES} == {
        "dna_revcomp", "gc_content", "smiles_atoms", "amino_count", "unit_arithmetic",
        "citation"}
    assert not {f.name for f in SCIENCE_FAMILIES} & {f.name for f in FAMILIES}
    for fam in SCIENCE_FAMILIES:
        assert len(fam.templates) >= 5, fam.name
        assert not fam.cot_templates or len(fam.cot_templates) >= 5, fam.name
    assert [f.name for f in SCIENCE_FAMILIES if f.held_out] == ["amino_count"]
    assert [f.name for f in SCIENCE_FAMILIES if f.cot_templates] == ["unit_arithmetic"]


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_every_template_of_every_format_renders(name):
    fam = BY_NAME[name]
    spec = synthetic.spec(fam, sizes=SMALL, variant=VARIANT, cot_work=True)
    assert spec.name == f"synth_sci_{name}"
    assert (F.COT_WORK in spec.formats()) == bool(fam.cot_templates)
    assert (F.INV in spec.formats()) == bool(fam.inversion_templates)
    raw = list(synthetic.examples(fam, "train", sizes=SMALL))[:6]
    vocab = S.science_vocabulary()
    rendered = render_every_template(spec, raw, count_tokens=lambda s: len(vocab.encode(s)))
    n_templates = sum(len(spec.format_templates(f)) for f in spec.formats())
    assert len(rendered) == 6 * n_templates
    assert len({(r["format"], r["template_id"]) for r in rendered}) == n_templates
    for r in rendered:
        assert r["inputs"].strip() and r["targets"].strip()
        assert "{" not in r["inputs"] and "{" not in r["targets"], r  # no unfilled slot
        if r["format"] in F.FEW_SHOT_FORMATS:
            assert r["inputs"].count("\n\n\n") >= 1  # at least one exemplar fits
        else:
            assert len(vocab.encode(r["inputs"])) < 100, r
        if r["format"] == F.COT_WORK:
            assert r["inputs"].endswith(" <work>") and " </work> " in r["targets"]


def test_dna_answers_are_reverse_complements():
    assert reverse_complement("AACGTT") == "AACGTT" and reverse_complement("ATGC") == "GCAT"
    for ex in _draw("dna_revcomp"):
        seq, ans = _inner(G.DNA, ex["sequence"]), _inner(G.DNA, ex["answer"])
        assert set(seq) <= set("ACGT") and len(ans) == len(seq)
        pairs = dict(zip("ACGT", "TGCA"))
        assert all(pairs[a] == b for a, b in zip(seq, reversed(ans)))


def test_gc_content_counts_by_hand():
    for ex in _draw("gc_content"):
        seq = _inner(G.DNA, ex["sequence"])
        gc = seq.count("G") + seq.count("C")
        want = str(gc) if "number" in ex["quantity"] else f"{gc * 100 // len(seq)}%"
        assert ex["answer"] == want
        if want.endswith("%"):
            assert gc * 100 % len(seq) == 0  # a whole percentage


def test_smiles_atom_counts():
    # Aspirin, counted by hand: 9 carbons (3 + 6 aromatic), 4 oxygens; Cl is not carbon.
    assert count_atoms("CC(=O)Oc1ccccc1C(=O)O", "C") == 9
    assert count_atoms("CC(=O)Oc1ccccc1C(=O)O", "O") == 4
    assert count_atoms("ClCBr", "C") == 1 and count_atoms("ClCBr", "Cl") == 1
    assert count_atoms("ClCBr", "Br") == 1
    for ex in _draw("smiles_atoms"):
        smiles = _inner(G.SMILES, ex["smiles"])
        assert ex["name"] == ELEMENTS[ex["element"]]
        assert ex["answer"] == str(count_atoms(smiles, ex["element"]))


def test_amino_counts_and_units_and_citations():
    for ex in _draw("amino_count"):
        protein = _inner(G.AMINO, ex["protein"])
        assert set(protein) <= set(RESIDUES)
        assert ex["answer"] == str(protein.count(ex["residue"]))
    for ex in _draw("unit_arithmetic"):
        number = ex["answer"].split()[0]
        assert ex["rationale"].endswith(f" is {number}.")
        m = re.fullmatch(r"What is (\d+) times (\d+) (\w+), in (\w+)\?", ex["question"])
        if m:
            k, a = int(m.group(1)), int(m.group(2))
            factor = int(re.search(r"times (\d+), which", ex["rationale"]).group(1))
            assert int(number) == k * a * factor
    refs = {f"[START_REF] {title}, {author} [END_REF]" for title, author, _ in BIBLIOGRAPHY}
    for ex in _draw("citation"):
        assert ex["answer"] in refs


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_deterministic_by_seed_and_split(name):
    assert _draw(name, 30) == _draw(name, 30)
    assert _draw(name, 30) != _draw(name, 30, seed=1)
    spec = synthetic.spec(BY_NAME[name], sizes=SMALL, variant=VARIANT, cot_work=True)
    raw = list(synthetic.examples(BY_NAME[name], "train", sizes=SMALL))[:3]
    assert render_every_template(spec, raw) == render_every_template(spec, raw)


def _tasks(mixture):
    return [t.name for t in seqio.get_mixture_or_task(mixture).tasks]


def test_mixtures_hold_the_right_families_and_formats():
    train = {split_task_name(n)[0] for n in _tasks(S.TRAIN_MIXTURE)}
    assert train == {f"synth_sci_{f.name}" for f in SCIENCE_FAMILIES if not f.held_out}
    held_out = _tasks(S.HELD_OUT_MIXTURE)
    assert held_out == ["synth_sci_amino_count:zs_noopt"]
    held_in = set(_tasks(S.HELD_IN_EVAL_MIXTURE))
    assert "synth_sci_unit_arithmetic:cot_work" in held_in
    assert not any("amino" in n for n in held_in)
    assert all(split_task_name(n)[1] in S.HELD_IN_FORMATS for n in held_in)
    # Every task uses the science vocabulary (its markers are single pieces).
    vocab = seqio.get_mixture_or_task(S.TRAIN_MIXTURE).tasks[0].output_features[
        "inputs"].vocabulary
    for token in G.TOKENS:
        assert len(vocab.encode(token)) <= 2, token  # (a leading "▁" piece at most)


def test_cot_work_gets_a_share_like_cot_zs():
    mix = seqio.get_mixture_or_task(S.TRAIN_MIXTURE)
    rate = {t.name: mix.get_rate(t) for t in mix.tasks}
    base = "synth_sci_unit_arithmetic"
    assert rate[f"{base}:cot_work"] == rate[f"{base}:cot_zs"] == rate[f"{base}:zs_noopt"] > 0
    zero_shot = sum(rate[f"{base}:{f}"] for f in ("zs_noopt", "cot_zs", "cot_work"))
    few_shot = sum(rate[f"{base}:{f}"] for f in ("fs_noopt", "cot_fs"))
    assert zero_shot == few_shot == min(D.CAP, synthetic.SPLIT_SIZES["train"]) / 2


# sha256 of every `flan_jax_default*` mixture's sorted (task, rate) pairs, taken before the
# science families and `cot_work` existed: the default data must stay byte for byte.
DEFAULT_MIXTURES_DIGEST = "4e0ff618ee84212fc2e47df58a6bd105042631c7034a972ba722c0fe1382b95c"


def test_the_default_mixtures_are_untouched():
    names = sorted(m for m in seqio.MixtureRegistry.names() if m.startswith("flan_jax_default"))
    assert len(names) == 24
    table = {}
    for name in names:
        mix = seqio.get_mixture_or_task(name)
        table[name] = sorted([t.name, round(mix.get_rate(t), 6)] for t in mix.tasks)
    digest = hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()
    assert digest == DEFAULT_MIXTURES_DIGEST
    assert len(table[D.TRAIN_MIXTURE]) == 49
    assert not any(n.startswith("synth_sci_") or n.endswith(":cot_work")
                   for rows in table.values() for n, _ in rows)


def test_show_prints_galactica_markers_and_a_work_example():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "flan_jax", "show", S.HELD_IN_EVAL_MIXTURE,
                           "--seed", "0", "--n", "10"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "synth_sci_unit_arithmetic:cot_work" in out
    for marker in ("<work>", "</work>", "[START_DNA]", "[END_DNA]", "[START_SMILES]",
                   "[START_REF]", "[END_REF]"):
        assert marker in out, marker


def test_show_tokens_prints_a_dna_span_one_piece_per_character(capsys):
    from flan_jax import cli

    assert cli.main(["show", "synth_sci_dna_revcomp:zs_noopt", "--n", "1", "--tokens"]) == 0
    out = capsys.readouterr().out
    target = out.split("TARGETS:\n", 1)[1].splitlines()[0]  # [START_DNA]ACGT...[END_DNA]
    bases = target[len("[START_DNA]"):-len("[END_DNA]")]
    assert set(bases) <= set("ACGT") and len(bases) >= 4
    assert f"[START_DNA] {' '.join(bases)} [END_DNA]" in out
    assert "INPUTS (" in out and "TARGETS (" in out


def test_token_pieces_of_a_default_task_split_digits():
    from flan_jax.data import export

    export.import_modules()
    assert export.token_pieces("synth_arithmetic:zs_noopt", "targets", "115") == [
        "▁", "1", "1", "5"]
