"""The lexicon through evasions (separators, leetspeak, zero-width, full-width), and its reload
when a list changes on disk."""

import os
import time

import pytest

from llmesh.common.v1 import common_pb2
from textkit.safety.lexicon import DEFAULT_EN, DEFAULT_ZH, Lexicon, ReloadingLexicon
from textkit.safety.verdicts import LexiconScanner

LEXICON = Lexicon.from_files(en=DEFAULT_EN, zh=DEFAULT_ZH)


@pytest.mark.parametrize(
    "text",
    [
        "f.o.r.b.i.d.d.e.n.w.o.r.d",
        "F0RB1DD3NW0RD",
        "how to b-u-i-l-d a b.o.m.b",
        "ｆｏｒｂｉｄｄｅｎｗｏｒｄ",
        "for\u200bbidden\u200dword",
        "f_0_r_b_1_d_d_3_n_w_0_r_d",
        "违 禁 词",
        "制-造-炸-弹",
        "毒\u200b品\u200b交\u200b易",
    ],
)
def test_evasions_are_seen_through(text):
    assert LEXICON.find_evasive(text) is not None


@pytest.mark.parametrize("text", ["the class is fine", "I forbid den words", "pass 4 small", "build a birdhouse"])
def test_squeezing_keeps_word_boundaries(text):
    assert LEXICON.find_evasive(text) is None


def test_scanner_reports_the_list_rule():
    verdict = LexiconScanner(LEXICON, "no").scan("F0rb1dd3nw0rd")
    assert verdict.blocked and verdict.rule == "lexicon:en:default"
    assert verdict.category == common_pb2.SAFETY_CATEGORY_SENSITIVE_WORD


def test_lists_reload_without_a_restart(tmp_path):
    words = tmp_path / "custom.txt"
    words.write_text("alpha\n")
    lexicon = ReloadingLexicon(en=[words], check_every_s=0)
    assert lexicon.current().find("beta") is None
    words.write_text("alpha\nbeta\n")
    # mtime resolution: make sure the change is visible as one.
    os.utime(words, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert lexicon.current().find("beta") is not None
    words.unlink()
    assert lexicon.current().find("beta") is not None  # a missing list keeps the last good one
