"""Flan 2021 catalogue: instruction templates over real TFDS datasets, grouped in clusters.

Importing this module registers a `flan2021_{dataset}:{format}` seqio Task per supported
format and the `flan2021` mixture (examples-proportional, 30k cap per dataset). TFDS data
must be prepared before a pipeline runs (`tfds build NAME`); import itself reads no data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import seqio

from flan_jax.data import mixing
from flan_jax.data.flan import FlanTask, register_flan_task
from flan_jax.data.templates import Template as T
from flan_jax.data.templates import plain_value
from flan_jax.data.vocab import default_vocabulary

PREFIX = "flan2021_"
MIXTURE = "flan2021"
SUBMIXTURE = mixing.FLAN_2022["flan2021"]  # cap 30_000 per dataset
Fields = Callable[[Mapping[str, Any]], dict[str, Any]]


def register(vocabulary: seqio.Vocabulary | None = None, *, replace: bool = False
             ) -> list[str]:
    """Registers every catalogue task (default vocabulary unless given) and the mixture."""
    if vocabulary is None:
        vocabulary = default_vocabulary()
    names = [n for spec in SPECS for n in register_flan_task(spec, vocabulary,
                                                              replace=replace)]
    mixing.register_mixture(MIXTURE, rates(names), replace=replace)
    return names


def rates(task_names: Sequence[str]) -> mixing.Rates:
    """Mixing rates from the recorded train sizes: no data is read."""
    return mixing.task_rates(task_names, cap=SUBMIXTURE.cap, mix=SUBMIXTURE.mix,
                             sizes=TRAIN_SIZES)


# ---- fields: raw TFDS example (plain values) -> template fields ------------------------------

def _named(tfds_name: str, fields: Fields) -> Fields:
    """`fields` whose errors name the TFDS dataset (they surface deep in a tf.data pipeline)."""
    def named(ex: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return fields(ex)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"{tfds_name}: can't make template fields from an example with "
                             f"features {sorted(ex)}: {e!r}") from e
    return named


def _str(value: Any) -> str:
    value = plain_value(value)
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _get(ex: Mapping[str, Any], path: str) -> Any:
    """A feature by dotted path ("answer.value"); nested features arrive as numpy values."""
    value: Any = ex
    for part in path.split("."):
        value = value[part]
    return plain_value(value)


def _strs(ex: Mapping[str, Any], path: str) -> list[str]:
    return [_str(v) for v in _get(ex, path)]


def _pick(options: Sequence[str], index: int, what: str) -> dict[str, Any]:
    """`options` and the answer at `index` (a label of -1 marks an unlabeled test split)."""
    if not 0 <= int(index) < len(options):
        raise ValueError(f"{what}: label {index} is not an index into {list(options)}")
    return {"options": list(options), "answer": options[int(index)]}


def _texts(**renames: str) -> Fields:
    """Template field -> dotted TFDS feature path, as text."""
    return lambda ex: {field: _str(_get(ex, path)) for field, path in renames.items()}


def _classes(words: Sequence[str], shown: Sequence[str] | None = None, label: str = "label",
             const: Mapping[str, str] | None = None, **renames: str) -> Fields:
    """A classification: `words[label]` is the answer; `shown` orders the options block."""
    texts = _texts(**renames)

    def fields(ex: Mapping[str, Any]) -> dict[str, Any]:
        picked = _pick(words, _get(ex, label), f"feature {label!r}")
        return {**texts(ex), **(const or {}), "options": list(shown or words),
                "answer": picked["answer"]}
    return fields


def _choices(choices: Callable[[Mapping[str, Any]], list[str]], label: str = "label",
             **renames: str) -> Fields:
    """Multiple choice: the options come from the example, the label indexes them."""
    texts = _texts(**renames)
    return lambda ex: {**texts(ex), **_pick(choices(ex), _get(ex, label), f"feature {label!r}")}


def _first(path: str, **renames: str) -> Fields:
    """Free-text answer: the first reference of a list feature."""
    texts = _texts(**renames)

    def fields(ex: Mapping[str, Any]) -> dict[str, Any]:
        answers = _strs(ex, path)
        if not answers:
            raise ValueError(f"feature {path!r} has no reference answer")
        return {**texts(ex), "answer": answers[0]}
    return fields


def _arc(ex: Mapping[str, Any]) -> dict[str, Any]:
    labels = [int(v) for v in _get(ex, "choices.label")]  # ClassLabel A-E as indices
    key = int(_get(ex, "answerKey"))
    if key not in labels:
        raise ValueError(f"answerKey {key} is not among the choice labels {labels}")
    return {"question": _str(ex["question"]),
            **_pick(_strs(ex, "choices.text"), labels.index(key), "answerKey")}


def _table(ex: Mapping[str, Any], triples: bool) -> str:
    """A TFDS table feature as text: `a | b | c` per triple, or `header: value` pairs."""
    t = ex["input_text"]["table"]
    # TFDS stores the table as one Sequence of dicts, so the three lists line up.
    cells = zip(_get(t, "row_number"), _strs(t, "column_header"), _strs(t, "content"))
    if not triples:
        return ", ".join(f"{h}: {c}" for _, h, c in cells)
    rows: dict[int, list[str]] = {}
    for row, _, content in cells:
        rows.setdefault(int(row), []).append(content)
    return "\n".join(" | ".join(r) for r in rows.values())


def _data_to_text(triples: bool) -> Fields:
    return lambda ex: {"data": _table(ex, triples), "text": _str(ex["target_text"])}


def _translate(src: str, tgt: str) -> Fields:
    names = {"de": "German", "en": "English", "fr": "French", "ro": "Romanian"}
    return lambda ex: {"source": _str(ex[src]), "target": _str(ex[tgt]),
                       "src_lang": names[src], "tgt_lang": names[tgt]}


# ---- templates --------------------------------------------------------------------------------

NLI_OPTIONS = ("yes", "impossible to say", "no")  # also the label order of MNLI/SNLI/ANLI
NLI = (
    T("{premise}\n\nFrom the text above, is it true that \"{hypothesis}\"?\n\n{options_}",
      "{answer}"),
    T("Premise: {premise}\nHypothesis: {hypothesis}\nIs the hypothesis implied by the "
      "premise?\n{options_}", "{answer}"),
    T("Read the passage and decide whether the claim follows from it.\n\nPassage: {premise}\n"
      "Claim: {hypothesis}\n{options_}", "{answer}"),
    T("{premise}\nKnowing only this, can we conclude the following?\n{hypothesis}\n{options_}",
      "{answer}"),
    T("Suppose this is true: {premise}\nMust it then be true that \"{hypothesis}\"?\n{options_}",
      "{answer}"),
    T("Is the statement \"{hypothesis}\" supported by this context?\n\n{premise}\n\n{options_}",
      "{answer}"),
    T("Decide if the first sentence entails the second.\nFirst: {premise}\n"
      "Second: {hypothesis}\n{options_}", "{answer}"),
)
NLI_INV = (
    T("Premise: {premise}\nWrite a hypothesis for which the answer to \"does the premise imply "
      "it?\" would be: {answer}.", "{hypothesis}"),
    T("{premise}\n\nWrite a sentence that someone could judge against the text above, where "
      "the verdict \"is it implied?\" is \"{answer}\".", "{hypothesis}"),
)
QNLI = (
    T("Does the sentence \"{sentence}\" answer the question \"{question}\"?\n{options_}",
      "{answer}"),
    T("Question: {question}\nCandidate: {sentence}\nDoes the candidate sentence contain the "
      "answer to the question?\n{options_}", "{answer}"),
    T("{question}\n\nWould \"{sentence}\" be a good reply to that question?\n{options_}",
      "{answer}"),
    T("Can the question below be answered from the sentence that follows it?\n\n{question}\n"
      "{sentence}\n{options_}", "{answer}"),
    T("Sentence: {sentence}\nQuestion: {question}\nIs the answer to the question found in the "
      "sentence?\n{options_}", "{answer}"),
)
SENTIMENT_OPTIONS = ("negative", "positive")
SST2 = (
    T("{text}\nWhat is the sentiment of this sentence?\n{options_}", "{answer}"),
    T("A line from a film review: \"{text}\"\nIs the reviewer's view positive or negative?\n"
      "{options_}", "{answer}"),
    T("Classify the tone of the following text.\n\n{text}\n{options_}", "{answer}"),
    T("\"{text}\"\nHow does the writer feel about the film?\n{options_}", "{answer}"),
    T("Does this phrase express a good or a bad opinion?\n{text}\n{options_}", "{answer}"),
    T("{text}\n\nWould you call the sentiment above negative or positive?\n{options_}",
      "{answer}"),
)
SST2_INV = (T("Write one {answer} sentence from a review of a film.", "{text}"),)
REVIEW = (
    T("Review:\n{text}\n\nIs this review positive or negative?\n{options_}", "{answer}"),
    T("{text}\n\nWhat is the overall sentiment of this {topic} review?\n{options_}",
      "{answer}"),
    T("Here is a customer's review: {text}\nHow would you describe its sentiment?\n{options_}",
      "{answer}"),
    T("Read the review and label its sentiment.\n\n{text}\n{options_}", "{answer}"),
    T("{text}\nThe attitude of the person who wrote this {topic} review is\n{options_}",
      "{answer}"),
    T("Did the author of the following review come away satisfied?\n\n{text}\n{options_}",
      "{answer}"),
)
REVIEW_INV = (
    T("Write a {answer} {topic} review.", "{text}"),
    T("Compose a review of a {topic} whose sentiment is {answer}.", "{text}"),
)
YES_NO = ("no", "yes")  # for labels ordered (False, True) / (not_x, x)
PARAPHRASE = (
    T("{sentence1}\n{sentence2}\n\nDo these two sentences mean the same thing?\n{options_}",
      "{answer}"),
    T("Sentence A: {sentence1}\nSentence B: {sentence2}\nIs B a paraphrase of A?\n{options_}",
      "{answer}"),
    T("Is the second sentence a rewording of the first?\n\nFirst: {sentence1}\n"
      "Second: {sentence2}\n{options_}", "{answer}"),
    T("\"{sentence1}\" and \"{sentence2}\": do they convey the same meaning?\n{options_}",
      "{answer}"),
    T("Compare these sentences:\n1. {sentence1}\n2. {sentence2}\nDo they say the same thing in "
      "different words?\n{options_}", "{answer}"),
    T("{sentence1}\n\nDoes the next sentence carry the same information as the one above?\n"
      "{sentence2}\n{options_}", "{answer}"),
)
PARAPHRASE_INV = (
    T("Here is a sentence: {sentence1}\nWrite a similar sentence such that the answer to \"do "
      "they mean the same?\" is {answer}.", "{sentence2}"),
)
QQP = (
    T("Question 1: {question1}\nQuestion 2: {question2}\nAre these two questions asking the "
      "same thing?\n{options_}", "{answer}"),
    T("{question1}\n{question2}\nDo the two questions above have the same meaning?\n{options_}",
      "{answer}"),
    T("Is \"{question1}\" a duplicate of \"{question2}\"?\n{options_}", "{answer}"),
    T("One forum user asked: {question1}\nAnother asked: {question2}\nShould the second be "
      "merged into the first as a duplicate?\n{options_}", "{answer}"),
    T("Tell me whether these questions would get the same answer.\n(1) {question1}\n"
      "(2) {question2}\n{options_}", "{answer}"),
)
STSB_OPTIONS = ("0", "1", "2", "3", "4", "5")
STSB = (
    T("How similar are these sentences, from 0 (unrelated) to 5 (same meaning)?\n{sentence1}\n"
      "{sentence2}\n{options_}", "{answer}"),
    T("Sentence 1: {sentence1}\nSentence 2: {sentence2}\nRate how close their meanings are, "
      "on a scale of 0 to 5.\n{options_}", "{answer}"),
    T("{sentence1}\n{sentence2}\nOn a scale from zero to five, how alike in meaning are the "
      "two sentences above?\n{options_}", "{answer}"),
    T("Give a similarity score between 0 and 5 for \"{sentence1}\" and \"{sentence2}\".\n"
      "{options_}", "{answer}"),
    T("Do the sentences below say the same thing? Score from 0 (not at all) to 5 (exactly).\n"
      "A: {sentence1}\nB: {sentence2}\n{options_}", "{answer}"),
)
STSB_INV = (T("Write a sentence whose similarity to \"{sentence1}\" is {answer} on a scale "
              "of 0 to 5.", "{sentence2}"),)
PIQA = (
    T("Goal: {goal}\nWhich is the better way to do this?\n{options_}", "{answer}"),
    T("How would you accomplish the following? {goal}\n{options_}", "{answer}"),
    T("{goal}\n\nPick the more sensible solution.\n{options_}", "{answer}"),
    T("Here is a task: {goal}\nWhich method makes more physical sense?\n{options_}",
      "{answer}"),
    T("What is the best way to do this: {goal}\n{options_}", "{answer}"),
)
PIQA_INV = (T("Solution: {answer}\nWhat goal does this solution achieve?", "{goal}"),)
HELLASWAG = (
    T("{context}\n\nHow does the passage most likely continue?\n{options_}", "{answer}"),
    T("Complete the description with the most plausible ending.\n\n{context}\n{options_}",
      "{answer}"),
    T("What happens next?\n\n{context}\n{options_}", "{answer}"),
    T("Topic: {activity}\n{context}\nWhich ending fits best?\n{options_}", "{answer}"),
    T("Choose the natural continuation of this text: {context}\n{options_}", "{answer}"),
)
HELLASWAG_INV = (T("Write the start of a scene about \"{activity}\" that goes on like this: "
                   "{answer}", "{context}"),)
COPA = (
    T("{premise}\nWhat was the {relation} of this?\n{options_}", "{answer}"),
    T("Premise: {premise}\nWhich alternative is the more likely {relation}?\n{options_}",
      "{answer}"),
    T("Consider the situation: \"{premise}\" Pick the more plausible {relation}.\n{options_}",
      "{answer}"),
    T("{premise} Identify the {relation}.\n{options_}", "{answer}"),
    T("Which of these is the {relation} of the event below?\nEvent: {premise}\n{options_}",
      "{answer}"),
)
COPA_INV = (T("Write a sentence describing an event whose {relation} is: {answer}",
              "{premise}"),)
WINOGRANDE = (
    T("{sentence}\n\nWhat should fill the blank (_)?\n{options_}", "{answer}"),
    T("Fill in the blank: {sentence}\n{options_}", "{answer}"),
    T("In the sentence below, who or what does the underscore stand for?\n{sentence}\n"
      "{options_}", "{answer}"),
    T("{sentence}\nThe _ in the sentence above refers to\n{options_}", "{answer}"),
    T("Complete the sentence by choosing the right word for the gap.\n\n{sentence}\n"
      "{options_}", "{answer}"),
)
WSC = (
    T("{text}\n\nIn the passage above, does \"{pronoun}\" refer to \"{noun}\"?\n{options_}",
      "{answer}"),
    T("Passage: {text}\nQuestion: Is the pronoun \"{pronoun}\" about {noun}?\n{options_}",
      "{answer}"),
    T("Read this: {text}\nDoes the word \"{pronoun}\" stand for \"{noun}\" here?\n{options_}",
      "{answer}"),
    T("{text}\nWho is \"{pronoun}\" in this text? Is it {noun}?\n{options_}", "{answer}"),
    T("Coreference check.\nText: {text}\nPronoun: {pronoun}\nCandidate: {noun}\nDo they refer "
      "to the same thing?\n{options_}", "{answer}"),
)
DPR = (
    T("{sentence}\n\nWho or what does \"{pronoun}\" refer to in the sentence above?\n{options_}",
      "{answer}"),
    T("Sentence: {sentence}\nIn this sentence, \"{pronoun}\" means\n{options_}", "{answer}"),
    T("Resolve the pronoun \"{pronoun}\" in the following sentence.\n{sentence}\n{options_}",
      "{answer}"),
    T("{sentence}\nWhich one does the word \"{pronoun}\" point to?\n{options_}", "{answer}"),
    T("Read: \"{sentence}\" Here, the pronoun \"{pronoun}\" stands for which of these?\n"
      "{options_}", "{answer}"),
)
BOOLQ = (
    T("{passage}\n\nBased on the passage, {question}?\n{options_}", "{answer}"),
    T("Read the text and answer the yes/no question.\n\n{passage}\n\nQuestion: {question}?\n"
      "{options_}", "{answer}"),
    T("Passage: {passage}\nAfter reading this, can you say whether {question}?\n{options_}",
      "{answer}"),
    T("{passage}\n\nIs the answer to \"{question}?\" yes or no?\n{options_}", "{answer}"),
    T("Question: {question}?\nContext: {passage}\n{options_}", "{answer}"),
)
BOOLQ_INV = (T("{passage}\n\nWrite a yes/no question about this passage whose answer is "
               "\"{answer}\".", "{question}?"),)
SQUAD = (
    T("{context}\n\nAnswer this question using the passage: {question}", "{answer}"),
    T("Read the article about {title} and answer the question.\n\n{context}\n\nQ: {question}",
      "{answer}"),
    T("Question: {question}\n\nContext: {context}\n\nAnswer:", "{answer}"),
    T("Extract the answer from the text below.\nText: {context}\nQuestion: {question}",
      "{answer}"),
    T("Here is a paragraph on {title}: {context}\n\nWhat is the answer to \"{question}\"?",
      "{answer}"),
)
ASK_ABOUT = (  # inversions: a question whose answer is given, about a passage
    T("{context}\n\nWrite a question about this passage whose answer is \"{answer}\".",
      "{question}"),
    T("Answer: {answer}\nPassage: {context}\nWhat question about the passage has this answer?",
      "{question}"),
)
MULTIRC = (
    T("{paragraph}\n\nQuestion: \"{question}\"\nCandidate answer: \"{candidate}\"\nIs the "
      "candidate correct?\n{options_}", "{answer}"),
    T("Read the text and judge the proposed answer.\n\n{paragraph}\n\n{question}\n"
      "Proposed answer: {candidate}\n{options_}", "{answer}"),
    T("{paragraph}\n\nAccording to the text, is \"{candidate}\" a right answer to "
      "\"{question}\"?\n{options_}", "{answer}"),
    T("Paragraph: {paragraph}\nQ: {question}\nA: {candidate}\nIs A true according to the "
      "paragraph?\n{options_}", "{answer}"),
    T("Does the passage support this answer?\nPassage: {paragraph}\nQuestion: {question}\n"
      "Answer: {candidate}\n{options_}", "{answer}"),
)
DROP = (
    T("{context}\n\nAnswer the question about the passage: {question}", "{answer}"),
    T("Passage: {context}\nQuestion: {question}\nAnswer (it may take counting or "
      "arithmetic):", "{answer}"),
    T("Read the passage and work out the answer.\n\n{context}\n\n{question}", "{answer}"),
    T("{question}\n\nUse this text to answer: {context}", "{answer}"),
    T("Here is a passage: {context}\nBased on it, answer: {question}", "{answer}"),
)
OBQA = (
    T("{question}\n{options_}", "{answer}"),
    T("Fact: {fact}\nUsing this fact, answer the question.\n{question}\n{options_}",
      "{answer}"),
    T("Question: {question}\n\nWhat is the right answer?\n{options_}", "{answer}"),
    T("Given that {fact}, answer: {question}\n{options_}", "{answer}"),
    T("Elementary science: {question}\n{options_}", "{answer}"),
)
OBQA_INV = (T("Write a multiple-choice science question that tests this fact: {fact}",
              "{question}"),)
COSMOS = (
    T("{context}\n\nQuestion: {question}\n{options_}", "{answer}"),
    T("Read the story and answer.\n\n{context}\n\n{question}\n{options_}", "{answer}"),
    T("{context}\nAnswer based on the story and common sense: {question}\n{options_}",
      "{answer}"),
    T("Context: {context}\nQ: {question}\nWhich answer is most likely?\n{options_}",
      "{answer}"),
    T("{question}\n\nUse this passage to answer: {context}\n{options_}", "{answer}"),
)
ARC = (
    T("{question}\n{options_}", "{answer}"),
    T("Science question: {question}\n{options_}", "{answer}"),
    T("Answer the following multiple-choice question.\n\n{question}\n{options_}", "{answer}"),
    T("Q: {question}\nChoose the correct answer.\n{options_}", "{answer}"),
    T("Here's a question from a grade-school science exam: {question}\n{options_}",
      "{answer}"),
)
ARC_INV = (T("Write a science exam question whose answer is \"{answer}\".", "{question}"),)
TRIVIA = (
    T("Answer this trivia question: {question}", "{answer}"),
    T("Q: {question}\nA:", "{answer}"),
    T("{question}\nWhat is the answer?", "{answer}"),
    T("Quiz question: {question}", "{answer}"),
    T("Please answer the following: {question}", "{answer}"),
)
TRIVIA_INV = (T("Write a trivia question whose answer is \"{answer}\".", "{question}"),)
NQ = (
    T("{question}?", "{answer}"),
    T("Answer the question: {question}?", "{answer}"),
    T("Q: {question}?\nA:", "{answer}"),
    T("Someone typed this into a search engine: {question}\nWhat answer were they after?",
      "{answer}"),
    T("What is the answer to this question? {question}?", "{answer}"),
)
NQ_INV = (T("Write a search query, phrased as a question, whose answer is \"{answer}\".",
            "{question}"),)
CNN = (
    T("{article}\n\nWrite the highlights of this article.", "{summary}"),
    T("Summarize this news story in a few short sentences:\n\n{article}", "{summary}"),
    T("Article: {article}\n\nHighlights:", "{summary}"),
    T("{article}\nWhat are the key points of this article?", "{summary}"),
    T("Read the story below and list its main points.\n\n{article}", "{summary}"),
)
CNN_INV = (
    T("Write a news article based on these highlights:\n{summary}", "{article}"),
    T("Highlights: {summary}\n\nWrite the full story.", "{article}"),
)
GIGAWORD = (
    T("{article}\n\nWrite a headline for this sentence.", "{summary}"),
    T("Give a short title: {article}", "{summary}"),
    T("Compress this sentence into a headline: {article}", "{summary}"),
    T("{article}\nHeadline:", "{summary}"),
    T("What is a very brief summary of the following text?\n{article}", "{summary}"),
)
GIGAWORD_INV = (T("Write the opening sentence of a news report with the headline: {summary}",
                  "{article}"),)
XSUM = (
    T("{article}\n\nSummarize the article above in one sentence.", "{summary}"),
    T("Article: {article}\n\nOne-sentence summary:", "{summary}"),
    T("What is this article about? Answer in a single sentence.\n\n{article}", "{summary}"),
    T("Write a one-line summary of the following news story.\n\n{article}", "{summary}"),
    T("{article}\nThe whole article in one sentence:", "{summary}"),
)
XSUM_INV = (T("Write an article that could be summarized as: {summary}", "{article}"),)
AESLC = (
    T("{article}\n\nWrite a subject line for this email.", "{summary}"),
    T("Email:\n{article}\n\nSubject:", "{summary}"),
    T("What would be a good subject for the following email?\n\n{article}", "{summary}"),
    T("Suggest a short email subject for this message: {article}", "{summary}"),
    T("Here is the body of an email: {article}\nGive it a subject line.", "{summary}"),
)
AESLC_INV = (T("Write an email with the subject \"{summary}\".", "{article}"),)
MULTI_NEWS = (
    T("{article}\n\nWrite a summary of these news reports.", "{summary}"),
    T("Combine these articles into one short summary:\n\n{article}", "{summary}"),
    T("News sources:\n{article}\n\nSummary:", "{summary}"),
    T("Several reports on one story follow. Summarize them.\n\n{article}", "{summary}"),
    T("{article}\nWhat is the story, in brief?", "{summary}"),
)
MULTI_NEWS_INV = (T("Write a news report that expands on this summary: {summary}",
                    "{article}"),)
TRANSLATE = (
    T("Translate from {src_lang} to {tgt_lang}:\n\n{source}", "{target}"),
    T("{source}\n\nTranslate this into {tgt_lang}.", "{target}"),
    T("How would you say this in {tgt_lang}? {source}", "{target}"),
    T("{src_lang}: {source}\n{tgt_lang}:", "{target}"),
    T("Render the following {src_lang} text in {tgt_lang}.\n{source}", "{target}"),
    T("Give the {tgt_lang} version of this sentence: {source}", "{target}"),
)
E2E = (
    T("Write a sentence about a restaurant using these facts:\n{data}", "{text}"),
    T("Data: {data}\n\nDescribe this restaurant in natural language.", "{text}"),
    T("Turn this structured information into a fluent description: {data}", "{text}"),
    T("{data}\n\nWhat sentence could convey the data above?", "{text}"),
    T("Generate a restaurant description from these attributes.\n{data}", "{text}"),
)
E2E_INV = (T("Restaurant description: {text}\nList its attributes as 'key: value' pairs.",
             "{data}"),)
TRIPLES = (
    T("Triples:\n{data}\n\nWrite a sentence expressing these facts.", "{text}"),
    T("Convert these facts into text:\n{data}", "{text}"),
    T("{data}\n\nDescribe the data above in plain English.", "{text}"),
    T("Here are some facts as subject | relation | object:\n{data}\nWrite them up as a short "
      "text.", "{text}"),
    T("Verbalize the following knowledge-graph triples.\n{data}", "{text}"),
)
TRIPLES_INV = (T("Text: {text}\nList the facts it states as subject | predicate | object "
                 "triples, one per line.", "{data}"),)
AG_NEWS_OPTIONS = ("World", "Sports", "Business", "Science/Tech")
AG_NEWS = (
    T("{title}\n\n{description}\n\nWhat is this news article about?\n{options_}", "{answer}"),
    T("Which section of a newspaper would this story go in?\n\nHeadline: {title}\n"
      "{description}\n{options_}", "{answer}"),
    T("Classify the topic of this news item: {title}. {description}\n{options_}", "{answer}"),
    T("Headline: {title}\nText: {description}\nTopic:\n{options_}", "{answer}"),
    T("{description}\n\nChoose the category that best fits the text above.\n{options_}",
      "{answer}"),
)
AG_NEWS_INV = (T("Write a headline for a news story in the {answer} section.", "{title}"),)
# In the order of TFDS's coarse labels: DESC, ENTY, ABBR, HUM, NUM, LOC.
TREC_OPTIONS = ("description", "entity", "abbreviation", "person", "number", "location")
TREC = (
    T("What kind of answer does this question expect?\n{question}\n{options_}", "{answer}"),
    T("{question}\n\nWhich type of thing is this question asking for?\n{options_}",
      "{answer}"),
    T("Question: {question}\nAnswer type:\n{options_}", "{answer}"),
    T("Classify the question by the type of its answer: {question}\n{options_}", "{answer}"),
    T("If you had to answer \"{question}\", what sort of answer would you give?\n{options_}",
      "{answer}"),
)
TREC_INV = (T("Write a question whose answer would be of this type: {answer}.",
              "{question}"),)
WIC = (
    T("Does the word \"{word}\" mean the same thing in these two sentences?\n{sentence1}\n"
      "{sentence2}\n{options_}", "{answer}"),
    T("Sentence A: {sentence1}\nSentence B: {sentence2}\nIs \"{word}\" used in the same sense "
      "in A and B?\n{options_}", "{answer}"),
    T("{sentence1}\n{sentence2}\nIn both sentences above, does \"{word}\" have the same "
      "meaning?\n{options_}", "{answer}"),
    T("Word: {word}\nFirst use: {sentence1}\nSecond use: {sentence2}\nSame meaning?\n"
      "{options_}", "{answer}"),
    T("Here is a word and two sentences that use it. Is the meaning shared?\nWord: {word}\n"
      "1) {sentence1}\n2) {sentence2}\n{options_}", "{answer}"),
)
COLA = (
    T("Is the following sentence grammatically acceptable?\n{sentence}\n{options_}",
      "{answer}"),
    T("\"{sentence}\"\nWould a native English speaker accept this sentence?\n{options_}",
      "{answer}"),
    T("Sentence: {sentence}\nIs it well-formed English?\n{options_}", "{answer}"),
    T("{sentence}\n\nIs the sentence above grammatical?\n{options_}", "{answer}"),
    T("Check the grammar: {sentence}\nIs it correct?\n{options_}", "{answer}"),
)


# ---- the catalogue ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Entry:
    cluster: str
    name: str
    tfds_name: str  # name/config:version, as seqio.TfdsDataSource wants it
    fields: Fields
    templates: Sequence[T]
    inversion: Sequence[T] = ()
    validation: str = "validation"  # the TFDS split served as "validation"
    train: str = "train"  # the TFDS split served as "train" (few-shot exemplars too)


def _nli(name: str, tfds: str, words: Sequence[str], premise: str = "premise",
         validation: str = "validation") -> _Entry:
    return _Entry("nli", name, tfds, _classes(words, NLI_OPTIONS, premise=premise,
                                              hypothesis="hypothesis"),
                  NLI, NLI_INV, validation=validation)


def _wmt(year: int, pair: str, src: str, tgt: str) -> _Entry:
    return _Entry("translation", f"wmt{year}_{src}_{tgt}", f"wmt{year}_translate/{pair}:1.0.0",
                  _translate(src, tgt), TRANSLATE)


def _summary(name: str, tfds: str, article: str, summary: str, templates: Sequence[T],
             inversion: Sequence[T]) -> _Entry:
    return _Entry("summarization", name, tfds, _texts(article=article, summary=summary),
                  templates, inversion)


_ENTRIES = (
    _Entry("nli", "rte", "glue/rte:2.0.0",
           _classes(("yes", "no"), premise="sentence1", hypothesis="sentence2"), NLI, NLI_INV),
    _nli("mnli", "glue/mnli:2.0.0", NLI_OPTIONS, validation="validation_matched"),
    _nli("snli", "snli:1.1.0", NLI_OPTIONS),
    _nli("anli_r1", "anli/r1:0.1.0", NLI_OPTIONS, premise="context"),
    _nli("anli_r2", "anli/r2:0.1.0", NLI_OPTIONS, premise="context"),
    _nli("anli_r3", "anli/r3:0.1.0", NLI_OPTIONS, premise="context"),
    _nli("cb", "super_glue/cb:1.0.2", ("yes", "no", "impossible to say")),
    _Entry("nli", "qnli", "glue/qnli:2.0.0",
           _classes(("yes", "no"), question="question", sentence="sentence"), QNLI),
    _Entry("sentiment", "sst2", "glue/sst2:2.0.0",
           _classes(SENTIMENT_OPTIONS, text="sentence"), SST2, SST2_INV),
    _Entry("sentiment", "imdb", "imdb_reviews/plain_text:1.0.0",
           _classes(SENTIMENT_OPTIONS, const={"topic": "movie"}, text="text"), REVIEW,
           REVIEW_INV, validation="test"),
    _Entry("sentiment", "yelp", "yelp_polarity_reviews:0.2.0",
           _classes(SENTIMENT_OPTIONS, const={"topic": "business"}, text="text"), REVIEW,
           REVIEW_INV, validation="test"),
    _Entry("paraphrase", "mrpc", "glue/mrpc:2.0.0",
           _classes(YES_NO, sentence1="sentence1", sentence2="sentence2"), PARAPHRASE,
           PARAPHRASE_INV),
    _Entry("paraphrase", "qqp", "glue/qqp:2.0.0",
           _classes(YES_NO, question1="question1", question2="question2"), QQP),
    _Entry("paraphrase", "paws", "paws_wiki/labeled_final_raw:1.1.0",
           _classes(YES_NO, sentence1="sentence1", sentence2="sentence2"), PARAPHRASE,
           PARAPHRASE_INV),
    _Entry("paraphrase", "stsb", "glue/stsb:2.0.0",
           lambda ex: {**_texts(sentence1="sentence1", sentence2="sentence2")(ex),
                       **_pick(STSB_OPTIONS, round(float(ex["label"])), "feature 'label'")},
           STSB, STSB_INV),
    _Entry("commonsense", "piqa", "piqa:1.0.0",
           _choices(lambda ex: [_str(ex["sol1"]), _str(ex["sol2"])], goal="goal"), PIQA,
           PIQA_INV),
    _Entry("commonsense", "hellaswag", "hellaswag:1.1.0",
           _choices(lambda ex: _strs(ex, "endings"), context="context",
                    activity="activity_label"), HELLASWAG, HELLASWAG_INV),
    _Entry("commonsense", "copa", "super_glue/copa:1.0.2",
           _choices(lambda ex: [_str(ex["choice1"]), _str(ex["choice2"])], premise="premise",
                    relation="question"), COPA, COPA_INV),
    _Entry("coreference", "winogrande", "winogrande:1.2.0",
           _choices(lambda ex: [_str(ex["option1"]), _str(ex["option2"])],
                    sentence="sentence"), WINOGRANDE, train="train_xl"),
    _Entry("coreference", "wsc", "super_glue/wsc.fixed:1.0.2",
           _classes(YES_NO, text="text", noun="span1_text", pronoun="span2_text"), WSC),
    _Entry("coreference", "dpr", "definite_pronoun_resolution:1.1.0",
           _choices(lambda ex: _strs(ex, "candidates"), sentence="sentence",
                    pronoun="pronoun"), DPR, validation="test"),
    _Entry("reading_comprehension", "boolq", "super_glue/boolq:1.0.2",
           _classes(YES_NO, passage="passage", question="question"), BOOLQ, BOOLQ_INV),
    _Entry("reading_comprehension", "squad_v1", "squad/v1.1:3.0.0",
           _first("answers.text", context="context", question="question", title="title"),
           SQUAD, ASK_ABOUT),
    _Entry("reading_comprehension", "multirc", "super_glue/multirc:1.0.2",
           _classes(YES_NO, paragraph="paragraph", question="question", candidate="answer"),
           MULTIRC),
    _Entry("reading_comprehension", "drop", "drop:2.0.0",
           _texts(context="passage", question="question", answer="answer"), DROP, ASK_ABOUT,
           validation="dev"),
    _Entry("reading_comprehension", "openbookqa", "openbookqa:0.1.0",
           _choices(lambda ex: [_str(_get(ex, f"question.choice_{c}")) for c in "ABCD"],
                    label="answerKey", question="question.stem", fact="fact1"),
           OBQA, OBQA_INV),
    _Entry("reading_comprehension_commonsense", "cosmos_qa", "cosmos_qa:1.0.0",
           _choices(lambda ex: [_str(ex[f"answer{i}"]) for i in range(4)],
                    context="context", question="question"), COSMOS, ASK_ABOUT),
    _Entry("closed_book_qa", "arc_easy", "ai2_arc/ARC-Easy:1.0.0", _arc, ARC, ARC_INV),
    _Entry("closed_book_qa", "arc_challenge", "ai2_arc/ARC-Challenge:1.0.0", _arc, ARC,
           ARC_INV),
    _Entry("closed_book_qa", "trivia_qa", "trivia_qa/rc.nocontext:1.1.0",
           _texts(question="question", answer="answer.value"), TRIVIA, TRIVIA_INV),
    _Entry("closed_book_qa", "nq_open", "natural_questions_open:1.0.0",
           _first("answer", question="question"), NQ, NQ_INV),
    _summary("cnn_dailymail", "cnn_dailymail:3.4.0", "article", "highlights", CNN, CNN_INV),
    _summary("gigaword", "gigaword:1.2.0", "document", "summary", GIGAWORD, GIGAWORD_INV),
    # TFDS builds xsum from a manual download (see its MANUAL_DOWNLOAD_INSTRUCTIONS).
    _summary("xsum", "xsum:1.1.0", "document", "summary", XSUM, XSUM_INV),
    _summary("aeslc", "aeslc:1.0.0", "email_body", "subject_line", AESLC, AESLC_INV),
    _summary("multi_news", "multi_news:2.1.0", "document", "summary", MULTI_NEWS,
             MULTI_NEWS_INV),
    _wmt(16, "de-en", "de", "en"), _wmt(16, "de-en", "en", "de"),
    _wmt(14, "fr-en", "fr", "en"), _wmt(14, "fr-en", "en", "fr"),
    _wmt(16, "ro-en", "ro", "en"), _wmt(16, "ro-en", "en", "ro"),
    _Entry("struct_to_text", "e2e_nlg", "e2e_cleaned:0.1.0", _data_to_text(triples=False),
           E2E, E2E_INV),
    _Entry("struct_to_text", "web_nlg", "web_nlg:0.1.0", _data_to_text(triples=True),
           TRIPLES, TRIPLES_INV),
    _Entry("struct_to_text", "dart", "dart:0.1.0", _data_to_text(triples=True), TRIPLES,
           TRIPLES_INV),
    _Entry("topic_classification", "ag_news", "ag_news_subset:1.0.0",
           _classes(AG_NEWS_OPTIONS, title="title", description="description"), AG_NEWS,
           AG_NEWS_INV, validation="test"),
    _Entry("topic_classification", "trec", "trec:1.0.0",
           _classes(TREC_OPTIONS, label="label-coarse", question="text"), TREC, TREC_INV,
           validation="test"),
    _Entry("misc", "wic", "super_glue/wic:1.0.2",
           _classes(YES_NO, word="word", sentence1="sentence1", sentence2="sentence2"), WIC),
    _Entry("misc", "cola", "glue/cola:2.0.0", _classes(YES_NO, sentence="sentence"), COLA),
)

# Train-split sizes from the TFDS catalogue (facts, not read from disk): the mixing rates
# need them at import, before any data is prepared. Sizes above the 30k cap only matter
# for being above it.
TRAIN_SIZES: Mapping[str, int] = {PREFIX + k: v for k, v in {
    "rte": 2_490, "mnli": 392_702, "snli": 550_152, "anli_r1": 16_946, "anli_r2": 45_460,
    "anli_r3": 100_459, "cb": 250, "qnli": 104_743, "sst2": 67_349, "imdb": 25_000,
    "yelp": 560_000, "mrpc": 3_668, "qqp": 363_846, "paws": 49_401, "stsb": 5_749,
    "piqa": 16_113, "hellaswag": 39_905, "copa": 400, "winogrande": 40_398, "wsc": 554,
    "dpr": 1_322, "boolq": 9_427, "squad_v1": 87_599, "multirc": 27_243, "drop": 77_409,
    "openbookqa": 4_957, "cosmos_qa": 25_262, "arc_easy": 2_251, "arc_challenge": 1_119,
    "trivia_qa": 138_384, "nq_open": 87_925, "cnn_dailymail": 287_113,
    "gigaword": 3_803_957, "xsum": 203_577, "aeslc": 14_436, "multi_news": 44_972,
    "wmt16_de_en": 4_548_885, "wmt16_en_de": 4_548_885, "wmt14_fr_en": 40_836_715,
    "wmt14_en_fr": 40_836_715, "wmt16_ro_en": 610_320, "wmt16_en_ro": 610_320,
    "e2e_nlg": 33_525, "web_nlg": 35_426, "dart": 62_659, "ag_news": 120_000,
    "trec": 5_452, "wic": 5_428, "cola": 8_551,
}.items()}

SPECS: tuple[FlanTask, ...] = tuple(
    FlanTask(name=PREFIX + e.name, templates=tuple(e.templates),
             fields=_named(e.tfds_name, e.fields),
             inversion_templates=tuple(e.inversion), randomize_options=True,
             source=seqio.TfdsDataSource(tfds_name=e.tfds_name,
                                         splits={"train": e.train, "validation": e.validation}))
    for e in _ENTRIES)
CLUSTERS: Mapping[str, tuple[str, ...]] = {
    c: tuple(PREFIX + e.name for e in _ENTRIES if e.cluster == c)
    for c in dict.fromkeys(e.cluster for e in _ENTRIES)}
# The TFDS dataset each task reads ("wmt16_translate/de-en" serves both directions).
DATASETS: Mapping[str, str] = {PREFIX + e.name: e.tfds_name for e in _ENTRIES}

if MIXTURE not in seqio.MixtureRegistry.names():  # a second import (reload) keeps the first
    register()
