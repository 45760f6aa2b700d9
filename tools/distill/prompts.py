"""Training prompts for the student, built offline from what every fresh machine has.

Sources: the standard library's own documentation (``models.corpus``: docstrings and the language
reference topics, train split only) and templates filled from small word lists kept here. The
teacher answers them (``tools.distill.teacher``); the student learns from those answers. Nothing
here is an eval item: the eval set (``tools.router.evalset``) draws its questions from its own
tables, and ``tests/unit/tools/router/test_evalset.py`` checks that no training prompt is an eval prompt.

Families (the share of each is ``FAMILY_WEIGHTS``): questions about the standard library,
arithmetic and small word problems, Python expressions, short instructions, rewriting, open
questions about everyday things, and Chinese prompts.
"""

from __future__ import annotations

import random
from collections.abc import Callable

NOUNS = [
    "river",
    "mountain",
    "garden",
    "library",
    "bicycle",
    "kitchen",
    "window",
    "forest",
    "train",
    "market",
    "bridge",
    "island",
    "candle",
    "violin",
    "teacher",
    "doctor",
    "farmer",
    "painter",
    "village",
    "desert",
    "ocean",
    "cloud",
    "storm",
    "winter",
    "summer",
    "breakfast",
    "coffee",
    "bread",
    "apple",
    "orange",
    "carrot",
    "notebook",
    "pencil",
    "computer",
    "keyboard",
    "camera",
    "museum",
    "hospital",
    "airport",
    "harbor",
    "castle",
    "lighthouse",
    "tiger",
    "elephant",
    "rabbit",
    "dolphin",
    "eagle",
    "butterfly",
    "spider",
    "horse",
    "garden hose",
    "umbrella",
]
ADJECTIVES = [
    "quiet",
    "bright",
    "ancient",
    "modern",
    "small",
    "huge",
    "careful",
    "lazy",
    "brave",
    "gentle",
    "noisy",
    "cheerful",
    "tired",
    "curious",
    "honest",
    "simple",
    "heavy",
    "warm",
    "cold",
    "fast",
]
VERBS = ["walks to", "looks at", "paints", "repairs", "visits", "cleans", "builds", "finds", "opens", "follows"]
PEOPLE = [
    "Anna",
    "Ben",
    "Carla",
    "David",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "the child",
    "my neighbour",
]
TOPICS = [
    "saving money",
    "learning a language",
    "sleeping well",
    "staying focused",
    "cooking rice",
    "writing an email",
    "planting tomatoes",
    "running a meeting",
    "reading more books",
    "drinking enough water",
    "keeping a plant alive",
    "packing for a trip",
    "learning to swim",
]
ZH_NOUNS = [
    "猫",
    "狗",
    "苹果",
    "水",
    "书",
    "太阳",
    "月亮",
    "学校",
    "老师",
    "朋友",
    "火车",
    "花",
    "山",
    "河",
    "茶",
    "米饭",
]
ZH_TOPICS = ["学习", "运动", "睡觉", "做饭", "旅行", "读书", "喝茶", "写字"]
ZH_SENTENCES = [
    "我喜欢喝茶。",
    "今天天气很好。",
    "他每天早上跑步。",
    "这本书很有意思。",
    "我们明天去公园。",
    "她在学校学习中文。",
    "我的朋友住在北京。",
    "火车八点出发。",
    "妈妈在做饭。",
    "这只猫很可爱。",
]
ZH_DIGITS = "零一二三四五六七八九十"


def _sentence(rng: random.Random) -> str:
    return f"{rng.choice(PEOPLE).capitalize()} {rng.choice(VERBS)} the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}."


def _arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    return rng.choice(
        [
            f"What is {a} + {b}?",
            f"What is {a} - {b}?",
            f"Compute {a} * {b % 12 + 1}.",
            f"What is {a * (b % 9 + 1)} divided by {b % 9 + 1}?",
            f"{rng.choice(PEOPLE).capitalize()} has {a} {rng.choice(NOUNS)}s and gives away {min(a - 1, b)}. How many are left?",
            f"A box holds {b % 9 + 2} {rng.choice(NOUNS)}s. How many are in {a % 9 + 2} boxes?",
            f"Is {a * 2 + 1} an even or an odd number?",
            f"Which is larger, {a} or {b}?",
        ]
    )


def _python_expression(rng: random.Random) -> str:
    word = rng.choice(NOUNS).replace(" ", "")
    n, m = rng.randint(1, 9), rng.randint(2, 6)
    items = [rng.randint(0, 20) for _ in range(rng.randint(3, 5))]
    expression = rng.choice(
        [
            f"len({word!r})",
            f"{word!r}.upper()",
            f"{word!r}[{n % len(word)}]",
            f"{word!r}[::-1]",
            f"sum({items})",
            f"max({items})",
            f"sorted({items})",
            f"{items}[-1]",
            f"{n} ** {m}",
            f"{n * m + 3} // {m}",
            f"{n * m + 3} % {m}",
            f"list(range({n}))",
            f"{word!r}.count({word[0]!r})",
            f"bool({n % 2})",
            f"{word!r} + {word[:2]!r}",
            f"', '.join({[word, rng.choice(NOUNS)]})",
        ]
    )
    return rng.choice(
        [
            f"What does `{expression}` return in Python?",
            f"In Python, what is the value of `{expression}`?",
            f"Explain what `{expression}` does in Python.",
        ]
    )


def _instruction(rng: random.Random) -> str:
    noun, adjective, topic = rng.choice(NOUNS), rng.choice(ADJECTIVES), rng.choice(TOPICS)
    return rng.choice(
        [
            f"Write one sentence about a {adjective} {noun}.",
            f"Give me three tips for {topic}.",
            f"List three words that describe a {noun}.",
            f"Write a short poem about a {noun}.",
            f"Give a synonym for the word '{adjective}'.",
            f"What is the opposite of '{adjective}'?",
            f"Answer with one word: is a {noun} alive?",
            f"Write a title for a story about a {adjective} {noun}.",
            f"Explain {topic} to a child in two sentences.",
            f"Reply with only 'yes' or 'no': can a {noun} fly?",
            f"Name two things you can find in a {noun}.",
            f"Write a friendly greeting for a {noun} shop.",
        ]
    )


def _rewriting(rng: random.Random, docs: list[str]) -> str:
    sentence = _sentence(rng) if not docs or rng.random() < 0.6 else rng.choice(docs)
    return rng.choice(
        [
            f"Rewrite this sentence in the past tense: {sentence}",
            f"Rewrite in capital letters: {sentence}",
            f"Make this sentence more formal: {sentence}",
            f"Shorten this sentence: {sentence}",
            f"Rewrite this as a question: {sentence}",
            f"Correct any mistakes in this sentence: {sentence.replace('the ', 'teh ', 1)}",
            f"Summarize in one sentence: {sentence}",
            f"Translate into French: {sentence}",
        ]
    )


def _everyday(rng: random.Random) -> str:
    noun, topic = rng.choice(NOUNS), rng.choice(TOPICS)
    return rng.choice(
        [
            f"What is a {noun}?",
            f"Why do people like {topic}?",
            f"Where can you usually find a {noun}?",
            f"What is a {noun} used for?",
            f"Tell me a fun fact about a {noun}.",
            f"How do you start {topic}?",
            f"Describe a {noun} in one sentence.",
            f"What color is a {noun} usually?",
        ]
    )


def _chinese(rng: random.Random) -> str:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return rng.choice(
        [
            f"请用一句话介绍{rng.choice(ZH_NOUNS)}。",
            f"{ZH_DIGITS[a]}加{ZH_DIGITS[b]}等于多少？",
            f"把这句话翻译成英文：{rng.choice(ZH_SENTENCES)}",
            f"关于{rng.choice(ZH_TOPICS)}，请给我一个建议。",
            f"{rng.choice(ZH_NOUNS)}是什么颜色的？",
            f"用中文回答：{a} 乘以 {b} 是多少？",
            f"Translate into Chinese: {rng.choice(NOUNS)}",
            f"What does the Chinese word '{rng.choice(ZH_NOUNS)}' mean?",
        ]
    )


def _stdlib(rng: random.Random, items: list) -> str:
    from models.corpus import answer_for, question_for

    item = rng.choice(items)
    return rng.choice(
        [
            question_for(item, rng.randrange(3)),
            question_for(item, rng.randrange(3)),
            f"Summarize in one sentence: {answer_for(item)}",
        ]
    )


FAMILY_WEIGHTS = {
    "stdlib": 0.22,
    "arithmetic": 0.14,
    "python": 0.14,
    "instruction": 0.16,
    "rewriting": 0.12,
    "everyday": 0.10,
    "chinese": 0.12,
}


def stdlib_items() -> list:
    """The standard library's documented items in the train split of ``models.corpus``."""
    from models.corpus import answer_for, harvest, split_of

    return [item for item in harvest() if split_of(item.name) == "train" and 20 <= len(answer_for(item)) <= 400]


def training_prompts(n: int, seed: int, items: list | None = None) -> list[tuple[str, str]]:
    """``n`` distinct (family, prompt) pairs, the same for the same seed and items."""
    rng = random.Random(seed)
    items = stdlib_items() if items is None else items
    docs = [s.strip() + "." for item in items[:400] for s in item.doc.split(". ")[:1] if 30 < len(s) < 160]
    makers: dict[str, Callable[[random.Random], str]] = {
        "stdlib": lambda r: _stdlib(r, items),
        "arithmetic": _arithmetic,
        "python": _python_expression,
        "instruction": _instruction,
        "rewriting": lambda r: _rewriting(r, docs),
        "everyday": _everyday,
        "chinese": _chinese,
    }
    families, weights = list(FAMILY_WEIGHTS), list(FAMILY_WEIGHTS.values())
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    attempts = 0
    while len(out) < n and attempts < 50 * n:
        attempts += 1
        family = rng.choices(families, weights)[0]
        prompt = makers[family](rng)
        if prompt not in seen:
            seen.add(prompt)
            out.append((family, prompt))
    return out
