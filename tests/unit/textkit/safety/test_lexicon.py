"""Lexicon matching: case, compatibility forms, word boundaries, Chinese, and what a stream
must hold back."""

from pathlib import Path

import pytest

from textkit.safety.lexicon import DEFAULT_EN, DEFAULT_ZH, Lexicon, read_words

EN = Lexicon.from_words(["forbiddenword", "bad phrase"], "lexicon:en:test", whole_word=True)
ZH = Lexicon.from_words(["违禁词"], "lexicon:zh:test", whole_word=False)


@pytest.mark.parametrize(
    "text",
    [
        "this has forbiddenword in it",
        "FORBIDDENWORD",
        "Forbiddenword!",
        "ｆｏｒｂｉｄｄｅｎｗｏｒｄ",  # full-width, folded by NFKC
        "forbid\u200bdenword",  # a zero-width space does not hide it
        "a BAD PHRASE here",
        "我forbiddenword你",  # Chinese neighbours are word boundaries
        "(forbiddenword)",
    ],
)
def test_english_terms_match(text):
    match = EN.find(text)
    assert match is not None and match.rule == "lexicon:en:test"


@pytest.mark.parametrize("text", ["forbiddenwords", "xforbiddenword", "forbiddenword_2", "bad phrases", "badphrase"])
def test_english_terms_match_whole_words_only(text):
    assert EN.find(text) is None


@pytest.mark.parametrize("text", ["这是违禁词", "违禁词们", "abc违禁词def", "违\u200b禁词"])
def test_chinese_terms_match_anywhere(text):
    match = ZH.find(text)
    assert match is not None and match.rule == "lexicon:zh:test"


def test_match_span_is_in_the_searched_text():
    text = "ok ＦＯＲＢＩＤ\u200bＤＥＮＷＯＲＤ."
    match = EN.find(text)
    assert text[match.start : match.end] == "ＦＯＲＢＩＤ\u200bＤＥＮＷＯＲＤ"


def test_incomplete_text_leaves_a_word_at_its_end_undecided():
    assert EN.find("say forbiddenword", complete=False) is None
    assert EN.find("say forbiddenword", complete=True) is not None
    assert EN.find("say forbiddenword ", complete=False) is not None
    # Chinese needs no boundary, so a term at the end is a match at once.
    assert ZH.find("说违禁词", complete=False) is not None


def test_since_skips_terms_in_text_already_judged():
    text = "forbiddenword and more"
    assert EN.find(text, since=len(text) - 3) is None
    assert EN.find(text, since=5) is not None


def test_unsafe_suffix_is_the_longest_end_that_could_begin_a_term():
    assert EN.unsafe_suffix_start("hello forb") == len("hello ")
    assert EN.unsafe_suffix_start("hello FORBIDDENWORD") == len("hello ")  # a word still needs its end
    assert EN.unsafe_suffix_start("hello bad p") == len("hello ")
    assert EN.unsafe_suffix_start("hello world") == len("hello world")
    assert EN.unsafe_suffix_start("hello ｆｏ\u200b") == len("hello ")
    assert ZH.unsafe_suffix_start("你好违禁") == 2


def test_empty_lexicon_matches_nothing():
    empty = Lexicon([])
    assert empty.find("anything") is None
    assert empty.unsafe_suffix_start("anything") == len("anything")


def test_files_name_rules_by_language_and_file(tmp_path: Path):
    en_list = tmp_path / "custom.txt"
    en_list.write_text("# comment\n\nSecretWord\n", encoding="utf-8")
    lexicon = Lexicon.from_files(en=[en_list], zh=DEFAULT_ZH)
    assert lexicon.find("the secretword").rule == "lexicon:en:custom"
    assert lexicon.find("制造炸弹").rule == "lexicon:zh:default"


def test_default_lists_load():
    assert read_words(DEFAULT_EN[0]) and read_words(DEFAULT_ZH[0])
    lexicon = Lexicon.from_files(en=DEFAULT_EN, zh=DEFAULT_ZH)
    assert lexicon.find("this is a forbiddenword").rule == "lexicon:en:default"
    assert lexicon.find("一个违禁词").rule == "lexicon:zh:default"
