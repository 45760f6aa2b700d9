"""The automatic judge of an answer: reference match, or a check of a verifiable instruction.

Every eval item carries its own check, so no item needs a judge model:

* ``contains``: the answer mentions one of the reference's accepted forms (``any``), matched
  case-insensitively on word boundaries after Unicode NFKC normalisation (``Paris`` in "The
  capital of France is Paris."); ``case_sensitive`` for rewriting into capitals.
* ``number``: the first number in the answer that is not one of the question's own numbers
  equals ``value`` (digits with or without thousands separators, English number words up to
  ninety-nine, Chinese numerals up to 九十九). Skipping the question's numbers lets "20 plus 22
  is 42" pass and "21 // 4 is 1 ... 5" fail, as a reader would.
* ``rules``: IFEval-style verifiable instructions (Zhou et al. 2023, "Instruction-Following
  Evaluation for Large Language Models"): each rule is a function of the answer text; the score
  is the share of rules met.

Why no model judge: the only judge model on a fresh machine would be SmolLM2-135M-Instruct, the
expensive tier itself. It would grade its own answers against its student's (self-preference
bias), and a 135M model's yes/no verdicts are close to chance. Checkable items measure what a
user would accept (right fact, right number, instruction followed) without either problem.

Scores are in [0, 1]; ``JUDGE_VERSION`` is part of nothing cached (answers are cached, scores are
recomputed from them in milliseconds), so changing a rule never needs new answers.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

JUDGE_VERSION = 1

_EN_UNITS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_EN_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_ZH_DIGITS = {c: i for i, c in enumerate("零一二三四五六七八九")} | {"两": 2}
# ASCII boundaries: a number right after Chinese text ("结果是8") is still a number.
_NUMBER = re.compile(
    r"(?<![0-9A-Za-z.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![0-9A-Za-z])|(?<![0-9A-Za-z.])-?\d+(?:\.\d+)?(?![0-9A-Za-z])"
)
_CJK = re.compile(r"[\u4e00-\u9fff]")


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _mentions(answer: str, form: str, case_sensitive: bool = False) -> bool:
    answer, form = normalise(answer), normalise(form)
    if not case_sensitive:
        answer, form = answer.casefold(), form.casefold()
    if _CJK.search(form) or not form[:1].isalnum() or not form[-1:].isalnum():
        return form in answer
    return re.search(rf"(?<![^\W_]){re.escape(form)}(?![^\W_])", answer) is not None


def _zh_number(text: str) -> int | None:
    """二十三 -> 23, 十五 -> 15, 七 -> 7 (up to 九十九)."""
    if not text or any(c not in _ZH_DIGITS and c != "十" for c in text):
        return None
    if "十" not in text:
        return _ZH_DIGITS[text] if len(text) == 1 else None
    tens, _, units = text.partition("十")
    value = (_ZH_DIGITS.get(tens, 0) if tens else 1) * 10
    return value + (_ZH_DIGITS.get(units, 0) if units else 0) if len(units) <= 1 and len(tens) <= 1 else None


def numbers_in(answer: str) -> list[float]:
    text = normalise(answer)
    found = [float(m.group().replace(",", "")) for m in _NUMBER.finditer(text)]
    words = re.findall(r"[a-z]+(?:-[a-z]+)?", text.casefold())
    for word in words:
        head, _, tail = word.partition("-")
        if head in _EN_TENS and (not tail or tail in _EN_UNITS[1:10]):
            found.append(_EN_TENS[head] + (_EN_UNITS.index(tail) if tail else 0))
        elif word in _EN_UNITS:
            found.append(_EN_UNITS.index(word))
    for run in re.findall(r"[零一二两三四五六七八九十]+", text):
        value = _zh_number(run)
        if value is not None:
            found.append(value)
    return found


def _words(answer: str) -> list[str]:
    return re.findall(r"[^\W_]+(?:'[^\W_]+)?", normalise(answer))


def _lines(answer: str) -> list[str]:
    return [line.strip() for line in answer.strip().splitlines() if line.strip()]


# Each rule: (answer, argument) -> met? The argument is the check's JSON value (a number, a word, a list).
RULES: dict[str, Callable[[str, Any], bool]] = {
    "max_words": lambda a, n: 0 < len(_words(a)) <= int(n),
    "min_words": lambda a, n: len(_words(a)) >= int(n),
    "contains": lambda a, word: _mentions(a, str(word)),
    "not_contains": lambda a, word: not _mentions(a, str(word)),
    "all_caps": lambda a, _: any(c.isalpha() for c in a) and a == a.upper(),
    "all_lower": lambda a, _: any(c.isalpha() for c in a) and a == a.lower(),
    "starts_with": lambda a, prefix: normalise(a).casefold().startswith(str(prefix).casefold()),
    "ends_with": lambda a, suffix: normalise(a).rstrip().endswith(str(suffix)),
    "lines": lambda a, n: len(_lines(a)) == int(n),
    "one_of": lambda a, options: normalise(a).strip(" .!").casefold() in [str(o).casefold() for o in options],
    "chinese": lambda a, _: len(_CJK.findall(a)) >= max(2, len(a.strip()) // 3),
    "no_chinese": lambda a, _: not _CJK.search(a),
    "comma_items": lambda a, n: len([p for p in normalise(a).strip(" .").split(",") if p.strip()]) == int(n),
    "json": lambda a, _: _is_json(a),
}


def _is_json(answer: str) -> bool:
    import json

    text = answer.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def score(answer: str, check: dict, prompt: str = "") -> float:
    """The judged quality of ``answer`` to ``prompt`` for an item with ``check``, in [0, 1]."""
    kind = check["kind"]
    if kind == "contains":
        return float(any(_mentions(answer, form, check.get("case_sensitive", False)) for form in check["any"]))
    if kind == "number":
        value = float(check["value"])
        given = [v for v in numbers_in(prompt) if abs(v - value) > 1e-6]
        stated = [v for v in numbers_in(answer) if all(abs(v - g) > 1e-6 for g in given)]
        return float(bool(stated) and abs(stated[0] - value) < 1e-6)
    if kind == "rules":
        met = [RULES[name](answer, arg) for name, arg in check["rules"]]
        return sum(met) / len(met)
    raise ValueError(f"unknown check kind {kind!r}")
