"""Training corpus built offline from text every CPython 3.11 install ships with.

Sources: the docstrings of the standard library (modules, functions, classes, methods) and the
language reference topics in `pydoc_data.topics`. Two views of the same items:

* documents: ``name(signature)`` followed by the full docstring, for plain language modelling;
* chats: a user question about the item and the first paragraph of its docstring as the
  assistant's answer, so the models learn the ChatML turn structure.

Every item goes to exactly one split, chosen by a hash of its name, so the held-out eval split
(used later to evaluate the router) never leaks into training.

Run ``python -m models.corpus`` to print statistics.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "eval")
EVAL_MAX_ITEMS = 300

# Modules that do something on import (print, open a browser, start a GUI), need a display, or
# are test suites; also ones Debian ships separately, so a "fresh machine" may lack them.
SKIP_MODULES = {
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "test",
    "site",
    "pydoc_data",
    "distutils",
    "lib2to3",
    "ensurepip",
    "venv",
    "posix",  # its functions are documented as os.*
}
SKIP_PARTS = {"__main__", "test", "tests", "idle_test"}

# Public modules that re-export a C implementation module under another name.
MODULE_ALIASES = {"os": {"posix"}}
DISPLAY_NAMES = {"posixpath": "os.path"}
# Builtins are asked about as `len` and `str.join`, not `builtins.len`.
MEMBER_PREFIX = {"builtins": ""}

MIN_DOC_CHARS = 20
MAX_ANSWER_CHARS = 600
CHATS_PER_ITEM = 2


@dataclass(frozen=True)
class Item:
    name: str  # e.g. "json.dumps", "topic:assert"
    kind: str  # module | function | class | method | topic
    signature: str
    doc: str


@dataclass
class Corpus:
    documents: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    chats: dict[str, list[list[dict]]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    eval_rows: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Harvesting (runs in a separate, isolated interpreter; see harvest()).


def _public_modules() -> list[str]:
    import importlib
    import pkgutil

    found = []

    def visit(name: str) -> None:
        parts = name.split(".")
        if parts[0] in SKIP_MODULES or any(p.startswith("_") or p in SKIP_PARTS for p in parts):
            return
        if name.startswith("encodings."):  # hundreds of generated codec tables, no prose
            return
        try:
            module = importlib.import_module(name)
        except BaseException:  # missing C extension, wrong platform, SystemExit, ...
            return
        found.append(name)
        for sub in sorted(m.name for m in pkgutil.iter_modules(getattr(module, "__path__", []))):
            visit(f"{name}.{sub}")

    for top in sorted(sys.stdlib_module_names):
        visit(top)
    found.append("posixpath")  # os.path; not a package member, so the walk can't see it
    return sorted(set(found))


class _Elided:
    def __repr__(self) -> str:
        return "..."


def _portable_default(value):
    """Defaults are evaluated at import time, so their reprs can hold memory addresses
    (``<object object at 0x7f...>``), this machine's environment (cgi's ``environ=os.environ``)
    or install paths (``executable=sys.executable``). Keep plain literals only."""
    literals = (type(None), bool, int, float, str, bytes)
    local = (sys.prefix, sys.base_prefix, sys.executable)
    if isinstance(value, literals) and not any(path in str(value) for path in local):
        return value
    if isinstance(value, tuple) and all(isinstance(v, literals) for v in value):
        return value
    return _Elided()


def _signature(obj) -> str:
    import inspect

    try:
        sig = inspect.signature(obj)
    except Exception:  # C signatures may reference names that don't exist on this platform
        return ""
    params = [
        p if p.default is p.empty else p.replace(default=_portable_default(p.default)) for p in sig.parameters.values()
    ]
    return str(sig.replace(parameters=params))


def _items_of_module(modname: str) -> list[Item]:
    import inspect

    module = sys.modules[modname]
    shown = DISPLAY_NAMES.get(modname, modname)
    owners = {modname, "_" + modname.rsplit(".", 1)[-1]} | MODULE_ALIASES.get(modname, set())
    prefix = MEMBER_PREFIX.get(modname, shown + ".")
    items = []
    if module.__doc__:
        items.append(Item(shown, "module", "", inspect.cleandoc(module.__doc__)))
    for attr, obj in sorted(vars(module).items()):
        # Only what the module itself defines, so re-exports are not counted twice.
        if attr.startswith("_") or getattr(obj, "__module__", None) not in owners:
            continue
        if inspect.isclass(obj):
            if obj.__doc__:
                items.append(Item(f"{prefix}{attr}", "class", _signature(obj), inspect.cleandoc(obj.__doc__)))
            for meth, raw in sorted(vars(obj).items()):
                raw = getattr(raw, "__func__", raw)  # classmethod / staticmethod
                if meth.startswith("_") or not (inspect.isroutine(raw) or isinstance(raw, property)):
                    continue
                # Own docstring only: inherited ones would repeat under every subclass.
                if isinstance(raw.__doc__, str):
                    sig = "" if isinstance(raw, property) else _signature(raw)
                    items.append(Item(f"{prefix}{attr}.{meth}", "method", sig, inspect.cleandoc(raw.__doc__)))
        elif inspect.isroutine(obj) and obj.__doc__:
            items.append(Item(f"{prefix}{attr}", "function", _signature(obj), inspect.cleandoc(obj.__doc__)))
    return items


def _harvest_here() -> list[Item]:
    import pydoc_data.topics
    import warnings

    warnings.simplefilter("ignore")
    items = []
    for modname in _public_modules():
        items.extend(_items_of_module(modname))
    for key, text in sorted(pydoc_data.topics.topics.items()):
        items.append(Item(f"topic:{key}", "topic", "", text.strip()))
    items = [it for it in items if len(it.doc) >= MIN_DOC_CHARS]
    return sorted(set(items), key=lambda it: it.name)


def harvest() -> list[Item]:
    """All stdlib items, sorted by name.

    Runs in a child interpreter with ``-I -S``: no site-packages (so installed third-party
    packages, e.g. setuptools' distutils shim, can't change the result) and import side effects
    (stdout noise, signal handlers, a REPL in some ``__main__``) stay out of this process.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "items.json"
        subprocess.run(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), "--harvest-to", str(out)],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=600,
        )
        return [Item(**d) for d in json.loads(out.read_text())]


# --------------------------------------------------------------------------------------------
# Turning items into documents, chats and splits.


def split_of(name: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % 100
    return "train" if bucket < 90 else "val" if bucket < 95 else "eval"


def _looks_like_signature(paragraph: str) -> bool:
    # Old C docstrings open with "S.join(iterable) -> str" before the prose.
    line = paragraph.strip()
    return "\n" not in line and ("->" in line or (line.endswith(")") and "(" in line and " " not in line.split("(")[0]))


def first_paragraph(doc: str) -> str:
    paragraphs = [p.strip() for p in doc.split("\n\n") if p.strip()]
    while len(paragraphs) > 1 and _looks_like_signature(paragraphs[0]):
        paragraphs.pop(0)
    text = " ".join(paragraphs[0].split()) if paragraphs else ""
    if len(text) > MAX_ANSWER_CHARS:  # cut at the last sentence end that fits
        cut = text.rfind(". ", 0, MAX_ANSWER_CHARS)
        text = text[: cut + 1] if cut > 0 else text[:MAX_ANSWER_CHARS]
    return text


def _topic_title(doc: str) -> str:
    title = doc.splitlines()[0].strip()
    return title[0].lower() + title[1:] if title[1:2].islower() else title


def _topic_body(doc: str) -> str:
    lines = doc.splitlines()
    if len(lines) > 1 and set(lines[1].strip()) <= {"*", "=", "-"}:  # drop the rST title
        lines = lines[2:]
    return "\n".join(lines).strip()


QUESTIONS = {
    "module": ["What is the `{n}` module for?", "What does the `{n}` module do?", "Explain the `{n}` module."],
    "function": ["What does `{n}` do?", "Explain the `{n}` function.", "What is `{n}` used for?"],
    "class": ["What is `{n}`?", "Explain the `{n}` class.", "What does the `{n}` class represent?"],
    "method": ["What does the `{n}` method do?", "Explain `{n}`.", "What is `{n}` for?"],
    "topic": ["Explain {n} in Python.", "What is {n} in Python?", "Tell me about {n} in Python."],
}


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def question_for(item: Item, variant: int = 0) -> str:
    subject = _topic_title(item.doc) if item.kind == "topic" else item.name
    templates = QUESTIONS[item.kind]
    return templates[(_stable_int("q:" + item.name) + variant) % len(templates)].format(n=subject)


def answer_for(item: Item) -> str:
    return first_paragraph(_topic_body(item.doc) if item.kind == "topic" else item.doc)


def document_for(item: Item) -> str:
    return f"{item.name}{item.signature}\n\n{item.doc}"


def build_corpus(items: list[Item] | None = None) -> Corpus:
    items = harvest() if items is None else items
    answers = [answer_for(it) for it in items]
    counts: dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1

    corpus = Corpus()
    eval_candidates = []
    for item, answer in zip(items, answers, strict=True):
        split = split_of(item.name)
        corpus.documents[split].append(document_for(item))
        # Answers shared by several names are boilerplate ("Return self==value."), and would let
        # an eval reference appear verbatim in training under another name.
        if len(answer) < MIN_DOC_CHARS or counts[answer] > 1:
            continue
        # Two phrasings per item: more chat-format practice for the same answers, and less
        # dependence on one wording of the question.
        for variant in range(CHATS_PER_ITEM):
            corpus.chats[split].append(
                [{"role": "user", "content": question_for(item, variant)}, {"role": "assistant", "content": answer}]
            )
        question = question_for(item)
        if split == "eval":
            eval_candidates.append((_stable_int(item.name), question, answer, item.name))
    # A fixed, hash-ordered subset keeps eval.jsonl small; the rest of the split is just unused.
    corpus.eval_rows = [
        {"prompt": q, "reference": a, "source": n} for _, q, a, n in sorted(eval_candidates)[:EVAL_MAX_ITEMS]
    ]
    return corpus


def write_eval_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--harvest-to":
        Path(sys.argv[2]).write_text(json.dumps([vars(it) for it in _harvest_here()]))
        return
    corpus = build_corpus()
    for split in SPLITS:
        chars = sum(map(len, corpus.documents[split]))
        print(
            f"{split:5}: {len(corpus.documents[split]):6} documents ({chars / 1e6:.2f} M chars), "
            f"{len(corpus.chats[split]):6} chats"
        )
    print(f"eval.jsonl rows: {len(corpus.eval_rows)}")
    for row in corpus.eval_rows[:5]:
        print(json.dumps(row, ensure_ascii=False)[:300])


if __name__ == "__main__":
    main()
