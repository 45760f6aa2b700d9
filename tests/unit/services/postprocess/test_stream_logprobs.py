"""Log-prob entries postprocess releases spell exactly the released text, however the tokens
arrive, cut by stop strings and redacted: no redacted or blocked text leaves through them."""

import pytest
from transformers import AutoTokenizer

from llmesh.common.v1 import common_pb2
from mesh.catalog import REPO_ROOT
from services.postprocess.stream import ModeratedDecoder
from textkit.safety.lexicon import Lexicon

# "string" is one token of the small vocabulary, so an alternative can spell the whole term.
LEXICON = Lexicon.from_words(["string"], "lexicon:en:test", whole_word=True)


@pytest.fixture(scope="module")
def tokenizer():
    # llmesh-small's own byte-level BPE (committed), as the engine's token ids would be.
    return AutoTokenizer.from_pretrained(str(REPO_ROOT / "models" / "artifacts" / "small"))


def _tops(ids: list[int], alternatives: dict[int, list[int]]) -> list[common_pb2.TopLogprobs]:
    return [
        common_pb2.TopLogprobs(
            token_ids=alternatives.get(i, [token]), logprobs=[-0.5] * len(alternatives.get(i, [token]))
        )
        for i, token in enumerate(ids)
    ]


def _run(tokenizer, text: str, chunk: int, *, stop=(), pii="redact", alternatives=None):
    """(released text, entries) for ``text`` tokenized and pushed ``chunk`` tokens at a time."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    logprobs = [-0.1 * (i + 1) for i in range(len(ids))]
    tops = _tops(ids, alternatives or {})
    decoder = ModeratedDecoder(tokenizer, LEXICON, pii, stop=stop, logprobs=True)
    released, entries = [], []
    for start in range(0, len(ids), chunk):
        final = start + chunk >= len(ids)
        piece, match, new = decoder.push_with_logprobs(
            ids[start : start + chunk], logprobs[start : start + chunk], tops[start : start + chunk], final
        )
        assert match is None
        assert piece == "".join(entry.token for entry in new), "each chunk's text is what its entries spell"
        released.append(piece)
        entries += new
    plain = ModeratedDecoder(tokenizer, LEXICON, pii, stop=stop)
    expected = plain.push(ids, final=True)[0]
    assert "".join(released) == expected, "log-probs never change the released text"
    return expected, entries


@pytest.mark.parametrize("chunk", [1, 3, 50])
def test_entries_spell_the_text_with_the_engines_values(tokenizer, chunk):
    text, entries = _run(tokenizer, "Hello wörld, 中文 and more text.", chunk)
    assert text == "Hello wörld, 中文 and more text."
    assert "".join(entry.token for entry in entries) == text
    assert b"".join(entry.bytes for entry in entries).decode() == text
    # One entry per token (the end-of-turn token has none), each with the engine's value.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [round(entry.logprob, 4) for entry in entries] == [round(-0.1 * (i + 1), 4) for i in range(len(ids))]


def test_a_stop_string_cuts_the_entries_where_it_cuts_the_text(tokenizer):
    text, entries = _run(tokenizer, "Count: one two three four", 2, stop=["thr"])
    assert text == "Count: one two "
    assert "".join(entry.token for entry in entries) == text
    assert not any("thr" in entry.token for entry in entries)


@pytest.mark.parametrize("chunk", [2, 100])
def test_a_redacted_span_is_one_entry_without_alternatives(tokenizer, chunk):
    sentence = "Mail john.doe@example.com now"
    ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    first = len(tokenizer("Mail", add_special_tokens=False)["input_ids"])
    # Alternatives that spell pieces of the address, as a model's might: at the address's own
    # tokens; and, when the whole answer is known at once, at every token.
    leaky = tokenizer(" john doe example", add_special_tokens=False)["input_ids"]
    positions = range(len(ids)) if chunk >= len(ids) else range(first, len(ids))
    text, entries = _run(tokenizer, sentence, chunk, alternatives={i: leaky for i in positions})
    assert text == "Mail [EMAIL] now"
    assert "".join(entry.token for entry in entries) == text
    redacted = next(entry for entry in entries if "[EMAIL]" in entry.token)
    assert not redacted.top_logprobs
    everything = [entry.token for entry in entries] + [alt.token for entry in entries for alt in entry.top_logprobs]
    for piece in ("john", "doe", "example", "@"):
        assert not any(piece in token for token in everything), piece


def test_alternatives_the_lexicon_blocks_are_left_out(tokenizer):
    (blocked,) = tokenizer(" string", add_special_tokens=False)["input_ids"]
    (allowed,) = tokenizer(" value", add_special_tokens=False)["input_ids"]
    _, entries = _run(tokenizer, "It is a number.", 1, alternatives={2: [allowed, blocked]})
    alternatives = [alt.token for entry in entries for alt in entry.top_logprobs]
    assert " value" in alternatives and " string" not in alternatives
