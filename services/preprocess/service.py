"""PreprocessService: normalise, check, render the chat template, tokenize."""

from __future__ import annotations

import grpc

from llmesh.common.v1 import common_pb2
from llmesh.preprocess.v1 import preprocess_pb2, preprocess_pb2_grpc
from mesh.errors import abort
from services.preprocess.settings import PreprocessSettings
from services.preprocess.tokenizer import Tokenizers
from services.safety import pii, scanners, verdicts
from services.safety.classifier import GuardClassifier
from services.safety.guard import InputGuard
from services.safety.lexicon import ReloadingLexicon
from services.safety.text import normalize

# The role names chat templates expect.
ROLES = {
    common_pb2.ROLE_SYSTEM: "system",
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
    common_pb2.ROLE_TOOL: "tool",
}


def input_guard(settings: PreprocessSettings) -> InputGuard:
    """The input guard with the policies the settings choose (``llmesh safety eval`` runs it)."""
    lexicon = ReloadingLexicon(en=settings.input_lexicon_en, zh=settings.input_lexicon_zh, allow=settings.input_lexicon_allow)
    block = settings.input_injection_action == "block"
    return InputGuard(
        lexicon,
        settings.input_blocked_message,
        settings.input_injection_message if block else None,
        settings.input_pii_message if settings.input_pii_action == "block" else None,
        GuardClassifier.load(settings.input_classifier_path) if settings.input_classifier_path else None,
    )


class PreprocessService(preprocess_pb2_grpc.PreprocessServiceServicer):
    service_names = [preprocess_pb2.DESCRIPTOR.services_by_name["PreprocessService"].full_name]

    def __init__(self, settings: PreprocessSettings) -> None:
        self.settings = settings
        self.tokenizers = Tokenizers(settings)
        # Every message and the whole conversation; the first verdict wins.
        self.guard = input_guard(settings)

    def register(self, server: grpc.aio.Server) -> None:
        preprocess_pb2_grpc.add_PreprocessServiceServicer_to_server(self, server)

    async def ready(self) -> bool:
        return await self.tokenizers.ready()

    async def close(self) -> None:
        self.tokenizers.close()

    async def Preprocess(self, request: preprocess_pb2.PreprocessRequest, context) -> preprocess_pb2.PreprocessResponse:
        await self._validate(request, context)
        tokenizer = await self.tokenizers.get(request.tokenizer, context)

        messages = [
            {"role": ROLES[m.role], "content": normalize(m.content), **({"name": m.name} if m.name else {})}
            for m in request.messages
        ]
        texts = [m["content"] for m in messages] if messages else [normalize(request.prompt)]
        verdict = self._check_chars(texts) or self.guard.scan_messages(texts)
        if verdict is not None:
            return self._refuse(verdict)
        passed = verdicts.PASSED
        if self.settings.input_pii_action == "redact":
            found = pii.find_in_messages(texts)
            if any(found):
                passed = scanners.redaction_verdict([match for matches in found for match in matches])
                texts = [pii.redact(text, matches) for text, matches in zip(texts, found, strict=True)]
                for message, text in zip(messages, texts, strict=False):
                    message["content"] = text

        if messages:
            prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            prompt_text = texts[0]
        # The template has already written whatever special tokens the model needs.
        token_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        verdict = self._check_tokens(token_ids)
        if verdict is not None:
            return self._refuse(verdict)

        verdicts.record(passed)
        return preprocess_pb2.PreprocessResponse(verdict=passed, prompt_text=prompt_text, prompt_token_ids=token_ids)

    @staticmethod
    async def _validate(request: preprocess_pb2.PreprocessRequest, context) -> None:
        if not request.messages and not request.prompt:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "set messages or prompt", "EMPTY_PROMPT")
        if request.messages and request.prompt:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "set messages or prompt, not both", "AMBIGUOUS_PROMPT"
            )
        for index, message in enumerate(request.messages):
            if message.role not in ROLES:
                await abort(
                    context, grpc.StatusCode.INVALID_ARGUMENT, f"messages[{index}] has no known role",
                    "UNKNOWN_ROLE", index=str(index), role=str(message.role),
                )

    @staticmethod
    def _refuse(verdict: verdicts.SafetyVerdict) -> preprocess_pb2.PreprocessResponse:
        # A refusal is an answer, not an error: the gateway shows verdict.message to the caller.
        verdicts.record(verdict)
        return preprocess_pb2.PreprocessResponse(verdict=verdict)

    def _check_chars(self, texts: list[str]) -> verdicts.SafetyVerdict | None:
        chars, limit = sum(map(len, texts)), self.settings.max_prompt_chars
        if chars <= limit:
            return None
        return verdicts.blocked(
            common_pb2.SAFETY_CATEGORY_SIZE_LIMIT, "size:chars",
            f"The prompt is {chars} characters long; the limit is {limit}.",
        )

    def _check_tokens(self, token_ids: list[int]) -> verdicts.SafetyVerdict | None:
        tokens, limit = len(token_ids), self.settings.prompt_token_limit()
        if tokens <= limit:
            return None
        return verdicts.blocked(
            common_pb2.SAFETY_CATEGORY_SIZE_LIMIT, "size:tokens",
            f"The prompt is {tokens} tokens long; the limit is {limit}.",
        )
