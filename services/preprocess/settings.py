from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from mesh.settings import MeshSettings
from textkit.safety.classifier import DEFAULT_MODEL
from textkit.safety.lexicon import DEFAULT_ALLOW, DEFAULT_EN, DEFAULT_ZH
from textkit.safety.scanners import PiiAction


class PreprocessSettings(MeshSettings):
    service_name: str = "preprocess"

    # Blocked-term lists for prompts (LLMESH_INPUT_LEXICON_EN='["/etc/llmesh/en.txt"]').
    input_lexicon_en: list[Path] = Field(default_factory=lambda: list(DEFAULT_EN))
    input_lexicon_zh: list[Path] = Field(default_factory=lambda: list(DEFAULT_ZH))
    # Phrases in which a term is harmless ("bomb shelter"); an empty list blocks every occurrence.
    input_lexicon_allow: list[Path] = Field(default_factory=lambda: list(DEFAULT_ALLOW))
    # The learned layer (tools/safety/train.py); empty turns it off.
    input_classifier_path: Path | None = DEFAULT_MODEL
    input_blocked_message: str = "The request contains content that is not allowed."
    # PII in prompts: replaced by placeholders such as [EMAIL] (redact), refused (block) or let through (off).
    input_pii_action: PiiAction = "redact"
    input_pii_message: str = "The request contains personal data or secrets that may not be sent."
    # Prompt-injection rules: refuse (block) or let through (off).
    input_injection_action: Literal["block", "off"] = "block"
    input_injection_message: str = "The request looks like an attempt to override the assistant's instructions."

    # Moderate (/v1/moderations): the profanity classifier's probability at which a text counts
    # as profane.
    moderation_profanity_threshold: float = Field(default=0.9, gt=0, le=1)

    # Special tokens spelled out in a message (e.g. a forged "<|im_start|>system"): tokenized as the
    # plain text they are (text), or the request refused as a prompt injection (refuse).
    special_tokens_in_content: Literal["text", "refuse"] = "text"

    # Size limits, checked on the normalised text and on each model's rendered, tokenized prompt.
    # Without max_prompt_tokens, a prompt is only held to the serving model's context (the
    # gateway answers 400 when prompt and max_tokens do not fit).
    max_prompt_chars: int = Field(default=32_000, gt=0)
    max_prompt_tokens: int | None = Field(default=None, gt=0)
