"""The router's eval set: big enough, mixed, well-formed, split once, and never trained on."""

import collections

import pytest

from tools.distill.__main__ import PROMPTS, SEED
from tools.distill.prompts import training_prompts
from tools.router import evalset, judge


@pytest.fixture(scope="module")
def items():
    return evalset.all_items()


def test_the_template_set_has_500_items_of_every_kind(items):
    templates = [i for i in items if i["source"] == "templates"]
    assert len(templates) >= 500
    counts = collections.Counter(i["category"] for i in templates)
    assert set(counts) == {"factual", "math", "instruction", "rewriting", "python", "chinese"}
    assert min(counts.values()) >= 40


def test_the_handwritten_source_is_separate_and_never_split_for_fitting(items):
    handwritten = [i for i in items if i["source"] == "handwritten"]
    assert len(handwritten) >= 100
    assert {i["split"] for i in handwritten} == {"heldout"}
    assert {i["split"] for i in items if i["source"] == "templates"} == {"fit", "report"}


def test_ids_are_unique_and_the_split_depends_only_on_the_id(items):
    assert len({i["id"] for i in items}) == len(items)
    assert evalset.template_items() == evalset.template_items()
    fit = sum(i["split"] == "fit" for i in items if i["source"] == "templates")
    assert 0.4 < fit / sum(i["source"] == "templates" for i in items) < 0.6


def test_every_check_can_be_judged(items):
    for item in items:
        assert 0.0 <= judge.score("some answer", item["check"]) <= 1.0


def test_python_references_are_what_python_computes(items):
    by_prompt = {i["prompt"]: i["check"] for i in items}
    check = next(c for p, c in by_prompt.items() if p.startswith("What") and "`len('" in p)
    assert check["kind"] == "number"


def test_no_eval_prompt_is_a_training_prompt_of_the_student(items):
    trained = {prompt for _, prompt in training_prompts(PROMPTS, SEED)}
    assert len(trained) == PROMPTS
    assert not trained & {i["prompt"] for i in items}
