from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mesh.settings import MeshSettings
from textkit.safety.lexicon import DEFAULT_EN, DEFAULT_ZH
from textkit.safety.scanners import PiiAction


class PostprocessSettings(MeshSettings):
    service_name: str = "postprocess"

    # Blocked-term lists for answers (LLMESH_OUTPUT_LEXICON_EN='["/etc/llmesh/en.txt"]'); by
    # default the same lists as for prompts.
    output_lexicon_en: list[Path] = Field(default_factory=lambda: list(DEFAULT_EN))
    output_lexicon_zh: list[Path] = Field(default_factory=lambda: list(DEFAULT_ZH))
    # Replaces a blocked answer, and is the verdict's message.
    refusal_message: str = "Sorry, I can't help with that."
    # PII in answers: placeholders such as [EMAIL] (redact), a refusal (block) or nothing (off).
    output_pii_action: PiiAction = "redact"
    # The moderation classifier's probability that blocks an answer; above 1 disables it.
    output_moderation_threshold: float = Field(default=0.9, gt=0)
