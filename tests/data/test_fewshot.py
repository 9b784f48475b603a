"""Few-shot exemplars: never the query itself, bounded pool, token budget respected."""

import pytest

from flan_jax.data.fewshot import ExemplarPool, pack_exemplars
from flan_jax.data.formats import FewShotPattern, example_key


def examples(n, prefix="q"):
    return [{"question": f"{prefix}{i}", "answer": str(i)} for i in range(n)]


def test_an_example_is_never_its_own_exemplar():
    data = examples(50)
    pool = ExemplarPool(capacity=64).fill(data)
    # Duplicates of the query (same content) are excluded as well as the query itself.
    pool.add(dict(data[3]))
    for seed in range(5):
        for query in data:
            got = pool.candidates(seed, example_key(query), k=10)
            assert query not in got and len(got) == 10
            assert len({example_key(e) for e in got}) == 10


def test_candidates_are_deterministic_and_vary_by_query():
    pool = ExemplarPool(capacity=32).fill(examples(32))
    a = pool.candidates(0, "query-a", k=5)
    assert a == pool.candidates(0, "query-a", k=5)
    assert a != pool.candidates(0, "query-b", k=5)
    assert a != pool.candidates(1, "query-a", k=5)


def test_pool_memory_is_bounded_and_fill_reads_only_what_it_needs():
    pool = ExemplarPool(capacity=8)
    stream = iter(examples(1000))
    pool.fill(stream)
    assert len(pool) == 8 and next(stream)["question"] == "q8"
    for ex in examples(100, prefix="late"):
        pool.add(ex)
    assert len(pool) == 8
    with pytest.raises(ValueError, match="capacity"):
        ExemplarPool(capacity=1)


def test_pack_exemplars_respects_the_token_budget():
    words = lambda s: len(s.split())  # noqa: E731  a stand-in tokenizer: one token per word
    pattern = FewShotPattern()
    rendered = [(f"question number {i}", f"answer {i}") for i in range(10)]
    text, shots = pack_exemplars(rendered, "the query", pattern, budget=14,
                                 count_tokens=words, max_shots=10)
    # query: 2 tokens; each exemplar: 5 tokens -> two fit in 14.
    assert shots == 2 and words(text) <= 14
    assert text == pattern.join(rendered[:2], "the query")
    text, shots = pack_exemplars(rendered, "the query", pattern, budget=3,
                                 count_tokens=words, max_shots=10)
    assert (text, shots) == ("the query", 0)
    _, shots = pack_exemplars(rendered, "q", pattern, budget=1000, count_tokens=words,
                              max_shots=3)
    assert shots == 3
