"""Prompt-injection signals: chat-template control markers in user text (a forged turn), and
known phrasings in English and Chinese (overriding instructions, leaking the prompt, role
play that sheds the rules, jailbreak modes), matched in what the text reads as and in what
payloads hidden in it (base64, hex, URL escapes, rot13, reversal, Morse, leetspeak) say."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import ahocorasick

from textkit.safety.deobfuscate import reading_views


@dataclass(frozen=True)
class InjectionMatch:
    rule: str
    start: int
    end: int


# Control markers of the chat templates in use (ChatML, Llama 2 and 3, Gemma, Phi, Zephyr,
# Alpaca-style headers): in user or system content they can only be an attempt to forge a turn.
TEMPLATE_MARKERS = re.compile(
    r"<\|(?:im_start|im_end|endoftext|system|user|assistant|end|eot_id|start_header_id|end_header_id|begin_of_text"
    r"|end_of_text|eom_id|python_tag|fim_prefix|fim_suffix|fim_middle|pad|sep)\|>"
    r"|\[/?INST\]|<</?SYS>>|</?s>|<(?:start|end)_of_turn>|<\|?(?:bos|eos)\|?>"
    r"|^\s*#{2,3}\s*(?:system|instruction|response|human|assistant)\s*:?\s*$",
    re.IGNORECASE | re.MULTILINE,
)


def find_template_marker(text: str) -> InjectionMatch | None:
    found = TEMPLATE_MARKERS.search(text)
    return None if found is None else InjectionMatch("injection:template-marker", *found.span())


_IGNORE = (
    r"(?:ignore|ignoring|disregard|forget|override|overrule|bypass|skip|drop|discard|abandon|dismiss|neglect|cancel"
    r"|erase|delete|remove|clear|throw\s+(?:out|away)|set\s+aside|stop\s+following|do\s+not\s+follow"
    r"|don'?t\s+follow|no\s+longer\s+follow|pay\s+no\s+attention\s+to|not\s+bound\s+by)"
)
_PRIOR = (
    r"(?:previous|prior|above|earlier|preceding|former|foregoing|original|initial|system|developer|safety|old"
    r"|existing|current|given|default|built-?in|hidden|every|all|any|your|the|those|these|its)"
)
_RULES = (
    r"(?:instructions?|prompts?|rules?|directions?|guidelines?|context|messages?|constraints?|programming|restrictions?"
    r"|polic(?:y|ies)|filters?|directives?|orders?|commands?|training|guardrails?|safeguards?|limitations?"
    r"|configuration|boundaries|principles|ethics|conditioning|text|content|setup)"
)
_TELL = (
    r"(?:reveal|print|show|repeat|output|leak|display|tell\s+me|write\s+(?:out|down)|dump|recite|echo|spell\s+out|give\s+me"
    r"|paste|copy|quote|disclose|expose|share|read\s+(?:back|out)|summari[sz]e|translate|type\s+out)"
)
_SECRET = (
    r"(?:system|hidden|initial|original|secret|internal|developer|pre-?|first|starting|confidential|private|full|exact|real)"
    r"\s*(?:prompt|instructions?|message|rules|directives|guidelines|text)"
    # "the system message log" is a file, not the assistant's instructions.
    r"(?!\s*(?:logs?|files?|box(?:es)?|queues?|sounds?|tray|bar|cent(?:er|re)|folder|viewer|window|area|panel)\b)"
)
_FREE = (
    r"(?:no|without(?:\s+any)?|free\s+(?:of|from)|not\s+bound\s+by|not\s+restricted\s+by|outside|beyond|ignoring|unbound\s+by)"
    r"\s+(?:\w+\s+){0,2}(?:rules|restrictions|limits|limitations|filters|guidelines|ethics|morals|morality|policies|censorship"
    r"|constraints|boundaries|content\s+polic(?:y|ies)|safety|principles)"
)
_PERSONA = (
    r"(?:unrestricted|unfiltered|uncensored|jailbroken|amoral|immoral|unethical|evil|unlimited|unbounded|rogue|lawless)"
)
RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        (
            "injection:ignore-instructions",
            rf"\b{_IGNORE}\b[\s\w,'\-]{{0,40}}?\b{_PRIOR}\b[\s\w,'\-]{{0,25}}?\b{_RULES}\b",
        ),
        (
            "injection:ignore-instructions",
            rf"\b{_IGNORE}\s+(?:everything|all)\s+(?:(?:you\s+were|you've\s+been|i|we)\s+)?(?:told|said|written|given|above|before|so\s+far)",
        ),
        (
            "injection:new-instructions",
            r"(?:(?<=your )|(?<=the )|(?<=my ))new\s+(?:instructions?|rules?|task|role|persona|identity|directive|purpose)\s+(?:are|is|will\s+be)\b",
        ),
        (
            "injection:new-instructions",
            r"\b(?:new|updated|revised|real|actual|true)\s+(?:system\s+)?(?:instructions?|rules|prompt|directive)s?\s*:",
        ),
        ("injection:reveal-prompt", rf"\b{_TELL}\b[\s\w,'\-]{{0,30}}?\b{_SECRET}\b"),
        (
            "injection:reveal-prompt",
            r"\b(?:what|which)\s+(?:are|were|is|was)\s+(?:your|the)\s+(?:\w+\s+){0,2}(?:instructions|system\s+prompt|rules\s+you\s+were\s+given|initial\s+prompt)",
        ),
        (
            "injection:reveal-prompt",
            rf"\b(?:{_TELL}|what\s+(?:is|was|were))\b[\s\w,'\-]{{0,30}}?\b(?:(?:text|words|everything|all|message|content|lines?)\s+)?(?:written|said|typed|stated|given|shown|placed|that\s+(?:came|comes|appears?))?\s*(?:above|before\s+(?:this|my|the\s+(?:user|first))|prior\s+to\s+(?:this|my))\b(?=\s*(?:[.?!:,;\"')]|$|this|here|verbatim|word\s+for\s+word|exactly|in\s+(?:full|the\s+(?:conversation|prompt|chat))|the\s+(?:line|message|conversation|user|first)))",
        ),
        ("injection:reveal-prompt", r"\b(?:starting|beginning)\s+with\s+[\"'“]?\s*you\s+are\b"),
        (
            "injection:role-play",
            rf"\b(?:you\s+are\s+now|you're\s+now|from\s+now\s+on|pretend|imagine|act\s+as|acting\s+as|role-?play|play\s+the\s+(?:role|part)|simulate|become|you\s+will\s+be|you\s+are\s+going\s+to\s+be|behave\s+(?:as|like)|respond\s+as|answer\s+as|you\s+are\s+(?:a|an))\b[\s\w,'\-]{{0,60}}?(?:\b{_PERSONA}\b|\b{_FREE}\b|\bdan\b|\bdo\s+anything\b|\bno\s+(?:filter|limits|rules|restrictions|boundaries)\b)",
        ),
        ("injection:role-play", r"\b(?:stay|remain|keep)\s+in\s+character\b|\bbreak(?:ing)?\s+character\b"),
        (
            "injection:role-play",
            r"\b(?:two|2|dual|both)\s+(?:responses|answers|replies)\b[\s\w,'\-]{0,60}\b(?:unfiltered|jailbr|without|no\s+restrictions|uncensored|opposite)",
        ),
        (
            "injection:jailbreak",
            r"\b(?:do\s+anything\s+now|developer\s+mode|dev\s+mode|jailbreak(?:ed)?|dan\s+mode|god\s+mode|sudo\s+mode|admin(?:istrator)?\s+mode|maintenance\s+mode|debug\s+mode|unrestricted\s+mode|opposite\s+mode|evil\s+mode|no\s+longer\s+bound\s+by|(?:never|not|don'?t|do\s+not|must\s+not|cannot|can'?t|won'?t)\s+(?:ever\s+)?refuse|without\s+(?:any\s+)?(?:refusals?|refusing|censorship|warnings|disclaimers)|no\s+matter\s+how\s+(?:unethical|immoral|illegal|dangerous|harmful)|(?:broken|break)\s+free\s+(?:of|from)|freed\s+from\s+(?:the\s+)?(?:typical\s+)?(?:confines|constraints|restrictions|rules)|(?:openai|anthropic|content)\s+polic(?:y|ies)\s+(?:do(?:es)?\s+not|don'?t|no\s+longer)\s+apply)\b",
        ),
        (
            "injection:jailbreak",
            rf"\b(?:an?|the)\s+(?:ai|assistant|model|chatbot|bot|llm|entity|character)\s+(?:\w+\s+){{0,3}}(?:that|who|which|with)\s+(?:has|have|is|are|can|will|does|doesn't|does\s+not)?\s*(?:\w+\s+){{0,2}}(?:{_FREE}|{_PERSONA}|anything)",
        ),
        (
            "injection:ignore-instructions",
            r"(?:忽略|无视|忘记|忘掉|不要理会|不用管|别管|抛开|丢掉|丢弃|放弃|跳过|绕过|违背|不再遵守|不要遵守|不必遵守|停止遵循|不要遵循|覆盖|清除|撤销|作废)[^。！？\n]{0,12}(?:之前|以上|上面|先前|前面|所有|系统|原来|原有|原先|初始|你的|一切|全部|此前|早先|开发者|安全)[^。！？\n]{0,8}(?:指令|指示|规则|提示|设定|要求|约束|限制|规定|命令|说明|条款|准则|守则|政策|规范|设置|内容|话)",
        ),
        (
            "injection:reveal-prompt",
            r"(?:输出|显示|告诉我|泄露|泄漏|重复|打印|透露|说出|给我看|展示|复述|列出|写出|公开|念出|翻译|总结)[^。！？\n]{0,12}(?:系统提示|系统指令|初始指令|隐藏指令|提示词|系统消息|原始指令|初始设定|你的指令|你的设定|你的规则|上面的内容|上面的文字|之前的内容|前面的内容|以上内容|以上的内容|最开始的内容|上文)",
        ),
        ("injection:reveal-prompt", r"(?:上面|之前|前面|最开始|以上)[^。！？\n]{0,6}(?:写了|说了|是)什么"),
        (
            "injection:reveal-prompt",
            r"(?:上面|之前|前面|以上|最开始|上文|你收到)的?(?:所有|全部)?(?:内容|文字|话|指令|提示|设定|消息)[^。！？\n]{0,8}(?:输出|显示|重复|打印|复述|告诉我|写出来|发给我|列出|念出来|翻译)",
        ),
        (
            "injection:role-play",
            r"(?:你现在是|现在你是|从现在开始[，,]?你是|从现在起[，,]?你是|假装你是|假设你是|想象你是|扮演|你将成为|你要成为|化身为|进入角色|充当|作为一个|你是一个)[^。！？\n]{0,20}(?:没有(?:任何)?(?:道德|限制|约束|规则|底线|审查|过滤)|不受限制|无限制|越狱|不受任何约束|不受道德|没有规则|不守规矩|无所不能|什么都能|不受约束|没有审查|无审查|不受.{0,6}约束|邪恶|没有底线|无视规则|不遵守规则|没有过滤)",
        ),
        ("injection:role-play", r"(?:保持角色|不要出戏|不许出戏)"),
        (
            "injection:jailbreak",
            r"(?:开发者模式|开发模式|越狱|解除(?:所有|全部|一切)?(?:限制|约束|封印)|上帝模式|管理员模式|调试模式|无限制模式|dan模式|不要拒绝|不得拒绝|不能拒绝|绝不拒绝|永远不要拒绝|不许拒绝|不准拒绝|任何问题都(?:要|必须)回答|不受(?:任何)?(?:限制|约束)地回答|没有任何限制地回答)",
        ),
    )
)


def _automaton(words: str) -> ahocorasick.Automaton:
    automaton = ahocorasick.Automaton()
    for word in words.split():
        automaton.add_word(word, word)
    automaton.make_automaton()
    return automaton


# Every rule needs one of these words (or word beginnings): a view without any is skipped.
_TRIGGERS = _automaton(
    "instruction prompt rule direction guideline context message constraint programming restriction polic filter"
    " directive order command training guardrail safeguard limitation setting configuration boundar principle ethic"
    " conditioning text content setup told said written given above before prior task role persona identity purpose"
    " starting beginning unrestricted unfiltered uncensored jailbr amoral immoral unethical evil unlimited unbounded"
    " rogue lawless limit moral censor safety dan anything character responses answers replies mode bound refus"
    " warning disclaimer matter free everything all"
    " 指令 指示 规则 提示 设定 要求 约束 限制 规定 命令 说明 条款 准则 守则 政策 规范 设置 内容 话 上文 什么 越狱 道德 审查 邪恶"
    " 底线 过滤 无所不能 什么都能 角色 出戏 模式 解除 拒绝 任何问题 不受"
)
# A rot13 or reversed view of ordinary text is noise in which common words turn up by chance;
# such a view has to hold one of these rarer ones before the rules run on it (rot13 leaves
# Chinese as it is, so only the English ones count there).
_STRONG_EN = (
    "instruction prompt rule direction guideline constraint programming restrict polic filter directive command"
    " training guardrail safeguard limitation configuration boundar principle ethic conditioning persona identity"
    " purpose jailbr moral evil unlimited unbounded rogue lawless censor safety character refus disclaimer ignor"
    " disregard pretend system developer reveal dan anything"
)
_STRONG = _automaton(_STRONG_EN + " 指令 规则 提示 设定 限制 约束 越狱 模式 拒绝 道德 角色")
_STRONG_ENGLISH = _automaton(_STRONG_EN)


def _has(automaton: ahocorasick.Automaton, text: str) -> bool:
    return next(automaton.iter(text), None) is not None


_LEET_TOKEN = re.compile(r"\b(?=\w*[a-z])(?=\w*[0-9@$])[a-z0-9@$]+\b")
_INJECTION_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "@": "a", "5": "s", "$": "s", "7": "t", "8": "b", "9": "g"}
)


def _unleet(view: str) -> str:
    return _LEET_TOKEN.sub(lambda token: token.group().translate(_INJECTION_LEET), view)


# A device's or program's mode ("developer mode on an Android phone", "手机开发者模式") or the
# user's own earlier message ("disregard my previous message") is no attack on the assistant.
_DEVICE = re.compile(
    r"\b(?:android|phone|iphone|ios|chrome|browser|firefox|windows|mac|xbox|playstation|switch|router|bios|tv|app|edge)\b"
    r"|手机|安卓|浏览器|电脑|系统设置|路由器|电视|小米|华为|苹果|应用"
)
_OWN = re.compile(r"\b(?:my|our)\s+(?:\w+\s+)?(?:messages?|questions?|requests?|prompts?|text|email|post|comments?)\b")


def _harmless(name: str, text: str, start: int, end: int) -> bool:
    if name == "injection:jailbreak" and re.search(r"mode|模式", text[start:end]):
        return _DEVICE.search(text[max(0, start - 40) : end + 40]) is not None
    if name == "injection:ignore-instructions":
        return _OWN.search(text[start:end]) is not None
    return False


def find_in_view(view: str, encoding: str = "plain") -> tuple[str, int, int] | None:
    """The first rule that matches one reading of a text (``encoding`` names the decoding
    that made it)."""
    # Leetspeak read back ("1gn0r3" -> "ignore"); no rule needs a word that mixes letters and digits.
    text = _unleet(view) if _LEET_TOKEN.search(view) else view
    triggers = {"rot13": _STRONG_ENGLISH, "reversed": _STRONG, "reversed-words": _STRONG}.get(encoding, _TRIGGERS)
    if not _has(triggers, text):
        return None
    for name, pattern in RULES:
        for found in pattern.finditer(text):
            if not _harmless(name, text, *found.span()):
                return name, *found.span()
    return None


def find_in_views(views: Iterable[tuple[str, str]]) -> InjectionMatch | None:
    """The first rule that matches any reading (``deobfuscate.reading_views``); a match in a
    decoded payload is reported as ``injection:encoded-payload``."""
    for encoding, view in views:
        found = find_in_view(view, encoding)
        if found is not None:
            rule, start, end = found
            return InjectionMatch(rule if encoding == "plain" else "injection:encoded-payload", start, end)
    return None


def find_injection(text: str) -> InjectionMatch | None:
    """Template markers in ``text`` as written, then the rules over what it reads as."""
    return find_template_marker(text) or find_in_views(reading_views(text))
