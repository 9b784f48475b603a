"""Phrasing: the default families' facts worded in a larger, more varied vocabulary.

The reduced-scale study (Muckatira et al. 2024) asks whether small models show zero-shot
ability on *simple* language that they don't on harder language of the same content. The
default families are the simple side; `varied(family)` is the other: the same `make` (so
row i of a split holds the same facts), with every template's instruction rewritten in
`VARIANTS` wordings drawn from `SYNONYMS`, and the family's prose fields (`Family.prose`:
stories, questions, rationales, never an answer or an option) reworded per example.

Rewording is a pure function of the text and a seed: a word keeps one replacement within an
example (a story's "apples" stays the same fruit in its question), targets patterns are never
touched (the CoT answer sentence stays parseable), and `{slots}` are left alone.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
from collections.abc import Callable, Mapping

from flan_jax.data.formats import example_key
from flan_jax.data.synthetic_families import Example, Family
from flan_jax.data.templates import Template

SIMPLE, VARIED = "simple", "varied"
PHRASINGS = (SIMPLE, VARIED)
VARIANTS = 3  # wordings of each template in the varied phrasing

# word -> harder words of the same part of speech (so any choice keeps the sentence whole);
# names become rarer names. Keys are lower case; the replacement takes the word's case.
SYNONYMS: Mapping[str, tuple[str, ...]] = {
    "add": ("sum", "combine", "aggregate"),
    "ana": ("anastasia", "annabelle", "antonia"),
    "answer": ("response", "reply", "solution"),
    "appear": ("occur", "feature", "materialize"),
    "appears": ("occurs", "features", "recurs"),
    "apples": ("pomegranates", "apricots", "persimmons"),
    "arrange": ("order", "marshal", "sequence"),
    "available": ("accessible", "obtainable", "procurable"),
    "awful": ("dreadful", "atrocious", "abysmal"),
    "balloons": ("dirigibles", "blimps", "zeppelins"),
    "beautiful": ("gorgeous", "resplendent", "picturesque"),
    "ben": ("benedict", "bartholomew", "benjamin"),
    "between": ("betwixt", "amid", "among"),
    "bland": ("insipid", "flavourless", "vapid"),
    "books": ("volumes", "tomes", "manuscripts"),
    "boring": ("tedious", "monotonous", "soporific"),
    "boxes": ("crates", "cartons", "receptacles"),
    "calculation": ("computation", "derivation", "reckoning"),
    "cards": ("placards", "postcards", "tarots"),
    "carefully": ("meticulously", "scrupulously", "painstakingly"),
    "chloe": ("clementine", "cordelia", "chiara"),
    "choose": ("select", "opt for", "elect"),
    "classify": ("categorize", "characterize", "catalogue"),
    "coins": ("doubloons", "sovereigns", "florins"),
    "comes": ("arrives", "follows", "ensues"),
    "comfortable": ("cosy", "commodious", "snug"),
    "compare": ("contrast", "juxtapose", "weigh"),
    "compute": ("calculate", "evaluate", "determine"),
    "convert": ("transform", "translate", "transmute"),
    "cookies": ("biscuits", "macaroons", "wafers"),
    "correct": ("accurate", "valid", "veracious"),
    "count": ("tally", "enumerate", "reckon"),
    "counting": ("tallying", "enumerating", "reckoning"),
    "crowded": ("congested", "thronged", "packed"),
    "david": ("dashiell", "desmond", "dorian"),
    "decide": ("determine", "adjudicate", "ascertain"),
    "disaster": ("catastrophe", "debacle", "fiasco"),
    "each": ("every", "every single", "each individual"),
    "emma": ("evangeline", "eleonora", "emmeline"),
    "ends": ("terminates", "concludes", "finishes"),
    "entries": ("elements", "constituents", "members"),
    "equals": ("amounts to", "totals", "comes to"),
    "explain": ("justify", "elucidate", "expound"),
    "fantastic": ("phenomenal", "sensational", "stupendous"),
    "farid": ("fitzgerald", "faustino", "fabrizio"),
    "find": ("identify", "locate", "ascertain"),
    "first": ("initial", "opening", "foremost"),
    "flip": ("invert", "transpose", "overturn"),
    "flowers": ("blossoms", "chrysanthemums", "peonies"),
    "follow": ("obey", "observe", "adhere to"),
    "following": ("subsequent", "ensuing", "succeeding"),
    "food": ("cuisine", "fare", "victuals"),
    "friend": ("companion", "comrade", "confidant"),
    "give": ("provide", "supply", "furnish"),
    "gives": ("bestows", "donates", "hands over"),
    "gloomy": ("dreary", "sombre", "murky"),
    "grace": ("guinevere", "genevieve", "griselda"),
    "great": ("superb", "magnificent", "splendid"),
    "greater": ("larger", "mightier", "more substantial"),
    "group": ("category", "class", "taxonomy"),
    "has": ("possesses", "holds", "owns"),
    "have": ("possess", "hold", "own"),
    "helpful": ("obliging", "accommodating", "considerate"),
    "hugo": ("horatio", "humphrey", "hieronymus"),
    "ines": ("isadora", "imogen", "iolanthe"),
    "jack": ("jasper", "jeremiah", "jedediah"),
    "joy": ("delight", "pleasure", "rapture"),
    "kim": ("kassandra", "katerina", "kirsten"),
    "larger": ("greater", "bigger", "more considerable"),
    "largest": ("greatest", "biggest", "most considerable"),
    "last": ("final", "terminal", "ultimate"),
    "leo": ("leopold", "lysander", "lucian"),
    "less": ("lower", "fewer", "lesser"),
    "letter": ("character", "glyph", "symbol"),
    "letters": ("characters", "glyphs", "symbols"),
    "list": ("sequence", "enumeration", "roster"),
    "look": ("gaze", "peer", "glance"),
    "lovely": ("delightful", "exquisite", "charming"),
    "marbles": ("agates", "spheres", "pellets"),
    "math": ("mathematics", "arithmetic", "numeracy"),
    "maya": ("marguerite", "millicent", "magdalena"),
    "means": ("signifies", "denotes", "entails"),
    "messy": ("chaotic", "disorderly", "untidy"),
    "minus": ("less", "diminished by", "reduced by"),
    "miserable": ("wretched", "dismal", "woeful"),
    "mood": ("temperament", "disposition", "humour"),
    "movie": ("film", "picture", "feature"),
    "name": ("designate", "identify", "specify"),
    "next": ("subsequent", "ensuing", "succeeding"),
    "noah": ("nathaniel", "nicodemus", "napoleon"),
    "number": ("numeral", "figure", "quantity"),
    "numbers": ("numerals", "figures", "quantities"),
    "often": ("frequently", "regularly", "repeatedly"),
    "olga": ("octavia", "ophelia", "ottilie"),
    "opposite": ("antithesis", "converse", "inverse"),
    "order": ("sequence", "arrangement", "succession"),
    "pablo": ("peregrine", "percival", "ptolemy"),
    "parity": ("evenness", "divisibility", "oddness"),
    "pattern": ("progression", "regularity", "motif"),
    "pencils": ("crayons", "quills", "styluses"),
    "pick": ("select", "choose", "designate"),
    "plus": ("added to", "augmented by", "increased by"),
    "possible": ("conceivable", "feasible", "potential"),
    "problem": ("puzzle", "exercise", "conundrum"),
    "put": ("place", "position", "situate"),
    "question": ("query", "inquiry", "interrogative"),
    "read": ("peruse", "study", "examine"),
    "reason": ("deliberate", "ponder", "cogitate"),
    "reasoning": ("rationale", "argumentation", "logic"),
    "result": ("outcome", "consequence", "upshot"),
    "reverse": ("invert", "transpose", "backtrack"),
    "review": ("critique", "appraisal", "assessment"),
    "rosa": ("rosalind", "rosamund", "roxana"),
    "rude": ("discourteous", "impolite", "insolent"),
    "rule": ("principle", "regulation", "formula"),
    "said": ("remarked", "declared", "stated"),
    "sam": ("sebastian", "sylvester", "solomon"),
    "say": ("state", "declare", "articulate"),
    "sentence": ("utterance", "clause", "phrase"),
    "sequence": ("progression", "series", "succession"),
    "shells": ("conches", "cowries", "scallops"),
    "show": ("display", "exhibit", "present"),
    "smaller": ("lesser", "tinier", "more diminutive"),
    "smallest": ("least", "tiniest", "most diminutive"),
    "smile": ("beam", "grin", "rejoice"),
    "solve": ("resolve", "tackle", "unravel"),
    "sort": ("order", "arrange", "rank"),
    "stamps": ("postmarks", "seals", "insignia"),
    "starts": ("commences", "begins", "initiates"),
    "statement": ("assertion", "claim", "proposition"),
    "stickers": ("decals", "labels", "emblems"),
    "story": ("narrative", "account", "tale"),
    "tara": ("theodora", "tabitha", "temperance"),
    "tell": ("inform", "notify", "apprise"),
    "text": ("passage", "excerpt", "prose"),
    "then": ("thereafter", "subsequently", "next"),
    "think": ("consider", "contemplate", "deliberate"),
    "through": ("across", "throughout", "over"),
    "tone": ("register", "timbre", "inflection"),
    "trip": ("journey", "excursion", "voyage"),
    "turn": ("transform", "convert", "render"),
    "unit": ("measure", "denomination", "metric"),
    "waste": ("squandering", "misuse", "dissipation"),
    "way": ("manner", "fashion", "mode"),
    "whether": ("if", "whether or not", "if indeed"),
    "wonderful": ("marvellous", "splendid", "sublime"),
    "word": ("term", "lexeme", "vocable"),
    "words": ("terms", "lexemes", "vocables"),
    "write": ("compose", "produce", "pen"),
    "yuki": ("yolanda", "yseult", "yevgenia"),
}
_WORD = re.compile(r"[A-Za-z]+")
_SLOT = re.compile(r"(\{\{|\}\}|\{[^{}]*\})")  # slots and escaped braces stay as they are


def _case_like(word: str, replacement: str) -> str:
    if word.isupper() and len(word) > 1:
        return replacement.upper()
    if word[0].isupper():
        return replacement[0].upper() + replacement[1:]
    return replacement


def reword(text: str, pick: Callable[[str], str]) -> str:
    """`text` with each word in SYNONYMS replaced by `pick(word)` (case kept); template
    slots (`{field}`) and escaped braces are not touched."""
    def sub(match: re.Match) -> str:
        word = match.group(0)
        key = word.lower()
        return _case_like(word, pick(key)) if key in SYNONYMS else word

    parts = _SLOT.split(text)
    return "".join(p if i % 2 else _WORD.sub(sub, p) for i, p in enumerate(parts))


def chooser(seed: str) -> Callable[[str], str]:
    """A deterministic word -> synonym choice, one fixed choice per word for this seed."""
    rng, chosen = random.Random(seed), {}

    def pick(word: str) -> str:
        if word not in chosen:
            chosen[word] = rng.choice(SYNONYMS[word])
        return chosen[word]
    return pick


def _templates(fam: Family, templates: tuple[Template, ...], kind: str) -> tuple[Template, ...]:
    out = []
    for i, t in enumerate(templates):
        for v in range(VARIANTS):
            out.append(Template(reword(t.inputs, chooser(f"{fam.name}/{kind}/{i}/{v}")),
                                t.targets))
    return tuple(dict.fromkeys(out))  # (a template without rewordable words stays once)


@functools.lru_cache(maxsize=None)
def varied(fam: Family) -> Family:
    """`fam` in the varied phrasing: the same facts, harder and more varied wording. One
    object per family (cached), so the caches keyed by family (`synthetic._train_keys`)
    are shared by every task made from it (the default and the skewed ones)."""
    if fam.phrasing != SIMPLE:
        raise ValueError(f"family {fam.name!r} is already in the {fam.phrasing} phrasing")
    base, prose = fam.make, fam.prose

    def make(rng: random.Random) -> Example:
        ex = base(rng)  # the simple example's draws, unchanged: the same facts
        pick = chooser(example_key(ex))
        return {k: reword(v, pick) if k in prose else v for k, v in ex.items()}

    return dataclasses.replace(
        fam, make=make, phrasing=VARIED,
        templates=_templates(fam, fam.templates, "t"),
        inversion_templates=_templates(fam, fam.inversion_templates, "inv"),
        cot_templates=_templates(fam, fam.cot_templates, "cot"))


def phrased(fam: Family, phrasing: str) -> Family:
    if phrasing not in PHRASINGS:
        raise ValueError(f"unknown phrasing {phrasing!r}; phrasings are {PHRASINGS}")
    return fam if phrasing == SIMPLE else varied(fam)
