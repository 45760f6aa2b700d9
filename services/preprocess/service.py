"""PreprocessService: normalise, check, render the chat template, tokenize."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from jinja2 import TemplateError

from llmesh.common.v1 import common_pb2
from llmesh.preprocess.v1 import preprocess_pb2, preprocess_pb2_grpc
from mesh.errors import abort
from services.preprocess.settings import PreprocessSettings
from textkit.safety import pii, scanners, verdicts
from textkit.safety.classifier import GuardClassifier
from textkit.safety.guard import InputGuard
from textkit.safety.injection import find_injection
from textkit.safety.lexicon import ReloadingLexicon
from textkit.safety.text import normalize
from textkit.tokenizers import ModelTokenizers, encode_user_text, render_chat, special_tokens_in

# The role names chat templates expect.
ROLES = {
    common_pb2.ROLE_SYSTEM: "system",
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
    common_pb2.ROLE_TOOL: "tool",
}


def input_guard(settings: PreprocessSettings) -> InputGuard:
    """The input guard with the policies the settings choose (``llmesh safety eval`` runs it)."""
    lexicon = ReloadingLexicon(
        en=settings.input_lexicon_en, zh=settings.input_lexicon_zh, allow=settings.input_lexicon_allow
    )
    block = settings.input_injection_action == "block"
    return InputGuard(
        lexicon,
        settings.input_blocked_message,
        settings.input_injection_message if block else None,
        settings.input_pii_message if settings.input_pii_action == "block" else None,
        GuardClassifier.load(settings.input_classifier_path) if settings.input_classifier_path else None,
    )


class PreprocessService(preprocess_pb2_grpc.PreprocessServiceServicer):
    service_names: Sequence[str] = (preprocess_pb2.DESCRIPTOR.services_by_name["PreprocessService"].full_name,)

    def __init__(self, settings: PreprocessSettings) -> None:
        self.settings = settings
        self.tokenizers = ModelTokenizers(settings.models)
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

        prompts, verdict = await self._prompts(messages, texts, context)
        if verdict is not None:
            return self._refuse(verdict)
        verdicts.record(passed)
        return preprocess_pb2.PreprocessResponse(verdict=passed, prompts=prompts)

    async def Moderate(self, request: preprocess_pb2.ModerateRequest, context) -> preprocess_pb2.ModerateResponse:
        """Every input scanner over each text, whatever the policy would do, with a score each
        (the classifier's probability; 1 or 0 for the rule-based scanners)."""
        texts = [normalize(text) for text in request.texts]
        if sum(map(len, texts)) > self.settings.max_prompt_chars:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"The inputs are longer than {self.settings.max_prompt_chars} characters in all.",
                "INPUT_TOO_LONG",
                param="input",
            )
        results = []
        for text in texts:
            found = pii.find_pii(text)
            profanity = await asyncio.to_thread(scanners.profanity_probability, text) if text.strip() else 0.0
            scores = {
                "sensitive_word": float(self.guard.lexicon.current().find_evasive(text) is not None),
                "prompt_injection": float(find_injection(text) is not None),
                "pii": float(bool(found)),
                "profanity": profanity,
            }
            categories = {
                name: score >= (self.settings.moderation_profanity_threshold if name == "profanity" else 1.0)
                for name, score in scores.items()
            }
            verdict = self.guard.scan_messages([text])
            passed = verdicts.PASSED
            if verdict is None and found and self.settings.input_pii_action == "redact":
                text, passed = pii.redact(text, found), scanners.redaction_verdict(found)
            results.append(
                preprocess_pb2.ModerationResult(
                    flagged=any(categories.values()),
                    categories=categories,
                    category_scores=scores,
                    verdict=verdict or passed,
                    text="" if verdict is not None else text,
                )
            )
        return preprocess_pb2.ModerateResponse(results=results)

    async def _prompts(
        self, messages: list[dict[str, str]], texts: list[str], context
    ) -> tuple[list[common_pb2.ModelPrompt], verdicts.SafetyVerdict | None]:
        """The prompt for every catalog model, in its own template and tokens (models sharing a
        tokenizer share the work), or the verdict that refuses it."""
        prompts: list[common_pb2.ModelPrompt] = []
        done: dict[int, tuple[str, list[int]]] = {}
        for model in self.tokenizers.models:
            tokenizer = self.tokenizers.get(model)
            if tokenizer is None:
                # UNAVAILABLE: the channel's retry policy tries again, which is right while starting.
                await abort(
                    context, grpc.StatusCode.UNAVAILABLE, f"tokenizer of {model} not loaded yet", "TOKENIZER_NOT_READY"
                )
            if id(tokenizer) not in done:
                if self.settings.special_tokens_in_content == "refuse":
                    forged = sorted({token for text in texts for token in special_tokens_in(tokenizer, text)})
                    if forged:
                        return [], verdicts.blocked(
                            common_pb2.SAFETY_CATEGORY_PROMPT_INJECTION,
                            "injection:special-token",
                            f"The request spells out control tokens of the model ({', '.join(forged)}).",
                        )
                try:
                    done[id(tokenizer)] = (
                        render_chat(tokenizer, messages)
                        if messages
                        else (texts[0], encode_user_text(tokenizer, texts[0]))
                    )
                except (ValueError, TemplateError) as error:
                    # Templates refuse some conversations themselves (e.g. roles that do not alternate).
                    await abort(
                        context,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{model}'s chat template: {error}",
                        "TEMPLATE_ERROR",
                        model=model,
                    )
                verdict = self._check_tokens(done[id(tokenizer)][1])
                if verdict is not None:
                    return [], verdict
            text, token_ids = done[id(tokenizer)]
            prompts.append(common_pb2.ModelPrompt(model=model, text=text, token_ids=token_ids))
        return prompts, None

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
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"messages[{index}] has no known role",
                    "UNKNOWN_ROLE",
                    index=str(index),
                    role=str(message.role),
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
            common_pb2.SAFETY_CATEGORY_SIZE_LIMIT,
            "size:chars",
            f"The prompt is {chars} characters long; the limit is {limit}.",
        )

    def _check_tokens(self, token_ids: list[int]) -> verdicts.SafetyVerdict | None:
        tokens, limit = len(token_ids), self.settings.max_prompt_tokens
        if limit is None or tokens <= limit:
            return None
        return verdicts.blocked(
            common_pb2.SAFETY_CATEGORY_SIZE_LIMIT,
            "size:tokens",
            f"The prompt is {tokens} tokens long; the limit is {limit}.",
        )
