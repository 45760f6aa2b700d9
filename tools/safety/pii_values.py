"""Valid values of each documented PII kind, generated with their check digits (seeded), in
English and Chinese carrier sentences: the PII part of the development set of
`llmesh safety eval`, and the values the validators are tested against."""

from __future__ import annotations

import random
import string
from collections.abc import Callable

from textkit.safety import pii
from tools.safety.corpus import Sample


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        if pii.luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable")


def card(rng: random.Random) -> str:
    prefix, length = rng.choice((("4", 16), ("51", 16), ("37", 15), ("6222", 19), ("6011", 16)))
    number = _luhn_complete(prefix, length, rng)
    return " ".join(number[i : i + 4] for i in range(0, len(number), 4)) if rng.random() < 0.5 else number


def iban(rng: random.Random) -> str:
    country, length = rng.choice((("DE", 22), ("GB", 22), ("FR", 27), ("NL", 18), ("ES", 24)))
    if country in ("GB", "NL"):
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
        bban += "".join(rng.choice(string.digits) for _ in range(length - 8))
    else:
        bban = "".join(rng.choice(string.digits) for _ in range(length - 4))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    value = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    return " ".join(value[i : i + 4] for i in range(0, len(value), 4)) if rng.random() < 0.5 else value


def cn_id(rng: random.Random) -> str:
    region = rng.choice(("110105", "310104", "440305", "510107", "330106"))
    born = f"{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    body = region + born + f"{rng.randint(0, 999):03d}"
    check = sum(int(c) * w for c, w in zip(body, pii._CN_ID_WEIGHTS, strict=True)) % 11
    return body + pii._CN_ID_CHECK[check]


def cn_phone(rng: random.Random) -> str:
    number = f"1{rng.choice('3456789')}{rng.randint(0, 999_999_999):09d}"
    style = rng.randrange(3)
    if style == 0:
        return number
    if style == 1:
        return f"+86 {number[:3]} {number[3:7]} {number[7:]}"
    return f"{number[:3]}-{number[3:7]}-{number[7:]}"


def intl_phone(rng: random.Random) -> str:
    return rng.choice(
        (
            f"+1 {rng.randint(201, 989)} {rng.randint(200, 999)} {rng.randint(1000, 9999)}",
            f"+44 20 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
            f"+49 30 {rng.randint(100000, 999999)}{rng.randint(10, 99)}",
            f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
            f"+81-3-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}",
        )
    )


def email(rng: random.Random) -> str:
    user = rng.choice(("john.doe", "zhang.san", "a.b+tag", "dev_ops", "li99"))
    return f"{user}@{rng.choice(('example.com', 'mail.cn', 'corp.co.uk', 'qq.com'))}"


def ipv4(rng: random.Random) -> str:
    return ".".join(str(rng.randint(1, 254)) for _ in range(4))


def ipv6(rng: random.Random) -> str:
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    return rng.choice((":".join(groups), f"2001:db8::{groups[0]}", f"fe80::{groups[1]}:{groups[2]}"))


def secret(rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits

    def token(n: int) -> str:
        return "".join(rng.choice(alnum) for _ in range(n))

    return rng.choice(
        (
            f"sk-{token(40)}",
            f"AKIA{''.join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16))}",
            f"ghp_{token(36)}",
            f"api_key={token(32)}",
            f"password: {token(20)}",
        )
    )


PII_MAKERS: dict[str, Callable[[random.Random], str]] = {
    "email": email,
    "phone:cn": cn_phone,
    "phone:intl": intl_phone,
    "card": card,
    "iban": iban,
    "cn_id": cn_id,
    "ipv4": ipv4,
    "ipv6": ipv6,
    "secret": secret,
}
EN_PII_CARRIERS = ("Please contact me at {} tomorrow.", "The value is {}.", "{}", "send it to {}, thanks")
ZH_PII_CARRIERS = ("请联系{}谢谢", "我的信息是：{}。", "{}", "号码 {} 请保密")


def pii_samples(rng: random.Random, per_kind: int = 40) -> list[Sample]:
    samples = []
    for name, make in PII_MAKERS.items():
        for index in range(per_kind):
            language = "zh" if index % 2 else "en"
            carrier = rng.choice(ZH_PII_CARRIERS if language == "zh" else EN_PII_CARRIERS)
            samples.append(Sample(carrier.format(make(rng)), f"pii:{name.split(':')[0]}", language, name))
    return samples
