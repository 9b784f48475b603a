"""Templates and options blocks: rendering, no-options variants, seeded styles, named errors."""

import numpy as np
import pytest

from flan_jax.data.options import DEFAULT_STYLE, OptionsStyle
from flan_jax.data.templates import Template, TemplateError

EXAMPLE = {"premise": "The cat sat.", "hypothesis": "A cat is sitting.",
           "options": ["yes", "it is not possible to tell", "no"], "answer": "yes"}
NLI = Template("Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the "
               "hypothesis?\n\n{options_}", "{answer}")


def test_render_with_default_options_block():
    inputs, targets = NLI.render(EXAMPLE)
    assert inputs == ("Premise: The cat sat.\nHypothesis: A cat is sitting.\nDoes the premise "
                      "entail the hypothesis?\n\nOPTIONS:\n- yes\n- it is not possible to tell"
                      "\n- no")
    assert targets == "yes"
    assert NLI.fields == ("premise", "hypothesis", "options", "answer")
    assert NLI.has_options


def test_without_options_removes_the_slot_and_its_spacing():
    plain = NLI.without_options()
    assert not plain.has_options and "options" not in plain.fields
    inputs, targets = plain.render({k: v for k, v in EXAMPLE.items() if k != "options"})
    assert inputs.endswith("entail the hypothesis?") and targets == "yes"
    mid = Template("Q: {q} {options_} Answer briefly.", "{a}").without_options()
    assert mid.inputs == "Q: {q}\nAnswer briefly."


def test_lettered_styles_answer_with_the_marker():
    style = OptionsStyle(header="Choices:", marker="({label}) {text}", labels="upper")
    inputs, targets = NLI.render(EXAMPLE, style=style)
    assert inputs.endswith("Choices:\n(A) yes\n(B) it is not possible to tell\n(C) no")
    assert targets == "(A)"
    numbered = OptionsStyle(marker="{label}. {text}", labels="number", footer="Answer:")
    inputs, targets = NLI.render({**EXAMPLE, "answer": "no"}, style=numbered)
    assert inputs.endswith("1. yes\n2. it is not possible to tell\n3. no\nAnswer:")
    assert targets == "3."
    # a closing line is dropped when the prompt goes on after the options (no "Answer:\nA:")
    inputs, _ = Template("{premise}\n{options_}\nA:", "{answer}").render(EXAMPLE, style=numbered)
    assert inputs.endswith("3. no\nA:")


def test_seeded_styles_are_deterministic_and_varied():
    styles = [OptionsStyle.from_seed(s) for s in range(200)]
    assert styles == [OptionsStyle.from_seed(s) for s in range(200)]
    assert len({s.header for s in styles}) >= 5 and len({s.labels for s in styles}) == 4
    assert DEFAULT_STYLE.render(["a", "b"]) == "OPTIONS:\n- a\n- b"


def test_missing_field_names_task_template_and_field():
    with pytest.raises(TemplateError, match=r"task 'rte', template 3: field 'hypothesis' is "
                                            r"missing.*\['premise'\]"):
        NLI.render({"premise": "x"}, task="rte", template_id=3)


def test_bad_patterns_and_options_are_refused():
    with pytest.raises(TemplateError, match="plain field name"):
        Template("{a.b}", "{c}")
    with pytest.raises(TemplateError, match="bad pattern"):
        Template("{unclosed", "x")
    with pytest.raises(TemplateError, match="'options' must be a non-empty list"):
        NLI.render({**EXAMPLE, "options": []}, task="rte", template_id=0)


def test_literal_braces_bytes_and_arrays():
    t = Template("{{literal}} {q} {options_}", "{a}")
    inputs, targets = t.render({"q": b"bytes", "options": np.array([b"x", b"y"]), "a": b"y"})
    assert inputs == "{literal} bytes OPTIONS:\n- x\n- y" and targets == "y"
    assert Template("{xs}", "{n}").render({"xs": [1, 2, 3], "n": 3}) == ("1, 2, 3", "3")
