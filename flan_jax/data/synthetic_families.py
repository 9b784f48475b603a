"""The task families of the embedded default mixture: generators and their templates.

Each family draws one raw example from a `random.Random` (all values are strings, plus an
`options` list for choice tasks) and words it with at least five templates of its own.
Families with worked answers carry a `rationale` for the chain-of-thought formats.
`synthetic.py` turns them into seqio sources and FlanTask specs.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

from flan_jax.data.formats import cot_target
from flan_jax.data.templates import Template as T

Example = dict[str, Any]
COT = cot_target("{rationale}", "{answer}")


@dataclasses.dataclass(frozen=True)
class Family:
    """A procedural task: `make(rng)` draws one example; templates word it."""

    name: str
    description: str
    make: Callable[[random.Random], Example]
    templates: tuple[T, ...]
    inversion_templates: tuple[T, ...] = ()
    cot_templates: tuple[T, ...] = ()
    held_out: bool = False  # kept out of the training mixture, for zero-shot evaluation
    options_required: bool = False  # the options are part of the question
    # Fields whose wording may change without changing the answer (the varied phrasing
    # rewords them, `flan_jax.data.phrasing`): stories, questions, rationales.
    prose: tuple[str, ...] = ()
    phrasing: str = "simple"


NAMES = ("Ana", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jack",
         "Kim", "Leo", "Maya", "Noah", "Olga", "Pablo", "Rosa", "Sam", "Tara", "Yuki")
THINGS = ("apples", "books", "marbles", "pencils", "stickers", "cookies", "shells", "cards",
          "coins", "stamps", "balloons", "flowers")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
CATEGORIES = {
    "fruit": ("apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "pear", "plum"),
    "animal": ("cat", "dog", "horse", "lion", "mouse", "rabbit", "sheep", "tiger", "zebra"),
    "color": ("blue", "green", "orange", "purple", "red", "white", "yellow", "black", "pink"),
    "vehicle": ("bicycle", "boat", "bus", "car", "plane", "train", "truck", "scooter"),
    "tool": ("hammer", "saw", "shovel", "wrench", "drill", "ladder", "screwdriver"),
    "instrument": ("drum", "flute", "guitar", "piano", "trumpet", "violin", "harp"),
    "piece of furniture": ("bed", "chair", "desk", "shelf", "sofa", "table", "stool"),
}
ANTONYMS = (("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"),
            ("light", "dark"), ("open", "closed"), ("early", "late"), ("full", "empty"),
            ("hard", "soft"), ("high", "low"), ("long", "short"), ("old", "new"),
            ("rich", "poor"), ("strong", "weak"), ("thick", "thin"), ("wet", "dry"),
            ("loud", "quiet"), ("clean", "dirty"), ("near", "far"), ("up", "down"),
            ("inside", "outside"), ("first", "last"), ("true", "false"), ("win", "lose"))
UNITS = (  # (big unit, small unit, factor)
    ("meters", "centimeters", 100), ("kilograms", "grams", 1000), ("hours", "minutes", 60),
    ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7),
    ("feet", "inches", 12), ("kilometers", "meters", 1000), ("dozens", "eggs", 12),
    ("years", "months", 12), ("liters", "milliliters", 1000))
WORDS = ("garden", "window", "river", "pencil", "rocket", "yellow", "basket", "candle",
         "forest", "island", "ladder", "mirror", "planet", "silver", "tunnel", "winter",
         "button", "castle", "dragon", "jacket", "kitten", "lemon", "magnet", "orange",
         "puzzle", "rabbit", "saddle", "turtle", "violin", "wizard")
POSITIVE = ("I loved the food at this place", "The movie was a joy from start to end",
            "What a lovely sunny morning", "The staff were kind and helpful",
            "This book made me smile", "The concert was wonderful",
            "My new shoes are very comfortable", "The park looks beautiful today",
            "The cake tasted great", "We had a fantastic trip")
NEGATIVE = ("The food was cold and bland", "The movie was long and boring",
            "What a gloomy, miserable day", "The staff were rude to us",
            "This book was a waste of time", "The concert was too loud and messy",
            "My new shoes hurt my feet", "The park was dirty and crowded",
            "The cake tasted awful", "Our trip was a disaster")
PREFIXES = ("Honestly, ", "In short, ", "To sum up, ", "Well, ")


def _options(rng: random.Random, answer: str, pool: tuple[str, ...], n: int) -> list[str]:
    others = rng.sample([p for p in pool if p != answer], n - 1)
    options = others + [answer]
    rng.shuffle(options)
    return options


# --- arithmetic ----------------------------------------------------------------------------

def _arithmetic(rng: random.Random) -> Example:
    op = rng.choice(("plus", "minus", "times"))
    if op == "plus":
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        answer = a + b
        tens, ones = a // 10 * 10 + b // 10 * 10, a % 10 + b % 10
        rationale = (f"Add the tens: {a // 10 * 10} plus {b // 10 * 10} is {tens}. "
                     f"Add the ones: {a % 10} plus {b % 10} is {ones}. "
                     f"Then {tens} plus {ones} is {answer}.")
        symbol = "+"
    elif op == "minus":
        a = rng.randint(20, 99)
        b = rng.randint(1, a - 1)
        answer = a - b
        rationale = f"Take {b} away from {a}. Counting down {b} from {a} leaves {answer}."
        symbol = "-"
    else:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        answer = a * b
        rationale = f"{a} times {b} means {b} groups of {a}, which is {answer}."
        symbol = "*"
    return {"question": f"What is {a} {op} {b}?", "expression": f"{a} {symbol} {b}",
            "rationale": rationale, "answer": str(answer)}


ARITHMETIC = Family(
    "arithmetic", "addition, subtraction and multiplication of small numbers", _arithmetic,
    prose=("question", "rationale"),
    templates=(
        T("{question}", "{answer}"),
        T("Compute the following. {question}", "{answer}"),
        T("Q: {question}\nA:", "{answer}"),
        T("Solve this arithmetic problem: {expression} =", "{answer}"),
        T("Here is a math question.\n{question}\nGive only the number.", "{answer}"),
    ),
    cot_templates=(
        T("{question} Let's think step by step.", COT),
        T("Answer the question and explain your reasoning.\n{question}", COT),
        T("Work it out step by step: {expression}", COT),
        T("Question: {question}\nShow your working, then give the answer.", COT),
        T("Explain how to find {expression}.", COT),
    ),
    inversion_templates=(
        T("Write a math question whose answer is {answer}.", "{question}"),
        T("Here is a worked solution: {rationale}\nWhat question does it answer?", "{question}"),
        T("The result is {answer}. Write the calculation as numbers and a sign.", "{expression}"),
    ),
)


# --- comparison ----------------------------------------------------------------------------

def _comparison(rng: random.Random) -> Example:
    a, b = rng.sample(range(1, 1000), 2)
    relation = rng.choice(("larger", "smaller"))
    answer = max(a, b) if relation == "larger" else min(a, b)
    other = min(a, b) if answer == max(a, b) else max(a, b)
    word = "more" if answer > other else "less"
    return {"a": str(a), "b": str(b), "relation": relation, "options": [str(a), str(b)],
            "answer": str(answer),
            "rationale": f"{answer} is {word} than {other}, so the {relation} number is {answer}."}


COMPARISON = Family(
    "comparison", "which of two numbers is larger or smaller", _comparison,
    prose=("relation", "rationale"),
    templates=(
        T("Which number is {relation}: {a} or {b}?\n{options_}", "{answer}"),
        T("Compare {a} and {b}. Which one is {relation}?\n{options_}", "{answer}"),
        T("Pick the {relation} number of {a} and {b}.\n{options_}", "{answer}"),
        T("Question: Is {a} or {b} the {relation} number?\n{options_}\nAnswer:", "{answer}"),
        T("Between {a} and {b}, which number is {relation}?\n{options_}", "{answer}"),
    ),
    cot_templates=(
        T("Which number is {relation}, {a} or {b}? Explain.", COT),
        T("Think it through: between {a} and {b}, which is {relation}?", COT),
        T("Compare {a} with {b} step by step and name the {relation} one.", COT),
        T("Question: {a} or {b}, which is {relation}? Reason first.", COT),
        T("Find the {relation} of {a} and {b}, and say why.", COT),
    ),
)


# --- sorting -------------------------------------------------------------------------------

def _sorting(rng: random.Random) -> Example:
    numbers = rng.sample(range(0, 100), rng.randint(3, 6))
    descending = rng.random() < 0.5
    order = "largest to smallest" if descending else "smallest to largest"
    return {"numbers": ", ".join(map(str, numbers)), "order": order,
            "answer": ", ".join(map(str, sorted(numbers, reverse=descending)))}


SORTING = Family(
    "sorting", "sort a short list of numbers", _sorting,
    prose=("order",),
    templates=(
        T("Sort these numbers from {order}: {numbers}", "{answer}"),
        T("Put the following list in order, {order}.\n{numbers}", "{answer}"),
        T("Numbers: {numbers}\nWrite them from {order}.", "{answer}"),
        T("Arrange {numbers} from {order}.", "{answer}"),
        T("Here is a list of numbers: {numbers}. What is the list ordered from {order}?",
          "{answer}"),
    ),
)


# --- counting ------------------------------------------------------------------------------

def _counting(rng: random.Random) -> Example:
    category = rng.choice(sorted(CATEGORIES))
    pool = CATEGORIES[category]
    target = rng.choice(pool)
    items = [rng.choice(pool) for _ in range(rng.randint(4, 9))]
    positions = [i + 1 for i, w in enumerate(items) if w == target]
    count = len(positions)
    if count == 0:
        where = f"{target} does not appear in the list"
    elif count == 1:
        where = f"{target} appears only at position {positions[0]}"
    else:
        where = (f"{target} appears at positions "
                 f"{', '.join(map(str, positions[:-1]))} and {positions[-1]}")
    return {"items": ", ".join(items), "target": target, "answer": str(count),
            "rationale": f"Going through the list, {where}. That is {count} times."}


COUNTING = Family(
    "counting", "how often a word appears in a list", _counting,
    prose=("rationale",),
    templates=(
        T("How many times does {target} appear in this list? {items}", "{answer}"),
        T("List: {items}\nCount the number of times the word {target} occurs.", "{answer}"),
        T("Count how often '{target}' shows up: {items}", "{answer}"),
        T("In the list {items}, how many entries are {target}?", "{answer}"),
        T("Q: How many {target}s are in the list below?\n{items}\nA:", "{answer}"),
    ),
    cot_templates=(
        T("How many times does {target} appear in this list? {items}\nCount carefully.", COT),
        T("Go through the list one item at a time and count the word {target}: {items}", COT),
        T("List: {items}\nHow often is {target} in it? Explain.", COT),
        T("Count '{target}' in: {items}. Show where you find it.", COT),
        T("Step by step, count {target} in the list {items}.", COT),
    ),
)


# --- reversal ------------------------------------------------------------------------------

def _reversal(rng: random.Random) -> Example:
    words = rng.sample(WORDS, rng.randint(3, 6))
    return {"text": " ".join(words), "answer": " ".join(reversed(words))}


REVERSAL = Family(
    "reversal", "reverse the order of words", _reversal,
    templates=(
        T("Reverse the order of these words: {text}", "{answer}"),
        T("Write the words backwards, last word first.\n{text}", "{answer}"),
        T("Words: {text}\nReversed:", "{answer}"),
        T("Say '{text}' with the word order turned around.", "{answer}"),
        T("Flip the word order of the sentence \"{text}\".", "{answer}"),
    ),
    inversion_templates=(
        T("These words were put in reverse order: {answer}. What was the original order?",
          "{text}"),
        T("Undo the reversal: {answer}", "{text}"),
        T("Which word sequence, read backwards, gives '{answer}'?", "{text}"),
    ),
)


# --- sequence continuation -----------------------------------------------------------------

def _sequence(rng: random.Random) -> Example:
    start, step = rng.randint(1, 50), rng.choice((-5, -3, -2, 2, 3, 4, 5, 6, 7, 10))
    start += 40 if step < 0 else 0
    terms = [start + i * step for i in range(5)]
    verb = "more" if step > 0 else "less"
    last, nxt = terms[3], terms[4]
    return {"sequence": ", ".join(map(str, terms[:4])), "answer": str(nxt),
            "rationale": (f"Each number is {abs(step)} {verb} than the one before. "
                          f"{last} {'plus' if step > 0 else 'minus'} {abs(step)} is {nxt}.")}


SEQUENCE = Family(
    "sequence", "continue an arithmetic sequence", _sequence,
    prose=("rationale",),
    templates=(
        T("What comes next in the sequence {sequence}, ...?", "{answer}"),
        T("Continue the pattern: {sequence},", "{answer}"),
        T("Sequence: {sequence}\nNext number:", "{answer}"),
        T("Find the next number. {sequence}, ?", "{answer}"),
        T("The numbers {sequence} follow a rule. Which number follows?", "{answer}"),
    ),
    cot_templates=(
        T("What comes next in {sequence}? Explain the rule.", COT),
        T("Continue the pattern {sequence} and show your reasoning.", COT),
        T("Sequence: {sequence}\nThink about the step between numbers, then answer.", COT),
        T("Find the rule and the next term of {sequence}.", COT),
        T("Step by step: which number comes after {sequence}?", COT),
    ),
)


# --- unit conversion -----------------------------------------------------------------------

def _units(rng: random.Random) -> Example:
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(2, 12)
    one = big[:-1] if big != "dozens" else "dozen"
    return {"question": f"How many {small} are in {n} {big}?", "amount": str(n), "big": big,
            "small": small, "answer": str(n * factor),
            "rationale": f"One {one} has {factor} {small}. {n} times {factor} is {n * factor}."}


UNIT_CONVERSION = Family(
    "unit_conversion", "convert between units", _units,
    prose=("question", "rationale"),
    templates=(
        T("{question}", "{answer}"),
        T("Convert {amount} {big} into {small}.", "{answer}"),
        T("{amount} {big} = how many {small}?", "{answer}"),
        T("Unit conversion question: {question}\nGive a number.", "{answer}"),
        T("If you have {amount} {big}, how many {small} is that?", "{answer}"),
    ),
    cot_templates=(
        T("{question} Explain.", COT),
        T("Convert {amount} {big} to {small}, step by step.", COT),
        T("Question: {question}\nShow the multiplication you use.", COT),
        T("How do you turn {amount} {big} into {small}? Give the result.", COT),
        T("Work out the number of {small} in {amount} {big}.", COT),
    ),
    inversion_templates=(
        T("Write a unit conversion question whose answer is {answer} {small}.", "{question}"),
        T("{answer} {small} is how many {big}?", "{amount}"),
    ),
)


# --- weekday arithmetic (held out) ---------------------------------------------------------

def _weekday(rng: random.Random) -> Example:
    today = rng.randrange(7)
    k = rng.randint(1, 9)
    forward = rng.random() < 0.6
    days = [WEEKDAYS[(today + (i if forward else -i)) % 7] for i in range(1, k + 1)]
    answer = days[-1]
    when = f"in {k} days" if forward else f"{k} days ago"
    if k == 1:
        when = "tomorrow" if forward else "yesterday"
    rationale = (f"Counting {'forward' if forward else 'back'} {k} "
                 f"day{'s' if k > 1 else ''} from {WEEKDAYS[today]}: {', '.join(days)}.")
    return {"today": WEEKDAYS[today], "when": when, "options": list(WEEKDAYS),
            "answer": answer, "rationale": rationale}


WEEKDAY = Family(
    "weekday", "which weekday it is some days before or after", _weekday, held_out=True,
    prose=("rationale",),
    templates=(
        T("If today is {today}, what day of the week is it {when}?\n{options_}", "{answer}"),
        T("Today is {today}. Which day is {when}?\n{options_}", "{answer}"),
        T("Q: It is {today}. What weekday will it be {when}?\n{options_}\nA:", "{answer}"),
        T("Starting from {today}, name the day {when}.\n{options_}", "{answer}"),
        T("Today is a {today}. Which day of the week is it {when}? Choose one.\n{options_}",
          "{answer}"),
    ),
    cot_templates=(
        T("If today is {today}, what day is it {when}? Count the days.", COT),
        T("Today is {today}. Work out, day by day, which day it is {when}.", COT),
        T("It is {today}. Think step by step: what weekday is it {when}?", COT),
        T("Question: today is {today}; which day is {when}? Explain.", COT),
        T("Count from {today} to find the day {when}.", COT),
    ),
)


# --- true / false statements ---------------------------------------------------------------

def _true_false(rng: random.Random) -> Example:
    kind = rng.choice(("sum", "compare", "category"))
    truth = rng.random() < 0.5
    if kind == "sum":
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        c = a + b if truth else a + b + rng.choice((-3, -2, -1, 1, 2, 3))
        statement = f"{a} plus {b} equals {c}."
    elif kind == "compare":
        a, b = rng.sample(range(1, 200), 2)
        word = "greater" if (a > b) == truth else "less"
        statement = f"{a} is {word} than {b}."
    else:
        category = rng.choice(sorted(CATEGORIES))
        pool = CATEGORIES[category] if truth else tuple(
            w for c, ws in CATEGORIES.items() if c != category for w in ws
            if w not in CATEGORIES[category])
        article = "an" if category[0] in "aeiou" else "a"
        statement = f"A {rng.choice(pool)} is {article} {category}."
    return {"statement": statement, "options": ["true", "false"],
            "answer": "true" if truth else "false"}


TRUE_FALSE = Family(
    "true_false", "judge simple statements true or false", _true_false,
    prose=("statement",),
    templates=(
        T("Is the following statement true or false?\n{statement}\n{options_}", "{answer}"),
        T("Statement: {statement}\nTrue or false?\n{options_}", "{answer}"),
        T("{statement} Is this correct?\n{options_}", "{answer}"),
        T("Decide whether this is true: \"{statement}\"\n{options_}", "{answer}"),
        T("Fact check: {statement}\n{options_}\nVerdict:", "{answer}"),
    ),
)


# --- category multiple choice --------------------------------------------------------------

def _category(rng: random.Random) -> Example:
    category = rng.choice(sorted(CATEGORIES))
    answer = rng.choice(CATEGORIES[category])
    others = tuple(w for c, ws in CATEGORIES.items() if c != category for w in ws
                   if w not in CATEGORIES[category])
    options = rng.sample(others, 3) + [answer]
    rng.shuffle(options)
    article = "an" if category[0] in "aeiou" else "a"
    return {"category": category, "article": article, "options": options, "answer": answer}


CATEGORY = Family(
    "category", "pick the member of a category from a list", _category, options_required=True,
    templates=(
        T("Which of these is {article} {category}?\n{options_}", "{answer}"),
        T("One of the following words names {article} {category}. Which one?\n{options_}",
          "{answer}"),
        T("Q: Pick the {category}.\n{options_}\nA:", "{answer}"),
        T("{options_}\nWhich word above is {article} {category}?", "{answer}"),
        T("Find the {category} among these words.\n{options_}", "{answer}"),
    ),
    inversion_templates=(
        T("What kind of thing is {answer}?", "{article} {category}"),
        T("Name the group that {answer} belongs to.", "{category}"),
    ),
)


# --- word problems -------------------------------------------------------------------------

def _word_problem(rng: random.Random) -> Example:
    name, things = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(3, 20), rng.randint(1, 10)
    kind = rng.choice(("gain", "lose", "share"))
    if kind == "gain":
        story = f"{name} has {a} {things}. A friend gives {name} {b} more."
        answer, rationale = a + b, f"{name} starts with {a} and gets {b} more. {a} plus {b} is {a + b}."
    elif kind == "lose":
        b = min(b, a - 1)
        story = f"{name} has {a} {things} and gives {b} of them away."
        answer, rationale = a - b, f"{name} starts with {a} and gives away {b}. {a} minus {b} is {a - b}."
    else:
        groups = rng.randint(2, 5)
        per = rng.randint(2, 6)
        story = f"{name} has {groups} boxes with {per} {things} in each box."
        answer, rationale = groups * per, f"There are {groups} boxes of {per}. {groups} times {per} is {groups * per}."
    question = f"How many {things} does {name} have now?" if kind != "share" else \
        f"How many {things} does {name} have in all?"
    return {"story": story, "question": question, "answer": str(answer),
            "rationale": rationale}


WORD_PROBLEM = Family(
    "word_problem", "one-step arithmetic stories", _word_problem,
    prose=("story", "question", "rationale"),
    templates=(
        T("{story} {question}", "{answer}"),
        T("Read the story and answer.\n{story}\n{question}", "{answer}"),
        T("Story: {story}\nQuestion: {question}\nAnswer with a number.", "{answer}"),
        T("{story}\n\nQ: {question}\nA:", "{answer}"),
        T("Solve this word problem: {story} {question}", "{answer}"),
    ),
    cot_templates=(
        T("{story} {question} Let's think step by step.", COT),
        T("Read the story and reason it out.\n{story}\n{question}", COT),
        T("Story: {story}\nQuestion: {question}\nExplain your answer.", COT),
        T("Solve, showing each step: {story} {question}", COT),
        T("{story}\n{question}\nWrite your reasoning first.", COT),
    ),
    inversion_templates=(
        T("{story} Write a question about this story whose answer is {answer}.", "{question}"),
        T("Here is the reasoning for a word problem: {rationale}\nWrite the story.", "{story}"),
    ),
)


# --- antonyms (held out) -------------------------------------------------------------------

def _antonym(rng: random.Random) -> Example:
    word, opposite = rng.choice(ANTONYMS)
    if rng.random() < 0.5:
        word, opposite = opposite, word
    pool = tuple(w for pair in ANTONYMS for w in pair)
    return {"word": word, "options": _options(rng, opposite, pool, 4), "answer": opposite}


ANTONYM = Family(
    "antonym", "the opposite of a word", _antonym, held_out=True,
    templates=(
        T("What is the opposite of \"{word}\"?\n{options_}", "{answer}"),
        T("Give an antonym of {word}.\n{options_}", "{answer}"),
        T("Word: {word}\nOpposite:\n{options_}", "{answer}"),
        T("Q: Which word means the reverse of {word}?\n{options_}\nA:", "{answer}"),
        T("{options_}\nWhich word is opposite in meaning to {word}?", "{answer}"),
    ),
    inversion_templates=(
        T("Which word is the opposite of \"{answer}\"?", "{word}"),
        T("Name the antonym of {answer}.", "{word}"),
    ),
)


# --- parity --------------------------------------------------------------------------------

def _parity(rng: random.Random) -> Example:
    n = rng.randint(1, 999)
    last = n % 10
    answer = "even" if n % 2 == 0 else "odd"
    return {"number": str(n), "options": ["even", "odd"], "answer": answer,
            "rationale": f"{n} ends in {last}, and {last} is {answer}, so {n} is {answer}."}


PARITY = Family(
    "parity", "whether a number is even or odd", _parity,
    prose=("rationale",),
    templates=(
        T("Is {number} even or odd?\n{options_}", "{answer}"),
        T("Number: {number}\nEven or odd?\n{options_}", "{answer}"),
        T("Q: Can {number} be split into two equal whole halves? Is it even or odd?\n"
          "{options_}\nA:", "{answer}"),
        T("Tell me the parity of {number}.\n{options_}", "{answer}"),
        T("{options_}\nIs the number {number} even or odd?", "{answer}"),
    ),
    cot_templates=(
        T("Is {number} even or odd? Explain.", COT),
        T("Look at the last digit of {number} and say whether it is even or odd.", COT),
        T("Number: {number}. Reason about its last digit: even or odd?", COT),
        T("Decide, with a reason, if {number} is even or odd.", COT),
        T("Step by step: is {number} odd or even?", COT),
    ),
)


# --- sentiment (held out) ------------------------------------------------------------------

def _sentiment(rng: random.Random) -> Example:
    positive = rng.random() < 0.5
    sentence = rng.choice(POSITIVE if positive else NEGATIVE)
    name = rng.choice(NAMES)
    lowered = sentence if sentence.startswith("I ") else sentence[0].lower() + sentence[1:]
    text = rng.choice((f"{sentence}.", f"{name} said: \"{sentence}.\"",
                       f"{rng.choice(PREFIXES)}{lowered}."))
    return {"text": text, "options": ["negative", "positive"],
            "answer": "positive" if positive else "negative"}


SENTIMENT = Family(
    "sentiment", "whether a short review is positive or negative", _sentiment, held_out=True,
    prose=("text",),
    templates=(
        T("Is the sentiment of this text positive or negative?\n{text}\n{options_}", "{answer}"),
        T("Review: {text}\nHow does the writer feel?\n{options_}", "{answer}"),
        T("{text}\nWas this said in a positive or a negative way?\n{options_}", "{answer}"),
        T("Classify the mood of the following sentence.\n\"{text}\"\n{options_}", "{answer}"),
        T("Q: What is the tone of \"{text}\"?\n{options_}\nA:", "{answer}"),
    ),
    inversion_templates=(
        T("Write a short {answer} review.", "{text}"),
        T("Give an example of a sentence with {answer} sentiment.", "{text}"),
    ),
)


# --- letters -------------------------------------------------------------------------------

def _letters(rng: random.Random) -> Example:
    word = rng.choice(WORDS)
    kind = rng.choice(("first", "last", "count"))
    if kind == "count":
        return {"word": word, "ask": "how many letters are in", "answer": str(len(word))}
    letter = word[0] if kind == "first" else word[-1]
    return {"word": word, "ask": f"what is the {kind} letter of", "answer": letter}


LETTERS = Family(
    "letters", "first and last letters and word length", _letters,
    prose=("ask",),
    templates=(
        T("Tell me {ask} the word \"{word}\".", "{answer}"),
        T("Word: {word}\nQuestion: {ask} it?", "{answer}"),
        T("Q: {ask} {word}?\nA:", "{answer}"),
        T("Look at the word {word}. {ask} it?", "{answer}"),
        T("Spelling question: {ask} \"{word}\"?", "{answer}"),
    ),
)


FAMILIES: tuple[Family, ...] = (
    ARITHMETIC, COMPARISON, SORTING, COUNTING, REVERSAL, SEQUENCE, UNIT_CONVERSION, WEEKDAY,
    TRUE_FALSE, CATEGORY, WORD_PROBLEM, ANTONYM, PARITY, SENTIMENT, LETTERS)
