"""Streaming output: incremental detokenization and the hold-back buffer."""

import itertools
import random

import pytest
from transformers import AutoTokenizer

from mesh.catalog import default_models, find_model
from services.postprocess.stream import HoldBackBuffer, IncrementalDetokenizer, ModeratedDecoder, StopStrings
from support.tokenizer import build_tokenizer
from textkit.safety.lexicon import Entry, Lexicon

LEXICON = Lexicon(
    [
        Entry("forbiddenword", "lexicon:en:test", whole_word=True),
        Entry("bad phrase", "lexicon:en:test", whole_word=True),
        Entry("违禁词", "lexicon:zh:test", whole_word=False),
    ]
)


TRAINED_TOKENIZER = find_model(default_models(), "llmesh-small").resolved_dir()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(build_tokenizer(tmp_path_factory.mktemp("tokenizer")))


def chunkings(text: str, pieces: int):
    """Every way to cut ``text`` into ``pieces`` consecutive chunks (some may be empty)."""
    for cuts in itertools.combinations_with_replacement(range(len(text) + 1), pieces - 1):
        bounds = (0, *cuts, len(text))
        yield [text[a:b] for a, b in itertools.pairwise(bounds)]


def stream(buffer: HoldBackBuffer, chunks: list[str], final: bool = True):
    """Push chunks (the last one final); return the released text and the blocking match."""
    released = ""
    for index, chunk in enumerate(chunks):
        text, match = buffer.push(chunk, final=final and index == len(chunks) - 1)
        if match is not None:
            return released, match
        released += text
    return released, None


# -- incremental detokenizer ------------------------------------------------------------------


def assert_detokenizes_in_any_chunks(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    rng = random.Random(0)
    for _ in range(50):
        detokenizer, deltas, start = IncrementalDetokenizer(tokenizer), [], 0
        while start < len(ids):
            size = rng.randint(1, 4)
            deltas.append(detokenizer.push(ids[start : start + size]))
            start += size
        assert "".join(deltas) == text
        assert not any("\ufffd" in delta for delta in deltas)


def test_characters_split_across_byte_tokens_are_never_released_in_part(tokenizer):
    text = "Hi 你好, 世界 😀👍 ok, Ünïcödé"
    assert len(tokenizer.encode(text, add_special_tokens=False)) > len(text)  # really split into bytes
    assert_detokenizes_in_any_chunks(tokenizer, text)


@pytest.mark.skipif(not (TRAINED_TOKENIZER / "tokenizer.json").exists(), reason="no trained tokenizer yet")
def test_the_trained_tokenizer_detokenizes_the_same_way():
    assert_detokenizes_in_any_chunks(AutoTokenizer.from_pretrained(TRAINED_TOKENIZER), "Hi 你好, 世界 😀👍 ok, Ünïcödé")


def test_a_character_is_released_as_soon_as_its_last_byte_arrives(tokenizer):
    ids = tokenizer.encode("好", add_special_tokens=False)
    assert len(ids) > 1
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert [detokenizer.push([i]) for i in ids] == [""] * (len(ids) - 1) + ["好"]


def test_final_push_releases_even_an_incomplete_character(tokenizer):
    ids = tokenizer.encode("a好", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.push(ids[:-1]) == "a"
    assert detokenizer.push([], final=True) == "\ufffd"


def test_special_tokens_are_skipped(tokenizer):
    ids = tokenizer.encode("hello<|im_end|>", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert "".join(detokenizer.push([i]) for i in ids) == "hello"


# -- hold-back buffer --------------------------------------------------------------------------


def test_a_blocked_word_streamed_char_by_char_is_never_released_in_part():
    released, match = stream(HoldBackBuffer(LEXICON), list("hello forbiddenword and more"))
    assert match is not None and match.rule == "lexicon:en:test"
    assert released == "hello "


@pytest.mark.parametrize(
    ("text", "safe_prefix"),
    [
        ("hello forbiddenword, bye", "hello "),
        ("Hello ＦｏｒｂｉｄｄｅｎＷＯＲＤ!", "Hello "),  # full-width and mixed case
        ("a bad phrase.", "a "),
        ("你好违禁词再见", "你好"),
    ],
)
def test_a_blocked_term_split_at_any_chunk_boundaries_is_never_released_in_part(text, safe_prefix):
    for chunks in chunkings(text, 3):
        released, match = stream(HoldBackBuffer(LEXICON), chunks)
        assert match is not None, chunks
        # Never more than what legitimately precedes the term.
        assert safe_prefix.startswith(released), (chunks, released)


def test_a_blocked_word_at_the_very_end_is_caught_by_the_final_push():
    released, match = stream(HoldBackBuffer(LEXICON), list("it ends with forbiddenword"))
    assert match is not None and released == "it ends with "


@pytest.mark.parametrize(
    "text",
    ["forbiddenwords are fine", "xforbiddenword too", "bad phrases and a badphrase", "ends with forbidden", "违禁 词"],
)
def test_text_without_a_blocked_term_is_all_released_under_any_chunking(text):
    for chunks in chunkings(text, 3):
        released, match = stream(HoldBackBuffer(LEXICON), chunks)
        assert match is None and released == text, chunks


def test_only_a_possible_term_start_is_held_back():
    buffer = HoldBackBuffer(LEXICON)
    assert buffer.push("hello wor") == ("hello wor", None)
    assert buffer.push("ld, forbid") == ("ld, ", None)
    assert buffer.push("den") == ("", None)
    assert buffer.push("ful", final=True) == ("forbiddenful", None)


def test_released_text_gives_the_left_word_boundary_of_held_text():
    buffer = HoldBackBuffer(LEXICON)
    assert buffer.push("long words like x") == ("long words like x", None)
    # "x" was released long ago, yet still keeps "forbiddenword" from standing alone.
    assert buffer.push("forbiddenword", final=True) == ("forbiddenword", None)


# -- both together ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "safe_prefix"), [("hello forbiddenword.", "hello "), ("回答：违禁词。", "回答:")])
def test_moderated_decoder_token_by_token(tokenizer, text, safe_prefix):
    decoder = ModeratedDecoder(tokenizer, LEXICON)
    ids = tokenizer.encode(text, add_special_tokens=False)
    released = ""
    for token_id in ids:
        delta, match = decoder.push([token_id])
        if match is not None:
            break
        released += delta
    assert match is not None
    assert safe_prefix.startswith(released.replace("：", ":"))


# -- stop strings -------------------------------------------------------------------------------


def released_with_stop(text: str, stops: list[str], size: int) -> str:
    cutter = StopStrings(stops)
    pieces = [cutter.push(text[i : i + size]) for i in range(0, len(text), size)]
    return "".join(pieces) + cutter.push("", final=True)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_text_ends_before_the_first_stop_string_however_it_arrives(size):
    assert released_with_stop("The capital is Paris.\nNext question", ["\n", "Next"], size) == "The capital is Paris."


@pytest.mark.parametrize("size", [1, 2, 5])
def test_no_piece_of_a_stop_string_is_ever_released(size):
    cutter, released = StopStrings(["END"]), []
    for i in range(0, len("abc EN"), size):
        released.append(cutter.push("abc EN"[i : i + size]))
    assert "".join(released) == "abc "  # "EN" could still become END: held back
    assert cutter.push("D and more") == "" and cutter.stopped
    assert StopStrings(["END"]).push("abc EN", final=True) == "abc EN"  # it never came


def test_decoder_applies_stop_strings_before_moderation(tokenizer):
    decoder = ModeratedDecoder(tokenizer, Lexicon([]), stop=["world"])
    text, match = decoder.push(tokenizer.encode("Hello world, this", add_special_tokens=False), final=True)
    assert (text, match) == ("Hello ", None)
