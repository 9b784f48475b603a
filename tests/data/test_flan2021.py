"""mixtures.flan2021: catalogue size, every template rendering on mocked TFDS data, the mixture."""

import importlib
import string

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from flan_jax.data import formats as F
from flan_jax.data.flan import FlanRenderer, render_every_template
from mixtures import flan2021 as C

N = 3  # mock examples per dataset
LENGTHS = {"inputs": 512, "targets": 128}
SPECS = {spec.name: spec for spec in C.SPECS}


def _mock():
    # max_value bounds plain integer features (HellaSwag's label indexes 4 endings).
    return tfds.testing.mock_data(num_examples=N, max_value=4,
                                  policy=tfds.testing.MockPolicy.USE_CODE)


def _like_real(value):
    """mock_data fills each variable-length feature with 5-49 random items, every list on its
    own; real examples have a few aligned ones (4 endings, 4-5 choices, the cells of a table
    row). Keeping the first 4 of every list restores that."""
    if isinstance(value, dict):
        return {k: _like_real(v) for k, v in value.items()}
    return value[:4] if isinstance(value, np.ndarray) and value.ndim else value


def _mock_examples(spec):
    rows = [_like_real(r) for r in spec.source.get_dataset("train", shuffle=False)
            .as_numpy_iterator()]
    if C.DATASETS[spec.name].startswith("ai2_arc/"):  # real answer keys name a choice label
        for r in rows:
            r["choices"]["label"] = np.arange(4)
            r["answerKey"] = r["answerKey"] % 4
    return rows


@pytest.fixture(scope="module")
def raw():
    with _mock():
        return {name: _mock_examples(spec) for name, spec in SPECS.items()}


def test_catalogue_has_20_datasets_8_clusters_5_templates_each():
    datasets = {name.split(":")[0] for name in C.DATASETS.values()}
    assert len(datasets) >= 20, datasets
    assert len(C.CLUSTERS) >= 8
    clustered = [name for names in C.CLUSTERS.values() for name in names]
    assert sorted(clustered) == sorted(SPECS)  # every task in exactly one cluster
    for spec in C.SPECS:
        assert spec.name.startswith("flan2021_") and len(spec.templates) >= 5, spec.name
        assert set(spec.source.splits) == {"train", "validation"}
    assert set(C.TRAIN_SIZES) == set(SPECS)


@pytest.mark.parametrize("name", sorted(C.DATASETS))
def test_tfds_name_exists_in_the_installed_tfds(name):
    dataset, version = C.DATASETS[name].split(":")
    base, _, config = dataset.partition("/")
    builder = tfds.builder_cls(base)
    if config:
        (cfg,) = [c for c in builder.BUILDER_CONFIGS if c.name == config]
        assert str(cfg.version or builder.VERSION) == version
    else:
        assert str(builder.VERSION) == version


def _literals(pattern):
    return [text for text, _, _, _ in string.Formatter().parse(pattern) if text.strip()]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_template_of_every_format_renders(name, raw):
    spec = SPECS[name]
    rendered = render_every_template(spec, raw[name])
    expected = [(fmt, tid) for fmt in spec.formats()
                for tid in range(len(spec.format_templates(fmt))) for _ in range(N)]
    assert [(r["format"], r["template_id"]) for r in rendered] == expected
    for r in rendered:
        template = spec.format_templates(r["format"])[r["template_id"]]
        assert r["task"] == name and r["inputs"].strip() and r["targets"].strip()
        for text in _literals(template.inputs):  # the query's own wording is all there
            assert text.strip() in r["inputs"], (r["format"], r["template_id"], text)
        if r["format"] in F.FEW_SHOT_FORMATS and spec.few_shot is not None:
            assert spec.few_shot.pattern.example_separator in r["inputs"]  # shots, then query


def _marked(target, options):
    """The option a letter/number marker such as "(B)", "b." or "2)" points at."""
    label = target.strip("().").strip()
    if label.isdigit():
        return options[int(label) - 1]
    return options[string.ascii_lowercase.index(label.lower())]


@pytest.mark.parametrize("name", sorted(n for n, s in SPECS.items() if s.has_options))
def test_classification_answers_are_options(name, raw):
    spec = SPECS[name]
    renderer = FlanRenderer(spec, F.ZS_OPT, count_tokens=len)
    for row in raw[name]:
        fields = renderer.fields(row)
        assert len(fields["options"]) >= 2 and fields["answer"] in fields["options"]
        out = renderer.render(fields)
        target = out["targets"]
        assert target == fields["answer"] or _marked(target, fields["options"]) == \
            fields["answer"]


def _fields(name, **raw):
    return SPECS[C.PREFIX + name].fields(raw)


def test_label_words_follow_each_datasets_label_order():
    nli = {"premise": b"p", "hypothesis": b"h"}
    assert _fields("rte", sentence1=b"p", sentence2=b"h", label=0)["answer"] == "yes"
    assert _fields("mnli", **nli, label=1)["answer"] == "impossible to say"
    assert _fields("cb", **nli, label=1)["answer"] == "no"  # cb: entailment, contradiction, ..
    assert _fields("cb", **nli, label=2)["answer"] == "impossible to say"
    assert _fields("anli_r1", context=b"p", hypothesis=b"h", label=2)["answer"] == "no"
    assert _fields("winogrande", sentence=b"_ sat.", option1=b"Ann", option2=b"Bo",
                   label=1)["answer"] == "Bo"
    assert _fields("trec", text=b"Who?", **{"label-coarse": 3})["answer"] == "person"
    assert _fields("stsb", sentence1=b"a", sentence2=b"b", label=3.6)["answer"] == "4"
    assert _fields("multirc", paragraph=b"p", question=b"q", answer=b"cand",
                   label=1)["answer"] == "yes"
    arc = _fields("arc_easy", question=b"q", answerKey=2,
                  choices={"text": np.array([b"w", b"x", b"y"]), "label": np.array([0, 1, 2])})
    assert arc["answer"] == "y"
    with pytest.raises(ValueError, match="glue/rte:2.0.0: .*label -1 is not an index"):
        _fields("rte", sentence1=b"p", sentence2=b"h", label=-1)  # an unlabeled test split
    with pytest.raises(ValueError, match="super_glue/boolq:1.0.2: .*'passage'"):
        _fields("boolq", question=b"q", label=1)
    table = {"row_number": np.array([0, 0, 0]), "column_header": np.array([b"s", b"p", b"o"]),
             "content": np.array([b"Rome", b"capitalOf", b"Italy"])}
    assert _fields("dart", input_text={"table": table}, target_text=b"t")["data"] == \
        "Rome | capitalOf | Italy"


@pytest.mark.parametrize("task", ["flan2021_rte:zs_opt", "flan2021_rte:fs_noopt",
                                  "flan2021_squad_v1:inv", "flan2021_ag_news:fs_opt"])
def test_seqio_pipeline_end_to_end(task):
    with _mock():
        rows = list(seqio.get_mixture_or_task(task).get_dataset(
            LENGTHS, split="validation", shuffle=False, use_cached=False).as_numpy_iterator())
    base, fmt = task.split(":")
    assert len(rows) == N
    for r in rows:
        assert r["task"] == base.encode() and r["format"] == fmt.encode()
        assert r["inputs"][-1] == 1 and r["targets"][-1] == 1  # EOS
        assert r["inputs_pretokenized"] and r["targets_pretokenized"]


def test_mixture_rates_by_hand_count():
    mixture = seqio.get_mixture_or_task(C.MIXTURE)
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    expected = {F.task_name(s.name, fmt) for s in C.SPECS for fmt in s.formats()}
    assert set(rates) == expected
    cap, inv = C.SUBMIXTURE.cap, C.SUBMIXTURE.mix.inversion_weight
    assert cap == 30_000
    for spec in C.SPECS:
        own = {n: r for n, r in rates.items() if n.startswith(spec.name + ":")}
        budget = min(cap, C.TRAIN_SIZES[spec.name])
        assert sum(r for n, r in own.items() if not n.endswith(":inv")) == \
            pytest.approx(budget)
        assert own.get(spec.name + ":inv", 0.0) == pytest.approx(
            inv * budget if spec.inversion_templates else 0.0)
    assert rates["flan2021_cb:zs_opt"] == pytest.approx(250 / 4)  # 4 formats share 250
    assert rates["flan2021_mnli:fs_noopt"] == pytest.approx(30_000 / 4)  # capped
    assert rates["flan2021_wmt16_de_en:zs_noopt"] == pytest.approx(30_000 / 2)
    assert sum(rates.values()) == pytest.approx(sum(
        min(cap, C.TRAIN_SIZES[s.name]) * (1 + (inv if s.inversion_templates else 0))
        for s in C.SPECS))


def test_registration_is_repeatable():
    names = C.register(replace=True)
    assert len(names) == len(set(names)) == sum(len(s.formats()) for s in C.SPECS)
    with pytest.raises(ValueError, match="already registered"):
        C.register()
    importlib.reload(C)  # a second import leaves the registration as it was
    assert set(names) <= set(seqio.TaskRegistry.names())
    assert len(seqio.get_mixture_or_task(C.MIXTURE).tasks) == len(names)
