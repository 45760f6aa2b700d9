from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from services.preprocess.tokenizer import TokenizerSettings
from services.safety.classifier import DEFAULT_MODEL
from services.safety.lexicon import DEFAULT_ALLOW, DEFAULT_EN, DEFAULT_ZH
from services.safety.scanners import PiiAction


class PreprocessSettings(TokenizerSettings):
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

    # Size limits, checked on the normalised text and on the rendered, tokenized prompt.
    max_prompt_chars: int = Field(default=32_000, gt=0)
    # Unset means the default model's context length.
    max_prompt_tokens: int | None = Field(default=None, gt=0)

    def prompt_token_limit(self) -> int:
        return self.max_prompt_tokens or self.default_model().context_length
