"""Format names, deterministic choice, few-shot joining and chain-of-thought answers."""

import collections

import numpy as np
import pytest

from flan_jax.data.formats import (FORMATS, FewShotPattern, choose, cot_target, example_key,
                                   extract_cot_answer, task_name)


def test_task_names_follow_one_pattern():
    assert [task_name("anli", f) for f in FORMATS] == [
        "anli:zs_opt", "anli:zs_noopt", "anli:fs_opt", "anli:fs_noopt", "anli:cot_zs",
        "anli:cot_fs", "anli:inv", "anli:cot_work"]
    with pytest.raises(ValueError, match="unknown format 'zero'"):
        task_name("anli", "zero")


def test_example_key_ignores_order_and_container_types():
    a = {"q": "2+2", "options": ["3", "4"], "n": 4}
    b = {"n": np.int64(4), "options": np.array([b"3", b"4"]), "q": b"2+2"}
    assert example_key(a) == example_key(b)
    assert example_key(a) != example_key({**a, "n": 5})


def test_choose_is_deterministic_and_uniform():
    draws = [choose(7, f"ex{i}", n=5) for i in range(10_000)]
    assert draws == [choose(7, f"ex{i}", n=5) for i in range(10_000)]
    counts = collections.Counter(draws)
    assert set(counts) == set(range(5))
    assert all(abs(c / 10_000 - 0.2) < 0.02 for c in counts.values()), counts
    assert draws != [choose(8, f"ex{i}", n=5) for i in range(10_000)]


def test_few_shot_pattern_join():
    default = FewShotPattern()
    assert default.join([("Q1", "A1"), ("Q2", "A2")], "Q3") == "Q1\n\nA1\n\n\nQ2\n\nA2\n\n\nQ3"
    qa = FewShotPattern(inputs_prefix="Q: ", targets_prefix="A: ", x_y_delimiter="\n",
                        example_separator="\n\n")
    assert qa.join([("1+1?", "2")], "2+2?") == "Q: 1+1?\nA: 2\n\nQ: 2+2?\nA:"


@pytest.mark.parametrize("text,answer", [
    ("3 apples plus 4 apples is 7 apples. So the answer is 7.", "7"),
    ("First 2, then 3. The answer is: yes", "yes"),
    ("the answer is 1. Checking again, the answer is 2.", "2"),
    ("no marker here ", "no marker here"),
    (b"So the answer is Paris.", "Paris"),
])
def test_extract_cot_answer(text, answer):
    assert extract_cot_answer(text) == answer


def test_cot_target_round_trips_through_extraction():
    target = cot_target("Tuesday plus 3 days is Friday.", "Friday")
    assert target == "Tuesday plus 3 days is Friday. So the answer is Friday."
    assert extract_cot_answer(target) == "Friday"
