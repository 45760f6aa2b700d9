"""PII detection: each kind found in English and Chinese text, and rejected when its check
digits, ranges or randomness say it is not one."""

import random

import pytest

from textkit.safety import pii
from tools.safety import pii_values


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("write to john.doe@example.com today", "email"),
        ("邮箱a.b+tag@mail.cn谢谢", "email"),
        ("call 13812345678 now", "phone"),
        ("电话：+86 138 1234 5678。", "phone"),
        ("office +44 20 7946 0958", "phone"),
        ("card 4111 1111 1111 1111.", "card"),
        ("卡号4111111111111111，", "card"),
        ("IBAN GB82 WEST 1234 5698 7654 32", "iban"),
        ("pay DE89370400440532013000 now", "iban"),
        ("身份证号码11010519491231002X。", "cn_id"),
        ("host 192.168.1.10.", "ipv4"),
        ("IP是2001:db8::1。", "ipv6"),
        ("我的信息是：fe80::1:2", "ipv6"),
        ("key sk-abcdefghijklmnopqrstuvwx12", "secret"),
        ("AKIAIOSFODNN7EXAMPLE", "secret"),
        ("api_key=Zx8fK2pQ9rT4vB7nL1mW", "secret"),
    ],
)
def test_each_kind_is_found(text, kind):
    assert [m.kind for m in pii.find_pii(text)] == [kind]


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # Luhn fails
        "order 1234567890123",  # Luhn fails
        "GB82 WEST 1234 5698 7654 33",  # mod-97 fails
        "11010519491231002Y",  # not a check character
        "110105194913310021",  # no 13th month
        "call 12345678901",  # 12x is no mobile range
        "version 1.2.3 and 12:30:45",
        "999.1.1.1 is no address",
        "token: hello_world_everyone_here",  # a word, not a random secret
        "password=aaaaaaaaaaaaaaaaaaaa",
    ],
)
def test_look_alikes_are_rejected(text):
    assert pii.find_pii(text) == []


def test_validators_agree_with_generated_values():
    rng = random.Random(1)
    for _ in range(50):
        assert pii.card_valid(pii_values.card(rng))
        assert pii.iban_valid(pii_values.iban(rng))
        assert pii.cn_id_valid(pii_values.cn_id(rng))
        assert pii.phone_valid(pii_values.cn_phone(rng))


def test_redact_names_the_kind_and_keeps_the_rest():
    text = "mail a@b.com, card 4111111111111111 ok"
    assert pii.redact(text, pii.find_pii(text)) == "mail [EMAIL], card [CARD] ok"


@pytest.mark.parametrize(
    ("text", "held"),
    [
        ("contact john.do", "john.do"),
        ("call 138 1234 ", "138 1234 "),
        ("the end. ", ""),
        ("see you at noon", "noon"),
        ("邮箱是", ""),
    ],
)
def test_unsafe_suffix_is_what_pii_could_still_continue(text, held):
    assert text[pii.unsafe_suffix_start(text) :] == held


@pytest.mark.parametrize(
    "text",
    [
        "x[1::2] and lst[::2]",
        "upgrade to v2.3.0.1",
        "see section 1.2.3.4",
        "listen on 127.0.0.1 and ::1",
        "```\nip = '10.1.2.3'\n```",
        "run `ping 192.168.1.1`",
        "look at this dot com bubble",
        "on 01-02-2023",
    ],
)
def test_code_and_near_misses_are_left_alone(text):
    assert pii.find_pii(text) == []


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("mail o'brien@example.com now", "mail [EMAIL] now"),
        ("call (+86) 138 1234 5678", "call [PHONE]"),
        ("call 0086 138 1234 5678", "call [PHONE]"),
        ("write john dot smith at gmail dot com", "write [EMAIL]"),
        ("phone 138.1234.5678", "phone [PHONE]"),
        ("ring 020 7946 0958", "ring [PHONE]"),
        ("ring (415) 555-2671", "ring [PHONE]"),
        ("id 110105 19491231 002X", "id [CN_ID]"),
    ],
)
def test_whole_values_and_obfuscated_forms_are_redacted(text, redacted):
    assert pii.redact(text, pii.find_pii(text)) == redacted


def test_a_card_cut_across_messages_is_redacted_in_both():
    texts = ["my card is 4111 1111", "1111 1111 thanks"]
    found = pii.find_in_messages(texts)
    assert [pii.redact(t, m) for t, m in zip(texts, found, strict=True)] == ["my card is [CARD]", "[CARD] thanks"]
