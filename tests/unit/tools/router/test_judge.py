"""The eval judge: reference match, numbers in any script, verifiable instructions."""

import pytest

from tools.router.judge import numbers_in, score

PARIS = {"kind": "contains", "any": ["Paris"]}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("The capital of France is Paris.", 1.0), ("paris", 1.0), ("It is Lyon.", 0.0), ("Parisian food", 0.0)],
)
def test_reference_match_is_case_insensitive_on_word_boundaries(answer, expected):
    assert score(answer, PARIS) == expected


def test_case_sensitive_references_tell_symbols_apart():
    helium = {"kind": "contains", "any": ["He"], "case_sensitive": True}
    assert score("The symbol of helium is He.", helium) == 1.0
    assert score("he said so", helium) == 0.0


def test_chinese_references_match_inside_text():
    assert score("中国的首都是北京。", {"kind": "contains", "any": ["北京"]}) == 1.0
    assert score("上海", {"kind": "contains", "any": ["北京"]}) == 0.0


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ("12", 12),
        ("It is twelve.", 12),
        ("twenty-one", 21),
        ("二十三", 23),
        ("十五个", 15),
        ("1,024 bytes", 1024),
        ("-3 degrees", -3),
        ("结果是8。", 8),
    ],
)
def test_numbers_are_read_in_digits_words_and_chinese(answer, value):
    assert value in numbers_in(answer)
    assert score(answer, {"kind": "number", "value": value}) == 1.0


def test_a_wrong_number_fails():
    assert score("The answer is 13.", {"kind": "number", "value": 12}) == 0.0


def test_the_questions_own_numbers_are_skipped_and_the_first_other_one_counts():
    check = {"kind": "number", "value": 42}
    assert score("To add 20 and 22 we get 42.", check, "Calculate 20 plus 22.") == 1.0
    assert score("20 + 22 is 40, or maybe 42.", check, "Calculate 20 plus 22.") == 0.0
    assert score("It is 5, since 5 * 1 = 5.", {"kind": "number", "value": 5}, "What is 5 times 1?") == 1.0


def test_rules_score_the_share_met():
    check = {"kind": "rules", "rules": [["contains", "river"], ["min_words", 4]]}
    assert score("The river runs to the sea.", check) == 1.0
    assert score("river", check) == 0.5
    assert score("nothing here", check) == 0.0


@pytest.mark.parametrize(
    ("rule", "arg", "good", "bad"),
    [
        ("lines", 2, "roses are red\nviolets are blue", "one line only"),
        ("all_caps", None, "BLUE SKY", "Blue sky"),
        ("one_of", ["yes", "no"], "Yes.", "Yes, because the sun is a star."),
        ("comma_items", 3, "apple, cherry, rose", "apple and cherry"),
        ("json", None, '{"name": "Ada"}', "name: Ada"),
        ("chinese", None, "春天来了，花开了。", "Spring is here."),
        ("max_words", 3, "very happy indeed", "I am very happy today"),
    ],
)
def test_each_rule_tells_good_from_bad(rule, arg, good, bad):
    check = {"kind": "rules", "rules": [[rule, arg]]}
    assert score(good, check) == 1.0
    assert score(bad, check) == 0.0


def test_an_unknown_check_is_refused():
    with pytest.raises(ValueError, match="unknown check kind"):
        score("x", {"kind": "vibes"})
