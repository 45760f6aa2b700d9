"""Normalisation and the folded view that safety rules match against."""

from textkit.safety.text import fold, is_word_char, normalize


def test_nfkc_turns_full_width_and_compatibility_forms_into_plain_ones():
    assert normalize("ＨＥＬＬＯ，ｗｏｒｌｄ１２３") == "HELLO,world123"
    assert normalize("ﬁle ①") == "file 1"


def test_zero_width_and_format_characters_are_dropped():
    assert normalize("for\u200bbid\u200cden\u200d wo\u2060rd\ufeff") == "forbidden word"
    assert normalize("soft\u00adhyphen, \u202eevil") == "softhyphen, evil"


def test_control_characters_are_dropped_but_newline_and_tab_kept():
    assert normalize("a\x00b\x07c\x1bd\x7f\r\n\te") == "abcd\n\te"


def test_chinese_and_emoji_pass_unchanged():
    assert normalize("你好，世界 😀") == "你好,世界 😀"  # only the full-width comma changes


def test_fold_maps_every_folded_character_back_to_its_source():
    text = "Ａ\u200bﬁß"
    folded, offsets = fold(text)
    assert folded == "afiss"
    assert offsets == [0, 2, 2, 3, 3]


def test_word_characters():
    assert is_word_char("a") and is_word_char("7") and is_word_char("_") and is_word_char("é")
    assert not is_word_char(" ") and not is_word_char("-") and not is_word_char("中")
