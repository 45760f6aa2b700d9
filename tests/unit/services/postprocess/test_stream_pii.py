"""PII in streamed answers: held back until complete, then redacted (or blocking), however the
text is cut into chunks; no part of a PII string is ever released."""

import itertools

import pytest

from services.postprocess.stream import HoldBackBuffer
from textkit.safety.lexicon import Lexicon

EMPTY = Lexicon([])
SECRETS = ("john.doe@example.com", "13812345678", "4111 1111 1111 1111")


def cuts(text: str, pieces: int = 3):
    for bounds in itertools.combinations(range(1, len(text)), pieces - 1):
        edges = (0, *bounds, len(text))
        yield [text[a:b] for a, b in itertools.pairwise(edges)]


def run(buffer: HoldBackBuffer, chunks: list[str]):
    released, blocked = [], None
    for index, chunk in enumerate(chunks):
        text, blocked = buffer.push(chunk, final=index == len(chunks) - 1)
        released.append(text)
        if blocked is not None:
            break
    return released, blocked


@pytest.mark.parametrize("secret", SECRETS)
def test_redacted_whatever_the_chunking(secret):
    text = f"Reach me at {secret} today."
    for chunks in cuts(text):
        released, blocked = run(HoldBackBuffer(EMPTY, "redact"), chunks)
        assert blocked is None
        out = "".join(released)
        assert secret not in out and "[" in out, (chunks, out)
        # No piece released along the way carries part of the secret's digits or address.
        for piece in released:
            assert not any(fragment in piece for fragment in ("john", "1381", "4111")), (chunks, released)


def test_block_policy_ends_the_stream_before_any_of_it():
    released, blocked = run(HoldBackBuffer(EMPTY, "block"), ["mail ", "john.d", "oe@exa", "mple.com", " now"])
    assert [m.kind for m in blocked] == ["email"]
    assert "".join(released) == "mail "


def test_plain_words_flow_word_by_word():
    released, _ = run(HoldBackBuffer(EMPTY, "redact"), ["The ans", "wer is ", "yes."])
    assert released == ["The ", "answer is ", "yes."]


def test_redactions_are_remembered_for_the_verdict():
    buffer = HoldBackBuffer(EMPTY, "redact")
    run(buffer, ["ip 10.0.0.1 ", "and a@b.cn."])
    assert sorted(m.kind for m in buffer.redacted) == ["email", "ipv4"]
